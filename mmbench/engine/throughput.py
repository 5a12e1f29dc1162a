"""Throughput of every run, measured as it trains: samples/s, the fraction of the loop spent waiting
for a batch (data wait), peak accelerator memory, and progress within an epoch.

`EpochMeter.batches(it)` wraps an epoch's batch iterator: the time inside `next()` is data wait, the
time between two `next()` calls is the step. Its `summary()` goes into the epoch's log.jsonl row
(`throughput`), and `run_summary(history)` into metrics.json's `timing` (over every epoch the log
holds, so a resumed run reports the whole run).

Progress: a rich bar (steps, samples/s, ETA) when stderr is a terminal; otherwise a plain line through
the run's log every `MMBENCH_PROGRESS_SECONDS` (default 60 s), so short runs and CI logs stay quiet.
"""

from __future__ import annotations

import os
import sys
import time
from typing import Callable, Iterable, Iterator

import torch

PROGRESS_ENV = "MMBENCH_PROGRESS_SECONDS"


def batch_samples(batch) -> int:
    """Examples in a batch: its `index` list (every method keeps one per example), looked up one level
    down for batches made of named parts (a main batch beside an auxiliary one: the first part with an
    `index` counts); a bare tensor counts its first dimension; anything else counts as one."""
    if isinstance(batch, dict):
        if isinstance(batch.get("index"), (list, tuple, torch.Tensor)):
            return len(batch["index"])
        for key in ("main", *batch):
            part = batch.get(key)
            if isinstance(part, dict) and isinstance(part.get("index"), (list, tuple, torch.Tensor)):
                return len(part["index"])
    if isinstance(batch, torch.Tensor) and batch.dim() > 0:
        return int(batch.shape[0])
    return 1


class Progress:
    """A rich progress bar on a terminal, else a log line every MMBENCH_PROGRESS seconds (the one
    progress display of mmbench: training epochs, DCPA's blocked evaluation)."""

    def __init__(self, total: int, label: str, log: Callable[[str], None], enabled: bool):
        self.total, self.label, self.log = total, label, log
        self.every = float(os.environ.get(PROGRESS_ENV, "60") or 60)
        self.bar = self.task = None
        self.last = time.perf_counter()
        if enabled and sys.stderr.isatty() and total > 0:
            from rich.console import Console
            from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

            self.bar = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                                TextColumn("{task.fields[rate]}"), TimeRemainingColumn(),
                                console=Console(file=sys.stderr), transient=True)
            self.task = self.bar.add_task(label, total=total, rate="")
            self.bar.start()
        self.enabled = enabled

    def update(self, steps: int, samples: int, seconds: float) -> None:
        rate = f"{samples / seconds:.1f} samples/s" if seconds > 0 else ""
        if self.bar is not None:
            self.bar.update(self.task, completed=steps, rate=rate)
            return
        now = time.perf_counter()
        if self.enabled and now - self.last >= self.every:
            self.last = now
            eta = (self.total - steps) * seconds / steps if steps and self.total >= steps else None
            self.log(f"{self.label}: step {steps}/{self.total} {rate}" + (f" eta {eta:.0f}s" if eta is not None else ""))

    def close(self) -> None:
        if self.bar is not None:
            self.bar.stop()


class EpochMeter:
    def __init__(self, total_steps: int, label: str = "", device: torch.device | None = None,
                 log: Callable[[str], None] = print, progress: bool = True, world_size: int = 1):
        self.device = device if device is not None and device.type == "cuda" and torch.cuda.is_available() else None
        self.world_size = world_size
        self.steps = self.samples = 0
        self.wait = self.seconds = 0.0
        self.progress = Progress(total_steps, label, log, progress)
        if self.device is not None:
            torch.cuda.reset_peak_memory_stats(self.device)

    def batches(self, batches: Iterable) -> Iterator:
        iterator = iter(batches)
        started = time.perf_counter()
        try:
            while True:
                asked = time.perf_counter()
                try:
                    batch = next(iterator)
                except StopIteration:
                    return
                finally:
                    self.wait += time.perf_counter() - asked
                yield batch
                self.steps += 1
                self.samples += batch_samples(batch) * self.world_size  # ranks take equal slices of a batch
                self.seconds = time.perf_counter() - started
                self.progress.update(self.steps, self.samples, self.seconds)
        finally:
            self.seconds = time.perf_counter() - started
            self.progress.close()

    def summary(self) -> dict:
        out = {"samples": self.samples, "loop_seconds": round(self.seconds, 4),
               "samples_per_s": round(self.samples / self.seconds, 3) if self.seconds > 0 else None,
               "data_wait_fraction": round(self.wait / self.seconds, 4) if self.seconds > 0 else None}
        if self.device is not None:
            out["peak_memory_gib"] = round(torch.cuda.max_memory_allocated(self.device) / 2**30, 3)
        return out


def run_summary(history: list[dict]) -> dict:
    """The run's throughput over every logged epoch: samples/s and data-wait fraction weighted by the
    epochs' loop time, the largest peak memory."""
    rows = [r["throughput"] for r in history if isinstance(r.get("throughput"), dict) and r["throughput"].get("loop_seconds")]
    if not rows:
        return {}
    seconds = sum(r["loop_seconds"] for r in rows)
    samples = sum(r["samples"] for r in rows)
    wait = sum(r["data_wait_fraction"] * r["loop_seconds"] for r in rows)
    out = {"train_samples": samples, "samples_per_s": round(samples / seconds, 3), "data_wait_fraction": round(wait / seconds, 4)}
    peaks = [r["peak_memory_gib"] for r in rows if "peak_memory_gib" in r]
    if peaks:
        out["peak_memory_gib"] = max(peaks)
    return out


# -- GPU efficiency switches (train.compile / tf32 / fused_optimizer) ---------------------------------
def fused_optimizer(train, device: torch.device) -> bool:
    """Adam/AdamW's fused kernel: CUDA only (it needs every parameter on the GPU)."""
    return bool(train.fused_optimizer) and device.type == "cuda"


def apply_gpu_switches(train, device: torch.device, model: torch.nn.Module) -> torch.nn.Module:
    """TF32 for fp32 matmuls on CUDA (`tf32: false` keeps PyTorch's default: exact fp32 matmuls, cuDNN
    convolutions as PyTorch sets them), and `torch.compile` of the module the training steps call
    (evaluation and checkpoints use the eager module, which shares its parameters)."""
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = bool(train.tf32)
        if train.tf32:
            torch.backends.cudnn.allow_tf32 = True
    return torch.compile(model) if train.compile else model
