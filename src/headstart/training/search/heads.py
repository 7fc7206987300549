"""Linear heads on cached features: every cross-validation fold fitted at once, and optuna choosing the L2 strength.

A head here is multinomial logistic regression on standardised features, which loads into the network's
Linear head exactly (the standardisation folds into its weights). It is written out, not taken from
scikit-learn, because scikit-learn fits one fold at a time (about 1 s per fit on 1,400 x 1,280 features on
two cores): fitting all k folds as one full-batch L-BFGS problem makes a trial cost about as much as one fit.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field

import numpy as np
import torch
from torch.nn import functional as F

__all__ = ["HeadSearch", "HeadTrial", "fit_head", "fold_logits", "search_head"]

log = logging.getLogger(__name__)

L2_RANGE = (1e-5, 1.0)  # per-image L2 strength on standardised features, searched on a log scale
MAX_ITER = 100  # L-BFGS iterations per fit
IMBALANCED = 1.5  # largest/smallest class count above which class weighting is searched too


@dataclass
class HeadTrial:
    params: dict
    fold_scores: list[float]  # accuracy on each held-out fold
    loss: float  # mean held-out cross-entropy: breaks ties in accuracy
    oof_logits: np.ndarray  # [N, C]: each pool image's logits from the head that did not train on it


@dataclass
class HeadSearch:
    best: HeadTrial
    trials: int
    seconds: float
    history: list[dict] = field(default_factory=list)  # params and score of every trial


def _class_weights(y: torch.Tensor, num_classes: int) -> torch.Tensor:
    counts = torch.bincount(y, minlength=num_classes).clamp(min=1).float()
    return len(y) / (num_classes * counts)


def _fit(x: torch.Tensor, y: torch.Tensor, train: torch.Tensor, num_classes: int, l2: float,
         balanced: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """Effective (weight [F, D, C], bias [F, C]) on raw features, one head per row of the mask `train` [F, M]."""
    folds, dim = train.shape[0], x.shape[1]
    mask = train.float()
    counts = mask.sum(1, keepdim=True)
    mean = (mask @ x) / counts
    std = ((mask @ (x * x)) / counts - mean ** 2).clamp(min=0).sqrt() + 1e-6
    sample = torch.ones(len(y)) if not balanced else _class_weights(y[train.any(0)], num_classes)[y]
    weight_rows = mask * sample  # [F, M]
    weight_rows = weight_rows / weight_rows.sum(1, keepdim=True)
    w = torch.zeros(folds, dim, num_classes, requires_grad=True)
    b = torch.zeros(folds, num_classes, requires_grad=True)
    optimizer = torch.optim.LBFGS([w, b], max_iter=MAX_ITER, history_size=20, line_search_fn="strong_wolfe",
                                  tolerance_grad=1e-6, tolerance_change=1e-9)

    def effective():
        w_eff = w / std[:, :, None]
        return w_eff, b - torch.einsum("fd,fdc->fc", mean, w_eff)

    def closure():
        optimizer.zero_grad()
        w_eff, b_eff = effective()
        logits = torch.einsum("md,fdc->fmc", x, w_eff) + b_eff[:, None, :]
        losses = F.cross_entropy(logits.reshape(-1, num_classes), y.repeat(folds), reduction="none")
        loss = (losses.view(folds, -1) * weight_rows).sum() + 0.5 * l2 * (w * w).sum()
        loss.backward()
        return loss

    optimizer.step(closure)
    with torch.no_grad():
        return tuple(t.detach() for t in effective())


def _rows(center: torch.Tensor, views: torch.Tensor | None) -> torch.Tensor:
    """The training rows: the center crops, then each augmented view of the same images (view-major)."""
    return center if views is None else torch.cat([center, *views])


def fold_logits(center, views, y, folds, num_classes: int, params: dict) -> tuple[list[float], float, np.ndarray]:
    """(held-out accuracy per fold, held-out cross-entropy, out-of-fold logits [N, C]) for one recipe."""
    x, n = _rows(center, views), len(center)
    copies = len(x) // n
    held = torch.zeros(len(folds), n, dtype=torch.bool)
    for f, (_, held_idx) in enumerate(folds):
        held[f, held_idx] = True
    train = (~held).repeat(1, copies)  # an image's views train in the folds its center crop trains in
    w, b = _fit(x, y.repeat(copies), train, num_classes, params["l2"], params.get("balanced", False))
    logits = torch.einsum("nd,fdc->fnc", center, w) + b[:, None, :]
    oof = torch.zeros(n, num_classes)
    scores = []
    for f, (_, held_idx) in enumerate(folds):
        idx = torch.as_tensor(held_idx)
        oof[idx] = logits[f, idx]
        scores.append(float((logits[f, idx].argmax(1) == y[idx]).float().mean()))
    heldout = torch.as_tensor(np.concatenate([h for _, h in folds]))
    loss = float(F.cross_entropy(oof[heldout], y[heldout]))
    return scores, loss, oof.numpy()


def search_head(center: np.ndarray, views: np.ndarray | None, labels: np.ndarray, folds: list, num_classes: int,
                *, seed: int, trials: int, deadline: float | None = None, progress=None) -> HeadSearch:
    """Optuna's TPE over the L2 strength (and class weighting when classes are imbalanced), each trial scored
    by the folds. Stops after `trials`, or at `deadline` (time.perf_counter) once one trial has finished."""
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    started = time.perf_counter()
    c, y = torch.as_tensor(center, dtype=torch.float32), torch.as_tensor(labels, dtype=torch.long)
    v = None if views is None else torch.as_tensor(views, dtype=torch.float32)
    counts = np.bincount(labels, minlength=num_classes)
    imbalanced = counts.max() > IMBALANCED * max(counts.min(), 1)
    results: list[HeadTrial] = []

    def objective(trial) -> float:
        params = {"l2": trial.suggest_float("l2", *L2_RANGE, log=True)}
        if imbalanced:
            params["balanced"] = trial.suggest_categorical("balanced", [False, True])
        scores, loss, oof = fold_logits(c, v, y, folds, num_classes, params)
        results.append(HeadTrial(params, scores, loss, oof))
        return float(np.mean(scores)) - 1e-6 * loss  # accuracy first; the held-out loss breaks ties

    def out_of_time(study, trial) -> None:
        if progress is not None:
            progress(len(results), trials)
        if deadline is not None and time.perf_counter() > deadline:
            study.stop()

    study = optuna.create_study(direction="maximize", sampler=optuna.samplers.TPESampler(seed=seed))
    study.optimize(objective, n_trials=trials, callbacks=[out_of_time])
    best = max(results, key=lambda t: (np.mean(t.fold_scores), -t.loss))
    history = [{"params": t.params, "score": float(np.mean(t.fold_scores)), "loss": t.loss} for t in results]
    return HeadSearch(best, len(results), time.perf_counter() - started, history)


def fit_head(center: np.ndarray, views: np.ndarray | None, labels: np.ndarray, num_classes: int,
             params: dict) -> tuple[np.ndarray, np.ndarray]:
    """The recipe refitted on every pool image: (weight [C, D], bias [C]) for an nn.Linear on raw features."""
    c, y = torch.as_tensor(center, dtype=torch.float32), torch.as_tensor(labels, dtype=torch.long)
    x = _rows(c, None if views is None else torch.as_tensor(views, dtype=torch.float32))
    copies = len(x) // len(c)
    w, b = _fit(x, y.repeat(copies), torch.ones(1, len(x), dtype=torch.bool), num_classes, params["l2"],
                params.get("balanced", False))
    return w[0].T.contiguous().numpy(), b[0].numpy()
