"""Eval preprocessing with PIL + numpy, equal to torchvision's Resize(int) + CenterCrop + ToTensor + Normalize.

No torch here: a serving install needs only onnxruntime, numpy and Pillow. PREPROCESSING_STEPS spells the
pipeline out for a client in any language; the ONNX file carries it, and the numbers, in its metadata.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from PIL import Image

# The registry and data.loading import no torch (tests/runtime/test_no_torch.py keeps it that way): the numbers
# come in the registry's own Preprocessing, the one description of a backbone's eval pipeline.
from headstart.backbones.registry import Preprocessing
from headstart.data.loading import resize_short_side

__all__ = ["PREPROCESSING_STEPS", "center_crop_box", "preprocess", "preprocess_batch"]

PREPROCESSING_STEPS = """\
1. decode to RGB (EXIF-oriented), 8 bits per channel;
2. resize so the short side is resize_size; the long side is floor(resize_size * long / short); Pillow's
   antialiased filter named by interpolation (bilinear | bicubic | nearest); skipped when the short side
   already is resize_size;
3. center-crop crop_size x crop_size: top = round((height - crop_size) / 2), left likewise, with Python's
   round (halves to even), as torchvision does;
4. float32 x = uint8 / 255, then (x - mean[c]) / std[c] per channel, in float32;
5. HWC -> CHW, stacked to a float32 NCHW batch.
"""


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
