"""The modes: what each feeds the one trainer. A mode is a function (RunContext) -> FitResult; MODES names them.

Add a mode by writing such a function in a module here and naming it in MODES (and in config.MODES).
"""

from __future__ import annotations

import dataclasses
import logging

from headstart.config import TrainConfig
from headstart.training.modes.common import FitResult, RunContext
from headstart.training.modes.features import fit_features
from headstart.training.modes.finetune import fit_finetune

__all__ = ["MODES", "SATURATED_ACCURACY", "FitResult", "RunContext", "fit_auto", "fit_features", "fit_finetune",
           "run_features", "run_finetune"]

log = logging.getLogger(__name__)

SATURATED_ACCURACY = 0.99  # auto mode: above this val accuracy, fine-tuning has nothing left to gain


def run_features(ctx: RunContext) -> FitResult:
    """Features mode with the run's own settings (auto passes features mode's defaults instead)."""
    cfg = ctx.cfg
    return fit_features(ctx, epochs=cfg.epochs, lr=cfg.lr, augment=cfg.augment, views=cfg.views)


def run_finetune(ctx: RunContext) -> FitResult:
    return fit_finetune(ctx, epochs=ctx.cfg.epochs)


def fit_auto(ctx: RunContext) -> FitResult:
    """Features first, with features mode's own defaults; fine-tuning after it when val accuracy is not saturated.
    The history holds both phases, numbered on."""
    defaults = TrainConfig(data=ctx.cfg.data, mode="features").resolved()
    features = fit_features(ctx, epochs=defaults.epochs, lr=defaults.lr, augment=defaults.augment,
                            views=defaults.views)
    best_val = max(row["val_accuracy"] for row in features.history)
    if best_val >= SATURATED_ACCURACY:
        return features
    log.info("auto: val accuracy %.3f is not saturated; fine-tuning", best_val)
    tuned = fit_finetune(ctx, epochs=ctx.cfg.epochs)
    return dataclasses.replace(tuned, history=[dict(r, phase="features") for r in features.history] + [
        dict(r, phase="finetune", epoch=r["epoch"] + len(features.history)) for r in tuned.history])


MODES = {"features": run_features, "finetune": run_finetune, "auto": fit_auto}
