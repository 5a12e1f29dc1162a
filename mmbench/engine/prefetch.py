"""Background loading: a method's batches assembled ahead of the step that consumes them.

`background(batches, ...)` runs the iterator in a worker thread, `prefetch` batches ahead, so
decoding, slicing memory-mapped features and the host→device copy overlap the training step. For a
method that keeps the engine's default batch plan (`Method.train_batches` / `eval_batches` not
overridden), `train_loader` / `eval_loader` collate the planned batches on `workers` threads at
once (each batch is one job; results come back in plan order).

Order and content never change: batch k is the k-th batch of the method's own (seeded) plan, so a
run with background loading gives the same numbers as one without and a resumed run still equals an
uninterrupted one. What a worker inherits from the caller: grad mode and an optional context (the
autocast of evaluation). A method must not draw from the global RNG while assembling batches
(the engine's plans use their own seeded generators); one that must sets
`background_loading = False` and is iterated in the caller's thread, as before.

On CUDA each worker issues its copies on its own stream (pinning any CPU tensors the batch still
holds and copying them with `non_blocking=True`); the consumer waits on that stream's event before
using the batch and marks the tensors as used on its stream (`record_stream`), so the caching
allocator never hands their memory out early.
"""

from __future__ import annotations

import queue
import threading
from concurrent.futures import ThreadPoolExecutor
from contextlib import nullcontext
from typing import Any, Callable, Iterable, Iterator

import torch

from mmbench.engine.batching import epoch_batches, eval_shard, rank_slice

_DONE = object()


def map_tensors(value, fn: Callable[[torch.Tensor], torch.Tensor]):
    """`fn` applied to every tensor nested in dicts, lists and tuples (namedtuples kept)."""
    if isinstance(value, torch.Tensor):
        return fn(value)
    if isinstance(value, dict):
        return {k: map_tensors(v, fn) for k, v in value.items()}
    if isinstance(value, (list, tuple)) and any(isinstance(v, (torch.Tensor, dict, list, tuple)) for v in value):
        out = [map_tensors(v, fn) for v in value]
        if hasattr(value, "_fields"):
            return type(value)(*out)
        return out if isinstance(value, list) else tuple(out)
    return value


class _Device:
    """Host→device copies of one worker: on CUDA, on a side stream with an event to wait on."""

    def __init__(self, device: torch.device | None, pin_memory: bool):
        self.cuda = device is not None and device.type == "cuda" and torch.cuda.is_available()
        self.device, self.pin = device, pin_memory and self.cuda
        self.stream = torch.cuda.Stream(device) if self.cuda else None

    def scope(self):
        return torch.cuda.stream(self.stream) if self.cuda else nullcontext()

    def move(self, batch):
        if not self.cuda:
            return batch, None

        def copy(t: torch.Tensor) -> torch.Tensor:
            if t.device.type != "cpu":
                return t
            return (t.pin_memory() if self.pin else t).to(self.device, non_blocking=True)

        batch = map_tensors(batch, copy)
        event = torch.cuda.Event()
        event.record(self.stream)
        return batch, event


def _ready(batch, event):
    """Consumer side: wait for the worker's copies, and keep their memory alive on this stream."""
    if event is None:
        return batch
    stream = torch.cuda.current_stream()
    stream.wait_event(event)
    map_tensors(batch, lambda t: (t.record_stream(stream) if t.is_cuda else None) or t)
    return batch


class _Background:
    """Iterate `source` on one thread, up to `depth` items ahead; errors re-raise in the consumer."""

    def __init__(self, make: Callable[[], Iterator], depth: int, wrap: Callable[[], Any]):
        self.queue: queue.Queue = queue.Queue(maxsize=max(1, depth))
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, args=(make, wrap), daemon=True, name="mmbench-prefetch")
        self.thread.start()

    def _put(self, item) -> bool:
        while not self.stop.is_set():
            try:
                self.queue.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def _run(self, make, wrap) -> None:
        try:
            with wrap():
                for item in make():
                    if not self._put(("ok", item)):
                        return
        except BaseException as exc:  # handed to the consumer, which raises it with its traceback
            self._put(("error", exc))
            return
        self._put(("ok", _DONE))

    def __iter__(self):
        try:
            while True:
                kind, item = self.queue.get()
                if kind == "error":
                    raise item
                if item is _DONE:
                    return
                yield item
        finally:
            self.close()

    def close(self) -> None:
        self.stop.set()
        self.thread.join(timeout=10)


def _worker_scope(context: Callable[[], Any] | None, device: _Device):
    grad = torch.is_grad_enabled()  # thread-local: a worker starts with grad on whatever the caller has

    class _Scope:
        def __enter__(self):
            self.stack = [torch.set_grad_enabled(grad), device.scope(), (context or nullcontext)()]
            for cm in self.stack:
                cm.__enter__()

        def __exit__(self, *exc):
            for cm in reversed(self.stack):
                cm.__exit__(*exc)

    return _Scope


def background(batches: Iterable, prefetch: int = 2, transform: Callable | None = None, device: torch.device | None = None,
               pin_memory: bool = True, context: Callable[[], Any] | None = None) -> Iterator:
    """`batches` iterated on a worker thread `prefetch` ahead (prefetch 0: in this thread, as is)."""
    transform = transform or (lambda b: b)
    if prefetch <= 0:
        return (transform(b) for b in batches)
    dev = _Device(device, pin_memory)

    def produce():
        for batch in batches:
            yield dev.move(transform(batch))

    return (_ready(b, e) for b, e in _Background(produce, prefetch, _worker_scope(context, dev)))


def parallel(jobs: list[Callable[[], Any]], workers: int, prefetch: int, transform: Callable | None = None,
             device: torch.device | None = None, pin_memory: bool = True, context: Callable[[], Any] | None = None) -> Iterator:
    """Run `jobs` (one per batch) on `workers` threads, at most `prefetch + workers` in flight, yielding
    results in job order."""
    transform = transform or (lambda b: b)
    if workers <= 1:
        return background((job() for job in jobs), prefetch, transform, device, pin_memory, context)
    devices = threading.local()
    scope = _worker_scope(context, _Device(None, False))

    def run(job):
        if not hasattr(devices, "dev"):
            devices.dev = _Device(device, pin_memory)
        with scope(), devices.dev.scope():
            return devices.dev.move(transform(job()))

    def produce():
        with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="mmbench-collate") as pool:
            pending = []
            for job in jobs:
                pending.append(pool.submit(run, job))
                if len(pending) > prefetch + workers - 1:
                    yield _ready(*pending.pop(0).result())
            for future in pending:
                yield _ready(*future.result())

    return produce()


def _default_plan(method, kind: str) -> bool:
    from mmbench.engine.method import Method

    name = "train_batches" if kind == "train" else "eval_batches"
    return getattr(type(method), name) is getattr(Method, name)


def train_loader(method, epoch: int, cfg, transform=None) -> Iterator:
    """This epoch's training batches, loaded in the background per `train.loader` (cfg)."""
    device = method.ctx.device
    if not getattr(method, "background_loading", True):
        return background(method.train_batches(epoch), 0, transform)
    if cfg.workers > 1 and _default_plan(method, "train"):
        train = method.recipe.train
        plan = epoch_batches(len(method.examples["train"]), train.batch_size, method.ctx.seed, epoch, train.shuffle, train.drop_last)
        mine = [m for m in (rank_slice(b, method.ctx.world) for b in plan) if m]
        jobs = [lambda m=m: method.collate([method.examples["train"][i] for i in m]) for m in mine]
        return parallel(jobs, cfg.workers, cfg.prefetch, transform, device, cfg.pin_memory)
    return background(method.train_batches(epoch), cfg.prefetch, transform, device, cfg.pin_memory)


def eval_loader(method, split: str, cfg, transform=None, context=None) -> Iterator:
    """This split's evaluation batches, loaded in the background; `context` (the autocast) is entered
    on the workers because a collate ran inside it before."""
    device = method.ctx.device
    if not getattr(method, "background_loading", True):
        return background(method.eval_batches(split), 0, transform)
    if cfg.workers > 1 and _default_plan(method, "eval"):
        indices = eval_shard(len(method.examples[split]), method.ctx.world)
        size = method.recipe.train.eval_batch_size or method.recipe.train.batch_size
        jobs = [lambda s=s: method.collate([method.examples[split][i] for i in indices[s : s + size]])
                for s in range(0, len(indices), size)]
        return parallel(jobs, cfg.workers, cfg.prefetch, transform, device, cfg.pin_memory, context)
    return background(method.eval_batches(split), cfg.prefetch, transform, device, cfg.pin_memory, context)
