"""Checkpoints: `last.pt` is the full state (model, frozen parts included, optimisers, schedulers,
RNG states and the loop's own state), so `--resume` continues exactly where it left off; `best.pt`
holds the selected epoch's weights (the full state too under `train.keep_checkpoints: full`). Once a
run has finished, `last.pt` is removed unless `keep_checkpoints` is `full` (trainer.apply_retention).

Integrity (README "What a run dir promises"): every file is written atomically (results.store), and
a new best is never copied out of `last.pt` after the fact. It is written first, as
`best-pending-e<epoch>.pt`; then `last.pt` is written, recording `best_epoch`; only then is the pending
file renamed to `best.pt`. `last.pt` is the commit point: `recover` (run before any resume or
evaluation) promotes a pending file that `last.pt` names and deletes one it does not, so `best.pt`
always holds the epoch `last.pt` (and so metrics.json) calls selected, whatever instant the process
died at. Loading is `torch.load(weights_only=True)`: tensors and plain Python values only, so a crafted
checkpoint cannot run code."""

from __future__ import annotations

import json
import os
import pickle
import re
from pathlib import Path

import torch

from mmbench.engine.runtime import rng_state, set_rng_state
from mmbench.errors import MmbenchError
from mmbench.results.store import atomic_write_with, fsync_dir

PENDING = re.compile(r"best-pending-e(\d+)\.pt")


def unwrap(model: torch.nn.Module) -> torch.nn.Module:
    return model.module if hasattr(model, "module") else model


def plain(value):
    """numpy scalars and other float/int subclasses → Python numbers (weights_only loads refuse them)."""
    return json.loads(json.dumps(value, default=lambda v: v.item() if hasattr(v, "item") else str(v)))


def save_checkpoint(path: Path, model, optimizers: dict, schedulers: dict, loop_state: dict) -> None:
    state = {
        "model": unwrap(model).state_dict(),
        "optimizers": {name: opt.state_dict() for name, opt in optimizers.items()},
        "schedulers": {name: sched.state_dict() for name, sched in schedulers.items()},
        "scaler": None,  # bf16 autocast needs no loss scaling; kept for the schema
        "rng": rng_state(),
        "loop": plain(loop_state),
    }
    atomic_write_with(path, lambda tmp: _save(state, path, tmp))


def _save(state: dict, path: Path, tmp: str) -> None:
    """torch.save reports a full disk as a RuntimeError from its zip writer that names no file."""
    try:
        torch.save(state, tmp)
    except (RuntimeError, OSError) as exc:
        try:
            stat = os.statvfs(Path(path).parent)
            free = f"; {stat.f_bavail * stat.f_frsize / 1e6:.0f} MB free there"
        except OSError:
            free = ""
        raise MmbenchError(f"{path}: writing the checkpoint failed ({_first_line(exc)}): disk full or over a size limit?{free}") from None


def save_weights(path: Path, model, loop_state: dict) -> None:
    """The model's weights and the loop's state only (best.pt under `keep_checkpoints: best_weights`):
    what `eval`, `report` and a method reloading its best epoch need; it cannot be resumed from."""
    state = {"model": unwrap(model).state_dict(), "loop": plain(loop_state)}
    atomic_write_with(path, lambda tmp: torch.save(state, tmp))


def tensor_bytes(value) -> int:
    """Bytes of every tensor in a (nested) state: what a checkpoint of it takes on disk, less pickle overhead."""
    if isinstance(value, torch.Tensor):
        return value.numel() * value.element_size()
    if isinstance(value, dict):
        return sum(tensor_bytes(v) for v in value.values())
    if isinstance(value, (list, tuple)):
        return sum(tensor_bytes(v) for v in value)
    return 0


def disk_per_run(model, optimizers: dict) -> dict:
    """Checkpoint bytes one run needs (the figures `rehearse` reports): the full state (last.pt), the
    weights (best.pt), and so a run's disk while training and once finished under each retention."""
    weights = tensor_bytes(unwrap(model).state_dict())
    full = weights + tensor_bytes([opt.state_dict() for opt in optimizers.values()]) + tensor_bytes(rng_state())
    return {"full_state": full, "weights": weights, "while_training": full + weights,
            "finished_best_weights": weights, "finished_full": 2 * full}


def kept_bytes(ckpt_dir: Path) -> dict:
    """Checkpoint bytes on disk per file (for metrics.json)."""
    return {p.name: p.stat().st_size for p in sorted(ckpt_dir.glob("*.pt"))}


def pending_best(ckpt_dir: Path, epoch: int) -> Path:
    return ckpt_dir / f"best-pending-e{epoch}.pt"


def promote_best(ckpt_dir: Path, epoch: int) -> None:
    """The step after `last.pt` recorded `best_epoch = epoch`: the pending file becomes best.pt."""
    os.replace(pending_best(ckpt_dir, epoch), ckpt_dir / "best.pt")
    fsync_dir(ckpt_dir)


def recover(ckpt_dir: Path) -> None:
    """Finish or undo the best-checkpoint step a killed process left half done (see the module doc)."""
    pending = {int(m.group(1)): p for p in ckpt_dir.glob("best-pending-e*.pt") if (m := PENDING.fullmatch(p.name))}
    if not pending:
        return
    best_epoch = read_state(ckpt_dir / "last.pt")["loop"].get("best_epoch") if (ckpt_dir / "last.pt").exists() else None
    for epoch, path in pending.items():
        if epoch == best_epoch:
            promote_best(ckpt_dir, epoch)
        else:
            path.unlink(missing_ok=True)


def load_plain(path: Path, map_location="cpu"):
    """torch.load(weights_only=True): tensors and plain Python values only; any failure is one line."""
    path = Path(path)
    if not path.is_file():
        raise MmbenchError(f"{path}: checkpoint not found" if not path.exists() else f"{path}: not a checkpoint file")
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as exc:
        raise MmbenchError(f"{path}: refusing to load: not a plain-tensor checkpoint ({_first_line(exc)})") from None
    except (RuntimeError, EOFError, ValueError, OSError, AttributeError, KeyError, IndexError, TypeError) as exc:
        raise MmbenchError(f"{path}: unreadable checkpoint, truncated or not written by mmbench ({_first_line(exc)})") from None


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def read_state(path: Path, map_location="cpu") -> dict:
    """A checkpoint written by save_checkpoint, loaded with weights_only=True."""
    state = load_plain(path, map_location)
    if not isinstance(state, dict) or not isinstance(state.get("model"), dict) or not isinstance(state.get("loop", {}), dict):
        raise MmbenchError(f"{path}: not an mmbench checkpoint (no model state)")
    return state


def load_checkpoint(path: Path, model, optimizers: dict | None = None, schedulers: dict | None = None,
                    restore_rng: bool = False, map_location="cpu") -> dict:
    state = read_state(Path(path), map_location)
    try:
        unwrap(model).load_state_dict(state["model"])
        for name, opt in (optimizers or {}).items():
            opt.load_state_dict(state["optimizers"][name])
        for name, sched in (schedulers or {}).items():
            sched.load_state_dict(state["schedulers"][name])
    except (KeyError, RuntimeError, ValueError, TypeError) as exc:
        raise MmbenchError(f"{path}: does not fit this run's model or optimisers ({_first_line(exc)})") from None
    if restore_rng:
        set_rng_state(state["rng"])
    return state.get("loop", {})
