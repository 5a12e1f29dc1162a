"""Training throughput of our `variant: official` against the released code, same device, one run.

For a paper with released code, builds the released model through the same import shims as its
parity script (`scripts/parity/<paper>.py`, which loads ../shared/official/<folder>/ unmodified) and
our official variant at the same sizes, feeds both the same random batches (same batch size, same
precision), trains N steps of each with its own optimiser and loop, and prints samples/s of both and
the ratio ours / released.

Goal: on one H100 (`--size paper --device cuda`), our training step >= 2x the released code's
samples/s at the same batch, with data wait below 5 % of step time (every run logs it in
log.jsonl `throughput`). On CPU the benchmark runs at a reduced size (`--size small`, the default) and
only checks that both sides train and how they compare there; GPU numbers await a lent GPU.

Papers (each builder in this file; the released step is the parity script's own function where it has one):
  itm     NUSTM/ITM: Coarse2Fine + two BertAdam, the alternating VG / Twitter step (2 × batch examples a step).
  dtca    windforfurture/DTCA: DTCAModel (RoBERTa + ViT, cross-attention, CRF + IPOT joint loss) under main.py's
          HF Trainer step (`scripts/parity/dtca.py` trainer_optimizer / trainer_step: AdamW over the Trainer's
          decay groups, linear schedule, clipping at 1.0); ours: recipe dtca/twitter15-official.
  sppscl  TomorrowJW/SPP-SCL: MSA_Model under train.py's two-step iteration (`scripts/parity/sppscl.py`
          released_iteration: step 1, second forward, the condition, L_clm step; AdamW, StepLR per epoch);
          ours: recipe sppscl/mvsa-single-official. Through the parity shims both sides read the same
          frozen-encoder outputs (ResNet-50 layer-4 maps, BERT layers 9-12) instead of running the frozen
          encoders, so this times the trained heads and the loop, not the encoders.
Both sides start from the same weights; with dropout off their losses agree step by step
(tests/shared/test_bench_vs_official.py). Timing: --warmup steps a side, then --repeats blocks of --steps
steps, the two sides alternating; samples/s from the median block.

    .venv/bin/python benchmarks/vs_official.py itm|dtca|sppscl [--size small|paper] [--device cpu|cuda] [--steps 10]
    mmbench bench vs-official dtca
Prints one JSON object and writes benchmarks/results/vs-official-<paper>-<device>.json.
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import statistics
import sys
import time
import types
from contextlib import nullcontext
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
# MMBENCH_OFFICIAL: the released code elsewhere (a GPU machine that carries it beside the repository)
OFFICIAL = Path(os.environ.get("MMBENCH_OFFICIAL") or ROOT.parent / "shared" / "official")

ITM_SIZES = {  # paper: roberta-base, 100 Faster R-CNN regions of 2048-d, batch 32, 128 tokens (the released defaults)
    "small": dict(hidden=128, layers=2, heads=4, ffn=512, region_dim=256, regions=100, batch=8, length=32),
    "paper": dict(hidden=768, layers=12, heads=12, ffn=3072, region_dim=2048, regions=100, batch=32, length=128),
}


def _parity(paper: str, test: bool = False):
    """The parity script of `paper` (its loader, shims and released training step), or with `test` its parity test
    (how our official variant is built from the released weights and batch)."""
    for folder in (ROOT / ("tests/papers/" + paper if test else "scripts/parity"), ROOT):
        if str(folder) not in sys.path:
            sys.path.insert(0, str(folder))
    return importlib.import_module(f"test_parity_{paper}" if test else paper)


def _context(device: torch.device, autocast):
    from mmbench.engine.method import RunContext
    from mmbench.engine.runtime import World

    ctx = RunContext(device=device, autocast_dtype=None, world=World(), seed=0)
    ctx.autocast = autocast  # the benchmark's precision, the same context as the released side's
    return ctx


def _our_control(model, params_for, train, names: tuple, ctx):
    """Our engine's optimisers and schedules from the recipe's `train:` (fused AdamW on CUDA as in a run)."""
    from mmbench.engine.method import StepControl
    from mmbench.engine.optim import build_optimizer, build_scheduler

    fused = ctx.device.type == "cuda" and train.fused_optimizer
    optimizers = {name: build_optimizer(params_for(name), train.optimizers[name], fused) for name in names}
    schedulers = {name: build_scheduler(opt, train.optimizers[name].schedule, 1000, 100) for name, opt in optimizers.items()}
    return StepControl(model, optimizers, schedulers, train.grad_clip, train.grad_clip_mode, ctx)


def _itm_batches(size: dict, device: torch.device, generator: torch.Generator) -> tuple[dict, dict]:
    b, n, r = size["batch"], size["length"], size["regions"]

    def text():
        ids = torch.randint(3, 1000, (b, n), generator=generator)
        ids[:, 0], ids[:, -1] = 0, 2
        return ids.to(device), torch.ones(b, n, dtype=torch.long, device=device)

    def regions():
        feats = torch.rand(b, r, size["region_dim"], generator=generator)
        return (feats / feats.pow(2).sum(dim=(1, 2), keepdim=True).sqrt()).to(device)

    align = torch.zeros(b, r)
    align[:, :3] = 1 / 3
    (vg_ids, vg_mask), (sa_ids, sa_mask) = text(), text()
    aux = {"input_ids": vg_ids, "attention_mask": vg_mask, "regions": regions(),
           "relation": torch.randint(0, 2, (b,), generator=generator).to(device), "alignment": align.to(device)}
    main = {"input_ids": sa_ids, "attention_mask": sa_mask, "regions": regions(),
            "labels": torch.randint(0, 3, (b,), generator=generator).to(device)}
    return aux, main


def itm(size: dict, device: torch.device, autocast) -> dict:
    """(name → one alternating step) for the released loop and ours; each step sees 2 × batch examples."""
    from transformers import RobertaConfig, RobertaModel

    from mmbench.papers.itm.method import ITM
    from mmbench.papers.itm.model import ITMNetwork
    from mmbench.recipes.loader import resolve

    parity = _parity("itm")
    parity.ROBERTA = {**parity.ROBERTA, "hidden_size": size["hidden"], "num_hidden_layers": size["layers"],
                      "num_attention_heads": size["heads"], "intermediate_size": size["ffn"], "vocab_size": 1000,
                      "max_position_embeddings": size["length"] + 4}
    model_mod, optim_mod = parity.load_official(OFFICIAL / "NUSTM-ITM")
    torch.manual_seed(0)
    theirs = model_mod.Coarse2Fine(roberta_name="roberta-base", img_feat_dim=size["region_dim"], roi_num=size["regions"]).to(device)
    aux, main = _itm_batches(size, device, torch.Generator().manual_seed(1))

    named = list(theirs.named_parameters())  # the released optimiser setup (as scripts/parity/itm.py)
    skip = ("bias", "LayerNorm.bias", "LayerNorm.weight")
    groups = [{"params": [p for n, p in named if not any(s in n for s in skip)], "weight_decay": 0.01},
              {"params": [p for n, p in named if any(s in n for s in skip)], "weight_decay": 0.0}]
    opt_vg = optim_mod.BertAdam(groups, lr=1e-6, warmup=0.1, t_total=1000)
    opt_sa = optim_mod.BertAdam(groups, lr=1e-5, warmup=0.1, t_total=1000)
    ce = torch.nn.CrossEntropyLoss()

    def released():
        with autocast():
            _, ranking, pred, _, _ = theirs(img_id=None, input_ids=aux["input_ids"], input_mask=aux["attention_mask"],
                                            img_feat=aux["regions"], relation_label=aux["relation"], box_labels=aux["alignment"],
                                            ranking_loss_ratio=1.0, pred_loss_ratio=1.0)
        (ranking + pred).backward()
        opt_vg.step()
        opt_vg.zero_grad()
        with autocast():
            logits = theirs(img_id=None, input_ids=main["input_ids"], input_mask=main["attention_mask"], img_feat=main["regions"],
                            relation_label=None, box_labels=None)[0]
        loss = ce(logits.float(), main["labels"])
        loss.backward()
        opt_sa.step()
        opt_sa.zero_grad()
        return loss.item()

    resolved = resolve("itm/twitter15-official")
    cfg = resolved.model_config.model_copy(update={"region_dim": size["region_dim"], "num_regions": size["regions"],
                                                   "num_heads": size["heads"], "ffn_dim": size["ffn"]})
    encoder = RobertaModel(RobertaConfig(**parity.ROBERTA), add_pooling_layer=False)
    ours = ITMNetwork(encoder, cfg).to(device)
    ours.load_state_dict({parity.our_name(k): v for k, v in theirs.state_dict().items() if "position_ids" not in k}, strict=False)
    method = ITM.__new__(ITM)  # train_step uses only the config
    method.config = cfg
    control = _our_control(ours, lambda name: ours.named_parameters(), resolved.recipe.train, ("aux", "main"), _context(device, autocast))

    def mine():
        return method.train_step(ours, {"aux": aux, "main": main}, control)["loss"]

    theirs.train(), ours.train()
    return {"released": released, "ours": mine, "examples_per_step": 2 * size["batch"], "models": (theirs, ours)}


DTCA_SIZES = {  # paper: roberta-base, ViT-B/16 at 224 (197 tokens), batch 4, 60 tokens (the released main.py defaults)
    "small": dict(hidden=128, layers=2, heads=4, ffn=512, vocab=1000, image=32, patch=8, batch=4, length=60),
    "paper": dict(hidden=768, layers=12, heads=12, ffn=3072, vocab=50265, image=224, patch=16, batch=4, length=60),
}
DTCA_TRAINER = dict(lr=2e-5, weight_decay=0.01, max_grad_norm=1.0)  # released main.py / HF Trainer defaults


def _dtca_words(batch: int, length: int, generator: torch.Generator) -> list[list[int]]:
    """Sub-tokens per word (1-3): row 0 fills the length (the parity inputs need one unpadded row), the others 8-20 words."""
    rows = []
    for b in range(batch):
        words = int(torch.randint(8, 21, (1,), generator=generator))
        counts: list[int] = []
        while (sum(counts) < length - 2) if b == 0 else (len(counts) < words):
            counts.append(int(torch.randint(1, 4, (1,), generator=generator)))
        rows.append(counts)
    return rows


def dtca(size: dict, device: torch.device, autocast) -> dict:
    """(name → one training step) for the released DTCAModel under main.py's Trainer step and ours; batch examples a step."""
    from transformers import RobertaConfig, RobertaModel, ViTConfig, ViTModel

    from mmbench.papers.dtca.method import DTCA
    from mmbench.papers.dtca.model import DTCAModel
    from mmbench.recipes.loader import resolve

    parity, test = _parity("dtca"), _parity("dtca", test=True)
    width = dict(hidden_size=size["hidden"], num_hidden_layers=size["layers"], num_attention_heads=size["heads"],
                 intermediate_size=size["ffn"])
    # dropouts as released: roberta-base 0.1, vit-base-patch16-224-in21k 0.0, the cross-attention's own 0.1
    parity.ROBERTA = {**parity.ROBERTA, **width, "vocab_size": size["vocab"], "max_position_embeddings": 514,
                      "hidden_dropout_prob": 0.1, "attention_probs_dropout_prob": 0.1}
    parity.VIT = {**parity.VIT, **width, "image_size": size["image"], "patch_size": size["patch"]}
    generator = torch.Generator().manual_seed(1)
    parity.BATCH, parity.LENGTH, parity.WORDS = size["batch"], size["length"], _dtca_words(size["batch"], size["length"], generator)
    model_mod, _ = parity.load_official(OFFICIAL / "windforfurture-DTCA")
    torch.manual_seed(0)
    theirs = model_mod.DTCAModel(RobertaConfig(**parity.ROBERTA), ViTConfig(**parity.VIT), text_num_labels=parity.TAGS,
                                 alpha=0.6, beta=0.6).to(device)
    inputs = parity.make_inputs(generator)
    forward = {k: v.to(device) for k, v in inputs.items() if k != "word_ids"}
    optimizer, schedule, _ = parity.trainer_optimizer(theirs, DTCA_TRAINER["lr"], DTCA_TRAINER["weight_decay"], 1000)

    def released():
        return parity.trainer_step(theirs, forward, optimizer, schedule, DTCA_TRAINER["max_grad_norm"], autocast)

    resolved = resolve("dtca/twitter15-official")
    cfg = resolved.model_config.model_copy(update={"head_dim": size["hidden"], "max_length": size["length"]})  # released: d_k = hidden
    text = RobertaModel(RobertaConfig(**parity.ROBERTA), add_pooling_layer=False)
    image = ViTModel(ViTConfig(**parity.VIT), add_pooling_layer=False)
    ours = DTCAModel(cfg, text, image, size["hidden"], prefix_tokens=1).to(device)
    ours.load_state_dict({parity.our_name(k): v for k, v in theirs.state_dict().items() if parity.our_name(k)}, strict=False)
    method = DTCA.__new__(DTCA)  # train_step uses only the config
    method.config, method.truncated = cfg, {}
    batch = {k: v.to(device) for k, v in test.our_batch(inputs, cfg.ot_text_tokens).items()}  # what our collate gives
    control = _our_control(ours, lambda name: method.parameters_for(ours, name), resolved.recipe.train, ("main",),
                           _context(device, autocast))

    def mine():
        return method.train_step(ours, batch, control)["loss"]

    theirs.train(), ours.train()
    return {"released": released, "ours": mine, "examples_per_step": size["batch"], "models": (theirs, ours)}


# paper: the released config.py (batch 64, max_length 202); the widths are hard-coded in the released model
# (ResNet-50 layer-4 map 2048 × 7 × 7, BERT-base 768-d layers 9-12, D = 32); small: shorter texts, half the batch
SPPSCL_SIZES = {"small": dict(batch=32, length=66, side=7), "paper": dict(batch=64, length=202, side=7)}
SPPSCL_TRAIN = dict(lr=1e-4, weight_decay=1e-6, betas=(0.9, 0.999), eps=1e-8, step_size=10, gamma=0.5)  # released config.py, train.py


def sppscl(size: dict, device: torch.device, autocast) -> dict:
    """(name → one two-step iteration) for the released MSA_Model under train.py's loop and ours; batch examples a step.
    Both read the same frozen-encoder outputs (the parity shims: identity ResNet, BERT states as given)."""
    from mmbench.papers.sppscl.features import FrozenExtractor
    from mmbench.papers.sppscl.method import SPPSCL, SPPSCLConfig
    from mmbench.recipes.loader import resolve

    parity, test = _parity("sppscl"), _parity("sppscl", test=True)
    model_mod, loss_mod = parity.load_official(OFFICIAL / "TomorrowJW-SPP-SCL")
    b, n, side = size["batch"], size["length"], size["side"]
    generator = torch.Generator().manual_seed(1)
    image = torch.relu(torch.randn(b, 2048, side, side, generator=generator)).to(device)
    states = (0.5 * torch.randn(b, 4, n, 768, generator=generator)).to(device)
    labels = torch.randint(0, 3, (b,), generator=generator).to(device)
    parity._FakeBert.states = states
    torch.manual_seed(0)
    theirs = model_mod.MSA_Model(types.SimpleNamespace(dropout=0.2, Bert_path="unused")).to(device)
    ids = torch.zeros(b, n, dtype=torch.long, device=device)
    args = (image, ids, torch.zeros_like(ids), torch.ones_like(ids))
    optimizer, _ = parity.released_optimizer(theirs, SPPSCL_TRAIN)  # StepLR steps once per epoch: not within N steps
    losses = parity.released_losses(loss_mod, 0.07)

    def released():
        row = parity.released_iteration(theirs, args, labels, optimizer, losses, autocast, ce_weight=5.0)
        return float(row["ce"] + row["closs_t"] + row["closs_i"])

    resolved = resolve("sppscl/mvsa-single-official")
    method = SPPSCL(resolved.recipe, SPPSCLConfig(**resolved.recipe.model), None, {"label_names": ["positive", "neutral", "negative"]},
                    _context(device, autocast))
    method.uses_text = method.uses_image = True
    method.extractor = FrozenExtractor(test.FakeBert(states), torch.nn.Identity(), method.config.encoder_layers)
    method.image_channels, method.n_labels = 2048, 3
    ours = method.build_model().to(device)
    mine_params = dict(ours.named_parameters())
    with torch.no_grad():
        for name, value in theirs.named_parameters():
            if value.requires_grad:
                target = mine_params[test.our_name(name)]
                target.copy_(test.our_value(name, value).reshape(target.shape))
    word_mask = torch.zeros_like(ids)
    word_mask[:, 1:-1] = 1  # the released slice 1..N of the padded sequence
    batch = {"labels": labels, "input_ids": ids, "attention_mask": torch.ones_like(ids), "word_mask": word_mask, "pixels": image}
    control = _our_control(ours, lambda name: method.parameters_for(ours, name), resolved.recipe.train, ("main",), method.ctx)

    def mine():
        return method.train_step(ours, batch, control)["loss"]

    theirs.train(), ours.train()
    return {"released": released, "ours": mine, "examples_per_step": b, "models": (theirs, ours)}


PAPERS = {"itm": (itm, ITM_SIZES), "dtca": (dtca, DTCA_SIZES), "sppscl": (sppscl, SPPSCL_SIZES)}


def without_dropout(*models: torch.nn.Module) -> None:
    """Every dropout off (modules and the float probabilities attention layers hand to SDPA): then the two sides'
    losses agree step by step, which shows the benchmark times the same training (tests/shared/test_bench_vs_official.py)."""
    for model in models:
        for module in model.modules():
            if isinstance(module, torch.nn.Dropout):
                module.p = 0.0
            if isinstance(getattr(module, "attention_dropout", None), float):
                module.attention_dropout = 0.0


def timed(step, steps: int, device: torch.device) -> tuple[float, float]:
    """(seconds per step over `steps` steps, the last loss)."""
    _sync(device)
    start = time.perf_counter()
    for _ in range(steps):
        loss = step()
    _sync(device)
    return (time.perf_counter() - start) / steps, float(loss)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("paper", choices=sorted(PAPERS))
    parser.add_argument("--size", choices=["small", "paper"], default="small")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--precision", choices=["fp32", "bf16"], default="fp32", help="both sides alike (bf16: autocast, CUDA)")
    parser.add_argument("--steps", type=int, default=10, help="timed steps a block")
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=3, help="alternating timed blocks of --steps steps a side (median)")
    parser.add_argument("--out", help="JSON file (default benchmarks/results/vs-official-<paper>-<device>.json)")
    args = parser.parse_args()
    if not (OFFICIAL).is_dir():
        raise SystemExit(f"{OFFICIAL}: the released code is not here (see the parity scripts)")
    torch.set_num_threads(int(os.environ.get("MMBENCH_THREADS", "1")))
    device = torch.device(args.device)
    if args.precision == "bf16" and device.type != "cuda":
        raise SystemExit("--precision bf16: CUDA only")

    def autocast():
        return torch.autocast("cuda", dtype=torch.bfloat16) if args.precision == "bf16" else nullcontext()

    build, sizes = PAPERS[args.paper]
    size = sizes[args.size]
    steps = build(size, device, autocast)
    result = {"benchmark": "vs-official", "paper": args.paper, "size": args.size, **size, "device": str(device),
              "device_name": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
              "precision": args.precision, "threads": torch.get_num_threads(), "steps": args.steps,
              "repeats": args.repeats}
    names = ("released", "ours")
    for name in names:
        for _ in range(args.warmup):
            steps[name]()
    seconds: dict[str, list[float]] = {name: [] for name in names}
    for _ in range(args.repeats):  # the two sides alternate, so a load change on a shared machine hits both
        for name in names:
            if device.type == "cuda":
                torch.cuda.reset_peak_memory_stats(device)
            took, loss = timed(steps[name], args.steps, device)
            seconds[name].append(took)
            result[f"{name}_final_loss"] = round(loss, 4)
            if device.type == "cuda":
                result[f"{name}_peak_memory_gib"] = round(torch.cuda.max_memory_allocated(device) / 2**30, 2)
    for name in names:
        result[f"{name}_samples_per_s"] = round(steps["examples_per_step"] / statistics.median(seconds[name]), 2)
        result[f"{name}_samples_per_s_each_block"] = [round(steps["examples_per_step"] / t, 2) for t in seconds[name]]
    result["ratio_ours_over_released"] = round(result["ours_samples_per_s"] / result["released_samples_per_s"], 2)
    result["goal_ratio_on_h100"] = 2
    result["date"] = time.strftime("%Y-%m-%d")
    print(json.dumps(result, indent=1))
    from mmbench.paths import bench_results_dir

    out = Path(args.out) if args.out else bench_results_dir() / f"vs-official-{args.paper}-{device.type}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=1) + "\n")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
