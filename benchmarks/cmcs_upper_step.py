"""Cost of CMCS's upper-level step (implicit gradient, eqs 13-14) relative to a plain training step.

A plain step = one lower-level step (forward, scheduled loss eq 9, backward, AdamW). An upper step =
one dev-batch forward/backward + one training forward with a double-backward graph + K Hessian-vector
products + the mixed term. With one upper step per H plain steps, training costs about
1 + ratio/H plain steps per batch (the paper's O(N + (K + N)/H), §3.4).

    .venv/bin/python benchmarks/cmcs_upper_step.py                         # CPU, tiny encoders, synthetic data
    .venv/bin/python benchmarks/cmcs_upper_step.py --device cuda --full    # bert-large + CLIP ViT-L/14 (weights needed)
    ... --neumann-terms 0 1 5 10 --set model.hypergrad_params=heads --json out.json
    flock /tmp/bigmem.lock nice .venv/bin/python benchmarks/cmcs_upper_step.py --rehearsal [--width-scale 0.25] [--rounds 4]

--rehearsal (issues 14, 27): a random-weight BERT-large-sized text encoder (24 × 1024 × --width-scale,
16 heads) and CLIP-L-sized frozen vision features; --rounds times: an upper step (the first at random
init), then H lower steps, in training mode, then one upper step in eval mode (the fused SDPA kernel).
It prints peak memory, seconds per step, the raw hypergradients, their norm range and the share of
upper steps the engine's clip (train.grad_clip) would cut; K and γ are the recipe's unless
--neumann-terms / --set say otherwise. Full width needs ~17 GB of RAM on CPU.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path


def _sync(device) -> None:
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize(device)


def measure(recipe: str, overrides: list[str], smoke: bool, device: str | None, steps: int, warmup: int) -> dict:
    import torch

    from mmbench.engine.method import StepControl
    from mmbench.engine.optim import build_optimizer, build_scheduler
    from mmbench.engine.trainer import build_session
    from mmbench.recipes.loader import resolve

    # upper_every is set huge so train_step is always a plain lower step; the upper step is timed alone
    resolved = resolve(recipe, [*overrides, "model.upper_every=1000000", "model.trace=false"], smoke=smoke)
    session = build_session(resolved, seed=0, device=device)
    method, model, ctx = session.method, session.model, session.ctx
    train = resolved.recipe.train
    opts = {n: build_optimizer(method.parameters_for(model, n), train.optimizers[n]) for n in method.optimizer_names}
    scheds = {n: build_scheduler(o, train.optimizers[n].schedule, 10_000, 100) for n, o in opts.items()}
    control = StepControl(model, opts, scheds, train.grad_clip, train.grad_clip_mode, ctx)
    batch = method.collate(method.examples["train"][: train.batch_size])
    model.train()

    def timed(fn) -> list[float]:
        out = []
        for i in range(warmup + steps):
            _sync(ctx.device)
            start = time.perf_counter()
            fn()
            _sync(ctx.device)
            if i >= warmup:
                out.append(time.perf_counter() - start)
        return out

    plain = timed(lambda: method.train_step(model, batch, control))
    if ctx.device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(ctx.device)
    upper = timed(lambda: method.upper_step(model, batch, control))
    cfg = resolved.model_config
    result = {
        "device": str(ctx.device), "text_encoder": cfg.text_encoder, "image_encoder": cfg.image_encoder,
        "batch_size": len(batch["index"]), "dev_batch_size": cfg.dev_batch_size, "K": cfg.neumann_terms,
        "hypergrad_params": cfg.hypergrad_params, "theta_params": sum(p.numel() for p in method.hyper_parameters(model)),
        "plain_step_s": statistics.median(plain), "upper_step_s": statistics.median(upper),
    }
    result["ratio"] = result["upper_step_s"] / result["plain_step_s"]
    result["amortised_over_H"] = {h: round(1 + result["ratio"] / h, 3) for h in (1, 5, 10, 20)}
    if ctx.device.type == "cuda":
        result["upper_peak_mem_gib"] = torch.cuda.max_memory_allocated(ctx.device) / 2**30
    return result


def _frozen_vision_cls():
    import torch
    from types import SimpleNamespace

    class Passthrough(torch.nn.Module):
        def forward(self, pixel_values):
            return SimpleNamespace(pooler_output=pixel_values)

    class FrozenVision(torch.nn.Module):
        """A frozen CLIP-L vision tower whose "pixels" are its 1024-d pooled features (no weights needed)."""

        def __init__(self, width: int = 1024):
            super().__init__()
            self.config = SimpleNamespace(vision_config=SimpleNamespace(hidden_size=width))
            self.vision_model = Passthrough()

    return FrozenVision


def rehearsal(layers: int, batch: int, seq: int, k: int | None, device: str | None, width_scale: float = 1.0,
              rounds: int = 4, overrides: list[str] | None = None) -> dict:
    import resource

    import torch
    from transformers import BertConfig, BertModel

    from mmbench.engine.method import RunContext, StepControl
    from mmbench.engine.optim import build_optimizer, build_scheduler
    from mmbench.engine.runtime import World
    from mmbench.papers.cmcs.method import CMCS
    from mmbench.papers.cmcs.model import CMCSModel
    from mmbench.recipes.loader import resolve

    FrozenVision = _frozen_vision_cls()
    dev = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    torch.manual_seed(0)
    # a constant η1: the upper steps see the recipe's peak learning rate, not the warm-up's near-zero γ = η1(t)
    resolved = resolve("cmcs/twitter15", ["model.trace=false", "train.optimizers.main.schedule.name=constant",
                                          *([f"model.neumann_terms={k}"] if k is not None else []),
                                          *(overrides or [])])
    cfg, train = resolved.model_config, resolved.recipe.train
    width = int(round(1024 * width_scale / 16)) * 16
    bert = BertModel(BertConfig(num_hidden_layers=layers, hidden_size=width, num_attention_heads=16, intermediate_size=4 * width))
    vision = FrozenVision(width)
    model = CMCSModel(bert, vision, 3, cfg.dropout, None, False, cfg.init_alpha, cfg.init_beta).to(dev)
    ctx = RunContext(device=dev, autocast_dtype=None, world=World(), seed=0)
    method = CMCS(resolved.recipe, cfg, data=None, manifest={}, ctx=ctx)
    method._batch_in_epoch, method._trace_started = 0, True

    def make_batch():
        ids = torch.randint(1000, 30000, (batch, seq), device=dev)
        labels = torch.randint(0, 3, (batch,), device=dev)
        return {"input_ids": ids, "attention_mask": torch.ones_like(ids), "token_type_ids": torch.zeros_like(ids),
                "index": list(range(batch)), "labels": labels, "pixel_values": torch.nn.functional.layer_norm(
                    torch.randn(batch, width, device=dev), (width,)), "image_targets": torch.nn.functional.one_hot(labels, 3).float()}

    method._dev_batch = lambda step: make_batch()
    opts = {n: build_optimizer(method.parameters_for(model, n), train.optimizers[n]) for n in method.optimizer_names}
    scheds = {n: build_scheduler(o, train.optimizers[n].schedule, 1000, 100) for n, o in opts.items()}
    control = StepControl(model, opts, scheds, train.grad_clip, train.grad_clip_mode, ctx)
    result = {"device": str(dev), "layers": layers, "width": width, "batch": batch, "seq": seq, "K": cfg.neumann_terms,
              "H": cfg.upper_every, "neumann_scaling": cfg.neumann_scaling, "neumann_damping": cfg.neumann_damping,
              "eta1": train.optimizers["main"].lr, "grad_clip": train.grad_clip,
              "theta_params": sum(p.numel() for p in method.hyper_parameters(model)), "upper": []}
    finite = True
    for r in range(rounds + 1):
        mode = "train" if r < rounds else "eval"
        model.train(mode == "train")
        _sync(dev)
        start = time.perf_counter()
        control.global_step = r * cfg.upper_every
        upper = method.upper_step(model, make_batch(), control)  # round 0: at random init
        _sync(dev)
        seconds, start = time.perf_counter() - start, time.perf_counter()
        lower = {}
        if mode == "train":
            model.train()
            control.global_step = 0  # (0 + 1) % H ≠ 0: train_step takes no upper step of its own
            for _ in range(cfg.upper_every if r < rounds - 1 else 0):  # the H lower steps before the next upper one
                lower = method.train_step(model, make_batch(), control)
        _sync(dev)
        finite &= all(torch.isfinite(p).all().item() for p in model.parameters()) and all(math.isfinite(v) for v in upper.values())
        result["upper"].append({"round": r, "mode": mode, "upper_s": seconds, "lower_s_total": time.perf_counter() - start,
                                **{key: upper.get(key) for key in ("hypergrad_alpha", "hypergrad_beta", "hypergrad_norm",
                                                                   "hypergrad_clipped", "neumann_gamma", "hessian_lambda_max")},
                                "phi_t": lower.get("text_weight"), "phi_v": lower.get("image_weight")})
        print(json.dumps(result["upper"][-1]), flush=True)
    norms = [u["hypergrad_norm"] for u in result["upper"]]
    result.update(clipped_share=sum(u["hypergrad_clipped"] for u in result["upper"]) / len(norms),
                  hypergrad_norm_range=[min(norms), max(norms)], all_finite=finite)
    if dev.type == "cuda":
        result["peak_mem_gib"] = torch.cuda.max_memory_allocated(dev) / 2**30
    else:
        result["peak_rss_gib"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--recipe", default="cmcs/twitter15")
    parser.add_argument("--full", action="store_true", help="the recipe's real encoders (default: its smoke block)")
    parser.add_argument("--device", default=None, help="cpu or cuda (default: cuda if available)")
    parser.add_argument("--neumann-terms", type=int, nargs="+", default=None, help="K values (default: the recipe's)")
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--set", dest="overrides", action="append", default=[], help="recipe override key=value")
    parser.add_argument("--json", default=None, help="results file (default: benchmarks/results/cmcs_upper_step-<device>.json)")
    parser.add_argument("--rehearsal", action="store_true", help="BERT-large-sized random text encoder + CLIP-L-sized features")
    parser.add_argument("--layers", type=int, default=24)
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--seq", type=int, default=64)
    parser.add_argument("--width-scale", type=float, default=1.0, help="--rehearsal: BERT/CLIP width × this")
    parser.add_argument("--rounds", type=int, default=4, help="--rehearsal: upper steps in training mode (H lower steps apart)")
    args = parser.parse_args()
    if args.rehearsal:
        k = args.neumann_terms[-1] if args.neumann_terms else None
        result = rehearsal(args.layers, args.batch, args.seq, k, args.device, args.width_scale, args.rounds, args.overrides)
        result["command"] = "python benchmarks/cmcs_upper_step.py " + " ".join(sys.argv[1:])
        print(json.dumps({k_: v for k_, v in result.items() if k_ != "upper"}, indent=2))
        if args.json:
            Path(args.json).write_text(json.dumps(result, indent=2) + "\n")
        return
    os.environ.setdefault("MMBENCH_DATA", os.path.join(tempfile.gettempdir(), "mmbench-bench-data"))
    overrides = list(args.overrides)
    if args.full:
        overrides.append("data.synthetic=true")  # real encoders on synthetic images/text (timing only)
    rows = []
    for k in args.neumann_terms or [None]:
        row = measure(args.recipe, [*overrides, *([f"model.neumann_terms={k}"] if k is not None else [])], not args.full,
                      args.device, args.steps, args.warmup)
        rows.append(row)
        print(f"K={row['K']:3d}  plain {row['plain_step_s'] * 1e3:8.1f} ms  upper {row['upper_step_s'] * 1e3:8.1f} ms  "
              f"ratio {row['ratio']:5.2f}  per-batch cost at H=10: {row['amortised_over_H'][10]:.2f}x "
              f"({row['theta_params']:,} θ params, {row['device']})")
    from mmbench.paths import bench_results_dir

    out = Path(args.json or bench_results_dir() / f"cmcs_upper_step-{rows[0]['device'].split(':')[0]}.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"args": vars(args), "rows": rows}, indent=2) + "\n")
    print(out)


if __name__ == "__main__":
    main()
