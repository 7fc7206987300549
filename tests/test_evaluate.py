import numpy as np

from headstart.evaluate import (
    classification_metrics,
    coverage_curve,
    expected_calibration_error,
    fit_temperature,
    softmax,
    threshold_for_accuracy,
)


def _overconfident(n=600, k=4, seed=0):
    """Logits from a model right 70% of the time but ~99% confident: temperature must rise above 1."""
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, k, n)
    pred = np.where(rng.random(n) < 0.7, labels, (labels + rng.integers(1, k, n)) % k)
    logits = rng.normal(0, 0.5, (n, k))
    logits[np.arange(n), pred] += 6.0
    return logits, labels


def test_temperature_scaling_lowers_nll_and_ece():
    logits, labels = _overconfident()
    t = fit_temperature(logits, labels)
    before = classification_metrics(logits, labels, list("abcd"))
    after = classification_metrics(logits, labels, list("abcd"), temperature=t)
    assert t > 1.5
    assert after["nll_calibrated"] < before["loss"] - 0.1
    assert after["ece_calibrated"] < before["ece"] / 2
    assert after["accuracy"] == before["accuracy"]  # scaling never changes the argmax


def test_metrics_and_confusion_matrix():
    logits = np.array([[2, 0], [0, 2], [2, 0], [0, 2]], dtype=float)
    labels = np.array([0, 1, 1, 1])
    m = classification_metrics(logits, labels, ["a", "b"], threshold=0.5)
    assert m["accuracy"] == 0.75
    assert m["confusion_matrix"] == [[1, 0], [1, 2]]
    assert m["per_class"]["a"] == {"precision": 0.5, "recall": 1.0, "f1": 2 / 3, "support": 1}
    assert m["rejection"]["rejected_rate"] == 0.0


def test_coverage_and_target_threshold():
    logits, labels = _overconfident(seed=1)
    probs = softmax(logits)
    curve = coverage_curve(probs, labels)
    assert curve[0]["coverage"] == 1.0
    assert all(a["coverage"] >= b["coverage"] for a, b in zip(curve, curve[1:]))
    row = threshold_for_accuracy(probs, labels, 0.72)
    assert row is not None and row["accuracy"] >= 0.72 and row["coverage"] < 1.0


def test_ece_zero_for_perfectly_calibrated_bins():
    probs = np.array([[1.0, 0.0]] * 10)
    assert expected_calibration_error(probs, np.zeros(10, dtype=int)) == 0.0
