"""Outliers: an image far from every class is flagged; ordinary members of tight or loose classes are not."""

from __future__ import annotations

import numpy as np

from headstart.audit.features import Embedded
from headstart.audit.outliers import outlier_scores, outliers


def _embedded(features, labels):
    features = features / np.linalg.norm(features, axis=1, keepdims=True)
    n = len(labels)
    return Embedded(["a", "b"], [f"p{i}" for i in range(n)], ["train"] * n, np.asarray(labels),
                    [str(i) for i in range(n)], features.astype(np.float32), 0, [])


def test_an_image_far_from_every_class_is_the_only_outlier():
    rng = np.random.default_rng(0)
    centres = rng.normal(size=(2, 128)) * 3
    labels = np.repeat([0, 1], 50)
    features = centres[labels] + rng.normal(size=(100, 128))
    alien = rng.normal(size=(1, 128)) * 3  # a third, unrelated direction, labelled "a"
    emb = _embedded(np.vstack([features, alien]), np.append(labels, 0))
    found = outliers(emb)
    assert [o.path for o in found] == ["p100"]
    assert found[0].label == "a" and found[0].z >= 4.5
    score, _, z = outlier_scores(emb)
    assert z[:100].max() < 4.5 and score.shape == (101,)


def test_no_outliers_in_ordinary_clusters_or_tiny_sets():
    rng = np.random.default_rng(2)
    labels = np.repeat([0, 1], 80)
    features = rng.normal(size=(2, 64))[labels] * 2 + rng.normal(size=(160, 64))
    assert outliers(_embedded(features, labels)) == []
    assert outliers(_embedded(features[:6], labels[:6])) == []


def test_a_class_of_one_image_does_not_silence_the_outliers(recwarn):
    """A one-image class has no neighbour for its own image: that image is measured against the other classes, and
    the set's spread stays a number."""
    rng = np.random.default_rng(0)
    centres = rng.normal(size=(3, 128)) * 3
    labels = np.append(np.repeat([0, 1], 50), 2)  # class "c": one image
    features = centres[labels] + rng.normal(size=(101, 128))
    alien = rng.normal(size=(1, 128)) * 3
    emb = _embedded(np.vstack([features, alien]), np.append(labels, 0))
    emb.classes = ["a", "b", "c"]
    score, nearest, z = outlier_scores(emb)
    assert np.isfinite(score).all() and np.isfinite(z).all() and nearest[100] != 2
    assert "p101" in [o.path for o in outliers(emb)]
    assert not [w for w in recwarn if "empty slice" in str(w.message)]
