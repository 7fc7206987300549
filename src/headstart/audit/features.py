"""The audit's view of a dataset: every usable image's pooled features, from the feature cache training uses.

The cache key is training's own (backbone + weights, eval transform, view 0, no seed, the features' precision), so
features computed here are the ones a later `headstart train` with the same backbone reads back, and features a
training run computed make the audit nearly free. Only images missing from the cache are decoded.
"""

from __future__ import annotations

import hashlib
import logging
import os
from collections.abc import Callable, Sequence
from contextlib import closing
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from headstart.data.dataset import Dataset
from headstart.data.loading import decode_split, map_items
from headstart.runtime.images import ImageLoadError

__all__ = ["Embedded", "embed_dataset", "load_images"]

log = logging.getLogger(__name__)

Progress = Callable[[str, int, int], None]


@dataclass
class Embedded:
    """Usable images of every split, in one order: path, split, class index, content hash, L2-normalised feature."""

    classes: list[str]
    paths: list[str]
    splits: list[str]
    labels: np.ndarray  # int64 [N]
    hashes: list[str]
    features: np.ndarray  # float32 [N, D], each row of unit length
    computed: int  # how many rows were extracted now (the rest came from the cache)
    failures: list[tuple[str, str]]
    short_side: int | None = None  # the eval transform's resize: images for hashes and thumbnails load at this
    interpolation: str = "bilinear"

    def __len__(self) -> int:
        return len(self.paths)

    def index(self, split: str) -> np.ndarray:
        return np.array([i for i, s in enumerate(self.splits) if s == split], dtype=np.int64)


def embed_dataset(dataset: Dataset, *, backbone: str = "efficientnet_lite0", weights: str | None = None,
                  image_size: int | None = None, precision: str = "auto", accelerator: str = "auto",
                  engine: str = "auto", progress: Progress | None = None) -> Embedded:
    """Features of every image of `dataset` (all splits), computing only the ones the cache lacks."""
    from headstart.backbones.registry import get_spec
    from headstart.data.transforms import transform_key
    from headstart.device import features_precision, resolve_accelerator, resolve_precision
    from headstart.extract.feature_cache import FeatureCache, model_id

    spec = get_spec(backbone)
    pre = spec.preprocessing if image_size is None else spec.preprocessing.with_crop(image_size)
    accelerator = resolve_accelerator(accelerator)
    precision = features_precision(precision, resolve_precision(precision, accelerator))  # as training's: same key
    cache = FeatureCache()
    key = FeatureCache.key(model_id(spec.name, spec.weights.kind, spec.weights.ref, weights),
                           transform_key(pre, "none"), 0, None, precision)
    items = [(p, y, s) for s, rows in dataset.splits.items() for p, y in rows]
    hashes = _content_hashes([p for p, _, _ in items], progress)
    missing = cache.missing(key, [h or "" for h in hashes])
    missing = [i for i in missing if hashes[i] is not None]
    failures: list[tuple[str, str]] = [(items[i][0], "cannot be read") for i, h in enumerate(hashes) if h is None]
    bad: set[int] = {i for i, h in enumerate(hashes) if h is None}
    if missing:
        bad |= _extract_missing(items, hashes, missing, spec, pre, weights, accelerator, precision, engine, cache,
                                key, failures, progress)
    keep = [i for i in range(len(items)) if i not in bad]
    rows = cache.rows(key, [hashes[i] for i in keep])
    features = rows.features() if keep else np.zeros((0, spec.in_features))
    features = features.astype(np.float32)
    features /= np.maximum(np.linalg.norm(features, axis=1, keepdims=True), 1e-12)
    return Embedded(classes=list(dataset.classes), paths=[items[i][0] for i in keep],
                    splits=[items[i][2] for i in keep], labels=np.array([items[i][1] for i in keep], dtype=np.int64),
                    hashes=[hashes[i] for i in keep], features=features, computed=len(missing),
                    failures=failures, short_side=pre.resize_size, interpolation=pre.interpolation)


def _content_hashes(paths: Sequence[str], progress: Progress | None) -> list[str | None]:
    """sha1 of each file's bytes (the cache's row key), None when it cannot be read: no decoding."""
    def digest(path: str, data: bytes | None) -> str:
        return hashlib.sha1(data if data is not None else Path(path).read_bytes()).hexdigest()

    out: list[str | None] = []
    futures = map_items(digest, paths, workers=min(8, (os.cpu_count() or 1) + 2))
    with closing(futures):
        for done, future in enumerate(futures, 1):
            try:
                out.append(future.result())
            except (OSError, ImageLoadError) as exc:  # unreadable: the doctor names it, the audit skips it
                log.debug("cannot hash: %s", exc)
                out.append(None)
            if progress is not None:
                progress("hashing", done, len(paths))
    return out


def _extract_missing(items, hashes, missing, spec, pre, weights, accelerator, precision, engine, cache, key,
                     failures, progress) -> set[int]:
    """Decode and extract the uncached images, shard by shard as training does; returns the undecodable ones."""
    from headstart.backbones.model import build_network
    from headstart.data.transforms import pixel_transform
    from headstart.extract import feature_cache
    from headstart.extract.frozen import FrozenBackbone, extract_features

    net = build_network(spec, 1, weights=weights)
    frozen = FrozenBackbone(net.backbone.eval(), accelerator=accelerator, precision=precision,
                            channels_last=not spec.is_vit, engine=engine, engine_cache=cache.root.parent / "engines",
                            pixels=(pre.mean, pre.std))
    transform = pixel_transform(pre, "none")
    bad: set[int] = set()
    for start in range(0, len(missing), feature_cache.SHARD_ROWS):
        chunk = missing[start:start + feature_cache.SHARD_ROWS]
        decoded = decode_split([(items[i][0], 0) for i in chunk], short_side=pre.resize_size,
                               interpolation=pre.interpolation, reduce_to=pre.reduce_to)
        failed = {p for p, _ in decoded.failures}
        failures.extend(decoded.failures)
        good = [i for i in chunk if items[i][0] not in failed]
        bad |= {i for i in chunk if items[i][0] in failed}
        if not good:
            continue
        rows = extract_features(frozen, decoded.images, transform,
                                progress=None if progress is None else
                                (lambda d, t, s=start: progress("features", s + d, len(missing))))
        cache.write(key, [hashes[i] for i in good], rows)
    return bad


def load_images(paths: Sequence[str], short_side: int | None, interpolation: str = "bilinear") -> list[Image.Image]:
    """The images at `paths`, decoded by the one safe loader and resized as for features (threads)."""
    decoded = decode_split([(p, 0) for p in paths], short_side=short_side, interpolation=interpolation)
    if decoded.failures:  # the file changed since it was hashed
        raise ImageLoadError(*decoded.failures[0])
    return decoded.images
