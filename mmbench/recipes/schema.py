"""Typed schema of a recipe (one training configuration) and of a paper's tables.

Every model is `extra="forbid"`: a misspelt key is an error naming its key path. The `model:` section
is validated by the method's own `Config` (see `mmbench.papers`), so each method documents its knobs.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_serializer, model_validator


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class ScheduleCfg(Strict):
    """Learning-rate schedule. Steps are optimiser steps; `step_size`/`t0` are in epochs."""

    # bert_warmup_linear: BertAdam's curve w(x) = x/warmup_ratio while x < warmup_ratio, then 1 - x
    # (no clamp), x = step / t_total (pytorch-pretrained-bert's `warmup_linear`)
    name: Literal["constant", "linear_warmup", "step", "cosine_restarts", "bert_warmup_linear"] = "constant"
    warmup_ratio: float = 0.0
    t_total: int | None = Field(default=None, ge=1)  # bert_warmup_linear only; None = the run's total steps
    step_size: int = 1
    gamma: float = 0.5
    t0: int = 10
    t_mult: int = 1
    eta_min: float = 0.0  # a fraction of the base learning rate


class OptimizerCfg(Strict):
    # bertadam: pytorch-pretrained-bert's BertAdam (no bias correction, eps outside the sqrt,
    # decoupled weight decay added to the update; mmbench.engine.optim.BertAdam)
    name: Literal["adamw", "adam", "sgd", "bertadam"] = "adamw"
    lr: float
    weight_decay: float = 0.0
    betas: tuple[float, float] = (0.9, 0.999)
    eps: float = 1e-8
    # BERT convention: biases and LayerNorm weights get no weight decay.
    no_decay_bias_norm: bool = True
    schedule: ScheduleCfg = Field(default_factory=ScheduleCfg)
    # bertadam only: BertAdam's own schedule, multiplied into the lr the engine's `schedule` sets
    # (BertAdam(warmup=, t_total=)); None = none (its warmup=-1 / t_total=-1)
    warmup: float | None = Field(default=None, ge=0.0, lt=1.0)
    t_total: int | None = Field(default=None, ge=1)

    @model_validator(mode="after")
    def _bertadam_schedule(self):
        if (self.warmup is not None or self.t_total is not None) and self.name != "bertadam":
            raise ValueError(f"warmup/t_total are BertAdam's own schedule; optimizer {self.name!r} has none")
        if (self.warmup is None) != (self.t_total is None):
            raise ValueError("bertadam's own schedule needs both warmup and t_total")
        return self


class LoaderCfg(Strict):
    """Background loading (mmbench.engine.prefetch): speed only, the batches and their order never change."""

    prefetch: int = Field(default=2, ge=0)  # batches assembled ahead of the step; 0: in the loop, as before
    workers: int = Field(default=1, ge=1)  # collate threads (> 1 for methods that keep the engine's batch plan)
    pin_memory: bool = True  # CUDA: page-locked host copies, non-blocking transfers on a side stream


class TrainCfg(Strict):
    epochs: int = Field(ge=1)
    batch_size: int = Field(ge=1)
    eval_batch_size: int | None = None
    # Named optimisers; most methods use only "main". A method says which names it needs.
    optimizers: dict[str, OptimizerCfg]
    grad_clip: float | None = None
    grad_clip_mode: Literal["global", "per_tensor"] = "global"
    select_metric: str = "accuracy"
    select_split: Literal["dev", "test"] = "dev"
    # "last": no model selection (the dev metric is still logged; the final epoch is tested)
    select_mode: Literal["max", "min", "last"] = "max"
    # ties go to the later epoch when True (some released code selects with >=)
    select_ties_to_later: bool = False
    patience: int | None = None
    seeds: list[int] = Field(default_factory=lambda: [0])
    # auto: bf16 autocast on CUDA, fp32 on CPU; smoke runs always fp64 (mmbench.engine.precision)
    precision: Literal["auto", "fp32", "bf16", "fp64"] = "auto"
    shuffle: bool = True
    drop_last: bool = False
    loader: LoaderCfg = Field(default_factory=lambda: LoaderCfg())
    # GPU efficiency switches (mmbench.engine.throughput; CUDA only, a CPU run ignores them but `compile`).
    # Left at these defaults they stay out of the config hash, so earlier runs keep their directories.
    compile: bool = False  # torch.compile the training forward (evaluation stays eager)
    tf32: bool = False  # fp32 runs: matmuls/convolutions on TF32 tensor cores (~1e-3 relative rounding); bf16 unaffected
    fused_optimizer: bool = True  # Adam/AdamW: one fused CUDA kernel per step (same update, last-bit rounding)
    # torch.use_deterministic_algorithms (warn_only) + cuDNN benchmark off. Default true: the parity
    # tests need it, and the released code that sets anything asks for determinism (DTCA, SPP-SCL set
    # cudnn.deterministic; ITM's seeds alone). false: faster GPU kernels, last-bit differences between runs.
    deterministic: bool = True
    # What a run keeps on disk (never in the config hash): while it trains, last.pt (full state, for
    # --resume) and best.pt (the selected epoch's weights); once finished, "best_weights" keeps best.pt
    # only, "full" keeps last.pt too and writes best.pt with optimiser and RNG state.
    keep_checkpoints: Literal["best_weights", "full"] = "best_weights"

    @model_serializer(mode="wrap")
    def _speed_only_keys_out(self, handler):
        """`loader` changes speed only (batches and their order are the same) and `keep_checkpoints` only
        what stays on disk: never in a dump, so never in the config hash; GPU switches (determinism
        included) only when set away from their defaults."""
        data = handler(self)
        data.pop("loader", None)
        data.pop("keep_checkpoints", None)
        for key, default in _GPU_DEFAULTS.items():
            if data.get(key) == default:
                data.pop(key)
        return data


_GPU_DEFAULTS = {"compile": False, "tf32": False, "fused_optimizer": True, "deterministic": True}


class DataCfg(Strict):
    synthetic: bool = False
    images: str | None = None  # images root; default <data root>/images/<dataset>
    missing_image: Literal["error", "substitute", "blank"] = "error"
    substitute_image: str = "17_06_4705.jpg"  # TomBERT's fixed substitute (opt-in)
    subset: int | None = None  # keep the first N examples of each split (non-reportable)


class Recipe(Strict):
    extends: str | None = None
    paper: str
    dataset: str
    method: str
    variant: Literal["paper", "official"] = "paper"
    description: str = ""
    version: int = 1
    reportable: bool = True
    data: DataCfg = Field(default_factory=DataCfg)
    model: dict[str, Any] = Field(default_factory=dict)
    train: TrainCfg
    smoke: dict[str, Any] = Field(default_factory=dict)
    sources: dict[str, str] = Field(default_factory=dict)
    deviations: list[str] = Field(default_factory=list)
    assumptions: list[str] = Field(default_factory=list)
    # the opening words of the deviations/assumptions that change a number the paper's tables compare:
    # the report cites them as footnotes on those rows; every other note is listed once in its
    # "Recipes, assumptions and deviations" section (mmbench.report.notes)
    footnotes: list[str] = Field(default_factory=list)


class ColumnCfg(Strict):
    dataset: str
    metric: str
    header: str
    split: Literal["dev", "test"] = "test"


class RowCfg(Strict):
    label: str
    group: str | None = None
    # recipe name, may contain "{dataset}"; None for rows mmbench does not implement
    recipe: str | None = None
    # `--set`-style overrides applied to the recipe for this row (e.g. one point of a sweep)
    overrides: list[str] = Field(default_factory=list)
    paper: list[float | None]
    # the ± the paper prints beside each number (one per column, None where it prints none)
    std: list[float | None] | None = None
    aggregation: str = "single run"
    note: str | None = None


class TableCfg(Strict):
    id: str
    title: str
    columns: list[ColumnCfg]
    rows: list[RowCfg]
    notes: list[str] = Field(default_factory=list)
    # the paper draws this table as a figure: `report --out DIR` also writes DIR/<paper>-<id>.png
    plot: bool = False

    @model_validator(mode="after")
    def _paper_values_match_columns(self):
        for row in self.rows:
            if len(row.paper) != len(self.columns):
                raise ValueError(
                    f"row {row.label!r} has {len(row.paper)} paper values for {len(self.columns)} columns"
                )
            if row.std is not None and len(row.std) != len(self.columns):
                raise ValueError(f"row {row.label!r} has {len(row.std)} paper std values for {len(self.columns)} columns")
        return self


class PaperCfg(Strict):
    paper: str
    title: str
    citation: str = ""
    tolerances: dict[str, float] = Field(default_factory=dict)
    tables: list[TableCfg]
