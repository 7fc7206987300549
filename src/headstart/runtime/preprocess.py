"""A backbone's eval preprocessing (the one spec, stored with every model) and its PIL + numpy pipeline, equal
to torchvision's Resize(int) + CenterCrop + ToTensor + Normalize.

No torch here: a serving install needs only onnxruntime, numpy and Pillow. PREPROCESSING_STEPS spells the
pipeline out for a client in any language; the ONNX file carries it, and the numbers, in its metadata.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from PIL import Image

__all__ = ["PREPROCESSING_STEPS", "Preprocessing", "center_crop_box", "preprocess", "preprocess_batch",
           "resize_short_side"]

PREPROCESSING_STEPS = """\
1. decode to RGB (EXIF-oriented), 8 bits per channel; with decode "reduced", a JPEG is decoded at the
   smallest of libjpeg's DCT scales 1/2, 1/4, 1/8 (Pillow's Image.draft) whose short side is still at least
   0.9 * resize_size, instead of at full size (decode "full": always at full size);
2. resize so the short side is resize_size; the long side is floor(resize_size * long / short); Pillow's
   antialiased filter named by interpolation (bilinear | bicubic | nearest); skipped when the short side
   already is resize_size;
3. center-crop crop_size x crop_size: top = round((height - crop_size) / 2), left likewise, with Python's
   round (halves to even), as torchvision does;
4. float32 x = uint8 / 255, then (x - mean[c]) / std[c] per channel, in float32;
5. HWC -> CHW, stacked to a float32 NCHW batch.
"""


@dataclass(frozen=True)
class Preprocessing:
    """Eval preprocessing of a backbone's weights: resize the short side, center-crop, normalize."""

    crop_size: int
    resize_size: int
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    interpolation: str = "bilinear"  # "bilinear" | "bicubic" | "nearest"
    # "reduced": JPEGs decoded at a DCT scale near resize_size (step 1 of PREPROCESSING_STEPS), as new runs
    # train; "full": at full size, as artifacts without the field (older runs) were trained.
    decode: str = "reduced"

    def __post_init__(self) -> None:
        if self.interpolation not in ("bilinear", "bicubic", "nearest"):
            raise ValueError(f"unsupported interpolation {self.interpolation!r}")
        if self.decode not in ("reduced", "full"):
            raise ValueError(f"unsupported decode {self.decode!r}")
        if self.resize_size < self.crop_size:
            raise ValueError(f"resize_size {self.resize_size} is smaller than crop_size {self.crop_size}")

    def to_dict(self) -> dict[str, Any]:
        """As model.json and the ONNX metadata hold it (lists, as JSON reads them back)."""
        return {"crop_size": self.crop_size, "resize_size": self.resize_size, "mean": list(self.mean),
                "std": list(self.std), "interpolation": self.interpolation, "decode": self.decode}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Preprocessing:
        return cls(
            crop_size=int(data["crop_size"]),
            resize_size=int(data["resize_size"]),
            mean=tuple(float(v) for v in data["mean"]),  # type: ignore[arg-type]
            std=tuple(float(v) for v in data["std"]),  # type: ignore[arg-type]
            interpolation=str(data.get("interpolation", "bilinear")),
            decode=str(data.get("decode", "full")),
        )

    @property
    def reduce_to(self) -> int | None:
        """The short side a JPEG may be decoded down to (runtime.images.open_image's reduce_to), or None."""
        return self.resize_size if self.decode == "reduced" else None

    def with_crop(self, crop_size: int) -> Preprocessing:
        """The same preprocessing at another input size, keeping the resize/crop ratio."""
        resize = round(crop_size * self.resize_size / self.crop_size)
        return dataclasses.replace(self, crop_size=crop_size, resize_size=max(resize, crop_size))


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



def center_crop_box(width: int, height: int, crop: int) -> tuple[int, int]:
    """(top, left) of torchvision's CenterCrop; Python's round() halves to even, and so must we."""
    return round((height - crop) / 2.0), round((width - crop) / 2.0)


def preprocess(img: Image.Image, spec: Preprocessing) -> np.ndarray:
    """One RGB image -> float32 [3, crop, crop], normalized."""
    if img.mode != "RGB":
        img = img.convert("RGB")
    # The short side becomes resize_size >= crop_size, so the crop never needs torchvision's zero padding.
    img = resize_short_side(img, spec.resize_size, spec.interpolation)
    top, left = center_crop_box(img.width, img.height, spec.crop_size)
    pixels = np.asarray(img)[top:top + spec.crop_size, left:left + spec.crop_size]
    # float32 all the way, in torchvision's order (divide, subtract, divide), so the results agree bit for bit.
    x = pixels.astype(np.float32) / np.float32(255)
    x = (x - np.asarray(spec.mean, np.float32)) / np.asarray(spec.std, np.float32)
    return np.ascontiguousarray(x.transpose(2, 0, 1))


def preprocess_batch(images: Sequence[Image.Image], spec: Preprocessing) -> np.ndarray:
    """RGB images -> float32 [N, 3, crop, crop]."""
    if not images:
        return np.zeros((0, 3, spec.crop_size, spec.crop_size), np.float32)
    return np.stack([preprocess(img, spec) for img in images])
