"""What each mode feeds the one trainer: cached features (features), images (finetune), or both (auto)."""

from __future__ import annotations

import contextlib
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset

from headstart import features
from headstart.backbones.model import HeadstartNet, count_parameters, freeze_backbone, stage_parameters
from headstart.backbones.registry import BackboneSpec, Preprocessing
from headstart.config import TrainConfig
from headstart.data.loading import DecodedSplit
from headstart.data.transforms import eval_transform, pixel_transform, train_transform, transform_key
from headstart.device import autocast, one_torch_thread
from headstart.features import FeatureCache, FeatureRows, FrozenBackbone, extract_features, view_seed
from headstart.training.callbacks import BestCheckpoint, EarlyStopping, ResumeCheckpoint, UnfreezeSchedule
from headstart.training.distributed import gather_objects, shard_indices
from headstart.training.loop import Trainer, TrainingInterrupted, evaluate_batches, load_weights
from headstart.training.prefix import find_frozen_prefix
from headstart.training.schedules import build_optimizer, build_scheduler

__all__ = ["FitResult", "RunContext", "fit_features", "fit_finetune", "freeze_bn_wanted"]

log = logging.getLogger(__name__)

IDS_IN_SUMMARY = 10_000  # up to this many, summary.json lists which rank extracted which image (content hash)
SATURATED_ACCURACY = 0.99  # auto mode: above this val accuracy, fine-tuning has nothing left to gain


@dataclass
class RunContext:
    """What every mode needs: the settings, the network, the decoded splits and the engine."""

    cfg: TrainConfig
    spec: BackboneSpec
    preprocessing: Preprocessing
    net: HeadstartNet
    decoded: dict[str, DecodedSplit]
    class_weights: torch.Tensor | None
    fabric: object
    accelerator: str
    precision: str
    model_id: str
    cache: FeatureCache
    progress: object = None
    on_epoch: object = None
    save_checkpoint: object = None
    save_resume: object = None
    resume_state: dict | None = None
    should_stop: object = lambda: False
    extracted_ids: list[str] = field(default_factory=list)  # content hashes this rank computed features for

    @property
    def engine_cache(self) -> Path:
        """Exported graphs and compiled blobs: beside the feature cache, in the same cache folder."""
        return self.cache.root.parent / "engines"

    @property
    def world(self) -> int:
        return self.fabric.world_size

    @property
    def rank(self) -> int:
        return self.fabric.global_rank


@dataclass
class FitResult:
    history: list[dict]
    logits: dict[str, torch.Tensor]  # per split, from the best weights
    labels: dict[str, torch.Tensor]
    extraction: dict = field(default_factory=dict)


def _loss(ctx: RunContext) -> nn.Module:
    return nn.CrossEntropyLoss(weight=ctx.class_weights, label_smoothing=ctx.cfg.label_smoothing)


def _report(ctx: RunContext, task: str, done: int, total: int) -> None:
    if ctx.progress is not None:
        ctx.progress(task, done, total)


def _split_features(ctx: RunContext, backbone: FrozenBackbone, split: str, preset: str, view: int
                    ) -> tuple[FeatureRows, int]:
    """The split's features from the cache, after computing the missing ones: each process takes a strided
    share of them and writes its rows shard by shard; the rows come back from disk for every process."""
    decoded = ctx.decoded[split]
    transform = pixel_transform(ctx.preprocessing, preset)  # the backbone normalizes (FrozenBackbone pixels)
    seed = None if preset == "none" else ctx.cfg.seed
    key = FeatureCache.key(ctx.model_id, transform_key(ctx.preprocessing, preset), view, seed, ctx.precision)
    missing = ctx.cache.missing(key, decoded.hashes)
    if ctx.world > 1:
        # Rank 0's view of what is missing, for all: a rank that looked later might already see shards that
        # another wrote, and strided shares of two different lists would miss some images and repeat others.
        missing = ctx.fabric.broadcast(missing, src=0)
    mine = [missing[p] for p in shard_indices(len(missing), ctx.rank, ctx.world)]
    task = f"features {split}" + (f" view {view}" if view else "")
    for start in range(0, len(mine), features.SHARD_ROWS):
        if ctx.should_stop():
            raise TrainingInterrupted("interrupted during feature extraction (the finished shards are cached: "
                                      "the same command continues from them)")
        chunk = mine[start:start + features.SHARD_ROWS]
        seeds = None if seed is None else [view_seed(seed, view, decoded.hashes[i]) for i in chunk]
        rows = extract_features(backbone, decoded.load(chunk), transform, seeds=seeds,
                                progress=lambda d, t, s=start: _report(ctx, task, s + d, len(mine)))
        ctx.cache.write(key, [decoded.hashes[i] for i in chunk], rows)
        ctx.extracted_ids.extend(decoded.hashes[i] for i in chunk)
    if ctx.world > 1:
        ctx.fabric.barrier()  # every process's shards are on disk before anyone reads them
    return ctx.cache.rows(key, decoded.hashes, decoded.labels), len(missing)


def _loader(dataset, batch_size: int, shuffle: bool, seed: int, num_workers: int = 0) -> DataLoader:
    generator = torch.Generator().manual_seed(seed)
    collate = FeatureRows.collate if isinstance(dataset, FeatureRows) else None  # batches read whole
    return DataLoader(dataset, batch_size=batch_size, shuffle=shuffle, generator=generator, collate_fn=collate,
                      num_workers=num_workers, persistent_workers=num_workers > 0)


def _callbacks(ctx: RunContext, extra: list = ()) -> tuple[BestCheckpoint, list]:
    best = BestCheckpoint(save=ctx.save_checkpoint)
    callbacks = [best, *extra]
    if ctx.cfg.early_stop:
        callbacks.append(EarlyStopping(ctx.cfg.early_stop))
    if ctx.save_resume is not None:
        callbacks.append(ResumeCheckpoint(ctx.save_resume))  # last: it saves the other callbacks' state
    return best, callbacks


def _run_trainer(ctx: RunContext, trainer: Trainer, train_batches, val_batches, epochs: int) -> list[dict]:
    """Fit, first restoring the saved state when resuming this phase."""
    if ctx.resume_state is not None and ctx.resume_state["phase"] == trainer.phase:
        trainer.load_state_dict(ctx.resume_state)
        log.info("resuming %s at epoch %d", trainer.phase, trainer.epoch + 1)
        ctx.resume_state = None
    return trainer.fit(train_batches, val_batches, epochs)


def fit_features(ctx: RunContext, *, epochs: int, lr: float, augment: str, views: int) -> FitResult:
    """Extract (or read from the cache) pooled features once, then train only the head on them."""
    cfg = ctx.cfg
    freeze_backbone(ctx.net)
    # The engine cache sits beside the features'. Several processes may write the same entry at once: the graph
    # is written atomically, and OpenVINO checks its blobs on load and compiles again when one is damaged.
    backbone = FrozenBackbone(ctx.net.backbone, accelerator=ctx.accelerator, precision=ctx.precision,
                              channels_last=not ctx.spec.is_vit, engine=cfg.extract_engine,
                              engine_cache=ctx.engine_cache, pixels=(ctx.preprocessing.mean, ctx.preprocessing.std))
    rows, labels, computed, total = {}, {}, 0, 0
    for split in ctx.decoded:
        rows[split], n = _split_features(ctx, backbone, split, "none", 0)
        labels[split] = rows[split].labels
        computed, total = computed + n, total + len(labels[split])
    train_sets = [rows["train"]]
    if augment != "none":
        for view in range(1, views + 1):
            view_rows, n = _split_features(ctx, backbone, "train", augment, view)
            train_sets.append(view_rows)
            computed, total = computed + n, total + len(labels["train"])
    log.info("features: %d computed, %d from the cache", computed, total - computed)

    torch.manual_seed(cfg.seed)
    head = ctx.net.head
    # Mini-batches read from the cache's memory-mapped shards: the features never have to fit in memory.
    train_loader = _loader(FeatureRows.concat(train_sets), cfg.batch_size, True, cfg.seed)
    generators = [train_loader.generator]
    val_loader = _loader(rows["val"], 256, False, cfg.seed)
    optimizer = build_optimizer([{"params": list(head.parameters()), "lr": lr}], _with_lr(cfg, lr))
    scheduler = build_scheduler(optimizer, _with_lr(cfg, lr), len(train_loader), epochs)
    model, optimizer = ctx.fabric.setup(head, optimizer)
    # Every rank reads every feature and trains the same head on all of them: the result is the 1-process one.
    train_loader, val_loader = ctx.fabric.setup_dataloaders(train_loader, val_loader, use_distributed_sampler=False)
    best, callbacks = _callbacks(ctx)
    trainer = Trainer(ctx.fabric, model, optimizer, scheduler, _loss(ctx), callbacks=callbacks,
                      on_epoch=ctx.on_epoch, generators=generators, phase="features", should_stop=ctx.should_stop)
    with one_torch_thread():
        history = _run_trainer(ctx, trainer, train_loader, val_loader, epochs)
        head.load_state_dict(best.best_state)
        logits = {}
        for split, split_rows in rows.items():
            loader = ctx.fabric.setup_dataloaders(_loader(split_rows, 256, False, 0), use_distributed_sampler=False)
            logits[split] = evaluate_batches(model, loader, nn.CrossEntropyLoss(), ctx.fabric)["logits"]
    ids_by_rank = gather_objects(ctx.fabric, ctx.extracted_ids)
    extraction = {"computed": computed, "total": total, "engine": backbone.engine, "world_size": ctx.world,
                  "computed_by_rank": [len(ids) for ids in ids_by_rank]}
    if computed <= IDS_IN_SUMMARY:
        extraction["ids_by_rank"] = ids_by_rank
    return FitResult(history, logits, labels, extraction)


def _with_lr(cfg: TrainConfig, lr: float) -> TrainConfig:
    import dataclasses

    return dataclasses.replace(cfg, lr=lr)


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


def _chosen_stages(ctx: RunContext) -> tuple[list[list], list[tuple[str, ...]]]:
    """The stages that train (from the head downwards): their parameters and their name prefixes."""
    cfg = ctx.cfg
    stages = stage_parameters(ctx.net, ctx.spec)
    count = len(stages) if cfg.unfreeze == "all" else 1 if cfg.unfreeze == "last" else min(int(cfg.unfreeze),
                                                                                            len(stages))
    return stages[::-1][:count], list(ctx.spec.stages[::-1][:count])


class _CachedViews:
    """Batches of cached prefix activations: each epoch, every image appears once, in one of its K views.

    The order comes from a DataLoader over indices with the run's seed, so it is the order the image path
    would use; the view picks draw from a second generator.
    """

    def __init__(self, views: torch.Tensor, labels: torch.Tensor, batch_size: int, seed: int):
        self.views, self.labels = views, labels
        self.order = _loader(range(len(labels)), batch_size, True, seed)
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
    chunks = []
    memory_format = torch.channels_last
    for start in range(0, len(decoded.images), 64):
        batch = []
        for i in range(start, min(start + 64, len(decoded.images))):
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
        _report(ctx, f"prefix {split}" + (f" view {view}" if view else ""), start + len(batch), len(decoded.images))
    return torch.cat(chunks)


def fit_finetune(ctx: RunContext, *, epochs: int) -> FitResult:
    """Train the head and the chosen backbone stages, with per-stage learning rates.

    When the trainable stages sit on top of a frozen prefix, the prefix runs once per image and view
    (see training/prefix.py) and epochs only pay for the trainable part; otherwise epochs run on images.
    """
    cfg = ctx.cfg
    chosen, chosen_prefixes = _chosen_stages(ctx)
    freeze_backbone(ctx.net)
    groups = [{"params": list(ctx.net.head.parameters()), "lr": cfg.lr}]
    for depth, params in enumerate(chosen, start=1):
        for p in params:
            p.requires_grad_(True)
        groups.append({"params": params, "lr": cfg.lr * cfg.stage_lr_mult ** depth})
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
        best, callbacks = _callbacks(ctx, callbacks_extra)
        trainer = Trainer(ctx.fabric, model, optimizer, scheduler, _loss(ctx), callbacks=callbacks,
                          train_mode=_train_mode(freeze_bn_wanted(cfg)), channels_last=channels_last,
                          on_epoch=ctx.on_epoch, generators=generators, phase="finetune",
                          should_stop=ctx.should_stop, accumulate=cfg.accumulate, sharded=ctx.world > 1)
        history = _run_trainer(ctx, trainer, train_batches, eval_batches["val"], epochs)
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
        train_loader = _loader(train_set, cfg.batch_size, True, cfg.seed, workers)
        evals = {s: ctx.fabric.setup_dataloaders(_loader(d, 64, False, 0, workers)) for s, d in eval_sets.items()}
        return ctx.fabric.setup_dataloaders(train_loader), evals, labels, [train_loader.generator]
    from torch.utils.data import DistributedSampler, Subset

    # Not wrapped by Fabric: its loader would reset the sampler's epoch to its own count, which a resumed
    # run does not share. The Trainer sets the epoch; batches move to the device in train_one_epoch.
    sampler = DistributedSampler(train_set, num_replicas=ctx.world, rank=ctx.rank, shuffle=True, seed=cfg.seed)
    # --batch-size is the global batch, as with one process: the same command gives the same optimisation.
    train_loader = DataLoader(train_set, batch_size=cfg.batch_size // ctx.world, sampler=sampler, num_workers=workers,
                              persistent_workers=workers > 0)
    evals = {s: ctx.fabric.setup_dataloaders(
        _loader(Subset(d, shard_indices(len(d), ctx.rank, ctx.world)), 64, False, 0, workers),
        use_distributed_sampler=False) for s, d in eval_sets.items()}
    return train_loader, evals, labels, []
