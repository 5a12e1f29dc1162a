"""One training loop for every method: epochs, dev-metric model selection, `best`/`last`
checkpoints, `--resume`, per-epoch JSONL log, final evaluation and the run's metrics.json."""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch

from mmbench.engine.checkpoint import kept_bytes, load_checkpoint, pending_best, promote_best, recover, save_checkpoint, save_weights
from mmbench.engine.method import Method, RunContext, StepControl
from mmbench.engine.optim import build_optimizer, build_scheduler
from mmbench.engine.precision import FLOAT64, effective_precision, float64_compute, to_float64
from mmbench.engine.prefetch import eval_loader, train_loader
from mmbench.engine.throughput import EpochMeter, apply_gpu_switches, fused_optimizer, run_summary
from mmbench.engine.runtime import World, barrier, check_device, gather_objects, init_world, pick_device, pick_precision, seed_everything
from mmbench.errors import MmbenchError
from mmbench.registry import method_registry
from mmbench.results import store

# Test hook: raise after this many optimiser-loop steps, to prove that --resume recovers a killed run.
CRASH_ENV = "MMBENCH_CRASH_AFTER_STEPS"
# Test hook: once this many epochs are trained and checkpointed in this process, wait to be stopped (a
# launcher's time-limit signal), to prove that a requeued job resumes from last.pt.
HOLD_ENV = "MMBENCH_HOLD_AFTER_EPOCHS"
THREADS_ENV = "MMBENCH_THREADS"


@dataclass
class Session:
    method: Method
    model: torch.nn.Module
    ctx: RunContext
    manifest: dict


def build_session(resolved, seed: int, device: str | None = None, world: World | None = None,
                  run_dir: Path | None = None) -> Session:
    from mmbench.data.prepare import load_prepared

    recipe = resolved.recipe
    _set_threads(resolved.smoke)
    world = world or init_world(device)
    seed_everything(seed, deterministic=recipe.train.deterministic)
    dev = pick_device(device, world.local_rank)
    precision = effective_precision(recipe.train.precision, resolved.smoke)
    ctx = RunContext(device=dev, autocast_dtype=None if precision == FLOAT64 else pick_precision(precision, dev), world=world, seed=seed,
                     run_dir=run_dir)
    data, manifest = load_prepared(recipe.dataset, synthetic=recipe.data.synthetic)
    if recipe.data.subset is not None:
        data = {split: ds.select(range(min(recipe.data.subset, len(ds)))) for split, ds in data.items()}
    method_cls = method_registry.get(recipe.method)
    if world.distributed and not method_cls.supports_ddp:
        raise MmbenchError(f"method {recipe.method} does not support torchrun/DDP; run it in one process")
    method = method_cls(recipe, resolved.model_config, data, manifest, ctx)
    method.setup()
    model = method.build_model().to(dev)
    if _is_float64(resolved) and torch.get_default_dtype() == torch.float64:
        # inside `fit`/`evaluate_run` (float64_compute); a session built directly (tests, tools) stays fp32
        model = model.to(torch.float64)
    return Session(method, model, ctx, manifest)


def _is_float64(resolved) -> bool:
    return effective_precision(resolved.recipe.train.precision, resolved.smoke) == FLOAT64


def _cast(session: Session):
    """Batches are cast to float64 when the run computes in float64; the background loader
    (engine.prefetch) applies this on its worker, before the step sees the batch."""
    return to_float64 if session.ctx.autocast_dtype is None and torch.get_default_dtype() == torch.float64 else None


def _set_threads(smoke: bool) -> None:
    """CPU threads: MMBENCH_THREADS if set; smoke runs (tiny models) default to one thread, which
    is several times faster than two on small CPUs and keeps smoke numbers machine-independent."""
    threads = os.environ.get(THREADS_ENV)
    if threads or smoke:
        torch.set_num_threads(int(threads or 1))


def _merge_logs(world: World, sums: dict, counts: dict) -> tuple[dict, dict]:
    """Under DDP each rank logs its own slice's losses: add every rank's sums and counts so the
    logged value is the mean over the global batches, as in one process."""
    if not world.distributed:
        return sums, counts
    merged_sums, merged_counts = {}, {}
    for rank_sums, rank_counts in gather_objects(world, [(sums, counts)]):
        for key, value in rank_sums.items():
            _reduce(merged_sums, merged_counts, key, value, rank_counts[key])
    return merged_sums, merged_counts


def accumulate_logs(sums: dict, counts: dict, logs: dict) -> None:
    """Add one step's logs to the epoch's: a key ending in `_min` / `_max` keeps the epoch's smallest /
    largest value (e.g. a range a method wants visible), every other key is averaged over the steps
    that report it (an upper-level step every H steps averages over those)."""
    for key, value in logs.items():
        _reduce(sums, counts, key, float(value), 1)


def _reduce(sums: dict, counts: dict, key: str, value: float, count: int) -> None:
    if key.endswith(("_min", "_max")) and key in sums:
        sums[key] = (min if key.endswith("_min") else max)(sums[key], value)
        return
    if key.endswith(("_min", "_max")):
        sums[key], counts[key] = value, 1
        return
    sums[key] = sums.get(key, 0.0) + value
    counts[key] = counts.get(key, 0) + count


def _better(value: float, best: float | None, mode: str, ties_to_later: bool) -> bool:
    if best is None or mode == "last":  # "last": no model selection, the final epoch is tested
        return True
    if ties_to_later and value == best:
        return True
    return value > best if mode == "max" else value < best


def evaluate(session: Session, model: torch.nn.Module, split: str) -> tuple[dict, list[dict]]:
    model.eval()
    predictions: list[dict] = []
    with torch.no_grad(), session.ctx.autocast():
        for batch in eval_loader(session.method, split, session.method.recipe.train.loader, _cast(session), session.ctx.autocast):
            predictions.extend(session.method.predict(model, batch))
    predictions = sorted(gather_objects(session.ctx.world, predictions), key=lambda p: p["index"])
    if len(predictions) != session.method.num_examples(split):
        raise MmbenchError(f"{split}: {len(predictions)} predictions for {session.method.num_examples(split)} examples")
    ids = session.method.example_ids(split)
    if ids is not None:  # a reader can join a prediction to its example without re-running setup()
        predictions = [{"id": ids[p["index"]], **p} for p in predictions]
    return session.method.metrics(predictions, split), predictions


def fit(resolved, seed: int, root: Path | None = None, resume: bool = False, device: str | None = None,
        log: Callable[[str], None] = print) -> dict:
    """Train one run (see `_fit`), in float64 when its precision says so (smoke runs: see engine.precision)."""
    with float64_compute(_is_float64(resolved)):
        return _fit(resolved, seed, root, resume, device, log)


def _fit(resolved, seed: int, root: Path | None, resume: bool, device: str | None, log: Callable[[str], None]) -> dict:
    out = store.run_dir(resolved, seed, root)
    check_device(device)
    if not init_world(device).is_main:  # rank 0 holds the lock and owns the run dir's files
        return _fit_locked(resolved, seed, out, resume, device, log)
    with store.run_lock(out):
        finished = _finished_run(out) if resume else None
        if finished is not None:
            log(f"{out}: finished already (its last.pt was removed by train.keep_checkpoints); nothing to resume")
            return finished
        _start_clean_or_resume(out, resume, log)
        return _fit_locked(resolved, seed, out, resume, device, log)


def _finished_run(out: Path) -> dict | None:
    """A finished run whose last.pt is gone (checkpoint retention): --resume has nothing to continue and
    must not start it over; its metrics.json stands."""
    if (out / "checkpoints" / "last.pt").exists():
        return None
    saved = store.load_metrics(out)
    return None if saved is None else {**saved, "run_dir": str(out)}


def apply_retention(ckpt_dir: Path, keep: str) -> None:
    """After metrics.json is written: a finished run keeps best.pt only unless the recipe asks for the full
    state (a process killed before this keeps last.pt too; a later --resume re-evaluates and removes it)."""
    if keep != "full":
        (ckpt_dir / "last.pt").unlink(missing_ok=True)


RUN_OUTPUTS = ("metrics.json", "log.jsonl", "predictions-*.jsonl", "eval-*.json", "checkpoints/*.pt")


def _start_clean_or_resume(out: Path, resume: bool, log: Callable[[str], None]) -> None:
    """Under the run's lock, before anything is trained: a metrics.json never outlives the process that
    wrote it (this one may die, and a finished-looking run would then have numbers no checkpoint backs);
    leftover temp files go; without --resume an earlier run's files go, and the log says so."""
    for path in store.remove_leftovers(out):
        log(f"removed leftover {path.name} (an interrupted write)")
    if resume:
        recover((out / "checkpoints"))
        (out / store.METRICS_FILE).unlink(missing_ok=True)
        return
    old = sorted(p for pattern in RUN_OUTPUTS for p in out.glob(pattern))
    if old:
        finished = (out / store.METRICS_FILE).exists()
        for path in old:
            path.unlink()
        log(f"starting clean in {out}: removed the {'finished' if finished else 'unfinished'} earlier run's "
            f"{', '.join(sorted({p.name for p in old}))} (pass --resume to continue a run instead)")


def _fit_locked(resolved, seed: int, out: Path, resume: bool, device: str | None, log: Callable[[str], None]) -> dict:
    started = time.time()
    session = build_session(resolved, seed, device, run_dir=out)
    method, model, ctx = session.method, session.model, session.ctx
    train = resolved.recipe.train
    ckpt_dir = out / "checkpoints"
    is_main = ctx.world.is_main

    steps_per_epoch = method.steps_per_epoch()
    total_steps = steps_per_epoch * train.epochs
    optimizers = {name: build_optimizer(method.parameters_for(model, name), train.optimizers[name], fused_optimizer(train, ctx.device))
                  for name in method.optimizer_names}
    schedulers = {name: build_scheduler(opt, train.optimizers[name].schedule, total_steps, steps_per_epoch)
                  for name, opt in optimizers.items()}
    wrapped = model
    if ctx.world.distributed:
        wrapped = torch.nn.parallel.DistributedDataParallel(
            model, device_ids=[ctx.device.index] if ctx.device.type == "cuda" else None, find_unused_parameters=True)
    wrapped = apply_gpu_switches(train, ctx.device, wrapped)  # TF32, torch.compile (engine.throughput)

    loop = {"epoch": 0, "global_step": 0, "best": None, "best_epoch": None, "bad_epochs": 0, "stopped": False, "history": []}
    if resume and (ckpt_dir / "last.pt").exists():
        loop = {**loop, **load_checkpoint(ckpt_dir / "last.pt", model, optimizers, schedulers, restore_rng=True, map_location=ctx.device)}
        log(f"resumed {out} after epoch {loop['epoch']} of {train.epochs}")
    # the log is rebuilt from last.pt, which carries it: a row no checkpoint backs never survives
    history = loop.pop("history")
    if history:
        method.on_resume(history)
    if is_main:
        out.mkdir(parents=True, exist_ok=True)
        store.atomic_write_text(out / "recipe.yaml", _yaml(resolved))
        store.write_jsonl(out / "log.jsonl", history)

    crash_after = int(os.environ.get(CRASH_ENV, "0") or 0)
    control = StepControl(wrapped, optimizers, schedulers, train.grad_clip, train.grad_clip_mode, ctx)
    for epoch in range(loop["epoch"], train.epochs if not loop["stopped"] else loop["epoch"]):
        epoch_start = time.time()
        method.on_epoch_start(epoch)
        wrapped.train()
        sums: dict[str, float] = {}
        counts: dict[str, int] = {}  # keys some steps report (e.g. an upper-level step every H) average over those
        n_steps = 0
        control.epoch = epoch
        meter = EpochMeter(steps_per_epoch, f"epoch {epoch + 1}/{train.epochs}", ctx.device, log, is_main, ctx.world.size)
        for batch in meter.batches(train_loader(method, epoch, train.loader, _cast(session))):
            control.global_step = loop["global_step"]
            accumulate_logs(sums, counts, method.train_step(wrapped, batch, control))
            n_steps += 1
            loop["global_step"] += 1
            if crash_after and loop["global_step"] >= crash_after:
                raise RuntimeError(f"{CRASH_ENV}={crash_after}: simulated crash at step {loop['global_step']}")
        sums, counts = _merge_logs(ctx.world, sums, counts)
        select_metrics, _ = evaluate(session, model, train.select_split)
        value = select_metrics.get(train.select_metric)
        if value is None:
            raise MmbenchError(f"train.select_metric={train.select_metric!r} is not among {sorted(select_metrics)}")
        improved = _better(value, loop["best"], train.select_mode, train.select_ties_to_later)
        if improved:
            loop.update(best=value, best_epoch=epoch, bad_epochs=0)
        else:
            loop["bad_epochs"] += 1
        # epochs are counted from 1 in every file a person reads, as on the console (checkpoints count from 0)
        row = {"epoch": epoch + 1, "steps": n_steps, "train": {k: v / counts[k] for k, v in sums.items()},
               train.select_split: select_metrics, "lr": {n: opt.param_groups[0]["lr"] for n, opt in optimizers.items()},
               "seconds": round(time.time() - epoch_start, 3), "throughput": meter.summary()}
        warnings = method.epoch_warnings(epoch, select_metrics)
        if warnings:
            row["warnings"] = warnings
        history.append(row)
        loop["epoch"] = epoch + 1
        stop = train.patience is not None and loop["bad_epochs"] >= train.patience
        loop["stopped"] = stop
        if is_main:  # order matters: see engine.checkpoint (last.pt is the commit point)
            state = {**loop, "history": history}
            if improved and train.keep_checkpoints == "full":
                save_checkpoint(pending_best(ckpt_dir, epoch), model, optimizers, schedulers, state)
            elif improved:
                save_weights(pending_best(ckpt_dir, epoch), model, state)
            save_checkpoint(ckpt_dir / "last.pt", model, optimizers, schedulers, state)
            if improved:
                promote_best(ckpt_dir, epoch)
            store.write_jsonl(out / "log.jsonl", history)
        barrier(ctx.world)
        losses = " ".join(f"{k}={v:.4f}" for k, v in row["train"].items())
        log(f"[{resolved.name} seed {seed}] epoch {epoch + 1}/{train.epochs} {losses} "
            f"{train.select_split}.{train.select_metric}={value:.2f}{' *' if improved else ''}")
        for text in warnings:
            log(f"[{resolved.name} seed {seed}] warning: {text}")
        if os.environ.get(HOLD_ENV) == str(loop["epoch"]):
            time.sleep(600)
        if stop:
            log(f"early stop: no {train.select_split} improvement for {train.patience} epochs")
            break
    train_seconds = time.time() - started

    selected = load_checkpoint(ckpt_dir / "best.pt", model, map_location=ctx.device)
    if selected.get("best_epoch") != loop["best_epoch"]:
        raise MmbenchError(f"{ckpt_dir / 'best.pt'}: holds epoch {selected.get('best_epoch')} but the run selected epoch "
                           f"{loop['best_epoch']}; refusing to report it (re-run without --resume)")
    eval_start = time.time()
    metrics, counts = {}, {}
    for split in ("dev", "test"):
        metrics[split], predictions = evaluate(session, model, split)
        counts[split] = method.num_examples(split)
        if is_main:
            store.write_jsonl(out / f"predictions-{split}.jsonl", predictions)
    counts["train"] = method.num_examples("train")
    result = {
        "schema_version": store.SCHEMA_VERSION,
        "paper": resolved.recipe.paper,
        "dataset": resolved.recipe.dataset,
        "recipe": resolved.name,
        "variant": resolved.recipe.variant,
        "method": resolved.recipe.method,
        "config_hash": resolved.config_hash,
        "overrides": resolved.overrides,
        "seed": seed,
        "seeds": train.seeds,
        "smoke": resolved.smoke,
        "subset": resolved.recipe.data.subset,
        "synthetic": resolved.recipe.data.synthetic,
        "reportable": resolved.reportable,
        "examples": counts,
        **({"examples_note": method.examples_note()} if method.examples_note() else {}),
        "metrics": metrics,
        "selected_epoch": None if loop["best_epoch"] is None else loop["best_epoch"] + 1,  # 1-based, as log.jsonl
        "epochs_run": loop["epoch"],
        "final_train": history[-1]["train"] if history else {},
        "data_manifest": {k: session.manifest.get(k) for k in ("counts", "raw_files", "count_check")},
        "timing": {"train_seconds": round(train_seconds, 3), "eval_seconds": round(time.time() - eval_start, 3),
                   "finished": time.strftime("%Y-%m-%dT%H:%M:%S%z"), **run_summary(history)},
        "environment": {**store.environment(ctx.device, "fp64" if _is_float64(resolved) else str(ctx.autocast_dtype or "fp32"),
                                              ctx.world.size), "deterministic": train.deterministic},
        "checkpoints": _checkpoint_record(ckpt_dir, train.keep_checkpoints),
    }
    if is_main:
        store.atomic_write_json(out / store.METRICS_FILE, result)
        apply_retention(ckpt_dir, train.keep_checkpoints)
    result["run_dir"] = str(out)
    return result


def _checkpoint_record(ckpt_dir: Path, keep: str) -> dict:
    """Bytes of the checkpoints this run keeps once finished, and the most it held while training."""
    files = kept_bytes(ckpt_dir)
    kept = {name: size for name, size in files.items() if keep == "full" or name != "last.pt"}
    return {"keep": keep, "files": kept, "bytes": sum(kept.values()), "peak_bytes": sum(files.values())}


def evaluate_run(run: Path, split: str = "test", checkpoint: str = "best", device: str | None = None,
                 write: bool = True) -> dict:
    """Re-evaluate a finished (or interrupted) run from its checkpoint; works under torchrun too. With
    write, the predictions and eval-<split>-<checkpoint>.json go into the run dir."""
    from mmbench.recipes.loader import ResolvedRecipe, resolve

    if split not in ("dev", "test"):
        raise MmbenchError(f"--split {split!r}: expected dev or test")
    check_device(device)
    recipe_file = run / "recipe.yaml"
    if not run.is_dir() or not recipe_file.is_file():
        raise MmbenchError(f"{run}: not a run directory (recipe.yaml missing)")
    with store.reader_lock(run):  # a run being trained is refused: its trainer owns recovery and best-pending
        path = checkpoint_path(run, checkpoint)
        saved = store.load_metrics(run) or {}
        resolved: ResolvedRecipe = resolve(str(recipe_file))
        resolved.smoke = bool(saved.get("smoke", run.parent.name.endswith("-smoke")))  # unfinished: the dir name says
        seed = int(saved.get("seed", run.name.split("-")[0].removeprefix("seed") or 0))
        with float64_compute(_is_float64(resolved)):
            return _evaluate_checkpoint(run, resolved, seed, split, path, device, write)


def checkpoint_path(run: Path, checkpoint: str) -> Path:
    """--checkpoint: best, last, or a .pt file inside the run dir (never a path outside it)."""
    if checkpoint in ("best", "last"):
        path = (run / "checkpoints" / f"{checkpoint}.pt").resolve()
        if checkpoint == "best" and not path.exists():
            recover(run / "checkpoints")  # a run killed between last.pt and best.pt's rename
    else:
        candidate = Path(checkpoint)
        path = (candidate if candidate.is_absolute() else run / candidate).resolve()
        if not path.is_relative_to(run.resolve()):
            raise MmbenchError(f"--checkpoint {checkpoint}: expected best, last or a file inside {run}")
    if not path.is_file():
        raise MmbenchError(f"{path}: checkpoint not found" if not path.exists() else f"{path}: not a checkpoint file")
    return path


def _evaluate_checkpoint(run: Path, resolved, seed: int, split: str, path: Path, device: str | None, write: bool) -> dict:
    session = build_session(resolved, seed, device, run_dir=run)
    load_checkpoint(path, session.model, map_location=session.ctx.device)
    metrics, predictions = evaluate(session, session.model, split)
    if session.ctx.world.is_main and write:
        store.write_jsonl(run / f"predictions-{split}-{path.stem}.jsonl", predictions)
        store.atomic_write_json(run / f"eval-{split}-{path.stem}.json",
                                {"split": split, "checkpoint": str(path.relative_to(run.resolve())), "metrics": metrics})
    return metrics


def _yaml(resolved) -> str:
    import yaml

    data = resolved.as_dict()
    data.pop("extends", None)
    data["smoke"] = {}  # already applied
    return yaml.safe_dump(data, sort_keys=False, allow_unicode=True)
