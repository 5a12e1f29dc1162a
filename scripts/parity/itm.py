"""Parity of ITM's `variant: official` with the released code (NUSTM/ITM), written as a fixture.

Runs the authors' `model.py` (Coarse2Fine), `modeling_utils.py` and `optimization.py` (BertAdam)
from ../shared/official/NUSTM-ITM, unmodified, on a tiny random configuration, and records:
  - the inputs (one ITM-VG batch, one Twitter batch) and the initial weights, renamed to ours;
  - the forward outputs on both batches: sentiment logits, relevance logits, D (softmax of the
    head-averaged attention logits) and each loss (relevance CE, KL, sentiment CE);
  - three iterations of the released training loop (aux step on the VG batch, then main step on
    the Twitter batch; lr = base·warmup_linear(step/t_total) set by the loop and again inside
    BertAdam; per-tensor clipping), with the losses of each step and every weight afterwards.
`tests/papers/itm/test_parity_itm.py` rebuilds our official variant from the fixture and compares.

Shims (the released files stay untouched): `from_pretrained('roberta-base')` is replaced by a tiny
random RoBERTa (no download); dropout is set to 0 (it is random, not part of the computation); the
weights are redrawn larger than their init, so that D and the logits are far from uniform.
Everything runs in float64 so the comparison sees the algorithm, not float32 rounding.

    .venv/bin/python scripts/parity/itm.py [--official DIR] [--out tests/fixtures/parity/itm.json]
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

# tiny sizes: hidden 16, 2 heads, 10 proposals of 12-d features, sequences of 9 tokens
ROBERTA = dict(vocab_size=50, hidden_size=16, num_hidden_layers=1, num_attention_heads=2, intermediate_size=32,
               max_position_embeddings=24, type_vocab_size=1, pad_token_id=1, bos_token_id=0, eos_token_id=2,
               layer_norm_eps=1e-5, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0, hidden_act="gelu")
REGION_DIM, NUM_REGIONS, BATCH, LENGTH = 12, 10, 4, 9
TRAIN = dict(vg_lr=2e-2, sa_lr=3e-2, warmup=0.3, t_total=5, steps=3, ranking_ratio=0.5, pred_ratio=1.0)

# released module names → ours (layers: BertLayer / BertCrossAttentionLayer → TransformerLayer)
BLOCKS = {"img_self_attn.layer.0.": "image_layers.0.", "v2t.layer.0.": "coarse.", "t2v.layer.0.": "fine.",
          "senti_selfattn.layer.0.": "fusion."}
INSIDE = {"attention.self.query.": "attention.query.", "attention.self.key.": "attention.key.",
          "attention.self.value.": "attention.value.", "attention.output.dense.": "attn_out.",
          "attention.output.LayerNorm.": "attn_norm.", "intermediate.dense.": "ffn_in.",
          "output.dense.": "ffn_out.", "output.LayerNorm.": "ffn_norm."}
HEADS = {"roberta.pooler.dense.": "query_pooler.", "roberta.": "text_encoder.", "feat_linear.": "region_proj.",
         "gather.": "relevance_region.", "pred.": "relevance_pair.", "first_pooler.dense.": "head_pooler.",
         "senti_detc.": "classifier."}


def our_name(name: str) -> str:
    for theirs, ours in BLOCKS.items():
        if name.startswith(theirs):
            rest = name[len(theirs):]
            for a, b in INSIDE.items():
                if rest.startswith(a):
                    return ours + b + rest[len(a):]
            raise KeyError(name)
    for theirs, ours in HEADS.items():
        if name.startswith(theirs):
            return ours + name[len(theirs):]
    raise KeyError(name)


def load_official(folder: Path):
    """Import the released modules under private names, with the from_pretrained shim."""
    from transformers import RobertaConfig, RobertaModel

    from _fixture import load_module

    def load(name: str, file: str):
        return load_module(name, folder / file)

    load("modeling_utils", "modeling_utils.py")  # model.py imports it by this name
    model_mod = load("itm_official_model", "model.py")
    optim_mod = load("itm_official_optimization", "optimization.py")

    class TinyConfig:  # shim: AutoConfig.from_pretrained('roberta-base') → the tiny config
        @staticmethod
        def from_pretrained(_name):
            return RobertaConfig(**ROBERTA)

    class TinyRoberta:  # shim: RobertaModel.from_pretrained('roberta-base') → random init (with pooler)
        @staticmethod
        def from_pretrained(_name):
            return RobertaModel(RobertaConfig(**ROBERTA))

    model_mod.AutoConfig, model_mod.RobertaModel = TinyConfig, TinyRoberta
    return model_mod, optim_mod


def make_inputs(generator: torch.Generator) -> dict:
    def text():
        ids = torch.randint(3, ROBERTA["vocab_size"], (BATCH, LENGTH), generator=generator)
        ids[:, 0] = 0  # <s>
        mask = torch.ones(BATCH, LENGTH, dtype=torch.long)
        for row, pad in enumerate((0, 2, 3, 1)):
            if pad:
                ids[row, -pad:], mask[row, -pad:] = 1, 0
        ids[torch.arange(BATCH), mask.sum(1) - 1] = 2  # </s>
        return ids, mask

    def regions():
        feats = torch.rand(BATCH, NUM_REGIONS, REGION_DIM, generator=generator) * 5
        return feats / feats.pow(2).sum(dim=(1, 2), keepdim=True).sqrt()  # released DataProcessor's normalisation

    vg_ids, vg_mask = text()
    sa_ids, sa_mask = text()
    align = torch.zeros(BATCH, NUM_REGIONS)
    align[0, [1, 4]] = torch.tensor([0.6, 0.4])  # related with IoU soft labels
    align[2, 7] = 1.0
    return {"vg_ids": vg_ids, "vg_mask": vg_mask, "vg_regions": regions(), "vg_relation": torch.tensor([1, 0, 1, 1]),
            "vg_alignment": align,  # row 3: related without a kept proposal (all-zero target)
            "sa_ids": sa_ids, "sa_mask": sa_mask, "sa_regions": regions(), "sa_labels": torch.tensor([0, 2, 1, 2])}


def outputs(out, prefix: str) -> dict:
    senti, ranking, pred, rel, attn = out
    return {f"{prefix}_logits": senti.detach(), f"{prefix}_relevance_logits": rel.detach(),
            f"{prefix}_alignment": torch.softmax(attn.squeeze(1), dim=1).detach(),
            **({f"{prefix}_loss_att": ranking.detach(), f"{prefix}_loss_re": pred.detach()} if prefix == "vg" else {})}


def run_official(folder: Path) -> dict:
    torch.set_default_dtype(torch.float64)
    model_mod, optim_mod = load_official(folder)
    torch.manual_seed(0)
    model = model_mod.Coarse2Fine(roberta_name="roberta-base", img_feat_dim=REGION_DIM, roi_num=NUM_REGIONS)
    model.dropout1.p = model.dropout2.p = 0.0  # shim: the hard-coded 0.3 dropouts off (randomness only)
    with torch.no_grad():  # larger random weights than the N(0, 0.02) init, so attention is far from
        for name, p in model.named_parameters():  # uniform and every switch shows in the outputs
            if "LayerNorm" in name:
                p.copy_(1.0 + 0.1 * torch.randn_like(p)) if name.endswith("weight") else p.normal_(0.0, 0.1)
            else:
                p.normal_(0.0, 0.4 if p.dim() > 1 else 0.1)
    weights = {our_name(n): t.detach().clone() for n, t in model.state_dict().items()
               if "position_ids" not in n}
    inputs = make_inputs(torch.Generator().manual_seed(1))
    ce = torch.nn.CrossEntropyLoss()

    def vg_forward():
        return model(img_id=None, input_ids=inputs["vg_ids"], input_mask=inputs["vg_mask"], img_feat=inputs["vg_regions"],
                     relation_label=inputs["vg_relation"], box_labels=inputs["vg_alignment"],
                     ranking_loss_ratio=TRAIN["ranking_ratio"], pred_loss_ratio=TRAIN["pred_ratio"])

    def sa_forward():
        return model(img_id=None, input_ids=inputs["sa_ids"], input_mask=inputs["sa_mask"], img_feat=inputs["sa_regions"],
                     relation_label=None, box_labels=None)

    result = {}
    model.train()  # dropout is 0, so train and eval compute the same
    with torch.no_grad():
        vg, sa = vg_forward(), sa_forward()
    result.update(outputs(vg, "vg"))
    result.update(outputs(sa, "sa"))
    result["vg_loss_att"] = result["vg_loss_att"] / TRAIN["ranking_ratio"]  # forward returns ratio·loss
    result["vg_loss_re"] = result["vg_loss_re"] / TRAIN["pred_ratio"]
    result["sa_loss_sentiment"] = ce(sa[0], inputs["sa_labels"]).detach()

    # the released optimiser setup: two BertAdam over all parameters, no decay on bias/LayerNorm
    named = list(model.named_parameters())
    skip = ("bias", "LayerNorm.bias", "LayerNorm.weight")
    groups = [{"params": [p for n, p in named if not any(s in n for s in skip)], "weight_decay": 0.01},
              {"params": [p for n, p in named if any(s in n for s in skip)], "weight_decay": 0.0}]
    opt_vg = optim_mod.BertAdam(groups, lr=TRAIN["vg_lr"], warmup=TRAIN["warmup"], t_total=TRAIN["t_total"])
    opt_sa = optim_mod.BertAdam(groups, lr=TRAIN["sa_lr"], warmup=TRAIN["warmup"], t_total=TRAIN["t_total"])
    step_losses = []
    for step in range(TRAIN["steps"]):  # the released loop: VG step, then SA step, same global step
        _, ranking, pred, _, _ = vg_forward()
        loss_vg = ranking + pred
        loss_vg.backward()
        for group in opt_vg.param_groups:
            group["lr"] = TRAIN["vg_lr"] * optim_mod.warmup_linear(step / TRAIN["t_total"], TRAIN["warmup"])
        opt_vg.step()
        opt_vg.zero_grad()
        loss_sa = ce(sa_forward()[0], inputs["sa_labels"])
        loss_sa.backward()
        for group in opt_sa.param_groups:
            group["lr"] = TRAIN["sa_lr"] * optim_mod.warmup_linear(step / TRAIN["t_total"], TRAIN["warmup"])
        opt_sa.step()
        opt_sa.zero_grad()
        step_losses.append([loss_vg.item(), ranking.item() / TRAIN["ranking_ratio"], pred.item(), loss_sa.item()])
    result["step_losses"] = torch.tensor(step_losses)
    trained = {our_name(n): t.detach().clone() for n, t in model.state_dict().items() if "position_ids" not in n}
    return {"roberta": ROBERTA, "sizes": {"region_dim": REGION_DIM, "num_regions": NUM_REGIONS}, "train": TRAIN,
            "inputs": inputs, "weights": weights, "expected": result, "trained": trained}


def main() -> None:
    from _fixture import fixture_main

    fixture_main(__doc__, "itm", "NUSTM-ITM", run_official)


if __name__ == "__main__":
    main()
