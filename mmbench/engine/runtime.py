"""Process-level runtime: seeding (seed 0 included), device and precision choice, and the
torchrun/DDP world (rank, world size, gathering objects)."""

from __future__ import annotations

import os
import random
import re
import sys
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
    # set either way: an earlier run in this process must not leave its choice behind (train.deterministic)
    _use_deterministic_algorithms(deterministic)
    torch.backends.cudnn.benchmark = not deterministic


def _use_deterministic_algorithms(mode: bool) -> None:
    """torch.use_deterministic_algorithms(mode, warn_only=True) without importing torch._inductor (1.3 CPU s
    in every training process) when nothing has yet: all the import is for is copying the flag into
    inductor's config, and inductor reads the same flag from TORCHINDUCTOR_DETERMINISTIC when it is imported."""
    if "torch._inductor.config" in sys.modules:
        torch.use_deterministic_algorithms(mode, warn_only=True)
        return
    os.environ["TORCHINDUCTOR_DETERMINISTIC"] = "1" if mode else "0"
    torch._C._set_deterministic_algorithms(mode, warn_only=True)


def rng_state() -> dict:
    """Every RNG's state as tensors and plain Python values, so checkpoints load with weights_only=True."""
    version, internal, gauss = random.getstate()
    key, words, pos, has_gauss, cached = np.random.get_state(legacy=True)
    state = {"python": [version, torch.tensor(internal, dtype=torch.int64), gauss],
             "numpy": [key, torch.from_numpy(words.astype(np.int64)), int(pos), int(has_gauss), float(cached)],
             "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(int(v) for v in internal.tolist()), gauss))
    key, words, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((key, words.numpy().astype(np.uint32), pos, has_gauss, cached))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def check_device(preference: str | None) -> None:
    """--device must name a device this machine has: auto, cpu, cuda or cuda:N (N < the GPU count)."""
    from mmbench.errors import MmbenchError

    if preference in (None, "auto", "cpu"):
        return
    match = re.fullmatch(r"cuda(?::(\d+))?", preference)
    if match is None:
        raise MmbenchError(f"--device {preference}: expected auto, cpu, cuda or cuda:N")
    if not torch.cuda.is_available():
        raise MmbenchError(f"--device {preference}: CUDA is not available on this machine")
    if match.group(1) is not None and int(match.group(1)) >= torch.cuda.device_count():
        raise MmbenchError(f"--device {preference}: this machine has {torch.cuda.device_count()} CUDA device(s) (cuda:0..)")


def pick_device(preference: str | None, local_rank: int = 0) -> torch.device:
    check_device(preference)
    if preference in (None, "auto"):
        preference = "cuda" if torch.cuda.is_available() else "cpu"
    if preference == "cuda":
        return torch.device("cuda", local_rank)
    if preference.startswith("cuda:"):
        return torch.device(preference)
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
