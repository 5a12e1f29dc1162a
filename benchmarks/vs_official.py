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

Papers: itm (NUSTM/ITM: Coarse2Fine + BertAdam, the alternating VG/Twitter step). DTCA and SPP-SCL
follow the same pattern once their parity scripts expose the released model at a chosen size.

    .venv/bin/python benchmarks/vs_official.py itm [--size small|paper] [--device cpu|cuda] [--steps 5]
    mmbench bench vs-official itm
Prints one JSON object and writes benchmarks/results/vs-official-<paper>-<device>.json.
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import sys
import time
from contextlib import nullcontext
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
OFFICIAL = ROOT.parent / "shared" / "official"

ITM_SIZES = {  # paper: roberta-base, 100 Faster R-CNN regions of 2048-d, batch 32, 128 tokens (the released defaults)
    "small": dict(hidden=128, layers=2, heads=4, ffn=512, region_dim=256, regions=100, batch=8, length=32),
    "paper": dict(hidden=768, layers=12, heads=12, ffn=3072, region_dim=2048, regions=100, batch=32, length=128),
}


def _parity(paper: str):
    sys.path.insert(0, str(ROOT / "scripts" / "parity"))
    sys.path.insert(0, str(ROOT))
    return importlib.import_module(paper)


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

    from mmbench.engine.method import RunContext, StepControl
    from mmbench.engine.optim import build_optimizer, build_scheduler
    from mmbench.engine.runtime import World
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
    train = resolved.recipe.train
    optimizers = {name: build_optimizer(ours.named_parameters(), train.optimizers[name], device.type == "cuda" and train.fused_optimizer)
                  for name in ("aux", "main")}
    schedulers = {name: build_scheduler(opt, train.optimizers[name].schedule, 1000, 100) for name, opt in optimizers.items()}
    ctx = RunContext(device=device, autocast_dtype=None, world=World(), seed=0)
    ctx.autocast = autocast
    control = StepControl(ours, optimizers, schedulers, train.grad_clip, train.grad_clip_mode, ctx)

    def mine():
        return method.train_step(ours, {"aux": aux, "main": main}, control)["loss"]

    theirs.train(), ours.train()
    return {"released": released, "ours": mine, "examples_per_step": 2 * size["batch"]}


PAPERS = {"itm": (itm, ITM_SIZES)}


def timed(step, steps: int, warmup: int, device: torch.device) -> tuple[float, float]:
    for _ in range(warmup):
        step()
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
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--warmup", type=int, default=2)
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
              "precision": args.precision, "threads": torch.get_num_threads(), "steps": args.steps}
    for name in ("released", "ours"):
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)
        seconds, loss = timed(steps[name], args.steps, args.warmup, device)
        result[f"{name}_samples_per_s"] = round(steps["examples_per_step"] / seconds, 2)
        result[f"{name}_final_loss"] = round(loss, 4)
        if device.type == "cuda":
            result[f"{name}_peak_memory_gib"] = round(torch.cuda.max_memory_allocated(device) / 2**30, 2)
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
