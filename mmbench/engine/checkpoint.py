"""Full-state checkpoints: model (frozen parts included), optimisers, schedulers, RNG states and
the loop's own state, so `--resume` continues exactly where `last` left off. Written atomically."""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

import torch

from mmbench.engine.runtime import rng_state, set_rng_state


def unwrap(model: torch.nn.Module) -> torch.nn.Module:
    return model.module if hasattr(model, "module") else model


def _write_atomically(target: Path, write) -> None:
    """Call write(tmp_path) on a temp file beside target, then rename it over target."""
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".tmp")
    os.close(fd)
    try:
        write(tmp)
        os.replace(tmp, target)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def save_checkpoint(path: Path, model, optimizers: dict, schedulers: dict, loop_state: dict) -> None:
    state = {
        "model": unwrap(model).state_dict(),
        "optimizers": {name: opt.state_dict() for name, opt in optimizers.items()},
        "schedulers": {name: sched.state_dict() for name, sched in schedulers.items()},
        "scaler": None,  # bf16 autocast needs no loss scaling; kept for the schema
        "rng": rng_state(),
        "loop": loop_state,
    }
    _write_atomically(path, lambda tmp: torch.save(state, tmp))


def copy_checkpoint(source: Path, target: Path) -> None:
    _write_atomically(target, lambda tmp: shutil.copyfile(source, tmp))


def load_checkpoint(path: Path, model, optimizers: dict | None = None, schedulers: dict | None = None,
                    restore_rng: bool = False, map_location="cpu") -> dict:
    state = torch.load(path, map_location=map_location, weights_only=False)
    unwrap(model).load_state_dict(state["model"])
    for name, opt in (optimizers or {}).items():
        opt.load_state_dict(state["optimizers"][name])
    for name, sched in (schedulers or {}).items():
        sched.load_state_dict(state["schedulers"][name])
    if restore_rng:
        set_rng_state(state["rng"])
    return state["loop"]
