"""Auto mode: the search (training/search/) picks a recipe by cross-validation within the budget; the winner is
refitted on train+val (a head on cached features, or a fine-tuned network) and becomes the run's network, an
ordinary HeadstartNet that predict, export and serve load unchanged. Its val logits are the held-out ones from
the search (the refit has seen val), so the run's val metrics and its temperature stay honest."""

from __future__ import annotations

import dataclasses
import logging

import numpy as np
import torch

from headstart.data.loading import decode_split
from headstart.runtime.preprocess import Preprocessing
from headstart.training.context import FitResult, RunContext, split_features
from headstart.training.search.finetune import refit_finetune
from headstart.training.search.heads import fit_head
from headstart.training.search.run import VIEW_PRESET, FeatureSet, SearchResult, search

__all__ = ["fit_auto"]

log = logging.getLogger(__name__)


def _winning_network(ctx: RunContext, fs: FeatureSet, stages: bool):
    """The network the winner runs on: the Tapped one the search extracted with, or the plain backbone."""
    if stages or not fs.tapped:
        return fs.ctx.net
    if fs.backbone.spec.name == ctx.spec.name:
        return ctx.net
    from headstart.backbones.model import build_network

    return build_network(fs.backbone.spec, ctx.net.head[-1].out_features, weights=fs.backbone.weights,
                         dropout=ctx.cfg.dropout)


def _result(ctx: RunContext, found: SearchResult, logits: dict, **extraction) -> FitResult:
    """The run's result from the kept model's logits: the leaderboard is its history."""
    history = [{"epoch": i, "phase": "search", "candidate": c.name, "val_accuracy": c.mean, "val_loss": c.loss,
                "cv_std": c.std, "seconds": c.seconds, "best": c is found.winner}
               for i, c in enumerate(found.candidates, 1)]
    labels = {split: torch.tensor(d.labels, dtype=torch.long) for split, d in ctx.decoded.items()}
    frozen = found.features[found.winner.backbone].frozen  # the features' precision, not the session's
    return FitResult(history, logits, labels, {"engine": "search", "world_size": ctx.world,
                                               "precision": frozen.precision, **extraction},
                     search=found.summary())


def _adopt(ctx: RunContext, fs: FeatureSet, net) -> None:
    """The run saves the winner's network, preprocessing and weights."""
    if net is not ctx.net:
        ctx.spec, ctx.preprocessing, ctx.net = fs.backbone.spec, fs.backbone.preprocessing, net
        ctx.cfg = dataclasses.replace(ctx.cfg, backbone=fs.backbone.name, weights=fs.backbone.weights)


def _decode_as_deployed(ctx: RunContext, pre: Preprocessing, splits: tuple[str, ...]) -> bool:
    """Auto decodes every split once, at the largest backbone's size; these splits are decoded again at the kept
    backbone's own size, as load() decodes for it, so that the saved model trains and is scored on the pixels it
    will see (a second resize and another JPEG draft scale move its features: docs/benchmarks.md, "Honest test
    scores"). Held in memory only where the first decode was. False when nothing needed decoding again."""
    todo = [s for s in splits if s in ctx.decoded and ctx.decoded[s].short_side != pre.resize_size]
    for split in todo:
        first = ctx.decoded[split]
        again = decode_split(list(zip(first.paths, first.labels)), short_side=pre.resize_size,
                             interpolation=pre.interpolation, reduce_to=pre.reduce_to,
                             keep_images=first.images is not None)
        ctx.decoded = dict(ctx.decoded, **{split: again})
    return bool(todo)


def _pool_as_deployed(ctx: RunContext, fs: FeatureSet, views: int) -> tuple[np.ndarray, np.ndarray | None] | None:
    """The winner's pool features (center, and its views) from its own decode, or None where the search's serve
    (decoded at this size already, or a file that no longer decodes the same)."""
    before = ctx.decoded
    if not _decode_as_deployed(ctx, fs.backbone.preprocessing, ("train", "val")):
        return None
    if any(ctx.decoded[s].paths != before[s].paths for s in ("train", "val")):
        log.warning("auto: a train or val image no longer decodes as it did; the head trains on the search's features")
        ctx.decoded = before  # the pool the search's features and labels came from
        return None
    own = dataclasses.replace(fs.ctx, decoded=ctx.decoded)

    def pool(preset: str, view: int) -> np.ndarray:
        return np.concatenate([split_features(own, fs.frozen, s, preset, view)[0].features() for s in ("train", "val")])

    center = pool("none", 0)
    return center, (np.stack([pool(VIEW_PRESET, v) for v in range(1, views + 1)]) if views else None)


def _fit_finetuned(ctx: RunContext, found: SearchResult, fs: FeatureSet) -> FitResult:
    """A fine-tuning winner: its recipe refitted on train+val, kept at its last epoch, as in its folds."""
    winner = found.winner
    _decode_as_deployed(ctx, fs.backbone.preprocessing, ("test",))  # its pool keeps the memoised activations
    result, net = refit_finetune(ctx, fs.backbone, winner.recipe["unfreeze"], winner.memo)
    winner.memo = None
    _adopt(ctx, fs, net)
    n_train = len(ctx.decoded["train"].labels)
    logits = dict(result.logits, train=result.logits["train"][:n_train],
                  val=torch.from_numpy(winner.oof_logits[n_train:]).float())
    return _result(ctx, found, logits, **result.extraction)


def fit_auto(ctx: RunContext) -> FitResult:
    found = search(ctx, tail_images=len(ctx.decoded["test"].labels) if "test" in ctx.decoded else 0)
    winner = found.winner
    fs = found.features[winner.backbone]
    log.info("auto: winner %s (%.4f ± %.4f by %s)", winner.name, winner.mean, winner.std, found.selection)
    if winner.family == "finetune":
        return _fit_finetuned(ctx, found, fs)
    stages = winner.recipe["stages"]
    cols = fs.columns(stages)
    center, views = fs.center, None if not winner.recipe["views"] else fs.views[:winner.recipe["views"]]
    own = _pool_as_deployed(ctx, fs, winner.recipe["views"])
    if own is not None:
        center, views = own
    weight, bias = fit_head(center[:, cols], None if views is None else views[:, :, cols], found.pool_labels,
                            ctx.net.head[-1].out_features, winner.recipe)
    net = _winning_network(ctx, fs, stages)
    linear = net.head[-1]
    with torch.no_grad():  # the refitted head, on every pool image (and its views)
        linear.weight.copy_(torch.from_numpy(weight))
        linear.bias.copy_(torch.from_numpy(bias))
    _adopt(ctx, fs, net)
    n_train = len(ctx.decoded["train"].labels)

    def scores(features: np.ndarray) -> torch.Tensor:
        with torch.no_grad():
            return linear(torch.from_numpy(np.ascontiguousarray(features[:, cols], dtype=np.float32)))

    logits = {"train": scores(center[:n_train]), "val": torch.from_numpy(winner.oof_logits[n_train:]).float()}
    if "test" in ctx.decoded:  # read only now, for the kept model: never for a choice
        _decode_as_deployed(ctx, fs.backbone.preprocessing, ("test",))
        rows, _ = split_features(dataclasses.replace(fs.ctx, decoded=ctx.decoded), fs.frozen, "test", "none", 0)
        logits["test"] = scores(rows.features())
    return _result(ctx, found, logits)
