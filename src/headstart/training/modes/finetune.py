"""Finetune mode: the head and the chosen backbone stages train, with per-stage learning rates; the frozen prefix
below them runs once per image and view when it can be cached (training/prefix.py)."""

from __future__ import annotations

import contextlib
import logging
import os
import time

import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset

from headstart.backbones.model import count_parameters, unfreeze_last_stages
from headstart.config import TrainConfig
from headstart.data.loading import DecodedSplit
from headstart.data.transforms import eval_transform, train_transform
from headstart.device import autocast
from headstart.extract.frozen import FrozenBackbone, view_seed
from headstart.training.callbacks import UnfreezeSchedule
from headstart.training.context import (
    FitResult,
    RunContext,
    make_callbacks,
    make_loader,
    mode_loss,
    report_progress,
    run_trainer,
)
from headstart.training.distributed import shard_indices
from headstart.training.loop import Trainer, evaluate_batches, load_weights
from headstart.training.prefix import find_frozen_prefix
from headstart.training.schedules import build_optimizer, build_scheduler

__all__ = ["fit_finetune", "freeze_bn_wanted"]

log = logging.getLogger(__name__)


class _ImageDataset(Dataset):
    """A split's images with a transform: from memory when the split was kept decoded, else decoded again
    (safely, resized) for each item, in the DataLoader's workers."""

    def __init__(self, decoded: DecodedSplit, transform):
        self.decoded, self.labels, self.transform = decoded, decoded.labels, transform

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int):
        images = self.decoded.images
        image = images[i] if images is not None else self.decoded.load([i], threads=1)[0]
        return self.transform(image), self.labels[i]


def freeze_bn_wanted(cfg: TrainConfig) -> bool:
    """BatchNorm statistics are noisy with small batches: keep them fixed (eval mode) below 16 images."""
    return cfg.freeze_bn == "on" or (cfg.freeze_bn == "auto" and cfg.batch_size < 16)


def _train_mode(freeze_bn: bool):
    """Train mode, except BatchNorm in frozen layers (always) and in every layer when freeze_bn is on."""

    def set_mode(model: nn.Module) -> None:
        model.train()
        for m in model.modules():
            if isinstance(m, nn.modules.batchnorm._BatchNorm) and (
                    freeze_bn or not any(p.requires_grad for p in m.parameters())):
                m.eval()

    return set_mode


def _stage_count(ctx: RunContext) -> int:
    """How many stages train, from the head downwards (--unfreeze last | N | all)."""
    unfreeze, total = ctx.cfg.unfreeze, len(ctx.spec.stages)
    return total if unfreeze == "all" else 1 if unfreeze == "last" else min(int(unfreeze), total)


class _CachedViews:
    """Batches of cached prefix activations: each epoch, every image appears once, in one of its K views.

    The order comes from a DataLoader over indices with the run's seed, so it is the order the image path
    would use; the view picks draw from a second generator.
    """

    def __init__(self, views: torch.Tensor, labels: torch.Tensor, batch_size: int, seed: int):
        self.views, self.labels = views, labels
        self.order = make_loader(range(len(labels)), batch_size, True, seed)
        self.picks = torch.Generator().manual_seed(seed + 1)

    def __len__(self) -> int:
        return len(self.order)

    def __iter__(self):
        for idx in self.order:
            pick = torch.randint(len(self.views), (len(idx),), generator=self.picks)
            yield self.views[pick, idx], self.labels[idx]


def _prefix_activations(ctx: RunContext, prefix, split: str, preset: str, view: int,
                        engine: FrozenBackbone | None) -> torch.Tensor:
    """The prefix's output for every image of the split: on `engine` (the prefix as a plain module chain, on a
    compiled runtime where one reproduces it) or through the hooked forward pass."""
    decoded = ctx.decoded[split]
    transform = train_transform(ctx.preprocessing, preset)  # "none": the eval transform
    started = time.perf_counter()
    memo = None if ctx.prefix_memo is None else ctx.prefix_memo.table(preset, view)
    todo = [i for i in range(len(decoded.images)) if memo is None or decoded.hashes[i] not in memo]
    chunks = []
    memory_format = torch.channels_last
    for start in range(0, len(todo), 64):
        batch = []
        with torch.random.fork_rng(devices=[]):  # the views' seeds must not move the stream training draws from
            for i in todo[start:start + 64]:
                if preset != "none":
                    torch.manual_seed(view_seed(ctx.cfg.seed, view, decoded.hashes[i]))
                batch.append(transform(decoded.images[i]))
        x = torch.stack(batch)
        if engine is not None:
            out = engine(x)
        else:
            with autocast(ctx.accelerator, ctx.precision):
                out = prefix.activations(x.to(ctx.accelerator, memory_format=memory_format))
        chunks.append(out.float().to(ctx.accelerator).contiguous(memory_format=memory_format))
        task = f"prefix {split}" + (f" view {view}" if view else "")
        report_progress(ctx, task, start + len(batch), len(todo))
    if memo is None:
        return torch.cat(chunks)
    for i, row in zip(todo, (row for chunk in chunks for row in chunk)):
        memo[decoded.hashes[i]] = row
    ctx.prefix_memo.seconds += time.perf_counter() - started
    return torch.stack([memo[h] for h in decoded.hashes]).contiguous(memory_format=memory_format)


def fit_finetune(ctx: RunContext, *, epochs: int, keep_last: bool = False) -> FitResult:
    """Train the head and the chosen backbone stages, with per-stage learning rates.

    When the trainable stages sit on top of a frozen prefix, the prefix runs once per image and view
    (see training/prefix.py) and epochs only pay for the trainable part; otherwise epochs run on images.
    keep_last: keep the last epoch's weights, not the best by val (auto mode's folds score on their val part,
    which must not also pick the epoch).
    """
    cfg = ctx.cfg
    count = _stage_count(ctx)
    chosen = unfreeze_last_stages(ctx.net, ctx.spec, count)
    chosen_prefixes = ctx.spec.stages[::-1][:count]
    groups = [{"params": list(ctx.net.head.parameters()), "lr": cfg.lr}]
    groups += [{"params": params, "lr": cfg.lr * cfg.stage_lr_mult ** depth}
               for depth, params in enumerate(chosen, start=1)]
    callbacks_extra = [UnfreezeSchedule(cfg.gradual_unfreeze, chosen)] if cfg.gradual_unfreeze else []
    log.info("fine-tuning %d stages; %s", len(chosen), count_parameters(ctx.net))
    torch.manual_seed(cfg.seed)
    channels_last = not ctx.spec.is_vit
    if channels_last:
        ctx.net.to(memory_format=torch.channels_last)
    prefix = None
    if ctx.world > 1:
        # Each rank sees other images every epoch (DistributedSampler), so a per-rank prefix cache would have
        # to hold every image anyway: with many processes, epochs run on images.
        log.info("fine-tuning on %d processes: epochs run on images (no frozen-prefix cache)", ctx.world)
        if cfg.sync_bn:
            ctx.net = nn.SyncBatchNorm.convert_sync_batchnorm(ctx.net)
    elif ctx.decoded["train"].images is None:
        log.info("a large set: epochs run on images decoded by the DataLoader (no frozen-prefix cache)")
    elif cfg.unfreeze != "all" and cfg.views:
        size = ctx.preprocessing.crop_size
        # A local generator: probing must not move the global RNG that dropout draws from.
        sample = torch.randn(2, 3, size, size, generator=torch.Generator().manual_seed(0)).to(ctx.accelerator)
        prefix = find_frozen_prefix(ctx.net.backbone, tuple(p for s in chosen_prefixes for p in s), sample)
    prefix_engine = None
    if prefix is not None:
        train_batches, eval_batches, labels, generators, prefix_engine = _cached_batches(ctx, prefix)
        bypass = prefix.bypassed_modules()
    else:
        train_batches, eval_batches, labels, generators = _image_batches(ctx)
        bypass = contextlib.nullcontext()
    with bypass:
        optimizer = build_optimizer(groups, cfg)
        scheduler = build_scheduler(optimizer, cfg, -(-len(train_batches) // cfg.accumulate), epochs)
        model, optimizer = ctx.fabric.setup(ctx.net, optimizer)
        best, callbacks = make_callbacks(ctx, callbacks_extra)
        trainer = Trainer(ctx.fabric, model, optimizer, scheduler, mode_loss(ctx), callbacks=callbacks,
                          train_mode=_train_mode(freeze_bn_wanted(cfg)), channels_last=channels_last,
                          on_epoch=ctx.on_epoch, generators=generators, phase="finetune",
                          should_stop=ctx.should_stop, accumulate=cfg.accumulate, sharded=ctx.world > 1)
        history = run_trainer(ctx, trainer, train_batches, eval_batches["val"], epochs)
        if not keep_last:
            load_weights(ctx.net, best.best_state)
        logits = {split: evaluate_batches(model, batches, nn.CrossEntropyLoss(), ctx.fabric,
                                          channels_last=channels_last, sharded=ctx.world > 1)["logits"]
                  for split, batches in eval_batches.items()}
    ctx.net.to(memory_format=torch.contiguous_format)
    return FitResult(history, logits, labels, {"prefix_cached": prefix is not None, "prefix_engine": prefix_engine})


def _cached_batches(ctx: RunContext, prefix):
    cfg = ctx.cfg
    labels = {s: torch.tensor(d.labels, dtype=torch.long) for s, d in ctx.decoded.items()}
    # The chain runs on the extraction engines (checked against torch before use, else torch itself).
    engine = None if prefix.chain is None else FrozenBackbone(
        prefix.chain, accelerator=ctx.accelerator, precision=ctx.precision, engine=cfg.extract_engine,
        engine_cache=ctx.engine_cache)
    if cfg.augment == "none":
        views = _prefix_activations(ctx, prefix, "train", "none", 0, engine).unsqueeze(0)
    else:
        views = torch.stack([_prefix_activations(ctx, prefix, "train", cfg.augment, v, engine)
                             for v in range(1, cfg.views + 1)])
    train = _CachedViews(views, labels["train"], cfg.batch_size, cfg.seed)
    evals = {s: list(zip(torch.split(_prefix_activations(ctx, prefix, s, "none", 0, engine), 64),
                         torch.split(labels[s], 64)))
             for s in ctx.decoded}
    engine_name = "hooks" if engine is None else engine.engine  # which engine computed the activations
    return train, evals, labels, [train.order.generator, train.picks], engine_name


def _image_batches(ctx: RunContext):
    """Loaders of decoded images. With several processes, each rank trains on the DistributedSampler's share
    (reshuffled per epoch by the Trainer's set_epoch) and evaluates its strided share, gathered afterwards."""
    cfg = ctx.cfg
    streamed = ctx.decoded["train"].images is None  # then decoding runs in the workers, in parallel
    workers = cfg.num_workers if cfg.num_workers is not None else min(4, os.cpu_count() or 1) if streamed else 0
    train_set = _ImageDataset(ctx.decoded["train"], train_transform(ctx.preprocessing, cfg.augment))
    eval_tf = eval_transform(ctx.preprocessing)
    eval_sets = {s: _ImageDataset(d, eval_tf) for s, d in ctx.decoded.items()}
    labels = {s: torch.tensor(d.labels, dtype=torch.long) for s, d in ctx.decoded.items()}
    if ctx.world == 1:
        train_loader = make_loader(train_set, cfg.batch_size, True, cfg.seed, workers)
        evals = {s: ctx.fabric.setup_dataloaders(make_loader(d, 64, False, 0, workers)) for s, d in eval_sets.items()}
        return ctx.fabric.setup_dataloaders(train_loader), evals, labels, [train_loader.generator]
    from torch.utils.data import DistributedSampler, Subset

    # Not wrapped by Fabric: its loader would reset the sampler's epoch to its own count, which a resumed
    # run does not share. The Trainer sets the epoch; batches move to the device in train_one_epoch.
    sampler = DistributedSampler(train_set, num_replicas=ctx.world, rank=ctx.rank, shuffle=True, seed=cfg.seed)
    # --batch-size is the global batch, as with one process: the same command gives the same optimisation.
    train_loader = DataLoader(train_set, batch_size=cfg.batch_size // ctx.world, sampler=sampler, num_workers=workers,
                              persistent_workers=workers > 0)
    evals = {s: ctx.fabric.setup_dataloaders(
        make_loader(Subset(d, shard_indices(len(d), ctx.rank, ctx.world)), 64, False, 0, workers),
        use_distributed_sampler=False) for s, d in eval_sets.items()}
    return train_loader, evals, labels, []

