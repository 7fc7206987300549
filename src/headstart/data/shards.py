"""Streaming shards: a dataset as a few large WebDataset tar files, for data bigger than memory or far away.

Why WebDataset rather than Lightning's litdata: the shards are plain POSIX tar files that any tool reads
(tar, the webdataset package, litdata can convert them), with no server and no index format to be locked
into, and reading them is one sequential pass per file, which is what network filesystems and object
stores do well. litdata would add an optimize step and a heavier dependency for no gain here.

``SHARDS/`` holds:

- ``{split}-{n:06d}.tar``: the samples of one split, in order. A sample is ``{key}.{ext}`` (the original image
  bytes, untouched, under their own extension), ``{key}.cls`` (the class index, ASCII), ``{key}.split.txt`` and
  ``{key}.path.txt`` (the path relative to the source), so webdataset's own readers understand them. A shard
  is closed once its members reach the size limit, so it can exceed it by one sample.
- ``shards.json``: classes, per split the shards (file, size, sha256, members and their labels), the source
  and how its split was made. Written last and atomically: a folder without it is an unfinished write.

Writing uses webdataset's ShardWriter. Reading does not use the webdataset package: the shards are plain tar,
which the standard library streams, and importing webdataset imports torch (seconds), which ``headstart
check`` should not pay for. Images are opened only by headstart's loader (``data/images.py``), never by
webdataset's decoders. In a Dataset a member is the pseudo-path ``SHARDS/train-000000.tar#train_00000042.jpg``;
``ShardReader`` reads those in order with one shard open at a time.
"""

from __future__ import annotations

import functools
import json
import logging
import os
import re
import tarfile
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any

from headstart.data.dataset import DataError, Dataset, finish_split
from headstart.runtime.images import ImageLoadError

__all__ = [
    "FORMAT",
    "INDEX_FILE",
    "ShardReader",
    "is_shards_dir",
    "iter_samples",
    "load_index",
    "read_member",
    "read_shards",
    "shard_member",
]

log = logging.getLogger(__name__)

INDEX_FILE = "shards.json"
FORMAT = "headstart.shards/1"
_META = ("cls", "split.txt", "path.txt")  # every other member of a sample is its image
_MEMBER = re.compile(r"^(?P<shard>.+\.tar)#(?P<member>[^/\\]+)$")


def is_shards_dir(path: str | Path) -> bool:
    return (Path(path) / INDEX_FILE).is_file()


def shard_member(path: str) -> tuple[str, str] | None:
    """(shard file, member name) for a ``SHARD.tar#member`` pseudo-path, None for anything else."""
    match = _MEMBER.match(path)
    if match is None or os.path.isfile(path):  # a real file may have such a name
        return None
    return match.group("shard"), match.group("member")


def load_index(shards_dir: str | Path) -> dict[str, Any]:
    """shards.json, checked enough that reading it later cannot fail half-way."""
    path = Path(shards_dir) / INDEX_FILE
    try:
        index = json.loads(path.read_text())
        if index.get("format") != FORMAT:
            raise ValueError(f"format {index.get('format')!r}, expected {FORMAT!r}")
        n = len(index["classes"])
        for split, shards in index["splits"].items():
            for shard in shards:
                if len(shard["members"]) != len(shard["labels"]) or any(not 0 <= y < n for y in shard["labels"]):
                    raise ValueError(f"{split} shard {shard['file']} lists bad members or labels")
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as exc:
        raise DataError(f"{path} is not a usable headstart shards index ({exc}); write the shards again "
                        "with `headstart datasets shard`") from None
    return index


def read_shards(shards_dir: str | Path, *, val_fraction: float = 0.2, seed: int = 42,
                split_file: str | Path | None = None, exclude: set[str] | frozenset[str] = frozenset()) -> Dataset:
    """The shards as a Dataset (what ``discover`` returns for a shards folder), items as pseudo-paths."""
    root = Path(shards_dir).expanduser().resolve()
    index = load_index(root)
    splits = {}
    for split, shards in index["splits"].items():
        items = [(f"{root / s['file']}#{m}", y) for s in shards for m, y in zip(s["members"], s["labels"])]
        splits[split] = [item for item in items if item[0] not in exclude]
    if not splits.get("train"):
        raise DataError(f"{root} holds no train samples")
    splits, origin = finish_split(root, splits, "shards", val_fraction=val_fraction, seed=seed,
                                  split_file=split_file)
    return Dataset(root=str(root), classes=list(index["classes"]), splits=splits, split_origin=origin)


def _members(shard: str | Path) -> Iterator[tuple[str, IO[bytes]]]:
    """(name, readable member) for each file in a shard, streaming: read a member before asking for the next."""
    with open(shard, "rb") as f, tarfile.open(fileobj=f, mode="r|") as tar:
        for info in tar:
            tar.members = []  # a stream needs no memory of what it passed; a shard can hold millions
            if info.isreg():
                yield info.name, tar.extractfile(info)


class ShardReader:
    """Bytes of shard members from their pseudo-paths, with one shard open at a time.

    Members asked for in the order they were written cost one sequential pass over each shard; an earlier
    member reopens its shard (correct, only slower). A shard that cannot be read is remembered, so each of
    its remaining members fails at once instead of rereading it.
    """

    def __init__(self) -> None:
        self._shard: str | None = None
        self._stream: Iterator[tuple[str, IO[bytes]]] | None = None
        self._passed: set[str] = set()
        self._broken: dict[str, str] = {}

    def read(self, path: str) -> bytes:
        """The member's bytes, or ImageLoadError with a short reason (its image is decoded later, elsewhere)."""
        parts = shard_member(path)
        if parts is None:
            raise ImageLoadError(path, "not a shard member (expected SHARD.tar#member)")
        shard, member = parts
        if shard in self._broken:
            raise ImageLoadError(path, self._broken[shard])
        if self._stream is None or shard != self._shard or member in self._passed:
            self.close()
            self._shard, self._stream = shard, _members(shard)
        try:
            for name, fileobj in self._stream:
                self._passed.add(name)
                if name == member:
                    return fileobj.read()
        except FileNotFoundError:
            self._broken[shard] = "shard file not found"
        except (tarfile.TarError, OSError, EOFError) as exc:
            self._broken[shard] = f"unreadable shard ({exc})"
        self.close()
        raise ImageLoadError(path, self._broken.get(shard, "missing from its shard"))

    def close(self) -> None:
        if self._stream is not None:
            self._stream.close()  # closes the file, via the generator's with-block
        self._shard, self._stream, self._passed = None, None, set()

    def __enter__(self) -> ShardReader:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def read_member(path: str) -> bytes:
    """One member's bytes by random access: for items asked in any order (a DataLoader's shuffled epochs),
    where ShardReader would rescan the shard from its start each time. Each process keeps a few shards open
    with their member index (their headers, read once)."""
    parts = shard_member(path)
    if parts is None:
        raise ImageLoadError(path, "not a shard member (expected SHARD.tar#member)")
    shard, member = parts
    try:
        fileobj = _indexed_shard(shard, os.getpid()).extractfile(member)
    except KeyError:
        raise ImageLoadError(path, "missing from its shard") from None
    except FileNotFoundError:
        raise ImageLoadError(path, "shard file not found") from None
    except (tarfile.TarError, OSError, EOFError) as exc:
        raise ImageLoadError(path, f"unreadable shard ({exc})") from None
    if fileobj is None:
        raise ImageLoadError(path, "not a regular file in its shard")
    return fileobj.read()


@functools.lru_cache(maxsize=8)
def _indexed_shard(shard: str, pid: int) -> tarfile.TarFile:
    # Keyed by process: a forked DataLoader worker must not share the parent's file offset.
    return tarfile.open(shard, mode="r:")


def iter_samples(shards_dir: str | Path, split: str) -> Iterator[tuple[str, bytes, int]]:
    """(member name, image bytes, class index) of every sample of a split, streaming one shard at a time.

    The bytes are undecoded: open them with ``headstart.runtime.images.open_image``.
    """
    root = Path(shards_dir).expanduser().resolve()
    index = load_index(root)
    if split not in index["splits"]:
        raise DataError(f"{root} has no {split} split (found: {', '.join(index['splits'])})")
    for shard in index["splits"][split]:
        path = root / shard["file"]
        sample: dict[str, Any] = {}
        try:
            for name, fileobj in _members(path):
                key, _, ext = name.partition(".")
                if sample and sample["key"] != key:
                    yield sample["name"], sample["data"], sample["label"]
                    sample = {}
                sample["key"] = key
                if ext == "cls":
                    sample["label"] = int(fileobj.read())
                elif ext not in _META:
                    sample["name"], sample["data"] = name, fileobj.read()
        except (tarfile.TarError, OSError, EOFError) as exc:
            raise DataError(f"{path}: unreadable shard ({exc})") from None
        if sample:
            yield sample["name"], sample["data"], sample["label"]
