"""Features mode: the frozen backbone runs once per image (and augmented view), its pooled features are cached,
and only the head trains on them."""

from __future__ import annotations

import dataclasses
import logging

import torch
from torch import nn

from headstart.config import TrainConfig
from headstart.device import one_torch_thread
from headstart.extract.feature_cache import FeatureRows
from headstart.training.context import (
    IDS_IN_SUMMARY,
    FitResult,
    RunContext,
    frozen_backbone,
    make_callbacks,
    make_loader,
    mode_loss,
    run_trainer,
    split_features,
)
from headstart.training.distributed import gather_objects
from headstart.training.loop import Trainer, evaluate_batches
from headstart.training.schedules import build_optimizer, build_scheduler

__all__ = ["fit_features"]

log = logging.getLogger(__name__)


def fit_features(ctx: RunContext, *, epochs: int, lr: float, augment: str, views: int) -> FitResult:
    """Extract (or read from the cache) pooled features once, then train only the head on them."""
    cfg = ctx.cfg
    backbone = frozen_backbone(ctx)
    rows, labels, computed, total = {}, {}, 0, 0
    for split in ctx.decoded:
        rows[split], n = split_features(ctx, backbone, split, "none", 0)
        labels[split] = rows[split].labels
        computed, total = computed + n, total + len(labels[split])
    train_sets = [rows["train"]]
    if augment != "none":
        for view in range(1, views + 1):
            view_rows, n = split_features(ctx, backbone, "train", augment, view)
            train_sets.append(view_rows)
            computed, total = computed + n, total + len(labels["train"])
    log.info("features: %d computed, %d from the cache", computed, total - computed)

    torch.manual_seed(cfg.seed)
    head = ctx.net.head
    # Mini-batches read from the cache's memory-mapped shards: the features never have to fit in memory.
    train_loader = make_loader(FeatureRows.concat(train_sets), cfg.batch_size, True, cfg.seed)
    generators = [train_loader.generator]
    val_loader = make_loader(rows["val"], 256, False, cfg.seed)
    optimizer = build_optimizer([{"params": list(head.parameters()), "lr": lr}], _with_lr(cfg, lr))
    scheduler = build_scheduler(optimizer, _with_lr(cfg, lr), len(train_loader), epochs)
    model, optimizer = ctx.fabric.setup(head, optimizer)
    # Every rank reads every feature and trains the same head on all of them: the result is the 1-process one.
    train_loader, val_loader = ctx.fabric.setup_dataloaders(train_loader, val_loader, use_distributed_sampler=False)
    best, callbacks = make_callbacks(ctx)
    trainer = Trainer(ctx.fabric, model, optimizer, scheduler, mode_loss(ctx), callbacks=callbacks,
                      on_epoch=ctx.on_epoch, generators=generators, phase="features", should_stop=ctx.should_stop)
    with one_torch_thread():
        history = run_trainer(ctx, trainer, train_loader, val_loader, epochs)
        head.load_state_dict(best.best_state)
        logits = {}
        for split, split_rows in rows.items():
            loader = ctx.fabric.setup_dataloaders(make_loader(split_rows, 256, False, 0), use_distributed_sampler=False)
            logits[split] = evaluate_batches(model, loader, nn.CrossEntropyLoss(), ctx.fabric)["logits"]
    ids_by_rank = gather_objects(ctx.fabric, ctx.extracted_ids)
    extraction = {"computed": computed, "total": total, "engine": backbone.engine, "precision": backbone.precision,
                  "world_size": ctx.world,
                  "computed_by_rank": [len(ids) for ids in ids_by_rank]}
    if computed <= IDS_IN_SUMMARY:
        extraction["ids_by_rank"] = ids_by_rank
    return FitResult(history, logits, labels, extraction)


def _with_lr(cfg: TrainConfig, lr: float) -> TrainConfig:
    return dataclasses.replace(cfg, lr=lr)


