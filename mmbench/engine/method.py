"""The small interface every paper's method implements. The engine drives it and never knows a
paper's name: alternating optimisers, bi-level updates, conditional second steps and staged
training all live inside a method's `train_step`.

A method:
- `setup()`: turn the prepared splits into examples (tokenised, features looked up, ...);
- `build_model()`: an `nn.Module` (frozen parts included: checkpoints hold everything);
- `train_batches(epoch)` / `eval_batches(split)`: this rank's batches (defaults use `collate`);
- `train_step(model, batch, step)`: forward, `step.backward(loss)`, `step.optimizer_step(name)`;
  returns floats to log;
- `predict(model, batch)`: one dict per example with its `index` in the split;
- `metrics(predictions, split)`: a flat dict of floats (×100 for percentages).
"""

from __future__ import annotations

from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Iterator

import torch
from pydantic import BaseModel

from mmbench.engine.batching import epoch_batches, eval_shard, rank_slice
from mmbench.engine.runtime import World


@dataclass
class RunContext:
    device: torch.device
    autocast_dtype: torch.dtype | None
    world: World
    seed: int
    # the run directory (set by the trainer before setup): methods may write extra logs there
    # (rank 0 only), e.g. per-batch quantities a paper plots
    run_dir: Path | None = None

    def autocast(self):
        if self.autocast_dtype is None:
            return nullcontext()
        return torch.autocast(self.device.type, dtype=self.autocast_dtype)


@dataclass
class StepControl:
    """What a train_step may do to the optimisers: the engine owns clipping and schedules."""

    model: torch.nn.Module
    optimizers: dict[str, torch.optim.Optimizer]
    schedulers: dict[str, Any]
    grad_clip: float | None
    grad_clip_mode: str
    ctx: RunContext
    epoch: int = 0
    global_step: int = 0
    logs: dict[str, float] = field(default_factory=dict)

    def autocast(self):
        return self.ctx.autocast()

    def backward(self, loss: torch.Tensor) -> None:
        loss.backward()

    def optimizer_step(self, name: str = "main", parameters=None, advance_schedule: bool = True) -> None:
        """Clip, step the optimiser, advance its LR schedule (unless a method takes a second update
        within one batch, e.g. a conditional second step) and zero its gradients."""
        optimizer = self.optimizers[name]
        params = parameters if parameters is not None else [p for g in optimizer.param_groups for p in g["params"]]
        if self.grad_clip is not None:
            if self.grad_clip_mode == "per_tensor":
                for p in params:
                    if p.grad is not None:
                        torch.nn.utils.clip_grad_norm_(p, self.grad_clip)
            else:
                torch.nn.utils.clip_grad_norm_(params, self.grad_clip)
        optimizer.step()
        if advance_schedule:
            self.schedulers[name].step()
        optimizer.zero_grad(set_to_none=True)


class Method:
    Config: ClassVar[type[BaseModel]]
    optimizer_names: ClassVar[tuple[str, ...]] = ("main",)
    supports_ddp: ClassVar[bool] = True

    def __init__(self, recipe, config: BaseModel, data, manifest: dict, ctx: RunContext):
        self.recipe = recipe  # the validated Recipe (train/data sections)
        self.config = config  # this method's validated `model:` section
        self.data = data  # prepared DatasetDict
        self.manifest = manifest
        self.ctx = ctx
        self.examples: dict[str, list[Any]] = {}

    # -- data -----------------------------------------------------------------------------------
    def setup(self) -> None:
        raise NotImplementedError

    def collate(self, examples: list[Any]) -> Any:
        raise NotImplementedError

    def num_examples(self, split: str) -> int:
        return len(self.examples[split])

    def example_ids(self, split: str) -> list | None:
        """The dataset id of each example of `split`, by prediction index (written into every
        prediction): an example's own "id" when it carries one, else the prepared split's "id" column
        when the examples are its rows in order; None when neither holds."""
        examples = self.examples.get(split) or []
        if examples and all(isinstance(e, dict) and "id" in e for e in examples):
            return [e["id"] for e in examples]
        rows = self.data[split] if self.data is not None and split in self.data else None
        if rows is not None and "id" in rows.column_names and len(rows) == self.num_examples(split):
            return list(rows["id"])
        return None

    def examples_note(self) -> str | None:
        """Why metrics.json's example counts differ from the data manifest's (e.g. an auxiliary set
        evaluated with the split); None when they are the manifest's."""
        return None

    def train_batches(self, epoch: int) -> Iterator[Any]:
        train = self.recipe.train
        plan = epoch_batches(len(self.examples["train"]), train.batch_size, self.ctx.seed, epoch, train.shuffle, train.drop_last)
        for batch in plan:
            mine = rank_slice(batch, self.ctx.world)
            if mine:
                yield self.collate([self.examples["train"][i] for i in mine])

    def steps_per_epoch(self) -> int:
        train = self.recipe.train
        return len(epoch_batches(self.num_examples("train"), train.batch_size, 0, 0, False, train.drop_last))

    def eval_batches(self, split: str) -> Iterator[Any]:
        indices = eval_shard(len(self.examples[split]), self.ctx.world)
        size = self.recipe.train.eval_batch_size or self.recipe.train.batch_size
        for start in range(0, len(indices), size):
            yield self.collate([self.examples[split][i] for i in indices[start : start + size]])

    # -- model ----------------------------------------------------------------------------------
    def build_model(self) -> torch.nn.Module:
        raise NotImplementedError

    def parameters_for(self, model: torch.nn.Module, optimizer_name: str):
        """Named parameters an optimiser updates (default: all trainable ones)."""
        return model.named_parameters()

    def train_step(self, model: torch.nn.Module, batch: Any, step: StepControl) -> dict[str, float]:
        raise NotImplementedError

    def predict(self, model: torch.nn.Module, batch: Any) -> list[dict]:
        raise NotImplementedError

    def metrics(self, predictions: list[dict], split: str) -> dict[str, float]:
        raise NotImplementedError

    def on_epoch_start(self, epoch: int) -> None:
        """Hook for methods whose behaviour changes by epoch (e.g. staged training)."""

    def epoch_warnings(self, epoch: int, metrics: dict[str, float]) -> list[str]:
        """Warnings about a finished epoch, given its model-selection metrics (logged by the trainer and
        kept in that epoch's log row), e.g. a model that has not left chance level."""
        return []

    def on_resume(self, history: list[dict]) -> None:
        """Called once when a run resumes, with the log rows of the epochs already trained (as in
        log.jsonl): a method that keeps state across epochs outside the checkpoint rebuilds it here, so
        a resumed run logs what the uninterrupted one does."""
