"""Batched feature extraction (a compiled runtime, else torch with channels_last and autocast) and the feature cache.

Features mode pays for one backbone forward pass per image (per augmented view), ever: the pooled features
are cached on disk in fp16 shards under a key of backbone + weights + transform + view and the file's
content, so a second run, another head, or a resumed run costs no extraction at all.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch import nn
from torch.utils.data import Dataset

from headstart.artifact import atomic_write_bytes, atomic_write_json
from headstart.cache import cache_root
from headstart.device import autocast

__all__ = ["SHARD_ROWS", "FeatureCache", "FeatureRows", "FromPixels", "FrozenBackbone", "extract_features", "view_seed"]

log = logging.getLogger(__name__)

SHARD_ROWS = 1024  # rows per cache shard: 2.6 MB at 1280 fp16 features; what an interruption can lose


def view_seed(seed: int, view: int, content_hash: str) -> int:
    """A per-image seed for augmented view `view`: the same crop whatever the order or batch of images."""
    return int(hashlib.sha1(f"{seed}:{view}:{content_hash}".encode()).hexdigest()[:15], 16)


class FromPixels(nn.Module):
    """uint8 [N, H, W, 3] pixels -> the normalized float [N, 3, H, W] input the weights expect, as a layer.

    Ahead of the backbone inside a compiled engine, normalization costs nothing measurable, where torchvision's
    ToTensor + Normalize, one image at a time in Python, took 0.27 s of pizza_steak_sushi's 300 images, between
    engine calls. On a GPU, the copy to the device is 4x smaller. The permuted NHWC batch is channels_last already.
    """

    def __init__(self, mean: Sequence[float], std: Sequence[float]):
        super().__init__()
        mean_, std_ = torch.tensor(mean, dtype=torch.float32), torch.tensor(std, dtype=torch.float32)
        # (x / 255 - mean) / std as one multiply-add: equal to Normalize's result within float rounding (~1e-7)
        self.register_buffer("scale", (1 / (255 * std_)).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("shift", (-mean_ / std_).view(1, 3, 1, 1), persistent=False)

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        return pixels.permute(0, 3, 1, 2).float() * self.scale + self.shift


class FrozenBackbone:
    """The frozen backbone's forward pass on the fastest engine that reproduces it.

    The engine is chosen on the first batch (on the CPU, OpenVINO for fp32 or bf16, or ONNX Runtime for fp32;
    else torch with channels_last and the run's autocast; see onnx_forward.py) and reused for every later batch,
    split and view of the run. With `pixels` (the weights' mean and std), it takes uint8 [N, H, W, 3] batches (from
    `headstart.data.transforms.pixel_transform`) and normalizes them inside the engine (FromPixels); without,
    normalized float [N, 3, H, W] batches.
    """

    def __init__(self, backbone: nn.Module, *, accelerator: str = "cpu", precision: str = "32-true",
                 channels_last: bool = True, engine: str = "auto", engine_cache: Path | None = None,
                 pixels: tuple[Sequence[float], Sequence[float]] | None = None):
        self.backbone, self.accelerator, self.precision = backbone, accelerator, precision
        self.pixels = pixels is not None
        self.module = nn.Sequential(FromPixels(*pixels), backbone) if pixels is not None else backbone
        self.engine_cache = engine_cache  # exported graphs and compiled blobs kept between runs (None: none)
        self.memory_format = torch.channels_last if channels_last else torch.contiguous_format
        self.requested = engine
        self.engine: str | None = None
        self._forward: Callable[[torch.Tensor], torch.Tensor] | None = None

    @torch.inference_mode()
    def __call__(self, batch: torch.Tensor) -> torch.Tensor:
        if self.pixels and (batch.dtype != torch.uint8 or batch.dim() != 4 or batch.shape[-1] != 3):
            raise ValueError(f"this FrozenBackbone takes uint8 [N, H, W, 3] pixels, not {batch.dtype} "
                             f"{list(batch.shape)}")
        if self.engine is None:
            self._choose(batch)
        if self._forward is not None:
            return self._forward(batch)
        # pixels: FromPixels's permute gives the layout (channels_last); a memory format means nothing for NHWC
        batch = batch.to(self.accelerator) if self.pixels else batch.to(self.accelerator,
                                                                        memory_format=self.memory_format)
        with autocast(self.accelerator, self.precision):
            return self.module(batch).float().cpu()

    def _choose(self, sample: torch.Tensor) -> None:
        from headstart.onnx_forward import frozen_forward

        self.module.eval()
        self._forward, reason = frozen_forward(self.module, sample, engine=self.requested,
                                               accelerator=self.accelerator, precision=self.precision,
                                               cache_dir=self.engine_cache)
        if self._forward is None:
            self.module.to(device=self.accelerator, memory_format=self.memory_format)
            self.engine = "torch"
            log.info("extraction engine: torch (%s)", reason)
        else:
            self.engine = reason
            log.info("extraction engine: %s", self.engine)


def extract_features(backbone: nn.Module | FrozenBackbone, images: Sequence[Image.Image], transform: Callable, *,
                     batch_size: int = 64, accelerator: str = "cpu", precision: str = "32-true",
                     channels_last: bool = True, seeds: Sequence[int] | None = None,
                     progress: Callable[[int, int], None] | None = None) -> torch.Tensor:
    """Pooled features [N, D] in float32. With `seeds`, each image's random transform is seeded by it.

    Pass a FrozenBackbone to reuse its engine across calls; a plain module gets one of its own. `transform`
    gives normalized tensors, or, for a FrozenBackbone with `pixels`, PIL images (pixel_transform).
    """
    forward = backbone if isinstance(backbone, FrozenBackbone) else FrozenBackbone(
        backbone, accelerator=accelerator, precision=precision, channels_last=channels_last)
    chunks = []
    started = time.perf_counter()
    for start in range(0, len(images), batch_size):
        tensors = []
        for i in range(start, min(start + batch_size, len(images))):
            if seeds is not None:
                torch.manual_seed(seeds[i])
            tensors.append(transform(images[i]))
        chunks.append(forward(_stacked(tensors)))
        if progress is not None:
            progress(min(start + batch_size, len(images)), len(images))
    seconds = time.perf_counter() - started
    log.info("extracted %d feature vectors in %.1fs (%.0f images/s, %s, %s)", len(images), seconds,
             len(images) / max(seconds, 1e-9), forward.engine, forward.precision)
    return torch.cat(chunks) if chunks else torch.empty(0)


def _stacked(items: list) -> torch.Tensor:
    """One batch from a transform's outputs: tensors stacked, or PIL images as uint8 [N, H, W, 3] pixels."""
    if isinstance(items[0], torch.Tensor):
        return torch.stack(items)
    return torch.from_numpy(np.stack([np.asarray(item) for item in items]))


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

    A DataLoader reads a whole batch at once through `__getitems__` (one gather per shard instead of a copy and
    a stack per row: 30 epochs on pizza_steak_sushi's features spent 0.25 s reading rows one by one); give it
    `collate_fn=FeatureRows.collate`, which keeps the batch as it comes."""

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

