"""Metrics from logits: accuracy, loss, per-class precision/recall/F1, confusion matrix, calibration.

Everything here takes logits and labels and returns plain dicts, so the trainer, `evaluate` and the report
share one definition of each number.
"""

from __future__ import annotations

import math

import numpy as np

__all__ = [
    "PRIOR_OBSERVATIONS",
    "classification_metrics",
    "coverage_curve",
    "expected_calibration_error",
    "fit_temperature",
    "softmax",
    "threshold_for_accuracy",
]


def softmax(logits: np.ndarray, temperature: float = 1.0) -> np.ndarray:
    z = np.asarray(logits, dtype=np.float64) / temperature
    z = z - z.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)


def _nll(probs: np.ndarray, labels: np.ndarray) -> float:
    return float(-np.log(np.clip(probs[np.arange(len(labels)), labels], 1e-12, None)).mean())


def expected_calibration_error(probs: np.ndarray, labels: np.ndarray, bins: int = 15) -> float:
    """ECE with equal-width confidence bins (Guo et al. 2017)."""
    confidence = probs.max(axis=1)
    correct = probs.argmax(axis=1) == labels
    edges = np.linspace(0, 1, bins + 1)
    ece = 0.0
    for lo, hi in zip(edges[:-1], edges[1:]):
        inside = (confidence > lo) & (confidence <= hi)
        if inside.any():
            ece += inside.mean() * abs(correct[inside].mean() - confidence[inside].mean())
    return float(ece)


# The temperature's prior is worth this many validation images (see fit_temperature): the weakest prior on the
# plateau of leave-one-out NLL over saved runs' validation splits (docs/benchmarks.md, "Temperature prior"),
# because its centre, T = 1, is itself biased for heads trained with label smoothing (they come out under-confident).
PRIOR_OBSERVATIONS = 10.0
TEMPERATURE_BOUNDS = (0.25, 10.0)


def fit_temperature(logits: np.ndarray, labels: np.ndarray, *,
                    prior_observations: float = PRIOR_OBSERVATIONS) -> float:
    """The temperature minimising validation NLL plus a prior worth `prior_observations` images, centred at 1.

    The prior is n0 = `prior_observations` pseudo-observations drawn from the validation inputs and labelled by
    the unscaled model's own probabilities: the objective is
        sum_i NLL_i(T) + n0 * mean_i CE(softmax(z_i), softmax(z_i / T)),
    whose second term is smallest at T = 1 and has, per pseudo-observation, the curvature (Fisher information)
    of one real observation. So the fit is a MAP estimate whose prior counts like n0 more images: it pulls
    log T back towards 0 on a split of tens of images, less on hundreds, and on thousands of images it is the
    plain NLL fit.

    Why: the NLL-optimal T is driven by the few validation errors. When a small split has one error, or none,
    the plain fit sharpens until that error alone balances it or, with none, runs to the lower bound and claims
    certainty (docs/benchmarks.md, "Temperature prior", has the measured cases). The prior keeps such a split
    from moving T far from 1 on little evidence while leaving a well-supported correction (T < 1 for the
    under-confident heads that label smoothing produces, T > 1 for over-confident ones) mostly intact.

    Both terms are convex in 1/T, so the objective is unimodal in log T: golden-section search on log T,
    kept in [0.25, 10]. Hand-written because it is a few lines and needs no torch, so the ONNX engine can
    reuse it. `prior_observations=0` gives the plain maximum-likelihood temperature.
    """
    logits = np.asarray(logits, dtype=np.float64)
    labels = np.asarray(labels, dtype=np.int64)
    if len(labels) == 0:
        return 1.0  # no evidence: the prior's mode
    if prior_observations < 0:
        raise ValueError(f"prior_observations must be >= 0 (got {prior_observations})")
    rows = np.arange(len(labels))
    self_labels = softmax(logits)  # the pseudo-observations' soft labels

    def objective(log_t: float) -> float:
        z = logits / math.exp(log_t)
        z = z - z.max(axis=1, keepdims=True)
        log_p = z - np.log(np.exp(z).sum(axis=1, keepdims=True))
        data = -log_p[rows, labels].sum()
        prior = -(self_labels * log_p).sum(axis=1).mean() if prior_observations else 0.0
        return float(data + prior_observations * prior)

    lo, hi = (math.log(b) for b in TEMPERATURE_BOUNDS)
    ratio = (math.sqrt(5) - 1) / 2
    a, b = hi - ratio * (hi - lo), lo + ratio * (hi - lo)
    fa, fb = objective(a), objective(b)
    for _ in range(60):
        if fa < fb:
            hi, b, fb = b, a, fa
            a = hi - ratio * (hi - lo)
            fa = objective(a)
        else:
            lo, a, fa = a, b, fb
            b = lo + ratio * (hi - lo)
            fb = objective(b)
    return float(math.exp((lo + hi) / 2))


def coverage_curve(probs: np.ndarray, labels: np.ndarray, thresholds: np.ndarray | None = None) -> list[dict]:
    """For each threshold: the share of predictions kept (confidence >= t) and the accuracy on those."""
    thresholds = np.linspace(0, 0.99, 100) if thresholds is None else thresholds
    confidence = probs.max(axis=1)
    correct = probs.argmax(axis=1) == labels
    rows = []
    for t in thresholds:
        kept = confidence >= t
        rows.append({"threshold": float(t), "coverage": float(kept.mean()) if len(kept) else 0.0,
                     "accuracy": float(correct[kept].mean()) if kept.any() else float("nan")})
    return rows


def threshold_for_accuracy(probs: np.ndarray, labels: np.ndarray, target: float) -> dict | None:
    """The lowest threshold whose accepted predictions reach `target` accuracy, and the coverage it costs."""
    confidence = probs.max(axis=1)
    for t in np.unique(np.concatenate([[0.0], confidence])):
        row = coverage_curve(probs, labels, np.array([t]))[0]
        if row["coverage"] > 0 and row["accuracy"] >= target:
            return row
    return None


def classification_metrics(logits: np.ndarray, labels: np.ndarray, classes: list[str], *,
                           temperature: float = 1.0, threshold: float | None = None) -> dict:
    """Accuracy, loss, per-class precision/recall/F1, the confusion matrix and calibration, as plain data."""
    logits = np.asarray(logits, dtype=np.float64)
    labels = np.asarray(labels, dtype=np.int64)
    k = len(classes)
    probs_raw = softmax(logits)
    probs = softmax(logits, temperature)
    pred = probs.argmax(axis=1)
    confusion = np.zeros((k, k), dtype=np.int64)
    np.add.at(confusion, (labels, pred), 1)
    per_class = {}
    for i, name in enumerate(classes):
        tp = int(confusion[i, i])
        precision = tp / confusion[:, i].sum() if confusion[:, i].sum() else 0.0
        recall = tp / confusion[i].sum() if confusion[i].sum() else 0.0
        f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
        per_class[name] = {"precision": precision, "recall": recall, "f1": f1, "support": int(confusion[i].sum())}
    n = len(labels)
    metrics = {
        "n": n,
        "accuracy": float((pred == labels).mean()) if n else 0.0,
        "loss": _nll(probs_raw, labels) if n else 0.0,
        "nll_calibrated": _nll(probs, labels) if n else 0.0,
        "ece": expected_calibration_error(probs_raw, labels) if n else 0.0,
        "ece_calibrated": expected_calibration_error(probs, labels) if n else 0.0,
        "temperature": temperature,
        "per_class": per_class,
        "confusion_matrix": confusion.tolist(),
    }
    if threshold is not None and n:
        kept = probs.max(axis=1) >= threshold
        metrics["rejection"] = {
            "threshold": threshold,
            "rejected_rate": float(1 - kept.mean()),
            "accepted_accuracy": float((pred[kept] == labels[kept]).mean()) if kept.any() else None,
        }
    return metrics
