"""Process-level runtime: seeding (seed 0 included), device and precision choice, and the
torchrun/DDP world (rank, world size, gathering objects)."""

from __future__ import annotations

import os
import random
from dataclasses import dataclass

import numpy as np
import torch


def seed_everything(seed: int, deterministic: bool = True) -> None:
    """Seed python, numpy and torch. `seed is None` is the only way to skip; 0 is a seed like any other."""
    if seed is None:
        raise ValueError("a seed is required (0 is a valid seed)")
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
    if deterministic:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.use_deterministic_algorithms(True, warn_only=True)
        torch.backends.cudnn.benchmark = False


def rng_state() -> dict:
    state = {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def pick_device(preference: str | None, local_rank: int = 0) -> torch.device:
    if preference in (None, "auto"):
        preference = "cuda" if torch.cuda.is_available() else "cpu"
    if preference == "cuda":
        if not torch.cuda.is_available():
            from mmbench.errors import MmbenchError

            raise MmbenchError("--device cuda asked for, but CUDA is not available on this machine")
        return torch.device("cuda", local_rank)
    return torch.device("cpu")


def pick_precision(setting: str, device: torch.device) -> torch.dtype | None:
    """The autocast dtype, or None for plain fp32. `auto` = bf16 on CUDA, fp32 on CPU."""
    if setting == "fp32" or (setting == "auto" and device.type != "cuda"):
        return None
    return torch.bfloat16


@dataclass(frozen=True)
class World:
    rank: int = 0
    size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.size > 1


def init_world(device_preference: str | None = None) -> World:
    """Read torchrun's environment and join the process group (gloo on CPU, nccl on CUDA)."""
    size = int(os.environ.get("WORLD_SIZE", "1"))
    if size == 1:
        return World()
    import torch.distributed as dist

    rank, local_rank = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0"))
    use_cuda = torch.cuda.is_available() and device_preference != "cpu"
    if not dist.is_initialized():
        dist.init_process_group(backend="nccl" if use_cuda else "gloo")
    if use_cuda:
        torch.cuda.set_device(local_rank)
    return World(rank=rank, size=size, local_rank=local_rank)


def gather_objects(world: World, items: list) -> list:
    """Concatenate every rank's list on every rank (no padding, so nothing is counted twice)."""
    if not world.distributed:
        return items
    import torch.distributed as dist

    parts: list = [None] * world.size
    dist.all_gather_object(parts, items)
    return [item for part in parts for item in part]


def barrier(world: World) -> None:
    if world.distributed:
        import torch.distributed as dist

        dist.barrier()
