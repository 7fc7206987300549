"""Writing shards: `headstart datasets shard DATA --out SHARDS` (the format is described in data/shards.py)."""

from __future__ import annotations

import logging
import os
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from headstart.artifact import atomic_write_json, sha256_file
from headstart.data.dataset import DataError, data_base
from headstart.data.folders import discover
from headstart.data.shards import FORMAT, INDEX_FILE, ShardReader, shard_member
from headstart.runtime.images import ImageLoadError

__all__ = ["ShardsWritten", "parse_size", "write_shards"]

log = logging.getLogger(__name__)

_UNITS = {"": 1, "b": 1, "kb": 10**3, "mb": 10**6, "gb": 10**9, "tb": 10**12, "k": 10**3, "m": 10**6,
          "g": 10**9, "t": 10**12, "kib": 2**10, "mib": 2**20, "gib": 2**30, "tib": 2**40}


@dataclass
class ShardsWritten:
    """What ``write_shards`` wrote: samples and shard files per split; files it could not read, with why."""

    out: str
    classes: list[str]
    counts: dict[str, int]
    shards: dict[str, list[str]]
    bytes: int
    skipped: list[tuple[str, str]] = field(default_factory=list)


def parse_size(text: str | int) -> int:
    """``500MB``, ``1GB``, ``200KB`` (powers of 1000), ``512MiB`` (powers of 1024) or plain bytes."""
    match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([a-z]*)\s*", str(text).lower())
    if not match or match.group(2) not in _UNITS:
        raise ValueError(f"not a size: {text!r}; use e.g. 500MB, 1GB, 200KB or a number of bytes")
    size = int(float(match.group(1)) * _UNITS[match.group(2)])
    if size <= 0:
        raise ValueError(f"a shard size must be positive, not {text!r}")
    return size


def write_shards(data: str | Path, out: str | Path, *, shard_size_bytes: int = 500 * 10**6,
                 val_fraction: float = 0.2, seed: int = 42, exclude: set[str] | frozenset[str] = frozenset(),
                 progress: Callable[[str, int, int], None] | None = None) -> ShardsWritten:
    """Write DATA (a folder, a CSV list or shards) as shards in OUT, a new or empty folder.

    The split is the one ``train`` would use (``discover`` with the same val_fraction and seed), so a model
    trained on the shards sees the same split as one trained on DATA. A file that cannot be read is skipped
    with a warning; its bytes are not decoded here, so a corrupt image travels on and is skipped at decoding.
    """
    if shard_size_bytes <= 0:
        raise ValueError(f"shard_size_bytes must be positive, not {shard_size_bytes}")
    dataset = discover(data, val_fraction=val_fraction, seed=seed, exclude=exclude)
    out = Path(out).expanduser().resolve()
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise DataError(f"{out} exists and is not empty: choose a new folder for the shards")
    out.mkdir(parents=True)
    import webdataset  # here, not at the top: it imports torch, and only writing needs it

    base = data_base(dataset.root)
    total, done = sum(len(items) for items in dataset.splits.values()), 0
    index_splits: dict[str, list[dict[str, Any]]] = {}
    skipped: list[tuple[str, str]] = []
    with ShardReader() as reader:
        for split, items in dataset.splits.items():
            members: dict[str, dict[str, list]] = {}
            # "%" escaped: ShardWriter fills the pattern with %; mtime fixed: the same data gives the same shards
            pattern = str(out).replace("%", "%%") + f"/{split}-%06d.tar"
            with webdataset.ShardWriter(pattern, maxsize=shard_size_bytes, verbose=0, encoder=False,
                                        mtime=0) as writer:
                for i, (path, label) in enumerate(items):
                    try:
                        payload = reader.read(path) if shard_member(path) else Path(path).read_bytes()
                    except (ImageLoadError, OSError) as exc:
                        reason = exc.reason if isinstance(exc, ImageLoadError) else str(exc)
                        log.warning("skipping %s: %s", path, reason)
                        skipped.append((path, reason))
                    else:
                        key = f"{split}_{i:08d}"  # no dots: webdataset splits a member's key from its extension
                        ext = Path(path).suffix.lower().lstrip(".") or "bin"
                        writer.write({"__key__": key, ext: payload, "cls": str(label).encode(),
                                      "split.txt": split.encode(), "path.txt": os.path.relpath(path, base).encode()})
                        shard = members.setdefault(Path(writer.fname).name, {"members": [], "labels": []})
                        shard["members"].append(f"{key}.{ext}")
                        shard["labels"].append(label)
                    done += 1
                    if progress is not None:
                        progress("writing shards", done, total)
            for empty in sorted(out.glob(f"{split}-*.tar")):  # ShardWriter opens a shard before its first sample
                if empty.name not in members:
                    empty.unlink()
            index_splits[split] = [{"file": name, "bytes": (out / name).stat().st_size,
                                    "sha256": sha256_file(out / name), **lists} for name, lists in members.items()]
    counts = {split: sum(len(s["members"]) for s in shards) for split, shards in index_splits.items()}
    atomic_write_json(out / INDEX_FILE, {
        "format": FORMAT, "classes": dataset.classes, "counts": counts, "shard_size_bytes": shard_size_bytes,
        "source": {"data": dataset.root, "split_origin": dataset.split_origin, "val_fraction": val_fraction,
                   "seed": seed},
        "skipped": [{"path": p, "reason": r} for p, r in skipped],
        "splits": index_splits,
    })
    shard_files = {split: [s["file"] for s in shards] for split, shards in index_splits.items()}
    size = sum(s["bytes"] for shards in index_splits.values() for s in shards)
    log.info("wrote %d samples in %d shards (%d bytes) to %s", sum(counts.values()),
             sum(map(len, shard_files.values())), size, out)
    return ShardsWritten(str(out), dataset.classes, counts, shard_files, size, skipped)
