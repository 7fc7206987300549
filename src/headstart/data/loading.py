"""Decoding a split once: every image opened safely, resized once, hashed for the feature cache.

Bad files are dropped here, before any epoch starts, and reported; training never meets them. Items are files
or members of shards (``SHARD.tar#member``, see data/shards.py); both are opened by the same loader.
"""

from __future__ import annotations

import hashlib
import logging
import os
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import closing
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO, TypeVar

from PIL import Image

from headstart.data.shards import ShardReader, read_member, shard_member
from headstart.runtime.images import ImageLoadError, open_image
from headstart.runtime.preprocess import resize_short_side

__all__ = ["DecodedSplit", "PixelStore", "decode_split", "map_items"]

T = TypeVar("T")

log = logging.getLogger(__name__)


class PixelStore:
    """Decoded images kept in a file instead of in memory: `layout` gives each one's (offset, length, mode,
    size). Reads go through the OS's page cache, so a large split costs no memory of this process, and a
    forked DataLoader worker reads the same file."""

    def __init__(self, file: BinaryIO, layout: list[tuple[int, int, str, tuple[int, int]]]):
        self.file, self.layout = file, layout

    def image(self, i: int) -> Image.Image:
        offset, length, mode, size = self.layout[i]
        return Image.frombytes(mode, size, os.pread(self.file.fileno(), length, offset))


class _StoredView(Sequence):
    def __init__(self, store: PixelStore, indices: list[int]):
        self.store, self.indices = store, indices

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, i):
        if isinstance(i, slice):
            return [self.store.image(j) for j in self.indices[i]]
        return self.store.image(self.indices[i])


@dataclass
class DecodedSplit:
    """Decoded images of one split with labels and content hashes; failures as (path, reason).

    `images` is None when the split is not held in memory: its pixels are then in `store` (a file the
    decoding helper wrote, read back per image), or, decoded with keep_images=False (checked, hashed, then let
    go), nowhere: `load` then decodes the requested images again.
    """

    paths: list[str]
    labels: list[int]
    images: list[Image.Image] | None
    hashes: list[str]
    failures: list[tuple[str, str]] = field(default_factory=list)
    short_side: int | None = None
    interpolation: str = "bilinear"
    store: PixelStore | None = None
    reduce_to: int | None = None  # open_image's: the model's Preprocessing.reduce_to

    def view(self, indices: Sequence[int]) -> Sequence[Image.Image]:
        """The images at these positions as a sequence that reads each one when indexed, where they are stored
        (a batch at a time stays in memory, not the whole chunk); else as `load` gives them."""
        if self.images is None and self.store is not None:
            return _StoredView(self.store, list(indices))
        return self.load(indices)

    def load(self, indices: Sequence[int], *, threads: int | None = None) -> list[Image.Image]:
        """The decoded, resized images at these positions: kept ones, stored ones, or decoded again in threads."""
        if self.images is not None:
            return [self.images[i] for i in indices]
        if self.store is not None:
            return [self.store.image(i) for i in indices]
        if len(indices) == 1:  # one item, as a DataLoader worker asks: no thread pool, random access in a shard
            return [_decode_one(self.paths[indices[0]], self.short_side, self.interpolation,
                                reduce_to=self.reduce_to)[0]]
        again = decode_split([(self.paths[i], self.labels[i]) for i in indices], short_side=self.short_side,
                             interpolation=self.interpolation, threads=threads, reduce_to=self.reduce_to)
        if again.failures:  # the file changed since the first pass
            raise ImageLoadError(*again.failures[0])
        return again.images


def map_items(fn: Callable[[str, bytes | None], T], paths: Iterable[str], *, workers: int) -> Iterator[Future[T]]:
    """fn(path, data) for every item on a thread pool; the futures come back in the order of paths.

    data is None for a plain file: fn reads it in its own thread, so file reads overlap. A shard member's
    bytes are read here instead, in order, one shard open at a time (a sequential pass per shard), and a
    member that cannot be read becomes a future holding its ImageLoadError. At most 4 calls per worker
    are in flight, so the bytes read ahead stay bounded however large the data.
    """
    window = 4 * workers
    pending: deque[Future[T]] = deque()
    with ThreadPoolExecutor(max_workers=workers) as pool, ShardReader() as reader:
        for path in paths:
            if shard_member(path) is None:
                pending.append(pool.submit(fn, path, None))
            else:
                try:
                    data = reader.read(path)
                except ImageLoadError as exc:
                    failed: Future[T] = Future()
                    failed.set_exception(exc)
                    pending.append(failed)
                else:
                    pending.append(pool.submit(fn, path, data))
            if len(pending) >= window:
                yield pending.popleft()
        yield from pending


def _decode_one(path: str, short_side: int | None, interpolation: str, data: bytes | None = None, *,
                reduce_to: int | None = None) -> tuple[Image.Image, str]:
    """One item decoded (at a reduced JPEG scale with reduce_to, as open_image) and resized, with the sha1 of its
    bytes; data: its bytes when already read."""
    member = shard_member(path) is not None
    if data is None and member:
        data = read_member(path)
    elif data is None:
        try:
            data = Path(path).read_bytes()
        except OSError:
            data = b""  # opened by path below, which names the reason: not found, permission denied...
    digest = hashlib.sha1(data).hexdigest()
    # An empty file is opened by its path, so that a missing one says "file not found", not "empty file"
    img = open_image(data if data or member else path, reduce_to=reduce_to)
    if short_side is not None:
        img = resize_short_side(img, short_side, interpolation)
    return img, digest


def decode_split(items: list[tuple[str, int]], *, short_side: int | None, interpolation: str = "bilinear",
                 threads: int | None = None, progress=None, keep_images: bool = True,
                 reduce_to: int | None = None) -> DecodedSplit:
    """Open every image once (threads: PIL decodes outside the GIL), resized to `short_side`.

    Resizing to the eval transform's own resize size here makes the later Resize a no-op and every later epoch
    cheap.
    keep_images=False checks and hashes every image without holding it (see DecodedSplit.load). reduce_to: the
    model's Preprocessing.reduce_to (JPEGs decoded at a reduced scale, as its prediction does).
    """
    out = DecodedSplit([], [], [] if keep_images else None, [], short_side=short_side, interpolation=interpolation,
                       reduce_to=reduce_to)
    workers = threads or min(8, os.cpu_count() or 1)
    futures = map_items(lambda path, data: _decode_one(path, short_side, interpolation, data, reduce_to=reduce_to),
                        (path for path, _ in items), workers=workers)
    with closing(futures):  # the pool shuts down here, not whenever the generator is collected
        for done, ((path, label), future) in enumerate(zip(items, futures), start=1):
            try:
                img, digest = future.result()
            except ImageLoadError as exc:
                out.failures.append((path, exc.reason))
                log.warning("skipping %s: %s", path, exc.reason)
            else:
                out.paths.append(path)
                out.labels.append(label)
                if out.images is not None:
                    out.images.append(img)
                out.hashes.append(digest)
            if progress is not None:
                progress(done, len(items))
    return out
