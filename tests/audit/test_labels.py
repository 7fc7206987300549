"""Out-of-fold probabilities, cleanlab's ranking and class health on synthetic embeddings with planted flips."""

from __future__ import annotations

import numpy as np

from headstart.audit.labels import class_health, label_issues, out_of_fold_probabilities


def _clusters(n_per_class=60, classes=3, dim=64, spread=0.6, seed=0):
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(classes, dim))
    labels = np.repeat(np.arange(classes), n_per_class)
    features = centres[labels] + spread * rng.normal(size=(len(labels), dim))
    return features.astype(np.float32), labels


def test_flipped_labels_rank_first_and_are_flagged_with_their_true_class():
    features, truth = _clusters()
    labels = truth.copy()
    flipped = np.array([3, 70, 130, 150, 20, 95])
    labels[flipped] = (labels[flipped] + 1) % 3
    probs = out_of_fold_probabilities(features, labels, 3)
    assert probs.shape == (180, 3) and np.allclose(probs.sum(1), 1)
    paths = [f"img{i}.jpg" for i in range(180)]
    issues, quality = label_issues(probs, labels, ["a", "b", "c"], paths, ["train"] * 180)
    assert set(np.argsort(quality)[:len(flipped)]) == set(flipped)  # precision 1 at k = number flipped
    flagged = {i.path: i for i in issues}
    assert {f"img{i}.jpg" for i in flipped} <= set(flagged)
    for i in flipped:  # the suggestion is the class the image came from
        assert flagged[f"img{i}.jpg"].suggested == "abc"[truth[i]] and flagged[f"img{i}.jpg"].given == "abc"[labels[i]]
    assert [i.quality for i in issues] == sorted(i.quality for i in issues)


def test_a_class_with_one_image_or_none_does_not_silence_the_audit(recwarn):
    features, truth = _clusters()
    features, truth = np.vstack([features, features[:1] + 5.0]), np.append(truth, 3)  # "d": one image; "e": none
    labels = truth.copy()
    flipped = np.array([3, 70, 130])
    labels[flipped] = (labels[flipped] + 1) % 3
    probs = out_of_fold_probabilities(features, labels, 5)
    paths = [f"img{i}.jpg" for i in range(len(labels))]
    issues, _ = label_issues(probs, labels, list("abcde"), paths, ["train"] * len(labels))
    assert {f"img{i}.jpg" for i in flipped} <= {i.path for i in issues}
    assert all(i.suggested in "abcd" for i in issues)
    assert not [w for w in recwarn if "May not flag" in str(w.message)]


def test_out_of_fold_means_an_image_never_scores_itself():
    # Pure noise: a head that saw each image would fit its label; a leave-one-out head is at chance.
    rng = np.random.default_rng(1)
    features = rng.normal(size=(200, 300)).astype(np.float32)
    labels = rng.integers(0, 2, 200)
    probs = out_of_fold_probabilities(features, labels, 2)
    assert 0.3 < (probs.argmax(1) == labels).mean() < 0.7


def test_class_health_reports_per_class_accuracy_and_confused_pairs():
    labels = np.array([0, 0, 0, 0, 1, 1, 1, 2, 2])
    probs = np.eye(3)[[0, 0, 1, 1, 1, 1, 1, 2, 1]]
    health = class_health(probs, labels, ["cat", "dog", "fox"])
    assert health["per_class"]["cat"] == {"images": 4, "accuracy": 0.5}
    assert health["per_class"]["dog"]["accuracy"] == 1.0 and health["per_class"]["fox"]["accuracy"] == 0.5
    assert health["confused"][0] == {"given": "cat", "predicted": "dog", "images": 2}
    assert health["confused"][1] == {"given": "fox", "predicted": "dog", "images": 1}
