"""The linear heads of auto mode's search: every fold fitted at once, scored on images it did not train on."""

from __future__ import annotations

import time

import numpy as np
import torch

from headstart.training.search.heads import fit_head, fold_logits, search_head


def _blobs(n_per_class=20, classes=3, dim=16, spread=1.0, seed=0):
    rng = np.random.default_rng(seed)
    centers = rng.normal(0, 3, (classes, dim))
    labels = np.repeat(np.arange(classes), n_per_class)
    features = centers[labels] + rng.normal(0, spread, (len(labels), dim))
    features[:, 0] *= 1000  # one dimension on another scale: standardisation must absorb it
    return features.astype(np.float32), labels


def _folds(n, k=4, seed=0):
    order = np.random.default_rng(seed).permutation(n)
    return [(np.setdiff1d(np.arange(n), held), np.sort(held)) for held in np.array_split(order, k)]


def test_out_of_fold_logits_come_from_a_head_that_did_not_see_the_image():
    x, y = _blobs(spread=2.5)
    folds = _folds(len(y))
    params = {"l2": 1e-2}
    scores, loss, oof = fold_logits(torch.from_numpy(x), None, torch.from_numpy(y), folds, 3, params)
    assert len(scores) == 4 and 0.5 < np.mean(scores) <= 1 and loss > 0
    for train, held in folds:  # the joint fit equals one fit per fold on that fold's training images
        weight, bias = fit_head(x[train], None, y[train], 3, params)
        np.testing.assert_allclose(oof[held], x[held] @ weight.T + bias, rtol=0.05, atol=0.05)


def test_views_train_with_their_image_and_never_score():
    x, y = _blobs()
    folds = _folds(len(y))
    garbage = np.random.default_rng(1).normal(0, 50, (2, *x.shape)).astype(np.float32)
    _, _, plain = fold_logits(torch.from_numpy(x), None, torch.from_numpy(y), folds, 3, {"l2": 1e-2})
    _, _, noisy = fold_logits(torch.from_numpy(x), torch.from_numpy(garbage), torch.from_numpy(y), folds, 3,
                              {"l2": 1e-2})
    assert plain.shape == noisy.shape == (len(y), 3)  # scored on center crops only
    assert not np.allclose(plain, noisy)  # ... by heads the views trained


def test_fit_head_gives_a_linear_on_raw_features_and_l2_shrinks_it():
    x, y = _blobs()
    weight, bias = fit_head(x, None, y, 3, {"l2": 1e-3})
    assert weight.shape == (3, x.shape[1]) and bias.shape == (3,)
    assert ((x @ weight.T + bias).argmax(1) == y).mean() == 1.0
    strong, _ = fit_head(x, None, y, 3, {"l2": 1.0})
    standardised_norm = lambda w: np.linalg.norm(w * x.std(0))  # noqa: E731
    assert standardised_norm(strong) < standardised_norm(weight)


def test_search_is_reproducible_and_stops_at_its_trials_or_deadline():
    x, y = _blobs(spread=3.0)
    folds = _folds(len(y))
    seen = []
    first = search_head(x, None, y, folds, 3, seed=7, trials=5, progress=lambda d, t: seen.append((d, t)))
    again = search_head(x, None, y, folds, 3, seed=7, trials=5)
    assert first.trials == again.trials == 5 and seen[-1] == (5, 5)
    assert first.best.params == again.best.params and first.best.fold_scores == again.best.fold_scores
    assert first.best.params["l2"] == max(first.history, key=lambda h: (h["score"], -h["loss"]))["params"]["l2"]
    assert "balanced" not in first.best.params  # balanced classes: class weighting is not searched
    late = search_head(x, None, y, folds, 3, seed=7, trials=50, deadline=time.perf_counter() - 1)
    assert late.trials == 1  # past the deadline: one trial, so that there is a head


def test_class_weighting_is_searched_when_classes_are_imbalanced():
    x, y = _blobs()
    keep = np.concatenate([np.flatnonzero(y == 0), np.flatnonzero(y == 1), np.flatnonzero(y == 2)[:6]])
    result = search_head(x[keep], None, y[keep], _folds(len(keep), k=3), 3, seed=0, trials=4)
    assert {"l2", "balanced"} <= set(result.history[0]["params"])
