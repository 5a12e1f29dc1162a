"""One rehearsal: a recipe run through the engine's own session, optimisers, schedules, clipping and
autocast, with random-weight encoders and real-shape synthetic data, for a few optimiser steps and
one evaluation batch. Nothing here knows a paper: the method's `train_step` drives its optimisers
(alternating, bi-level, conditional second steps) and the rehearsal watches through StepControl.

What is measured from outside the method, per training batch:
- data: producing the batch (the method's train_batches: collate, image decoding, feature reads);
- backward: time inside `step.backward(loss)`;
- optimizer: time inside `step.optimizer_step(...)` (clipping, the update, the schedule);
- forward: the rest of `train_step` (forward passes, losses, and any autograd.grad a method calls
  itself, e.g. a hypergradient).
CUDA is synchronised at each boundary. Memory: peak allocated CUDA memory, or on CPU the process's
peak resident set size (which includes building the models and preparing the data).

Steady state: the first `warmup` training batches (CUDA context, cuDNN/kernel selection, compile,
allocator growth) are run but left out of `steady_state`; its samples/s is what the epoch and plan
estimates (mmbench.rehearsal.estimate) use. Loss terms: every logged value whose name is a loss
(LOSS_TERM) must be non-zero on at least one batch; a term that stays exactly 0 (a branch that never
fires, a weight that zeroes it, a mask that hides every example) fails the rehearsal.
"""

from __future__ import annotations

import math
import os
import re
import resource
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

import torch

from mmbench.engine.checkpoint import disk_per_run
from mmbench.engine.method import StepControl
from mmbench.errors import MmbenchError

# examples kept per split: at least a few whole groups for methods that group examples (5 captions
# per image, several targets per tweet), else batch × steps
MIN_EXAMPLES = 10
# logged names that are loss terms: "loss", "*_loss", "loss_*", "ce", "l_*" (e.g. SPP-SCL's l_clm);
# other logs (learning rates, weights, counts, hypergradients) may legitimately be 0
LOSS_TERM = re.compile(r"(^|_)loss($|_)|^ce$|^l_")
MEASURED = ("data = producing a batch; backward = inside step.backward; optimizer = inside step.optimizer_step "
            "(clip + update + schedule); forward = the rest of train_step (incl. any autograd.grad a method calls)")


class WatchedStep(StepControl):
    """StepControl that times and checks what passes through it."""

    def __init__(self, *args, sync, **kwargs):
        super().__init__(*args, **kwargs)
        self.sync = sync
        self.seconds = {"backward": 0.0, "optimizer": 0.0}
        self.stepped: dict[str, int] = {}
        self.loss_finite = True
        self.grad_finite = True

    def backward(self, loss: torch.Tensor) -> None:
        self.loss_finite &= bool(torch.isfinite(loss.detach()).all())
        self.sync()
        start = time.perf_counter()
        super().backward(loss)
        self.sync()
        self.seconds["backward"] += time.perf_counter() - start

    def optimizer_step(self, name: str = "main", parameters=None, advance_schedule: bool = True) -> None:
        optimizer = self.optimizers[name]
        params = parameters if parameters is not None else [p for g in optimizer.param_groups for p in g["params"]]
        grads = [p.grad.detach() for p in params if p.grad is not None]
        if grads:
            self.grad_finite &= bool(torch.stack([torch.isfinite(g).all() for g in grads]).all())
        self.sync()
        start = time.perf_counter()
        super().optimizer_step(name, parameters, advance_schedule)
        self.sync()
        self.seconds["optimizer"] += time.perf_counter() - start
        self.stepped[name] = self.stepped.get(name, 0) + 1


class LossTerms:
    """Which logged loss terms (LOSS_TERM) were non-zero on at least one batch."""

    def __init__(self):
        self.nonzero: dict[str, bool] = {}

    def update(self, logs: dict[str, float]) -> None:
        for key, value in logs.items():
            if LOSS_TERM.search(key):
                self.nonzero[key] = self.nonzero.get(key, False) or value != 0.0

    def zero(self) -> list[str]:
        return sorted(k for k, nonzero in self.nonzero.items() if not nonzero)


@contextmanager
def _environment(**values: str) -> Iterator[None]:
    saved = {key: os.environ.get(key) for key in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def _parameters(model: torch.nn.Module) -> dict:
    seen, total, trainable = set(), 0, 0
    for p in model.parameters():
        if id(p) in seen:
            continue
        seen.add(id(p))
        total += p.numel()
        trainable += p.numel() if p.requires_grad else 0
    return {"total": total, "trainable": trainable}


def rehearse(recipe: str, steps: int = 2, batch: int | None = None, device: str | None = None,
             precision: str | None = None, width_scale: float = 1.0, overrides: list[str] | None = None,
             start_epoch: int = 0, max_batches: int | None = None, seed: int = 0, warmup: int = 0) -> dict:
    """Run `warmup` + `steps` optimiser steps of every optimiser of the recipe's method (stopping after
    `max_batches` training batches, default 25 × (warmup + steps)) and one evaluation batch; returns the
    report. The first `warmup` batches are left out of the steady-state timing."""
    from mmbench.recipes.loader import resolve
    from mmbench.rehearsal.data import prepare_real_shapes, recipe_datasets
    from mmbench.rehearsal.weights import RandomWeights

    if steps < 1:
        raise MmbenchError(f"--steps {steps}: at least 1")
    if warmup < 0:
        raise MmbenchError(f"--warmup {warmup}: at least 0")
    if not 0 < width_scale <= 1:
        raise MmbenchError(f"--width-scale {width_scale}: expected 0 < scale ≤ 1")
    probe = resolve(recipe, list(overrides or []))
    batch = batch or probe.recipe.train.batch_size
    subset = max(batch * (steps + warmup), MIN_EXAMPLES)
    fixed = [f"train.batch_size={batch}", f"data.subset={subset}", "data.synthetic=true"]
    if probe.recipe.train.eval_batch_size:
        fixed.append(f"train.eval_batch_size={batch}")
    if precision:
        fixed.append(f"train.precision={precision}")
    resolved = resolve(recipe, [*(overrides or []), *fixed])
    with tempfile.TemporaryDirectory(prefix="mmbench-rehearse-") as tmp:
        root = Path(tmp)
        # a throw-away data root: random-weight features must never enter a real feature cache
        with _environment(MMBENCH_DATA=str(root / "data"), MMBENCH_RUNS=str(root / "runs")):
            data_started = time.perf_counter()
            prepared = prepare_real_shapes(recipe_datasets(resolved), root / "data")
            data_seconds = time.perf_counter() - data_started
            weights = RandomWeights(root / "models", width_scale)
            with weights.active():
                report = _run(resolved, seed, device, steps + warmup, start_epoch, max_batches or 25 * (steps + warmup),
                              root / "run", warmup)
    from mmbench.rehearsal.estimate import estimate

    report["estimate"] = estimate(resolved, report["steady_state"]["samples_per_s"])
    report.update(recipe=recipe, overrides=list(overrides or []), requested_batch=batch, width_scale=width_scale,
                  encoders=weights.built, datasets={k: v["counts"] for k, v in prepared.items()},
                  prepare_seconds=round(data_seconds, 2))
    return report


def _run(resolved, seed: int, device: str | None, steps: int, start_epoch: int, max_batches: int, run_dir: Path,
         warmup: int = 0) -> dict:
    from mmbench.engine.optim import build_optimizer, build_scheduler
    from mmbench.engine.trainer import build_session

    started = time.perf_counter()
    session = build_session(resolved, seed, device, run_dir=run_dir)
    build_seconds = time.perf_counter() - started
    method, model, ctx = session.method, session.model, session.ctx
    train = resolved.recipe.train
    cuda = ctx.device.type == "cuda"
    sync = torch.cuda.synchronize if cuda else (lambda: None)
    if cuda:
        torch.cuda.reset_peak_memory_stats(ctx.device)
    steps_per_epoch = method.steps_per_epoch()
    optimizers = {name: build_optimizer(method.parameters_for(model, name), train.optimizers[name])
                  for name in method.optimizer_names}
    schedulers = {name: build_scheduler(opt, train.optimizers[name].schedule, steps_per_epoch * train.epochs, steps_per_epoch)
                  for name, opt in optimizers.items()}
    step = WatchedStep(model, optimizers, schedulers, train.grad_clip, train.grad_clip_mode, ctx, sync=sync)

    seconds = {"data": 0.0, "forward": 0.0}
    losses_finite, last_logs, batches, examples = True, {}, 0, 0
    seen: dict[str, list[float]] = {}  # every logged value by key: ranges and shares, not only the last batch
    per_batch_seconds: list[tuple[int, float]] = []  # (examples, seconds) of every training batch
    loss_terms = LossTerms()
    epoch = start_epoch
    model.train()
    while batches < max_batches and min((step.stepped.get(n, 0) for n in method.optimizer_names), default=steps) < steps:
        method.on_epoch_start(epoch)
        model.train()
        step.epoch = epoch
        iterator = iter(method.train_batches(epoch))
        while batches < max_batches:
            sync()
            t0 = time.perf_counter()
            batch = next(iterator, None)
            t1 = time.perf_counter()
            if batch is None:
                break
            seconds["data"] += t1 - t0
            inner = step.seconds["backward"] + step.seconds["optimizer"]
            step.global_step = batches
            logs = method.train_step(model, batch, step)
            sync()
            seconds["forward"] += time.perf_counter() - t1 - (step.seconds["backward"] + step.seconds["optimizer"] - inner)
            done = time.perf_counter()
            losses_finite &= all(math.isfinite(float(v)) for v in logs.values())
            last_logs = {k: float(v) for k, v in logs.items()}
            for key, value in last_logs.items():
                seen.setdefault(key, []).append(value)
            loss_terms.update(last_logs)
            batches += 1
            size = _batch_size(batch, train.batch_size)
            examples += size
            per_batch_seconds.append((size, done - t0))
            if min(step.stepped.get(n, 0) for n in method.optimizer_names) >= steps:
                break
        epoch += 1
    params = _parameters(model)  # after the loop: what the rehearsed epochs train (stages freeze parts)
    checkpoint_bytes = disk_per_run(model, optimizers)  # optimiser state exists once every optimiser stepped
    train_seconds = seconds["data"] + seconds["forward"] + step.seconds["backward"] + step.seconds["optimizer"]

    model.eval()
    eval_started = time.perf_counter()
    with torch.no_grad(), ctx.autocast():
        eval_batch = next(iter(method.eval_batches(resolved.recipe.train.select_split)))
        predictions = method.predict(model, eval_batch)
    sync()
    eval_seconds = time.perf_counter() - eval_started
    finite_predictions = all(math.isfinite(v) for p in predictions for v in p.values() if isinstance(v, float))

    per_batch = {k: round(v / max(batches, 1), 4) for k, v in {**seconds, **step.seconds}.items()}
    memory = ({"peak_cuda_mb": round(torch.cuda.max_memory_allocated(ctx.device) / 2**20, 1)} if cuda else
              {"peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)})
    unstepped = [n for n in method.optimizer_names if step.stepped.get(n, 0) < steps]
    finite = {"losses": losses_finite and step.loss_finite, "gradients": step.grad_finite, "predictions": finite_predictions}
    zero_terms = loss_terms.zero()
    return {
        "method": resolved.recipe.method, "device": str(ctx.device),
        "precision": str(ctx.autocast_dtype).replace("torch.", "") if ctx.autocast_dtype else "fp32",
        "threads": torch.get_num_threads(),
        "parameters": params,
        "train_batches": batches, "examples_seen": examples, "epochs_from": start_epoch,
        "optimizer_steps": step.stepped, "unstepped_optimizers": unstepped,
        "samples_per_s": round(examples / train_seconds, 3) if train_seconds else None,
        "seconds_per_batch": {**per_batch, "total": round(train_seconds / max(batches, 1), 4)},
        "measured": MEASURED,
        "eval_batch": {"predictions": len(predictions), "seconds": round(eval_seconds, 3)},
        "build_seconds": round(build_seconds, 2),
        "memory": memory,
        "checkpoint_bytes": checkpoint_bytes,
        "last_logs": last_logs,
        # min / mean / max of each logged key over the steps that logged it (a 0/1 flag's mean is its share)
        "log_ranges": {k: {"n": len(v), "min": min(v), "mean": sum(v) / len(v), "max": max(v)} for k, v in seen.items()},
        "finite": finite,
        "steady_state": steady_state(per_batch_seconds, warmup),
        "loss_terms": sorted(loss_terms.nonzero), "zero_loss_terms": zero_terms,
        "ok": all(finite.values()) and not unstepped and bool(loss_terms.nonzero) and not zero_terms,
    }


def steady_state(per_batch: list[tuple[int, float]], warmup: int) -> dict:
    """samples/s over the batches after the first `warmup` (None when none is left)."""
    kept = per_batch[warmup:]
    seconds = sum(s for _, s in kept)
    return {"warmup_batches": min(warmup, len(per_batch)), "batches": len(kept),
            "samples_per_s": round(sum(n for n, _ in kept) / seconds, 3) if kept and seconds > 0 else None,
            "seconds_per_batch": round(seconds / len(kept), 4) if kept else None}


def _batch_size(batch, default: int) -> int:
    """Examples in a method's batch: the first tensor's leading size, or the longest list found."""
    if isinstance(batch, dict):
        for value in batch.values():
            if isinstance(value, torch.Tensor) and value.dim() > 0:
                return int(value.shape[0])
        for value in batch.values():
            if isinstance(value, dict):
                return _batch_size(value, default)
    return default
