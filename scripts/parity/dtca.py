"""Parity of DTCA's `variant: official` with the released code (windforfurture/DTCA), written as a fixture.

Runs the authors' `model/modeling_dtca.py` (DTCAModel, MultiHeadAttention, UNITER's IPOT) and
`utils/metrics.py` (cal_f1) from ../shared/official/windforfurture-DTCA, unmodified, on a tiny random
configuration, and records:
  - the inputs (one batch: padded to a fixed length, one row without padding, words of one to three
    sub-tokens) and the initial weights, renamed to ours;
  - the forward outputs: text-head logits, emissions (cross_logits), the CRF loss (torchcrf sum / 10 on
    the non-contiguous mask), the IPOT distance per sentence with the inverted padding mask (50
    iterations), the joint loss, and argmax decoding;
  - three optimiser steps as `main.py`'s HF Trainer takes them (AdamW over the Trainer's decay groups,
    weight decay 0.01, linear decay from the base lr with 0 warm-up, max_grad_norm 1.0): the loss of
    each step and every weight afterwards;
  - `cal_f1` (P, R, F1 and each sentence's predicted pairs) on a fixed set of sub-token predictions;
  - IPOT alone on distinct random states (`ipot_*`): in the model's batch the transported positions are
    padding, whose states are all equal, so the iteration count, β and k change nothing measurable
    there; here every transported token differs (49 instead of 50 iterations moves a distance ~3e-5).
    The distance per sentence and its gradient with respect to both inputs;
  - the released Trainer's learning-rate factor at every step of a 3-epoch horizon (`trainer_lr_factors`)
    and main.py's defaults for lr, batch size, α, β and weight decay (read from its source with `ast`).
`tests/papers/dtca/test_parity_dtca.py` rebuilds our official variant from the fixture and compares.

Shims (the released files stay untouched): where torchvision (imported, unused) is not installed, a
stub stands in while the released file imports; the Trainer's optimiser, schedule and clipping are its
own transformers components run in a loop rather than `Trainer.train()` (no dataset files, no
accelerate); every dropout is 0 (randomness only); encoder weights are redrawn larger than their init
so attention is far from uniform; the tokenizer's `word_ids` is a small stand-in object. Everything
runs in float64. `trainer_optimizer` / `trainer_step` serve benchmarks/vs_official.py too.

    .venv/bin/python scripts/parity/dtca.py [--official DIR] [--out tests/fixtures/parity/dtca.json]
"""

from __future__ import annotations

import sys
import types
from contextlib import nullcontext
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

HIDDEN = 16
ROBERTA = dict(vocab_size=40, hidden_size=HIDDEN, num_hidden_layers=1, num_attention_heads=2, intermediate_size=32,
               max_position_embeddings=24, type_vocab_size=1, pad_token_id=1, bos_token_id=0, eos_token_id=2,
               layer_norm_eps=1e-5, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
VIT = dict(hidden_size=HIDDEN, num_hidden_layers=1, num_attention_heads=2, intermediate_size=32, image_size=16,
           patch_size=4, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
BATCH, LENGTH, TAGS = 4, 14, 5
TRAIN = dict(lr=1e-2, weight_decay=0.01, max_grad_norm=1.0, t_total=5, steps=3)
# words per sentence as sub-token counts; row 0 fills the whole length (no padding: empty OT mask)
WORDS = [[1, 2, 1, 3, 1, 1, 2, 1], [2, 1, 1, 3, 1], [1, 1, 2], [3, 1, 2, 1, 1, 1]]
METRIC_SENTENCES = 40
IPOT = dict(batch=4, length=14, patches=17, dim=HIDDEN, lengths=[14, 9, 5, 11])  # row 0: nothing transported
HORIZON = dict(epochs=3, steps_per_epoch=10)  # Trainer: t_total = num_train_epochs × steps per epoch

RENAME = {"roberta.": "text_encoder.", "vit.": "image_encoder.", "image_text_cross.w_qs.": "cross.query.",
          "image_text_cross.w_ks.": "cross.key.", "image_text_cross.w_vs.": "cross.value.",
          "image_text_cross.fc.": "cross.out.", "image_text_cross.layer_norm.": "cross.norm1.",
          "classifier1.": "text_head.", "classifier0.": "emission.", "CRF.": "crf."}


def our_name(name: str) -> str | None:
    if name.startswith("vit.pooler.") or "position_ids" in name:
        return None  # the released ViT's pooler is built but unused (our encoders have none)
    for theirs, ours in RENAME.items():
        if name.startswith(theirs):
            return ours + name[len(theirs):]
    raise KeyError(name)


def load_official(folder: Path):
    import transformers.modeling_utils  # noqa: F401  first: it imports torchvision if installed (and probes its spec)
    from _fixture import load_module

    stub = "torchvision" not in sys.modules
    sys.modules.setdefault("torchvision", types.ModuleType("torchvision"))  # shim: imported, never used
    try:
        return (load_module("dtca_official_model", folder / "model/modeling_dtca.py"),
                load_module("dtca_official_metrics", folder / "utils/metrics.py"))
    finally:
        if stub:  # only for the released import: a stub left behind breaks transformers' later probes
            del sys.modules["torchvision"]


class WordIds:
    """Stand-in for the tokenizer's BatchEncoding: `word_ids(batch_index=i)` with None for specials/pads."""

    def __init__(self, rows: list[list[int | None]]):
        self.rows = rows

    def word_ids(self, batch_index: int):
        return self.rows[batch_index]


def word_id_rows(words: list[list[int]], length: int) -> list[list[int | None]]:
    rows = []
    for counts in words:
        row = [None] + [w for w, n in enumerate(counts) for _ in range(n)]
        row = row[: length - 1] + [None]
        rows.append(row + [None] * (length - len(row)))
    return rows


def make_inputs(generator: torch.Generator) -> dict:
    rows = word_id_rows(WORDS, LENGTH)
    ids = torch.full((BATCH, LENGTH), ROBERTA["pad_token_id"])
    attention = torch.zeros(BATCH, LENGTH, dtype=torch.long)
    labels = torch.full((BATCH, LENGTH), -100)
    for b, counts in enumerate(WORDS):
        n = min(LENGTH, 2 + sum(counts))
        ids[b, :n] = torch.randint(3, ROBERTA["vocab_size"], (n,), generator=generator)
        ids[b, 0], ids[b, n - 1] = 0, 2
        attention[b, :n] = 1
        tags = torch.randint(0, TAGS, (len(counts),), generator=generator)
        for j in range(1, n - 1):
            if rows[b][j] != rows[b][j - 1]:
                labels[b, j] = tags[rows[b][j]]
    assert attention[0].all(), "row 0 must fill the length (the released inverted OT mask is then empty)"
    pixels = torch.randn(BATCH, 3, VIT["image_size"], VIT["image_size"], generator=generator)
    word_ids = torch.tensor([[-1 if w is None else w for w in row] for row in rows])
    return {"input_ids": ids, "attention_mask": attention, "labels": labels, "cross_labels": labels.clamp_min(0),
            "pixel_values": pixels, "word_ids": word_ids}


def metric_case(metrics_mod, generator: torch.Generator) -> dict:
    """A fixed set of sub-token predictions with their word ids and gold pairs (duplicates included)."""
    words = [[int(x) for x in torch.randint(1, 4, (int(torch.randint(2, 9, (1,), generator=generator)),), generator=generator)]
             for _ in range(METRIC_SENTENCES)]
    rows = word_id_rows(words, LENGTH)
    # mostly O, with B-x and I tags (some I's with no open span)
    preds = torch.multinomial(torch.tensor([0.55, 0.15, 0.1, 0.1, 0.1]), METRIC_SENTENCES * LENGTH, replacement=True,
                              generator=generator).view(METRIC_SENTENCES, LENGTH)
    gold = []  # [sentence, start, end, polarity]
    for s, counts in enumerate(words):
        kept = max(w for w in rows[s] if w is not None) + 1
        for _ in range(int(torch.randint(0, 3, (1,), generator=generator))):
            start = int(torch.randint(0, kept, (1,), generator=generator))
            end = min(kept - 1, start + int(torch.randint(0, 2, (1,), generator=generator)))
            gold.append([s, start, end, int(torch.randint(0, 3, (1,), generator=generator))])
    gold += [gold[0], gold[3]]  # an aspect annotated twice: cal_f1 counts it once
    pairs = [[(f"{g[1]}-{g[2]}", g[3]) for g in gold if g[0] == s] for s in range(METRIC_SENTENCES)]
    p, r, f1, predicted = metrics_mod.cal_f1(preds.numpy(), WordIds(rows), pairs, is_result=True)
    pred_pairs = [[s, *map(int, span.split("-")), pol] for s, found in enumerate(predicted) for span, pol in sorted(found)]
    return {"metric_preds": preds, "metric_word_ids": torch.tensor([[-1 if w is None else w for w in row] for row in rows]),
            "metric_gold": torch.tensor(gold), "metric_prf": torch.tensor([p, r, f1], dtype=torch.float64),
            "metric_pred_pairs": torch.tensor(pred_pairs)}


def ipot_case(model_mod, generator: torch.Generator) -> dict:
    """The released `optimal_transport_dist` with its own defaults and the released inverted mask
    (`attention_mask == 1` as the padding mask) on random, pairwise distinct token and patch states."""
    n, length, patches, dim = IPOT["batch"], IPOT["length"], IPOT["patches"], IPOT["dim"]
    text = torch.randn(n, length, dim, generator=generator).requires_grad_()
    image = torch.randn(n, patches, dim, generator=generator).requires_grad_()
    lengths = torch.tensor(IPOT["lengths"])
    attention = torch.arange(length).unsqueeze(0) < lengths.unsqueeze(1)
    distance = model_mod.optimal_transport_dist(text, image, attention, torch.zeros(n, patches, dtype=torch.bool))
    distance.mean().backward()  # the model's word_region_align_loss
    return {"ipot_text": text.detach(), "ipot_image": image.detach(), "ipot_lengths": lengths,
            "ipot_per_sentence": distance.detach(), "ipot_grad_text": text.grad, "ipot_grad_image": image.grad}


def main_defaults(folder: Path) -> dict:
    """main.py's argparse defaults and TrainingArguments constants, read from its source (not executed)."""
    import ast

    wanted = {"--lr": "lr", "--batch_size": "batch_size", "--alpha": "alpha", "--beta": "beta"}
    found = {}
    for node in ast.walk(ast.parse((folder / "main.py").read_text())):
        if not isinstance(node, ast.Call):
            continue
        keywords = {k.arg: k.value for k in node.keywords}
        if getattr(node.func, "attr", None) == "add_argument" and node.args and getattr(node.args[0], "value", None) in wanted:
            found[wanted[node.args[0].value]] = ast.literal_eval(keywords["default"])
        if getattr(node.func, "id", None) == "TrainingArguments":
            found["weight_decay"] = ast.literal_eval(keywords["weight_decay"])
            assert not {"warmup_steps", "warmup_ratio", "lr_scheduler_type", "max_grad_norm"} & set(keywords)
    assert set(found) == {*wanted.values(), "weight_decay"}, found
    return found


def trainer_lr_factors(lr: float, weight_decay: float) -> torch.Tensor:
    """The Trainer schedule's lr / base lr before each optimiser step over `HORIZON`."""
    total = HORIZON["epochs"] * HORIZON["steps_per_epoch"]
    optimizer, schedule, _ = trainer_optimizer(torch.nn.Linear(2, 2), lr, weight_decay, total)
    factors = []
    for _ in range(total):
        factors.append(optimizer.param_groups[0]["lr"] / lr)
        optimizer.step()
        schedule.step()
    return torch.tensor(factors)


def trainer_optimizer(model: torch.nn.Module, lr: float, weight_decay: float, t_total: int):
    """main.py's HF Trainer optimiser: its decay groups, AdamW, linear schedule with 0 warm-up.
    Returns (optimizer, schedule, names of the no-decay parameters)."""
    from transformers import Trainer, TrainingArguments, get_linear_schedule_with_warmup

    # shim: TrainingArguments() needs accelerate at init; its dataclass defaults are what main.py leaves
    field = {f: TrainingArguments.__dataclass_fields__[f].default for f in
             ("adam_beta1", "adam_beta2", "adam_epsilon", "warmup_steps", "optim", "lr_scheduler_type")}
    # torch's AdamW (the fused kernel of today's default computes the same update; in 2023 the default
    # was transformers' own AdamW, the same algorithm with bias correction)
    assert field["optim"] in ("adamw_torch", "adamw_torch_fused") and field["lr_scheduler_type"] == "linear"
    assert field["warmup_steps"] == 0
    decay = set(Trainer.get_decay_parameter_names(None, model))
    named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    groups = [{"params": [p for n, p in named if n in decay], "weight_decay": weight_decay},
              {"params": [p for n, p in named if n not in decay], "weight_decay": 0.0}]
    optimizer = torch.optim.AdamW(groups, lr=lr, betas=(field["adam_beta1"], field["adam_beta2"]), eps=field["adam_epsilon"])
    schedule = get_linear_schedule_with_warmup(optimizer, field["warmup_steps"], t_total)
    return optimizer, schedule, [n for n, _ in named if n not in decay]


def trainer_step(model: torch.nn.Module, inputs: dict, optimizer, schedule, max_grad_norm: float, autocast=nullcontext) -> float:
    """One Trainer training step: the model's own joint loss, backward, clipping, AdamW, schedule."""
    with autocast():
        loss = model(**inputs)["loss"]
    loss.backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), max_grad_norm)
    optimizer.step()
    schedule.step()
    optimizer.zero_grad()
    return loss.item()


def run_official(folder: Path) -> dict:
    from transformers import RobertaConfig, ViTConfig

    torch.set_default_dtype(torch.float64)
    model_mod, metrics_mod = load_official(folder)
    torch.manual_seed(0)
    model = model_mod.DTCAModel(RobertaConfig(**ROBERTA), ViTConfig(**VIT), text_num_labels=TAGS, alpha=0.6, beta=0.6)
    for module in model.modules():  # shim: the hard-coded 0.1 dropouts of the cross-attention off
        if isinstance(module, torch.nn.Dropout):
            module.p = 0.0
    with torch.no_grad():  # encoders: larger weights than the N(0, 0.02) init, LayerNorms near 1
        for name, p in model.named_parameters():
            if name.startswith(("roberta.", "vit.")):
                if "LayerNorm" in name or "layernorm" in name:
                    p.copy_(1.0 + 0.1 * torch.randn_like(p)) if name.endswith("weight") else p.normal_(0.0, 0.1)
                else:
                    p.normal_(0.0, 0.3 if p.dim() > 1 else 0.1)
    weights = {our_name(n): t.detach().clone() for n, t in model.state_dict().items() if our_name(n)}
    inputs = make_inputs(torch.Generator().manual_seed(1))
    forward_inputs = {k: v for k, v in inputs.items() if k != "word_ids"}

    model.train()  # dropout is 0: train and eval compute the same
    text_states, image_states = [], []  # the encoders' outputs, for the IPOT term alone
    hooks = [model.roberta.register_forward_hook(lambda m, i, o: text_states.append(o["last_hidden_state"])),
             model.vit.register_forward_hook(lambda m, i, o: image_states.append(o["last_hidden_state"]))]
    with torch.no_grad():
        out = model(**forward_inputs)
        text, image = text_states[-1], image_states[-1]
        ot = model_mod.optimal_transport_dist(text, image, inputs["attention_mask"] == 1,
                                              torch.zeros(image.shape[:2], dtype=torch.bool))
        mask = inputs["labels"] != -100
        mask[:, 0] = True
        crf = -model.CRF(out["cross_logits"], inputs["cross_labels"], mask=mask) / 10
        text_loss = torch.nn.CrossEntropyLoss()(out["logits"].view(-1, TAGS), inputs["labels"].view(-1))
    for hook in hooks:
        hook.remove()
    expected = {"text_logits": out["logits"], "cross_logits": out["cross_logits"], "crf_loss": crf, "ot_per_sentence": ot,
                "ot_loss": ot.mean(), "text_loss": text_loss, "loss": out["loss"], "argmax": out["cross_logits"].argmax(-1)}
    assert abs(out["loss"] - (crf + 0.6 * ot.mean() + 0.6 * text_loss)) < 1e-12  # the released eq (22)

    optimizer, schedule, no_decay = trainer_optimizer(model, TRAIN["lr"], TRAIN["weight_decay"], TRAIN["t_total"])
    losses = [trainer_step(model, forward_inputs, optimizer, schedule, TRAIN["max_grad_norm"]) for _ in range(TRAIN["steps"])]
    expected["step_losses"] = torch.tensor(losses)
    trained = {our_name(n): t.detach().clone() for n, t in model.state_dict().items() if our_name(n)}
    expected.update(metric_case(metrics_mod, torch.Generator().manual_seed(2)))
    expected.update(ipot_case(model_mod, torch.Generator().manual_seed(3)))
    defaults = main_defaults(folder)
    expected["trainer_lr_factors"] = trainer_lr_factors(defaults["lr"], defaults["weight_decay"])
    return {"roberta": ROBERTA, "vit": VIT, "train": TRAIN, "inputs": inputs, "weights": weights,
            "expected": {k: v.detach() for k, v in expected.items()}, "trained": trained,
            "horizon": HORIZON, "main_defaults": defaults,
            "no_decay": sorted(our_name(n) for n in no_decay if our_name(n))}


def main() -> None:
    from _fixture import fixture_main

    fixture_main(__doc__, "dtca", "windforfurture-DTCA", run_official)


if __name__ == "__main__":
    main()
