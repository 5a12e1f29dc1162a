"""How strong DTCA's token-patch alignment is next to the CRF loss, at init and after one epoch
(issue 28 item 2): ‖∇θ L_WD‖ / ‖∇θ L_CM‖ and β·‖∇θ L_WD‖ / ‖∇θ L_CM‖ over the text encoder's, the
image encoder's and both encoders' parameters θ (what the two losses share), plus L_CM, L_TO, L_WD.

    .venv/bin/python benchmarks/dtca_alignment_strength.py [--recipe dtca/twitter15] [--seed 0] [--subset N]
    mmbench bench dtca_alignment_strength
Writes benchmarks/results/dtca_alignment_strength-cpu.json.

The recipe's paper variant as it ships (eq 15 read as `unit`, α, β, AdamW lr 2e-5 with its
linear-warmup schedule over the recipe's 20-epoch horizon, weight decay, clipping at 1.0, batch 4,
60 sub-tokens) at paper widths: roberta-base and ViT-base/16-in21k architectures at random init,
built offline from mmbench.rehearsal's architecture configs (as `mmbench rehearse` does, width 1.0).
Data: the smoke synthetic Twitter-2015 (mmbench.data.synthetic) prepared by the normal dataset code
into a throw-away data root, read through the method's own setup/collate (200 training sentences);
the offline tokenizer splits words into characters (mean 33 sub-tokens a sentence, at most 57, under the
60 limit). One epoch of the method's train_step, 50 steps (`--subset N` keeps the first N rows of
each split when an epoch is too slow); with warm-up over 10% of 20 epochs the whole epoch is warm-up
(lr rises to 1e-5). Gradients are measured in eval mode (no dropout) on a fixed set: the first
`--measure-batches` × 4 training sentences (also trained on during the epoch), as the gradient of the
mean of each term over those batches (per-batch ranges too). The synthetic task is easy (L_CM on
the fixed batches falls from ≈ 19 to ≈ 2 in the epoch) and the ratio grows mostly because ∇L_CM
shrinks: the after-epoch figures describe random-init encoders on this data, not pretrained ones on
real tweets.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path
from unittest import mock

import torch

ROOT = Path(__file__).resolve().parents[1]


def _cpu() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def measure(model, batches, beta: float) -> dict:
    from mmbench.papers.dtca.gradient_scale import L_CM, L_TO, L_WD, ratios, term_gradient_norms

    groups = {"text": list(model.text_encoder.parameters()), "image": list(model.image_encoder.parameters())}
    model.eval()
    started = time.perf_counter()
    measured = term_gradient_norms(model, batches, groups)
    unweighted = ratios(measured["norms"])
    per_batch = [ratios(row) for row in measured["per_batch"]]
    rename = {"text": "text", "image": "image", "all": "both"}
    return {
        "losses": {"L_CM": measured["losses"][L_CM], "L_TO": measured["losses"][L_TO], "L_WD": measured["losses"][L_WD],
                   "total": measured["losses"]["loss"]},
        "grad_norm": {term: {rename[g]: v for g, v in norms.items()} for term, norms in
                      (("L_CM", measured["norms"][L_CM]), ("L_WD", measured["norms"][L_WD]))},
        "ratio_wd_over_cm": {rename[g]: v for g, v in unweighted.items()},
        "ratio_beta_wd_over_cm": {rename[g]: beta * v for g, v in unweighted.items()},
        "per_batch_ratio_wd_over_cm": {rename[g]: {"min": min(r[g] for r in per_batch), "max": max(r[g] for r in per_batch)}
                                       for g in unweighted},
        "seconds": round(time.perf_counter() - started, 1),
    }


def train_one_epoch(session, resolved) -> dict:
    from mmbench.engine.method import StepControl
    from mmbench.engine.optim import build_optimizer, build_scheduler

    method, model, ctx = session.method, session.model, session.ctx
    train = resolved.recipe.train
    steps_per_epoch = method.steps_per_epoch()
    # as engine.trainer: the schedule's horizon is the recipe's train.epochs × steps per epoch
    optimizers = {name: build_optimizer(method.parameters_for(model, name), train.optimizers[name])
                  for name in method.optimizer_names}
    schedulers = {name: build_scheduler(opt, train.optimizers[name].schedule, steps_per_epoch * train.epochs, steps_per_epoch)
                  for name, opt in optimizers.items()}
    control = StepControl(model, optimizers, schedulers, train.grad_clip, train.grad_clip_mode, ctx)
    method.on_epoch_start(0)
    model.train()
    logs: dict[str, list[float]] = {}
    started, step_seconds = time.perf_counter(), []
    for step, batch in enumerate(method.train_batches(0)):
        t0 = time.perf_counter()
        control.global_step = step
        for key, value in method.train_step(model, batch, control).items():
            logs.setdefault(key, []).append(value)
        step_seconds.append(time.perf_counter() - t0)
        if step % 5 == 0:
            print(f"  step {step + 1}/{steps_per_epoch}: " + " ".join(f"{k}={v[-1]:.4f}" for k, v in logs.items())
                  + f" ({step_seconds[-1]:.1f} s)", flush=True)
    lr = optimizers["main"].param_groups[0]["lr"]
    return {"steps": len(step_seconds), "steps_per_epoch": steps_per_epoch, "horizon_steps": steps_per_epoch * train.epochs,
            "lr_at_end": lr, "mean_logs": {k: statistics.fmean(v) for k, v in logs.items()},
            "first_logs": {k: v[0] for k, v in logs.items()}, "last_logs": {k: v[-1] for k, v in logs.items()},
            "seconds": round(time.perf_counter() - started, 1), "seconds_per_step": round(statistics.fmean(step_seconds), 2)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--recipe", default="dtca/twitter15")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--measure-batches", type=int, default=4)
    parser.add_argument("--subset", type=int, default=None, help="keep the first N rows of each split (a shorter epoch)")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "dtca_alignment_strength-cpu.json")
    args = parser.parse_args()
    sys.path.insert(0, str(ROOT))
    os.environ["MMBENCH_THREADS"] = str(args.threads)  # build_session reads it
    torch.set_num_threads(args.threads)

    from mmbench.engine.trainer import build_session
    from mmbench.recipes.loader import resolve
    from mmbench.rehearsal.weights import RandomWeights

    overrides = ["data.synthetic=true", *([f"data.subset={args.subset}"] if args.subset else [])]
    resolved = resolve(args.recipe, overrides)
    cfg, train = resolved.model_config, resolved.recipe.train
    result = {"benchmark": "dtca_alignment_strength", "command": "mmbench bench dtca_alignment_strength " + " ".join(sys.argv[1:]),
              "date": time.strftime("%Y-%m-%d"), "device": "cpu", "cpu": _cpu(), "cpus": os.cpu_count(),
              "threads": torch.get_num_threads(), "torch": torch.__version__,
              "load_average_at_start": [round(x, 2) for x in os.getloadavg()],
              "recipe": args.recipe, "overrides": overrides, "seed": args.seed,
              "config": {"ot_cost": cfg.ot_cost, "ot_solver": cfg.ot_solver, "alpha": cfg.alpha, "beta": cfg.beta,
                         "dropout": cfg.dropout, "max_length": cfg.max_length, "text_encoder": cfg.text_encoder,
                         "image_encoder": cfg.image_encoder, "init": "random (mmbench.rehearsal architectures, width 1.0)",
                         "batch_size": train.batch_size, "epochs_horizon": train.epochs, "grad_clip": train.grad_clip,
                         "optimizer": train.optimizers["main"].model_dump(), "precision": "fp32 (auto on CPU)"}}
    started, cpu_started = time.perf_counter(), time.process_time()
    with tempfile.TemporaryDirectory(prefix="mmbench-dtca-strength-") as tmp:
        root = Path(tmp)
        # a throw-away data root, as `mmbench rehearse`: nothing enters the real data or runs folders
        with mock.patch.dict(os.environ, {"MMBENCH_DATA": str(root / "data"), "MMBENCH_RUNS": str(root / "runs")}):
            weights = RandomWeights(root / "models", 1.0)
            with weights.active():
                session = build_session(resolved, args.seed, "cpu")
            build_seconds = time.perf_counter() - started
            method, model = session.method, session.model
            examples = method.examples["train"]
            size = train.batch_size
            fixed = [method.collate(examples[i * size : (i + 1) * size]) for i in range(args.measure_batches)]
            lengths = [len(e["input_ids"]) for e in examples]
            result["sizes"] = {
                "train_sentences": len(examples), "train_rows": len(method.data["train"]),
                "sub_tokens_per_sentence": {"mean": round(statistics.fmean(lengths), 1), "max": max(lengths),
                                            "at_max_length": sum(n == cfg.max_length for n in lengths)},
                "image_size": method.image.image_size,
                "patches": (method.image.image_size // model.image_encoder.config.patch_size) ** 2,
                "parameters": {"text_encoder": sum(p.numel() for p in model.text_encoder.parameters()),
                               "image_encoder": sum(p.numel() for p in model.image_encoder.parameters()),
                               "total": sum(p.numel() for p in model.parameters())},
                "measure_batches": args.measure_batches, "measure_examples": args.measure_batches * size,
                "encoders_built": weights.built}
            print(json.dumps(result["sizes"]), flush=True)
            result["init"] = measure(model, fixed, cfg.beta)
            print("init:", json.dumps(result["init"]), flush=True)
            result["training"] = train_one_epoch(session, resolved)
            result["after_one_epoch"] = measure(model, fixed, cfg.beta)
            print("after one epoch:", json.dumps(result["after_one_epoch"]), flush=True)
    result["seconds"] = {"build": round(build_seconds, 1), "measure_init": result["init"]["seconds"],
                         "train_epoch": result["training"]["seconds"], "measure_after": result["after_one_epoch"]["seconds"],
                         "total": round(time.perf_counter() - started, 1),
                         "process_cpu_total": round(time.process_time() - cpu_started, 1)}  # wall > CPU: a shared machine
    result["load_average_at_end"] = [round(x, 2) for x in os.getloadavg()]
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=1) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
