"""Cost of CMCS's upper-level step (implicit gradient, eqs 13-14) relative to a plain training step.

A plain step = one lower-level step (forward, scheduled loss eq 9, backward, AdamW). An upper step =
one dev-batch forward/backward + one training forward with a double-backward graph + K Hessian-vector
products + the mixed term. With one upper step per H plain steps, training costs about
1 + ratio/H plain steps per batch (the paper's O(N + (K + N)/H), §3.4).

    .venv/bin/python benchmarks/cmcs_upper_step.py                         # CPU, tiny encoders, synthetic data
    .venv/bin/python benchmarks/cmcs_upper_step.py --device cuda --full    # bert-large + CLIP ViT-L/14 (weights needed)
    ... --neumann-terms 0 1 5 10 --set model.hypergrad_params=heads --json out.json
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import time


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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--recipe", default="cmcs/twitter15")
    parser.add_argument("--full", action="store_true", help="the recipe's real encoders (default: its smoke block)")
    parser.add_argument("--device", default=None, help="cpu or cuda (default: cuda if available)")
    parser.add_argument("--neumann-terms", type=int, nargs="+", default=[0, 2, 5])
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--set", dest="overrides", action="append", default=[], help="recipe override key=value")
    parser.add_argument("--json", default=None, help="results file (default: benchmarks/results/cmcs_upper_step-<device>.json)")
    args = parser.parse_args()
    os.environ.setdefault("MMBENCH_DATA", os.path.join(tempfile.gettempdir(), "mmbench-bench-data"))
    overrides = list(args.overrides)
    if args.full:
        overrides.append("data.synthetic=true")  # real encoders on synthetic images/text (timing only)
    rows = []
    for k in args.neumann_terms:
        row = measure(args.recipe, [*overrides, f"model.neumann_terms={k}"], not args.full, args.device, args.steps, args.warmup)
        rows.append(row)
        print(f"K={k:3d}  plain {row['plain_step_s'] * 1e3:8.1f} ms  upper {row['upper_step_s'] * 1e3:8.1f} ms  "
              f"ratio {row['ratio']:5.2f}  per-batch cost at H=10: {row['amortised_over_H'][10]:.2f}x "
              f"({row['theta_params']:,} θ params, {row['device']})")
    from pathlib import Path

    from mmbench.paths import REPO_ROOT

    out = Path(args.json or REPO_ROOT / "benchmarks" / "results" / f"cmcs_upper_step-{rows[0]['device'].split(':')[0]}.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"args": vars(args), "rows": rows}, indent=2) + "\n")
    print(out)


if __name__ == "__main__":
    main()
