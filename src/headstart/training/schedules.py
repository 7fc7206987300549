"""Optimizers and per-step learning-rate schedules (warmup, then step / cosine / one-cycle)."""

from __future__ import annotations

import math

import torch

from headstart.config import TrainConfig

__all__ = ["build_optimizer", "build_scheduler"]


def build_optimizer(param_groups: list[dict], cfg: TrainConfig) -> torch.optim.Optimizer:
    if cfg.optimizer == "sgd":
        return torch.optim.SGD(param_groups, lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)
    if cfg.optimizer == "adam":
        return torch.optim.Adam(param_groups, lr=cfg.lr, weight_decay=cfg.weight_decay)
    return torch.optim.AdamW(param_groups, lr=cfg.lr, weight_decay=cfg.weight_decay)


def build_scheduler(optimizer: torch.optim.Optimizer, cfg: TrainConfig, steps_per_epoch: int, epochs: int
                    ) -> torch.optim.lr_scheduler.LRScheduler:
    """A scheduler stepped once per batch. Warmup ramps linearly from 1% of each group's lr."""
    total = max(1, steps_per_epoch * epochs)
    if cfg.schedule == "onecycle":
        return torch.optim.lr_scheduler.OneCycleLR(
            optimizer, max_lr=[g["lr"] for g in optimizer.param_groups], total_steps=total,
            pct_start=max(cfg.warmup_epochs / epochs, 0.1) if epochs > 1 else 0.3,
        )
    warmup = cfg.warmup_epochs * steps_per_epoch

    def factor(step: int) -> float:
        if step < warmup:
            return 0.01 + 0.99 * step / warmup
        if cfg.schedule == "cosine":
            progress = (step - warmup) / max(1, total - warmup)
            return 0.5 * (1 + math.cos(math.pi * min(progress, 1.0)))
        if cfg.schedule == "step" and cfg.step_size:
            return cfg.gamma ** ((step // steps_per_epoch) // cfg.step_size)
        return 1.0

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)
