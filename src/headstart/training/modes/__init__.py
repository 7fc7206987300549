"""The modes: what each feeds the one trainer. A mode is a function (RunContext) -> FitResult; MODES names them.

Add a mode by writing such a function in a module here and naming it in MODES (and in config.MODES).
"""

from __future__ import annotations

from headstart.training.context import FitResult, RunContext
from headstart.training.modes.auto import fit_auto
from headstart.training.modes.features import fit_features
from headstart.training.modes.finetune import fit_finetune

__all__ = ["MODES", "FitResult", "RunContext", "fit_auto", "fit_features", "fit_finetune", "run_features",
           "run_finetune"]


def run_features(ctx: RunContext) -> FitResult:
    """Features mode with the run's own settings."""
    cfg = ctx.cfg
    return fit_features(ctx, epochs=cfg.epochs, lr=cfg.lr, augment=cfg.augment, views=cfg.views)


def run_finetune(ctx: RunContext) -> FitResult:
    return fit_finetune(ctx, epochs=ctx.cfg.epochs)


MODES = {"features": run_features, "finetune": run_finetune, "auto": fit_auto}
