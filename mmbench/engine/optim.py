"""Optimisers and learning-rate schedules built from a recipe's `train.optimizers.<name>`."""

from __future__ import annotations

import math
from typing import Iterable

import torch

from mmbench.recipes.schema import OptimizerCfg, ScheduleCfg

_NO_DECAY = ("bias", "LayerNorm.weight", "layer_norm.weight", "norm.weight", "ln.weight")


def build_optimizer(named_params: Iterable[tuple[str, torch.nn.Parameter]], cfg: OptimizerCfg) -> torch.optim.Optimizer:
    params = [(n, p) for n, p in named_params if p.requires_grad]
    if cfg.no_decay_bias_norm:
        decay = [p for n, p in params if not n.endswith(_NO_DECAY)]
        no_decay = [p for n, p in params if n.endswith(_NO_DECAY)]
        groups = [{"params": decay, "weight_decay": cfg.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    else:
        groups = [{"params": [p for _, p in params], "weight_decay": cfg.weight_decay}]
    groups = [g for g in groups if g["params"]]
    if cfg.name == "adamw":
        return torch.optim.AdamW(groups, lr=cfg.lr, betas=cfg.betas, eps=cfg.eps)
    if cfg.name == "adam":
        return torch.optim.Adam(groups, lr=cfg.lr, betas=cfg.betas, eps=cfg.eps)
    return torch.optim.SGD(groups, lr=cfg.lr, momentum=cfg.betas[0])


def schedule_factor(cfg: ScheduleCfg, step: int, total_steps: int, steps_per_epoch: int) -> float:
    """Multiplier of the base learning rate after `step` optimiser steps."""
    if cfg.name == "constant":
        return 1.0
    if cfg.name == "linear_warmup":
        # linear warm-up over warmup_ratio of training, then linear decay to 0 (BERT's schedule)
        warmup = int(cfg.warmup_ratio * total_steps)
        if step < warmup:
            return (step + 1) / max(1, warmup)
        return max(0.0, (total_steps - step) / max(1, total_steps - warmup))
    epoch = step // max(1, steps_per_epoch)
    if cfg.name == "step":
        return cfg.gamma ** (epoch // cfg.step_size)
    # cosine annealing with warm restarts, period t0 epochs multiplied by t_mult after each restart
    t_cur, period = epoch, cfg.t0
    while t_cur >= period:
        t_cur -= period
        period *= cfg.t_mult
    cosine = 0.5 * (1 + math.cos(math.pi * t_cur / period))
    return cfg.eta_min + (1 - cfg.eta_min) * cosine


def build_scheduler(optimizer, cfg: ScheduleCfg, total_steps: int, steps_per_epoch: int):
    return torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: schedule_factor(cfg, step, total_steps, steps_per_epoch)
    )
