"""Auto mode's selection folds: stratified k-fold on small data, the val split on large data."""

from __future__ import annotations

import numpy as np

from headstart.training.search import folds as folds_module
from headstart.training.search.folds import selection_folds


def test_small_data_gets_stratified_folds_that_cover_every_image_once():
    labels = np.repeat([0, 1, 2], [10, 7, 5])
    folds, how = selection_folds(labels, np.arange(18, 22), seed=0)
    assert len(folds) == 5 and "5-fold" in how
    held = np.concatenate([h for _, h in folds])
    assert sorted(held) == list(range(len(labels)))
    for train, fold in folds:
        assert not set(train) & set(fold) and len(train) + len(fold) == len(labels)
        assert set(labels[fold]) == {0, 1, 2}  # stratified: every class in every held-out fold


def test_a_rare_class_keeps_five_folds_and_the_val_split_only_when_no_class_can_be_split(recwarn):
    labels = np.repeat([0, 1, 2], [10, 3, 1])  # classes of 3 and 1 images sit in 3 and 1 held-out folds
    folds, how = selection_folds(labels, np.arange(10, 14), seed=0)
    assert len(folds) == 5 and "5-fold" in how
    assert sorted(np.concatenate([h for _, h in folds])) == list(range(len(labels)))
    assert all(set(labels[t]) >= {0, 1} for t, _ in folds)  # a class of 3 is in every fold's training part
    assert sum((labels[h] == 1).any() for _, h in folds) == 3 and sum((labels[h] == 2).any() for _, h in folds) == 1
    assert not [w for w in recwarn if "least populated" in str(w.message)]  # expected here, so not shown
    val = np.array([1, 2])
    folds, how = selection_folds(np.array([0, 1, 2]), val, seed=0)  # one image a class: nothing to cross-validate
    assert len(folds) == 1 and list(folds[0][1]) == [1, 2] and "val split" in how


def test_large_data_is_scored_on_the_val_split(monkeypatch):
    monkeypatch.setattr(folds_module, "CV_MAX_IMAGES", 20)
    labels = np.tile([0, 1], 15)
    folds, how = selection_folds(labels, np.arange(24, 30), seed=0)
    assert len(folds) == 1 and list(folds[0][1]) == list(range(24, 30)) and len(folds[0][0]) == 24
    assert "val split" in how
