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


def test_fewer_folds_for_a_rare_class_and_the_val_split_when_one_image_is_all_there_is():
    folds, how = selection_folds(np.repeat([0, 1], [10, 3]), np.arange(10, 13), seed=0)
    assert len(folds) == 3 and "3-fold" in how
    val = np.array([8, 9, 10])
    folds, how = selection_folds(np.repeat([0, 1], [10, 1]), val, seed=0)
    assert len(folds) == 1 and list(folds[0][1]) == [8, 9, 10] and "val split" in how


def test_large_data_is_scored_on_the_val_split(monkeypatch):
    monkeypatch.setattr(folds_module, "CV_MAX_IMAGES", 20)
    labels = np.tile([0, 1], 15)
    folds, how = selection_folds(labels, np.arange(24, 30), seed=0)
    assert len(folds) == 1 and list(folds[0][1]) == list(range(24, 30)) and len(folds[0][0]) == 24
    assert "val split" in how
