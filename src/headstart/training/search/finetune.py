"""Auto mode's fine-tuning candidates: the best backbone's last N stages trained with augmentation (finetune
mode's recipe and settings), scored on the search's folds like the heads.

Each fold trains from the pretrained weights on its train part and is scored on its held-out part at its last
epoch: picking the epoch on the held-out part would flatter it against the heads. The frozen prefix's
activations are computed once for the pool and shared by the folds and the refit (RunContext.prefix_memo).
"""

from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass

import numpy as np
import torch
from torch.nn import functional as F

from headstart.data.loading import DecodedSplit
from headstart.training.context import FitResult, RunContext, report_progress
from headstart.training.errors import TrainingInterrupted
from headstart.training.prefix import PrefixMemo
from headstart.training.search.plan import SearchBackbone

__all__ = ["MEMO_LIMIT_BYTES", "FoldedFinetune", "FoldsOutOfBudget", "finetune_context", "fold_finetune", "pool_split",
           "refit_finetune"]

MEMO_LIMIT_BYTES = 2 * 2**30  # the shared prefix activations (a fold stacks a copy), beyond which it is dropped


@dataclass
class FoldedFinetune:
    """A fine-tuning recipe scored on the folds."""

    scores: list[float]  # accuracy on each held-out fold
    loss: float  # mean held-out cross-entropy
    oof_logits: np.ndarray  # [N, C]
    memo: PrefixMemo  # the prefix activations the folds shared (the refit reuses them)
    refit_seconds: float  # estimated: the last fold's training scaled to the pool


class FoldsOutOfBudget(Exception):
    """The candidate cannot finish its folds and a refit before the search's end."""


def pool_split(train: DecodedSplit, val: DecodedSplit, index) -> DecodedSplit:
    """The pool's (train then val) images at `index` as one split; both must be held in memory."""
    take = [int(i) for i in index]

    def pick(a: list, b: list) -> list:
        joined = a + b
        return [joined[i] for i in take]

    return dataclasses.replace(train, paths=pick(train.paths, val.paths), labels=pick(train.labels, val.labels),
                               images=pick(train.images, val.images), hashes=pick(train.hashes, val.hashes),
                               failures=[], store=None)


def finetune_context(ctx: RunContext, backbone: SearchBackbone, stages: int, decoded: dict, memo: PrefixMemo,
                     should_stop) -> RunContext:
    """A context whose network is a fresh copy of the backbone (pretrained, no inner-stage taps) with its last
    `stages` stages to train: nothing saved, nothing resumed, no epoch rows printed."""
    from headstart.backbones.model import build_network

    cfg = dataclasses.replace(ctx.cfg, unfreeze=str(stages), gradual_unfreeze=0, early_stop=0)
    torch.manual_seed(cfg.seed)  # the new head's initial weights: the same for every fold and the refit
    net = build_network(backbone.spec, ctx.net.head[-1].out_features, weights=backbone.weights, dropout=cfg.dropout)
    return dataclasses.replace(ctx, cfg=cfg, spec=backbone.spec, preprocessing=backbone.preprocessing, net=net,
                               decoded=decoded, save_checkpoint=None, save_resume=None, resume_state=None,
                               on_epoch=None, should_stop=should_stop, prefix_memo=memo)


def fold_finetune(ctx: RunContext, backbone: SearchBackbone, stages: int, folds: list, labels: np.ndarray,
                  stop_at, task: str, reserved: float = 0.0) -> FoldedFinetune:
    """The recipe trained once per fold, each scored on its held-out images. stop_at() already leaves
    `reserved` seconds for another candidate's refit, which this one's refit would replace.
    Raises FoldsOutOfBudget when, after a fold, the rest and a refit would end past stop_at()."""
    from headstart.training.modes.finetune import fit_finetune

    train, val = ctx.decoded["train"], ctx.decoded["val"]
    memo = PrefixMemo()
    oof = np.zeros((len(labels), ctx.net.head[-1].out_features), dtype=np.float32)
    scores = []

    def stop() -> bool:
        return ctx.should_stop() or time.perf_counter() > stop_at()

    for k, (fold_train, held) in enumerate(folds):
        report_progress(ctx, task, k, len(folds))
        started, prefix_seconds = time.perf_counter(), memo.seconds
        decoded = {"train": pool_split(train, val, fold_train), "val": pool_split(train, val, held)}
        fold_ctx = finetune_context(ctx, backbone, stages, decoded, memo, stop)
        try:
            result: FitResult = fit_finetune(fold_ctx, epochs=fold_ctx.cfg.epochs, keep_last=True)
        except TrainingInterrupted:
            if ctx.should_stop():
                raise  # the user's Ctrl-C, not the budget
            raise FoldsOutOfBudget("the budget ran out during its folds") from None
        oof[held] = result.logits["val"].numpy()
        scores.append(float((oof[held].argmax(1) == labels[held]).mean()))
        if not result.extraction.get("prefix_cached"):
            raise FoldsOutOfBudget("its frozen prefix could not be cached, so every epoch would run on images")
        if memo.nbytes() > MEMO_LIMIT_BYTES:
            raise FoldsOutOfBudget(f"its cached activations would pass {MEMO_LIMIT_BYTES / 2**30:.0f} GiB")
        # The first fold computes most activations; the later ones mostly train: time them without the prefix.
        training = time.perf_counter() - started - (memo.seconds - prefix_seconds)
        refit = training * len(labels) / len(fold_train)
        remaining = training * (len(folds) - 1 - k) + max(0.0, refit - reserved)
        if time.perf_counter() + remaining > stop_at():
            raise FoldsOutOfBudget(f"its remaining folds and refit need about {remaining:.0f} s, "
                                   f"{max(stop_at() - time.perf_counter(), 0):.0f} s are left")
    report_progress(ctx, task, len(folds), len(folds))
    loss = float(F.cross_entropy(torch.from_numpy(oof), torch.from_numpy(labels)).item())
    return FoldedFinetune(scores, loss, oof, memo, refit)


def refit_finetune(ctx: RunContext, backbone: SearchBackbone, stages: int, memo: PrefixMemo
                   ) -> tuple[FitResult, torch.nn.Module]:
    """The winning recipe trained on every pool image (train then val), kept at its last epoch, and its network.
    The result's logits: "train" for the pool (train rows first), "val" trained on (the caller uses the
    out-of-fold ones instead) and "test", computed only now, for the kept model."""
    from headstart.training.modes.finetune import fit_finetune

    train, val = ctx.decoded["train"], ctx.decoded["val"]
    pool = pool_split(train, val, range(len(train.labels) + len(val.labels)))
    refit_ctx = finetune_context(ctx, backbone, stages, dict(ctx.decoded, train=pool), memo, ctx.should_stop)
    return fit_finetune(refit_ctx, epochs=refit_ctx.cfg.epochs, keep_last=True), refit_ctx.net
