"""Label issues and class health from out-of-fold predicted probabilities on the cached features.

The head is a ridge-regularised linear classifier whose leave-one-out predictions have a closed form (one
eigendecomposition, then each image is scored by the head fitted on all the others): n-fold cross-validation
for the price of one fit. Its strength is chosen by the leave-one-out error and its softmax temperature by the
leave-one-out log-loss, so nothing is tuned by hand. cleanlab ranks and flags the suspects from those
probabilities. Measured against k-fold logistic regression on the dev sets: as good or better at finding
flipped labels, and 10-100x faster (docs/audit.md).
"""

from __future__ import annotations

import warnings
from collections import Counter
from dataclasses import dataclass

import numpy as np

__all__ = ["LabelIssue", "class_health", "label_issues", "out_of_fold_probabilities"]

_LAMBDAS = np.logspace(0, 5, 16)  # ridge strengths tried; the leave-one-out error picks one
_TEMPERATURES = np.logspace(-2.5, 0.5, 25)


@dataclass
class LabelIssue:
    """An image whose given label the other images contradict. quality: cleanlab's self-confidence (the
    out-of-fold probability of the given label): lower is more suspect."""

    path: str
    split: str
    given: str
    suggested: str
    quality: float
    suggested_probability: float


def out_of_fold_probabilities(features: np.ndarray, labels: np.ndarray, num_classes: int) -> np.ndarray:
    """[N, K] probabilities of each image from a linear head that never saw it (exact leave-one-out)."""
    x = features.astype(np.float64)
    x = (x - x.mean(0)) / (x.std(0) + 1e-6)
    x = np.hstack([x, np.full((len(x), 1), 10.0)])  # a weakly penalised intercept
    targets = np.eye(num_classes)[labels]
    # Eigenvectors of the smaller Gram matrix give the hat matrix H = X (X'X + lam I)^-1 X' for every lam.
    if len(x) <= x.shape[1]:
        values, u = np.linalg.eigh(x @ x.T)
    else:
        values, v = np.linalg.eigh(x.T @ x)
        keep = values > 1e-9 * values.max()
        values, u = values[keep], (x @ v[:, keep]) / np.sqrt(values[keep])
    values = np.clip(values, 0, None)
    projected, u2 = u.T @ targets, u ** 2
    best = None
    for lam in _LAMBDAS:
        shrink = values / (values + lam)
        fitted, leverage = u @ (shrink[:, None] * projected), u2 @ shrink
        loo = (fitted - leverage[:, None] * targets) / (1 - leverage)[:, None]
        error = float(((loo - targets) ** 2).sum(1).mean())
        if best is None or error < best[0]:
            best = (error, loo)
    scores = best[1]
    rows = np.arange(len(labels))
    losses = [-np.log(_softmax(scores / t)[rows, labels] + 1e-12).mean() for t in _TEMPERATURES]
    return _softmax(scores / _TEMPERATURES[int(np.argmin(losses))])


def _softmax(z: np.ndarray) -> np.ndarray:
    z = z - z.max(1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(1, keepdims=True)


def label_issues(probs: np.ndarray, labels: np.ndarray, classes: list[str], paths: list[str], splits: list[str]
                 ) -> tuple[list[LabelIssue], np.ndarray]:
    """(the images cleanlab flags, most suspect first; every image's quality score). Flags nothing with fewer
    than 2 classes."""
    from cleanlab.filter import find_label_issues
    from cleanlab.rank import get_label_quality_scores

    # Only the classes that have images: an empty class folder (or one image in a rare class, which cleanlab only
    # warns about) must not silence the audit of every other class, nor be suggested as a label.
    present = np.flatnonzero(np.bincount(labels, minlength=len(classes)))
    probs = np.where(np.isin(np.arange(len(classes)), present), probs, 0.0)
    probs = probs / np.maximum(probs.sum(1, keepdims=True), 1e-12)
    quality = get_label_quality_scores(labels, probs, method="self_confidence")
    flagged = np.zeros(len(labels), dtype=bool)
    if len(present) >= 2:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message="May not flag all label issues", category=UserWarning)
            flagged = find_label_issues(np.searchsorted(present, labels), probs[:, present])
    others = np.where(np.eye(len(classes), dtype=bool)[labels], -1.0, probs)
    others[:, np.setdiff1d(np.arange(len(classes)), present)] = -1.0
    suggested = others.argmax(1)
    issues = [LabelIssue(paths[i], splits[i], classes[labels[i]], classes[suggested[i]], round(float(quality[i]), 4),
                         round(float(probs[i, suggested[i]]), 4))
              for i in np.flatnonzero(flagged)]
    issues.sort(key=lambda issue: issue.quality)
    return issues, quality


def class_health(probs: np.ndarray, labels: np.ndarray, classes: list[str], pairs: int = 5) -> dict:
    """Per-class out-of-fold accuracy against the given labels, and the most-confused (given, predicted) pairs."""
    predicted = probs.argmax(1)
    per_class = {name: {"images": int((labels == i).sum()),
                        "accuracy": round(float((predicted[labels == i] == i).mean()), 4) if (labels == i).any()
                        else None}
                 for i, name in enumerate(classes)}
    confused = Counter((int(g), int(p)) for g, p in zip(labels, predicted) if g != p)
    return {"accuracy": round(float((predicted == labels).mean()), 4) if len(labels) else None,
            "per_class": per_class,
            "confused": [{"given": classes[g], "predicted": classes[p], "images": n}
                         for (g, p), n in confused.most_common(pairs)]}
