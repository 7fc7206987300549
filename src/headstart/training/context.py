"""What every mode and auto-mode candidate shares: the run's context, a fit's result, frozen features, loaders,
callbacks and the resumable trainer call. It sits beside modes/ and search/ (not in modes/), so that importing
either package first works."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn
from torch.utils.data import DataLoader

from headstart.backbones.model import HeadstartNet, freeze_backbone
from headstart.backbones.spec import BackboneSpec
from headstart.config import TrainConfig
from headstart.data.loading import DecodedSplit
from headstart.data.transforms import pixel_transform, transform_key
from headstart.device import features_precision
from headstart.extract import feature_cache
from headstart.extract.feature_cache import FeatureCache, FeatureRows
from headstart.extract.frozen import FrozenBackbone, extract_features, view_seed
from headstart.runtime.preprocess import Preprocessing
from headstart.training.callbacks import BestCheckpoint, EarlyStopping, ResumeCheckpoint
from headstart.training.distributed import shard_indices
from headstart.training.loop import Trainer, TrainingInterrupted

__all__ = [
    "IDS_IN_SUMMARY",
    "FitResult",
    "RunContext",
    "frozen_backbone",
    "make_callbacks",
    "make_loader",
    "mode_loss",
    "report_progress",
    "run_trainer",
    "split_features",
]

log = logging.getLogger(__name__)

IDS_IN_SUMMARY = 10_000  # up to this many, summary.json lists which rank extracted which image (content hash)


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
    deadline: float | None = None  # auto mode: time.perf_counter() by which the search must end
    prefix_memo: object = None  # a PrefixMemo shared by auto mode's fine-tuning folds and refit; None elsewhere
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
    search: dict | None = None  # auto mode: the leaderboard of what was tried (summary.json's "search")


def frozen_backbone(ctx: RunContext) -> FrozenBackbone:
    """The context's backbone, frozen, on the extraction engine. The engine cache sits beside the features'.
    Several processes may write the same entry at once: the graph is written atomically, and OpenVINO checks
    its blobs on load and compiles again when one is damaged."""
    freeze_backbone(ctx.net)
    precision = features_precision(ctx.cfg.precision, ctx.precision, int8=ctx.cfg.int8_features,
                                   accelerator=ctx.accelerator)
    return FrozenBackbone(ctx.net.backbone, accelerator=ctx.accelerator, precision=precision,
                          channels_last=not ctx.spec.is_vit, engine=ctx.cfg.extract_engine,
                          engine_cache=ctx.engine_cache, pixels=(ctx.preprocessing.mean, ctx.preprocessing.std))


def mode_loss(ctx: RunContext) -> nn.Module:
    return nn.CrossEntropyLoss(weight=ctx.class_weights, label_smoothing=ctx.cfg.label_smoothing)


def report_progress(ctx: RunContext, task: str, done: int, total: int) -> None:
    if ctx.progress is not None:
        ctx.progress(task, done, total)


def split_features(ctx: RunContext, backbone: FrozenBackbone, split: str, preset: str, view: int
                    ) -> tuple[FeatureRows, int]:
    """The split's features from the cache, after computing the missing ones: each process takes a strided
    share of them and writes its rows shard by shard; the rows come back from disk for every process."""
    decoded = ctx.decoded[split]
    transform = pixel_transform(ctx.preprocessing, preset)  # the backbone normalizes (FrozenBackbone pixels)
    seed = None if preset == "none" else ctx.cfg.seed
    transform_id = transform_key(ctx.preprocessing, preset)
    if decoded.short_side != ctx.preprocessing.resize_size:  # decoded for a larger backbone (auto mode)
        transform_id += f"|decoded@{decoded.short_side}"
    precision = backbone.precision
    key = FeatureCache.key(ctx.model_id, transform_id, view, seed, precision)
    missing = ctx.cache.missing(key, decoded.hashes)
    if ctx.world > 1:
        # Rank 0's view of what is missing, for all: a rank that looked later might already see shards that
        # another wrote, and strided shares of two different lists would miss some images and repeat others.
        missing = ctx.fabric.broadcast(missing, src=0)
    mine = [missing[p] for p in shard_indices(len(missing), ctx.rank, ctx.world)]
    task = f"features {split}" + (f" view {view}" if view else "")
    for start in range(0, len(mine), feature_cache.SHARD_ROWS):
        if ctx.should_stop():
            raise TrainingInterrupted("interrupted during feature extraction (the finished shards are cached: "
                                      "the same command continues from them)")
        chunk = mine[start:start + feature_cache.SHARD_ROWS]
        seeds = None if seed is None else [view_seed(seed, view, decoded.hashes[i]) for i in chunk]
        rows = extract_features(backbone, decoded.view(chunk), transform, seeds=seeds,
                                progress=lambda d, t, s=start: report_progress(ctx, task, s + d, len(mine)))
        # int8 that missed its check on this first batch computed fp32 rows: filed under fp32's key, and the rest
        # looked up there (one process only: several share one list and one key, and go on as they started)
        fell_back = backbone.precision != precision and ctx.world == 1
        if fell_back:
            key = FeatureCache.key(ctx.model_id, transform_id, view, seed, backbone.precision)
        ctx.cache.write(key, [decoded.hashes[i] for i in chunk], rows)
        ctx.extracted_ids.extend(decoded.hashes[i] for i in chunk)
        if fell_back:
            more, computed = split_features(ctx, backbone, split, preset, view)
            return more, len(chunk) + computed
    if ctx.world > 1:
        ctx.fabric.barrier()  # every process's shards are on disk before anyone reads them
    return ctx.cache.rows(key, decoded.hashes, decoded.labels), len(missing)


def make_loader(dataset, batch_size: int, shuffle: bool, seed: int, num_workers: int = 0) -> DataLoader:
    generator = torch.Generator().manual_seed(seed)
    collate = FeatureRows.collate if isinstance(dataset, FeatureRows) else None  # batches read whole
    return DataLoader(dataset, batch_size=batch_size, shuffle=shuffle, generator=generator, collate_fn=collate,
                      num_workers=num_workers, persistent_workers=num_workers > 0)


def make_callbacks(ctx: RunContext, extra: list = ()) -> tuple[BestCheckpoint, list]:
    best = BestCheckpoint(save=ctx.save_checkpoint)
    callbacks = [best, *extra]
    if ctx.cfg.early_stop:
        callbacks.append(EarlyStopping(ctx.cfg.early_stop))
    if ctx.save_resume is not None:
        callbacks.append(ResumeCheckpoint(ctx.save_resume))  # last: it saves the other callbacks' state
    return best, callbacks


def run_trainer(ctx: RunContext, trainer: Trainer, train_batches, val_batches, epochs: int) -> list[dict]:
    """Fit, first restoring the saved state when resuming this phase."""
    if ctx.resume_state is not None and ctx.resume_state["phase"] == trainer.phase:
        trainer.load_state_dict(ctx.resume_state)
        log.info("resuming %s at epoch %d", trainer.phase, trainer.epoch + 1)
        ctx.resume_state = None
    return trainer.fit(train_batches, val_batches, epochs)


