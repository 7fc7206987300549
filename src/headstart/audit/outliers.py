"""Outliers: images far from every class, such as a screenshot in a folder of dogs.

An image's distance to a class is 1 - the mean cosine similarity to its NEIGHBOURS nearest images of that class
(itself left out); its outlier score is the distance to the nearest class. Scores are compared with the set's own
spread (a robust z-score: median and MAD), so the rule needs no per-dataset scale. The cut-off was measured on
hymenoptera_data with off-topic images planted into it (docs/audit.md, "Thresholds").
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from headstart.audit.features import Embedded

__all__ = ["NEIGHBOURS", "ROBUST_Z", "Outlier", "outlier_scores", "outliers"]

NEIGHBOURS = 5
ROBUST_Z = 4.5  # hymenoptera_data: ordinary images <= 4.0; 6 of 12 planted off-topic images and its own
# "imageNotFound.gif" placeholder (5.4) above: a strict cut, so that a flag is worth a look
_BLOCK = 2048


@dataclass
class Outlier:
    path: str
    split: str
    label: str
    nearest_class: str
    score: float  # distance to the nearest class (0..2)
    z: float  # robust z-score of that distance within this set


def outlier_scores(emb: Embedded) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(distance to the nearest class, that class, robust z) for every image."""
    n, k = len(emb), len(emb.classes)
    distance = np.full((n, k), np.inf)
    for start in range(0, n, _BLOCK):
        sims = emb.features[start:start + _BLOCK] @ emb.features.T
        rows = np.arange(len(sims))
        sims[rows, start + rows] = -np.inf  # not its own neighbour
        for c in range(k):
            members = np.flatnonzero(emb.labels == c)
            m = min(NEIGHBOURS, len(members) - 1) if len(members) > 1 else len(members)
            if m < 1:
                continue
            part = sims[:, members]
            nearest = -np.partition(-part, m - 1, axis=1)[:, :m]
            found = np.isfinite(nearest)  # a one-image class has no neighbour for its own image: inf there
            total = np.where(found, nearest, 0.0).sum(1)
            counted = found.sum(1)
            distance[start:start + len(sims), c] = np.where(counted > 0, 1 - total / np.maximum(counted, 1), np.inf)
    nearest_class = distance.argmin(1)
    score = distance.min(1)
    median = np.median(score)
    mad = np.median(np.abs(score - median)) * 1.4826 + 1e-9
    return score, nearest_class, (score - median) / mad


def outliers(emb: Embedded) -> list[Outlier]:
    """The images whose robust z-score reaches ROBUST_Z, the farthest first."""
    if len(emb) < 10:  # no spread to compare with
        return []
    score, nearest, z = outlier_scores(emb)
    found = [Outlier(emb.paths[i], emb.splits[i], emb.classes[emb.labels[i]], emb.classes[nearest[i]],
                     round(float(score[i]), 4), round(float(z[i]), 2)) for i in np.flatnonzero(z >= ROBUST_Z)]
    return sorted(found, key=lambda o: -o.z)
