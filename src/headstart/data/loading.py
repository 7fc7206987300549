"""Decoding a split once: every image opened safely, resized once, hashed for the feature cache.

Bad files are dropped here, before any epoch starts, and reported; training never meets them.
"""

from __future__ import annotations

import hashlib
import logging
import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

from PIL import Image

from headstart.data.images import ImageLoadError, open_image

__all__ = ["DecodedSplit", "decode_split", "resize_short_side"]

log = logging.getLogger(__name__)

_INTERPOLATION = {"bilinear": Image.Resampling.BILINEAR, "bicubic": Image.Resampling.BICUBIC,
                  "nearest": Image.Resampling.NEAREST}


def resize_short_side(img: Image.Image, size: int, interpolation: str) -> Image.Image:
    """Resize so the short side is `size`, as torchvision's Resize(int) does on PIL images."""
    w, h = img.size
    short, long = (w, h) if w <= h else (h, w)
    if short == size:
        return img
    new_long = int(size * long / short)
    new_size = (size, new_long) if w <= h else (new_long, size)
    return img.resize(new_size, _INTERPOLATION[interpolation])


@dataclass
class DecodedSplit:
    """Decoded images of one split with labels and content hashes; failures as (path, reason)."""

    paths: list[str]
    labels: list[int]
    images: list[Image.Image]
    hashes: list[str]
    failures: list[tuple[str, str]] = field(default_factory=list)


def _decode_one(path: str, short_side: int | None, interpolation: str) -> tuple[Image.Image, str]:
    data = Path(path).read_bytes() if os.path.isfile(path) else b""
    digest = hashlib.sha1(data).hexdigest()
    img = open_image(data if data else path)
    if short_side is not None:
        img = resize_short_side(img, short_side, interpolation)
    return img, digest


def decode_split(items: list[tuple[str, int]], *, short_side: int | None, interpolation: str = "bilinear",
                 threads: int | None = None, progress=None) -> DecodedSplit:
    """Open every image once (threads: PIL decodes outside the GIL), resized to `short_side`.

    Resizing to the eval transform's own resize size here changes nothing about eval preprocessing (the
    later Resize is then a no-op) and makes every later epoch cheap.
    """
    out = DecodedSplit([], [], [], [])
    workers = threads or min(8, os.cpu_count() or 1)
    with ThreadPoolExecutor(max_workers=workers) as pool:
        futures = [pool.submit(_decode_one, path, short_side, interpolation) for path, _ in items]
        for done, ((path, label), future) in enumerate(zip(items, futures), start=1):
            try:
                img, digest = future.result()
            except ImageLoadError as exc:
                out.failures.append((path, exc.reason))
                log.warning("skipping %s: %s", path, exc.reason)
            else:
                out.paths.append(path)
                out.labels.append(label)
                out.images.append(img)
                out.hashes.append(digest)
            if progress is not None:
                progress(done, len(items))
    return out
