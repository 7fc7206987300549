"""The frozen backbone's batched forward pass: pooled features on a compiled engine (engines.py), else torch."""

from __future__ import annotations

import hashlib
import logging
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch import nn

from headstart.device import autocast

__all__ = ["FromPixels", "FrozenBackbone", "extract_features", "view_seed"]

log = logging.getLogger(__name__)

def view_seed(seed: int, view: int, content_hash: str) -> int:
    """A per-image seed for augmented view `view`: the same crop whatever the order or batch of images."""
    return int(hashlib.sha1(f"{seed}:{view}:{content_hash}".encode()).hexdigest()[:15], 16)


class FromPixels(nn.Module):
    """uint8 [N, H, W, 3] pixels -> the normalized float [N, 3, H, W] input the weights expect, as a layer.

    Ahead of the backbone inside a compiled engine, normalization is part of the compiled graph, instead of
    torchvision's ToTensor + Normalize one image at a time in Python between engine calls (docs/benchmarks.md,
    "Normalization inside the engine"). On a GPU, the uint8 copy to the device is 4x smaller than float32's.
    The permuted NHWC batch is channels_last already.
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
        from headstart.extract.engines import frozen_forward

        self.module.eval()
        self._forward, reason = frozen_forward(self.module, sample, engine=self.requested,
                                               accelerator=self.accelerator, precision=self.precision,
                                               cache_dir=self.engine_cache)
        if self._forward is None and self.precision == "int8":
            # int8 that misses its accuracy check still leaves the compiled fp32 engine, several times faster
            # than torch's forward (docs/benchmarks.md, "int8 extraction on an AVX2-only CPU")
            log.warning("int8 features are not usable here (%s); extracting in fp32", reason)
            self.precision = "32-true"
            self._forward, reason = frozen_forward(self.module, sample, engine=self.requested,
                                                   accelerator=self.accelerator, precision=self.precision,
                                                   cache_dir=self.engine_cache)
        if self._forward is None:
            # Outside inference mode: the moved weights must stay ordinary tensors, which a later fine-tuning
            # phase of the same network (auto mode) trains.
            with torch.inference_mode(False), torch.no_grad():
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
