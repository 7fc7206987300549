"""How auto mode scores a candidate: stratified k-fold cross-validation over train+val when the data is small,
the run's own val split when it is large enough for one split to be trusted."""

from __future__ import annotations

import warnings

import numpy as np

__all__ = ["CV_MAX_IMAGES", "FOLDS", "selection_folds"]

FOLDS = 5
# Above this many train+val images, the val split alone holds hundreds of images per point of accuracy, and
# k-fold would cost k head fits per trial for little gain.
CV_MAX_IMAGES = 5_000


def selection_folds(labels: np.ndarray, val_index: np.ndarray, seed: int) -> tuple[list, str]:
    """([(train indices, held-out indices)], a description) over the pool (train then val images)."""
    from sklearn.model_selection import StratifiedKFold

    counts = np.bincount(labels)
    k = min(FOLDS, int(counts.max())) if len(labels) else 0
    if len(labels) <= CV_MAX_IMAGES and k >= 2:
        # A class with fewer than k images sits in fewer held-out folds (scikit-learn warns, and spreads it): one
        # rare class must not cost every candidate a fifth of its training data, nor send selection back to a
        # small val split.
        splitter = StratifiedKFold(n_splits=k, shuffle=True, random_state=seed)
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message="The least populated class", category=UserWarning)
            folds = [(train, held) for train, held in splitter.split(np.zeros(len(labels)), labels)]
        return folds, f"{k}-fold stratified cross-validation on train+val ({len(labels)} images)"
    held = np.asarray(val_index, dtype=np.int64)
    train = np.setdiff1d(np.arange(len(labels)), held)
    return [(train, held)], f"the val split ({len(held)} images)"
