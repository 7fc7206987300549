"""Near-duplicates: pairs close in the backbone's embedding, confirmed by a perceptual hash of their pixels.

A resized, recompressed, slightly cropped or brightened copy keeps both its meaning (cosine similarity of the
pooled features) and its layout (pHash); two different photos of one subject keep only the first. Exact copies
(same bytes) are the doctor's job (data/check.py) and are skipped. Images smaller than TINY pixels on a side
(8x8 digits) are left out: they carry too little for either signal, and the 8x8-thumbnail correlation tried
for them flagged hundreds of distinct digits as copies (docs/audit.md); for them only exact copies are found.

The thresholds were measured, not chosen: on hymenoptera_data (not a benchmark set), 60 planted copies (15 each
of resized to 70%, JPEG quality 60, cropped by 10%, brightness +20%) against every distinct pair; each threshold
sits midway between the worst copy and the closest distinct pair (docs/audit.md, "Thresholds").

Both signals are absolute, so in a set whose images all look alike (scans, X-rays, upscaled digits) distinct
images pass them by the thousand. A pair must also stand out from its neighbourhood, as in Lowe's ratio test:
its embedding distance at most CROWD_RATIO of the distance to either image's CROWD_K-th nearest neighbour.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from headstart.audit.features import Embedded, load_images

__all__ = ["COSINE", "PHASH_BITS", "TINY", "NearDuplicate", "near_duplicates"]

COSINE = 0.85  # copies >= 0.885, distinct pairs <= 0.806
PHASH_BITS = 19  # of 64; copies <= 16 (a 10% crop), distinct pairs >= 22
TINY = 32  # the doctor's too_small side: smaller images are left out
CROWD_K = 5  # the neighbour a copy is compared with: an image may have a few copies and still be found
CROWD_RATIO = 0.32  # copies <= 0.27 (hymenoptera), distinct pairs on upscaled digits >= 0.37
_BLOCK = 2048  # rows of the similarity matrix at a time: memory stays O(block x N)


@dataclass
class NearDuplicate:
    """Two files holding the same picture. leakage: in different splits (scores would be inflated)."""

    first: str
    second: str
    first_split: str
    second_split: str
    similarity: float  # embedding cosine
    phash_distance: int  # differing bits of 64

    @property
    def leakage(self) -> bool:
        return self.first_split != self.second_split


def near_duplicates(emb: Embedded, tiny: set[str] = frozenset()) -> list[NearDuplicate]:
    """Every near-duplicate pair of `emb` (exact copies excluded), the closest first. tiny: paths of images
    under TINY pixels on a side (from the doctor's too_small finding), left out."""
    small = np.array([p in tiny for p in emb.paths], dtype=bool)
    pairs, crowd = _similar(emb.features, COSINE)
    pairs = [(i, j, s) for i, j, s in pairs if not (small[i] or small[j])
             and 1 - s <= CROWD_RATIO * (1 - max(crowd[i], crowd[j]))]
    found = _confirm_by_phash(emb, pairs)
    out = []
    for i, j, similarity, bits in found:
        if emb.hashes[i] == emb.hashes[j]:
            continue
        out.append(NearDuplicate(emb.paths[i], emb.paths[j], emb.splits[i], emb.splits[j],
                                 round(float(similarity), 4), bits))
    out.sort(key=lambda d: -d.similarity)
    return out


def _similar(vectors: np.ndarray, threshold: float) -> tuple[list[tuple[int, int, float]], np.ndarray]:
    """(index pairs i < j whose rows' dot product is at least threshold, each row's similarity to its CROWD_K-th
    nearest other row); rows of unit length."""
    out = []
    crowd = np.full(len(vectors), -1.0, dtype=np.float32)
    k = min(CROWD_K, len(vectors) - 1)
    for start in range(0, len(vectors), _BLOCK):
        block = vectors[start:start + _BLOCK] @ vectors.T
        rows, cols = np.nonzero(block >= threshold)
        for r, c in zip(rows, cols):
            i = start + int(r)
            if i < c:
                out.append((i, int(c), float(block[r, c])))
        if k > 0:  # in place: a block of a large set is hundreds of MB
            np.fill_diagonal(block[:, start:], -np.inf)  # not its own neighbour
            np.negative(block, out=block)
            block.partition(k - 1, axis=1)
            crowd[start:start + len(block)] = -block[:, k - 1]
    return out, crowd


def _confirm_by_phash(emb: Embedded, pairs: list[tuple[int, int, float]]) -> list[tuple[int, int, float, int]]:
    if not pairs:
        return []
    import imagehash

    needed = sorted({i for i, j, _ in pairs} | {j for _, j, _ in pairs})
    images = load_images([emb.paths[i] for i in needed], emb.short_side, emb.interpolation)
    hashes = {i: imagehash.phash(img) for i, img in zip(needed, images)}
    out = []
    for i, j, s in pairs:
        bits = int(hashes[i] - hashes[j])
        if bits <= PHASH_BITS:
            out.append((i, j, s, bits))
    return out
