"""What each mode feeds the one trainer: cached features (features), images (finetune), or both (auto)."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset, TensorDataset

from headstart.backbones.model import HeadstartNet, count_parameters, freeze_backbone, stage_parameters
from headstart.backbones.registry import BackboneSpec, Preprocessing
from headstart.config import TrainConfig
from headstart.data.loading import DecodedSplit
from headstart.data.transforms import eval_transform, train_transform, transform_key
from headstart.features import FeatureCache, extract_features, view_seed
from headstart.training.callbacks import BestCheckpoint, EarlyStopping, UnfreezeSchedule
from headstart.training.loop import Trainer, evaluate_batches
from headstart.training.schedules import build_optimizer, build_scheduler

__all__ = ["FitResult", "RunContext", "fit_features", "fit_finetune", "freeze_bn_wanted"]

log = logging.getLogger(__name__)

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


def _split_features(ctx: RunContext, split: str, preset: str, view: int) -> tuple[torch.Tensor, int]:
    decoded = ctx.decoded[split]
    transform = eval_transform(ctx.preprocessing) if preset == "none" else train_transform(ctx.preprocessing, preset)
    seed = None if preset == "none" else ctx.cfg.seed
    key = FeatureCache.key(ctx.model_id, transform_key(ctx.preprocessing, preset), view, seed, ctx.precision)

    def compute(indices: list[int]) -> torch.Tensor:
        seeds = None if seed is None else [view_seed(seed, view, decoded.hashes[i]) for i in indices]
        return extract_features(
            ctx.net.backbone, [decoded.images[i] for i in indices], transform, accelerator=ctx.accelerator,
            precision=ctx.precision, channels_last=not ctx.spec.is_vit, seeds=seeds,
            progress=lambda d, t: _report(ctx, f"features {split}" + (f" view {view}" if view else ""), d, t),
        )

    return ctx.cache.features_for(key, decoded.hashes, compute)


def _loader(dataset, batch_size: int, shuffle: bool, seed: int, num_workers: int = 0) -> DataLoader:
    generator = torch.Generator().manual_seed(seed)
    return DataLoader(dataset, batch_size=batch_size, shuffle=shuffle, generator=generator,
                      num_workers=num_workers, persistent_workers=num_workers > 0)


def _callbacks(ctx: RunContext) -> tuple[BestCheckpoint, list]:
    best = BestCheckpoint(save=ctx.save_checkpoint)
    callbacks = [best]
    if ctx.cfg.early_stop:
        callbacks.append(EarlyStopping(ctx.cfg.early_stop))
    return best, callbacks


def fit_features(ctx: RunContext, *, epochs: int, lr: float, augment: str, views: int) -> FitResult:
    """Extract (or read from the cache) pooled features once, then train only the head on them."""
    cfg = ctx.cfg
    freeze_backbone(ctx.net)
    features, labels, computed, total = {}, {}, 0, 0
    for split in ctx.decoded:
        feats, n = _split_features(ctx, split, "none", 0)
        features[split], labels[split] = feats, torch.tensor(ctx.decoded[split].labels, dtype=torch.long)
        computed, total = computed + n, total + len(ctx.decoded[split].labels)
    train_x, train_y = [features["train"]], [labels["train"]]
    if augment != "none":
        for view in range(1, views + 1):
            feats, n = _split_features(ctx, "train", augment, view)
            train_x.append(feats)
            train_y.append(labels["train"])
            computed, total = computed + n, total + len(labels["train"])
    log.info("features: %d computed, %d from the cache", computed, total - computed)

    torch.manual_seed(cfg.seed)
    head = ctx.net.head
    train_set = TensorDataset(torch.cat(train_x), torch.cat(train_y))
    train_loader = _loader(train_set, cfg.batch_size, True, cfg.seed)
    val_loader = _loader(TensorDataset(features["val"], labels["val"]), 256, False, cfg.seed)
    optimizer = build_optimizer([{"params": list(head.parameters()), "lr": lr}], _with_lr(cfg, lr))
    scheduler = build_scheduler(optimizer, _with_lr(cfg, lr), len(train_loader), epochs)
    model, optimizer = ctx.fabric.setup(head, optimizer)
    train_loader, val_loader = ctx.fabric.setup_dataloaders(train_loader, val_loader)
    best, callbacks = _callbacks(ctx)
    trainer = Trainer(ctx.fabric, model, optimizer, scheduler, _loss(ctx), callbacks=callbacks,
                      on_epoch=ctx.on_epoch)
    history = trainer.fit(train_loader, val_loader, epochs)
    head.load_state_dict(best.best_state)
    logits = {}
    for split in features:
        loader = ctx.fabric.setup_dataloaders(_loader(TensorDataset(features[split], labels[split]), 256, False, 0))
        logits[split] = evaluate_batches(model, loader, nn.CrossEntropyLoss(), ctx.fabric)["logits"]
    return FitResult(history, logits, labels, {"computed": computed, "total": total})


def _with_lr(cfg: TrainConfig, lr: float) -> TrainConfig:
    import dataclasses

    return dataclasses.replace(cfg, lr=lr)


class _ImageDataset(Dataset):
    """Decoded, pre-resized images with a transform; nothing is read from disk after decoding."""

    def __init__(self, decoded: DecodedSplit, transform):
        self.images, self.labels, self.transform = decoded.images, decoded.labels, transform

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i: int):
        return self.transform(self.images[i]), self.labels[i]


def freeze_bn_wanted(cfg: TrainConfig) -> bool:
    """BatchNorm statistics are noisy with small batches: keep them fixed (eval mode) below 16 images."""
    return cfg.freeze_bn == "on" or (cfg.freeze_bn == "auto" and cfg.batch_size < 16)


def _train_mode(freeze_bn: bool):
    def set_mode(model: nn.Module) -> None:
        model.train()
        if freeze_bn:
            for m in model.modules():
                if isinstance(m, nn.modules.batchnorm._BatchNorm):
                    m.eval()

    return set_mode


def fit_finetune(ctx: RunContext, *, epochs: int) -> FitResult:
    """Train the head and the chosen backbone stages on images, with per-stage learning rates."""
    cfg = ctx.cfg
    stages = stage_parameters(ctx.net, ctx.spec)
    count = len(stages) if cfg.unfreeze == "all" else 1 if cfg.unfreeze == "last" else min(int(cfg.unfreeze),
                                                                                            len(stages))
    freeze_backbone(ctx.net)
    chosen = stages[::-1][:count]  # from the head downwards
    groups = [{"params": list(ctx.net.head.parameters()), "lr": cfg.lr}]
    for depth, params in enumerate(chosen, start=1):
        for p in params:
            p.requires_grad_(True)
        groups.append({"params": params, "lr": cfg.lr * cfg.stage_lr_mult ** depth})
    callbacks_extra = [UnfreezeSchedule(cfg.gradual_unfreeze, chosen)] if cfg.gradual_unfreeze else []
    log.info("fine-tuning %d of %d stages; %s", count, len(stages), count_parameters(ctx.net))

    torch.manual_seed(cfg.seed)
    channels_last = not ctx.spec.is_vit
    if channels_last:
        ctx.net.to(memory_format=torch.channels_last)
    workers = cfg.num_workers if cfg.num_workers is not None else 0
    train_loader = _loader(_ImageDataset(ctx.decoded["train"], train_transform(ctx.preprocessing, cfg.augment)),
                           cfg.batch_size, True, cfg.seed, workers)
    eval_tf = eval_transform(ctx.preprocessing)
    eval_loaders = {s: _loader(_ImageDataset(d, eval_tf), 64, False, 0, workers) for s, d in ctx.decoded.items()}
    optimizer = build_optimizer(groups, cfg)
    scheduler = build_scheduler(optimizer, cfg, len(train_loader), epochs)
    model, optimizer = ctx.fabric.setup(ctx.net, optimizer)
    train_loader = ctx.fabric.setup_dataloaders(train_loader)
    eval_loaders = {s: ctx.fabric.setup_dataloaders(loader) for s, loader in eval_loaders.items()}
    best, callbacks = _callbacks(ctx)
    trainer = Trainer(ctx.fabric, model, optimizer, scheduler, _loss(ctx), callbacks=callbacks + callbacks_extra,
                      train_mode=_train_mode(freeze_bn_wanted(cfg)), channels_last=channels_last,
                      on_epoch=ctx.on_epoch)
    history = trainer.fit(train_loader, eval_loaders["val"], epochs)
    ctx.net.load_state_dict(best.best_state)
    logits, labels = {}, {}
    for split, loader in eval_loaders.items():
        out = evaluate_batches(model, loader, nn.CrossEntropyLoss(), ctx.fabric, channels_last=channels_last)
        logits[split], labels[split] = out["logits"], out["labels"]
    ctx.net.to(memory_format=torch.contiguous_format)
    return FitResult(history, logits, labels)
