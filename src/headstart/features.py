"""Batched feature extraction (channels_last + bf16 where faster) and the content-keyed feature cache.

Features mode pays for one backbone forward pass per image (per augmented view), ever: the pooled features
are cached in memory and on disk under a key of backbone + weights + transform + view + file content, so a
second run, another head, or a resumed run costs no extraction at all.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import torch
from PIL import Image
from torch import nn

from headstart.artifact import atomic_write_bytes
from headstart.device import autocast

__all__ = ["FeatureCache", "FrozenBackbone", "cache_root", "extract_features", "view_seed"]

log = logging.getLogger(__name__)


def cache_root() -> Path:
    return Path(os.environ.get("HEADSTART_CACHE", Path.home() / ".cache" / "headstart"))


def view_seed(seed: int, view: int, content_hash: str) -> int:
    """A per-image seed for augmented view `view`: the same crop whatever the order or batch of images."""
    return int(hashlib.sha1(f"{seed}:{view}:{content_hash}".encode()).hexdigest()[:15], 16)


class FrozenBackbone:
    """The frozen backbone's forward pass on the fastest engine that reproduces it.

    The engine is chosen on the first batch (ONNX Runtime for fp32 on the CPU, else torch with channels_last
    and the run's autocast; see onnx_forward.py) and reused for every later batch, split and view of the run.
    """

    def __init__(self, backbone: nn.Module, *, accelerator: str = "cpu", precision: str = "32-true",
                 channels_last: bool = True, engine: str = "auto"):
        self.backbone, self.accelerator, self.precision = backbone, accelerator, precision
        self.memory_format = torch.channels_last if channels_last else torch.contiguous_format
        self.requested = engine
        self.engine: str | None = None
        self._forward: Callable[[torch.Tensor], torch.Tensor] | None = None

    @torch.inference_mode()
    def __call__(self, batch: torch.Tensor) -> torch.Tensor:
        if self.engine is None:
            self._choose(batch)
        if self._forward is not None:
            return self._forward(batch)
        batch = batch.to(self.accelerator, memory_format=self.memory_format)
        with autocast(self.accelerator, self.precision):
            return self.backbone(batch).float().cpu()

    def _choose(self, sample: torch.Tensor) -> None:
        from headstart.onnx_forward import frozen_forward

        self.backbone.eval()
        self._forward, reason = frozen_forward(self.backbone, sample, engine=self.requested,
                                               accelerator=self.accelerator, precision=self.precision)
        if self._forward is None:
            self.backbone.to(device=self.accelerator, memory_format=self.memory_format)
            self.engine = "torch"
        else:
            self.engine = "onnxruntime"
        log.info("extraction engine: %s (%s)", self.engine, reason)


def extract_features(backbone: nn.Module | FrozenBackbone, images: Sequence[Image.Image], transform: Callable, *,
                     batch_size: int = 64, accelerator: str = "cpu", precision: str = "32-true",
                     channels_last: bool = True, seeds: Sequence[int] | None = None,
                     progress: Callable[[int, int], None] | None = None) -> torch.Tensor:
    """Pooled features [N, D] in float32. With `seeds`, each image's random transform is seeded by it.

    Pass a FrozenBackbone to reuse its engine across calls; a plain module gets one of its own.
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
        chunks.append(forward(torch.stack(tensors)))
        if progress is not None:
            progress(min(start + batch_size, len(images)), len(images))
    seconds = time.perf_counter() - started
    log.info("extracted %d feature vectors in %.1fs (%.0f images/s, %s, %s)", len(images), seconds,
             len(images) / max(seconds, 1e-9), forward.engine, forward.precision)
    return torch.cat(chunks) if chunks else torch.empty(0)


class FeatureCache:
    """Feature rows keyed by image content hash, one safetensors file per (model, transform, view) key."""

    def __init__(self, root: Path | None = None, *, writable: bool = True):
        self.root = (root or cache_root()) / "features"
        self.writable = writable  # with several processes, only rank 0 writes; the others keep rows in memory
        self._memory: dict[str, dict[str, torch.Tensor]] = {}

    @staticmethod
    def key(model_id: str, transform_key: str, view: int, seed: int | None, precision: str) -> str:
        text = json.dumps([model_id, transform_key, view, seed, precision])
        return hashlib.sha256(text.encode()).hexdigest()[:32]

    def _file(self, key: str) -> Path:
        return self.root / f"{key}.safetensors"

    def _rows(self, key: str) -> dict[str, torch.Tensor]:
        if key not in self._memory:
            rows: dict[str, torch.Tensor] = {}
            path = self._file(key)
            if path.is_file():
                from safetensors import safe_open

                try:
                    with safe_open(str(path), framework="pt") as f:
                        hashes = json.loads(f.metadata()["hashes"])
                        table = f.get_tensor("features")
                    rows = {h: table[i] for i, h in enumerate(hashes)}
                except Exception as exc:  # a damaged cache file is only a lost speed-up
                    log.warning("ignoring unreadable feature cache %s: %s", path, exc)
            self._memory[key] = rows
        return self._memory[key]

    def lookup(self, key: str, hashes: Sequence[str]) -> tuple[dict[int, torch.Tensor], list[int]]:
        rows = self._rows(key)
        found = {i: rows[h] for i, h in enumerate(hashes) if h in rows}
        return found, [i for i in range(len(hashes)) if i not in found]

    def store(self, key: str, hashes: Sequence[str], features: torch.Tensor) -> None:
        rows = self._rows(key)
        rows.update({h: features[i] for i, h in enumerate(hashes)})
        if not self.writable:
            return
        from safetensors.torch import save

        ordered = list(rows)
        table = torch.stack([rows[h] for h in ordered]).contiguous()
        self.root.mkdir(parents=True, exist_ok=True)
        atomic_write_bytes(self._file(key), save({"features": table}, metadata={"hashes": json.dumps(ordered)}))

    def features_for(self, key: str, hashes: Sequence[str], compute: Callable[[list[int]], torch.Tensor]
                     ) -> tuple[torch.Tensor, int]:
        """Rows for `hashes`, computing only the missing ones with compute(indices). Returns (table, computed)."""
        found, missing = self.lookup(key, hashes)
        if missing:
            fresh = compute(missing)
            self.store(key, [hashes[i] for i in missing], fresh)
            found.update({i: fresh[j] for j, i in enumerate(missing)})
        if not hashes:
            return torch.empty(0), 0
        return torch.stack([found[i] for i in range(len(hashes))]), len(missing)
