"""The feature cache: pooled features on disk, keyed by backbone + weights + transform + view + image content.

Features mode pays for one backbone forward pass per image (per augmented view), ever: a second run, another
head, or a resumed run reads the rows back instead of extracting again.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset

from headstart.artifact import atomic_write_bytes, atomic_write_json
from headstart.cache import cache_root

__all__ = ["SHARD_ROWS", "FeatureCache", "FeatureRows", "model_id"]

log = logging.getLogger(__name__)

SHARD_ROWS = 1024  # rows per cache shard: 2.6 MB at 1280 fp16 features; what an interruption can lose


def model_id(spec_name: str, weight_kind: str, weight_ref: str, weights_file: str | None = None) -> str:
    """The backbone + weights part of a cache key; one definition for training and the data audit, so that
    features one of them computed are found by the other."""
    if weights_file:
        from headstart.artifact import sha256_file

        return f"{spec_name}|file:{sha256_file(weights_file)}"
    return f"{spec_name}|{weight_kind}:{weight_ref}"


class FeatureCache:
    """Pooled features on disk: rows keyed by image content hash, in fp16 shards read through memory maps.

    Layout: ROOT/features/<key>/<shard>.npy ([n, D], fp16) and <shard>.json (the n content hashes). The array
    is written first, then its hash list, each atomically, so a shard is visible only once complete. Shards are
    only ever added: each process writes the rows it computed, as it goes (`SHARD_ROWS` at a time), so an
    interrupted extraction keeps what it finished, several processes never write the same file, and a
    million rows are read back through the page cache instead of being held in memory.
    """

    def __init__(self, root: Path | None = None):
        self.root = (root or cache_root()) / "features"
        self._index: dict[str, dict[str, tuple[str, int]]] = {}  # key -> content hash -> (shard, row)
        self._indexed: dict[str, set[str]] = {}  # key -> shard names already read into the index
        self._arrays: dict[Path, np.ndarray] = {}

    @staticmethod
    def key(model_id: str, transform_key: str, view: int, seed: int | None, precision: str) -> str:
        text = json.dumps([model_id, transform_key, view, seed, precision])
        return hashlib.sha256(text.encode()).hexdigest()[:32]

    def refresh(self, key: str) -> dict[str, tuple[str, int]]:
        """The index of `key`, including shards that other processes have written since the last call."""
        index, indexed = self._index.setdefault(key, {}), self._indexed.setdefault(key, set())
        folder = self.root / key
        for meta in sorted(folder.glob("*.json")) if folder.is_dir() else []:
            if meta.stem in indexed:
                continue
            indexed.add(meta.stem)
            try:
                hashes = json.loads(meta.read_text())["hashes"]
            except (OSError, ValueError, KeyError) as exc:  # a damaged shard is only a lost speed-up
                log.warning("ignoring unreadable feature shard %s: %s", meta, exc)
                continue
            for row, digest in enumerate(hashes):
                index.setdefault(digest, (meta.stem, row))
        return index

    def missing(self, key: str, hashes: Sequence[str]) -> list[int]:
        """Positions of the hashes with no cached row (the first position of a repeated hash only)."""
        index, seen, out = self.refresh(key), set(), []
        for i, digest in enumerate(hashes):
            if digest not in index and digest not in seen:
                seen.add(digest)
                out.append(i)
        return out

    def write(self, key: str, hashes: Sequence[str], features: torch.Tensor) -> None:
        """One shard of rows. Its name comes from its rows, so writing the same rows again is harmless."""
        values = features.float().numpy()
        with np.errstate(over="ignore"):
            array = values.astype(np.float16)
        if not np.isfinite(array).all() and np.isfinite(values).all():
            array = values  # beyond fp16's range: keep this shard in fp32 rather than store infinities
        folder = self.root / key
        folder.mkdir(parents=True, exist_ok=True)
        name = hashlib.sha1("\n".join(hashes).encode()).hexdigest()[:24]
        buffer = io.BytesIO()
        np.save(buffer, array)
        atomic_write_bytes(folder / f"{name}.npy", buffer.getvalue())
        atomic_write_json(folder / f"{name}.json", {"hashes": list(hashes), "dtype": str(array.dtype)})

    def rows(self, key: str, hashes: Sequence[str], labels: Sequence[int] | None = None) -> FeatureRows:
        """The cached rows of `hashes`, in order, as a dataset read from the shards on demand."""
        index = self.refresh(key)
        absent = [h for h in hashes if h not in index]
        if absent:
            raise RuntimeError(f"the features of {len(absent)} image(s) are not in the cache at {self.root}: with "
                               "several machines, HEADSTART_CACHE must be a folder they all share")
        places = [index[h] for h in hashes]
        names = sorted({shard for shard, _ in places})
        number = {name: i for i, name in enumerate(names)}
        arrays = [self._array(self.root / key / f"{name}.npy") for name in names]
        return FeatureRows(arrays, np.array([number[s] for s, _ in places], dtype=np.int64),
                           np.array([r for _, r in places], dtype=np.int64), labels)

    def _array(self, path: Path) -> np.ndarray:
        if not self._arrays:
            _allow_open_files()
        if path not in self._arrays:
            self._arrays[path] = np.load(path, mmap_mode="r")
        return self._arrays[path]


def _allow_open_files() -> None:
    """Each memory-mapped shard holds a file descriptor: ImageNet's 1,300 shards pass the common soft limit
    of 1,024. Raise the soft limit to the hard one, as long trainings usually need (a no-op where absent)."""
    try:
        import resource
    except ImportError:  # Windows: no such limit
        return
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != resource.RLIM_INFINITY and (hard == resource.RLIM_INFINITY or soft < hard):
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
        except (ValueError, OSError):
            log.debug("could not raise the open-file limit from %s", soft)


class FeatureRows(Dataset):
    """Rows of the feature cache for one split: (features, label) items read from memory-mapped shards.

    A DataLoader reads a whole batch at once through `__getitems__`: one gather per shard instead of a copy and
    a stack per row, the slower path for a head's short epochs (docs/benchmarks.md, "Feature cache reads").
    Give it `collate_fn=FeatureRows.collate`, which keeps the batch as it comes."""

    def __init__(self, arrays: list[np.ndarray], shards: np.ndarray, rows: np.ndarray,
                 labels: Sequence[int] | None = None):
        self.arrays, self.shards, self.rows = arrays, shards, rows
        self.labels = torch.as_tensor(list(labels) if labels is not None else [-1] * len(rows), dtype=torch.long)

    @classmethod
    def concat(cls, parts: Sequence[FeatureRows]) -> FeatureRows:
        """The rows of every part, in order (a split's feature views, one after the other)."""
        offsets = np.cumsum([0] + [len(p.arrays) for p in parts[:-1]])
        shards = np.concatenate([p.shards + offset for p, offset in zip(parts, offsets)])
        joined = cls([a for p in parts for a in p.arrays], shards, np.concatenate([p.rows for p in parts]))
        joined.labels = torch.cat([p.labels for p in parts])
        return joined

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        row = self.arrays[self.shards[i]][self.rows[i]]
        return torch.from_numpy(np.array(row, dtype=np.float32)), self.labels[i]  # a copy: the map is read-only

    def __getitems__(self, indices: Sequence[int]) -> tuple[torch.Tensor, torch.Tensor]:
        indices = np.asarray(indices, dtype=np.int64)
        shards, rows = self.shards[indices], self.rows[indices]
        batch = np.empty((len(indices), *self.arrays[0].shape[1:]), dtype=np.float32)
        for shard in np.unique(shards):
            chosen = shards == shard
            batch[chosen] = self.arrays[shard][rows[chosen]]
        return torch.from_numpy(batch), self.labels[torch.from_numpy(indices)]

    @staticmethod
    def collate(batch: tuple[torch.Tensor, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        return batch

    def features(self) -> np.ndarray:
        """Every row, in order, as one float32 array [N, D] in memory."""
        return self.__getitems__(range(len(self)))[0].numpy()
