"""Transforms built from a backbone's preprocessing: the weights' own eval pipeline and augmentation presets."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from headstart.runtime.preprocess import Preprocessing

__all__ = ["AUGMENT_PRESETS", "eval_transform", "five_crop_transforms", "pixel_transform", "train_transform",
           "transform_key"]

AUGMENT_PRESETS = ("none", "light", "standard")


def _interpolation(name: str):
    from torchvision.transforms import InterpolationMode

    return InterpolationMode(name)


def _to_tensor_normalized(pre: Preprocessing) -> list:
    from torchvision import transforms as T

    return [T.ToTensor(), T.Normalize(pre.mean, pre.std)]


def eval_transform(pre: Preprocessing):
    """Resize the short side, center-crop, normalize: exactly what the weights were evaluated with."""
    return train_transform(pre, "none")


def five_crop_transforms(pre: Preprocessing) -> list:
    """Test-time views: the four corners and the center of the resized image, each normalized."""
    from torchvision import transforms as T
    from torchvision.transforms import functional as F

    resize = T.Resize(pre.resize_size, interpolation=_interpolation(pre.interpolation))
    finish = T.Compose(_to_tensor_normalized(pre))

    def view(index: int):
        return lambda img: finish(F.five_crop(resize(img), pre.crop_size)[index])

    return [view(i) for i in range(5)]


def train_transform(pre: Preprocessing, preset: str):
    """Augmentation presets on the same size and normalization as the eval transform ("none" is the eval one)."""
    from torchvision import transforms as T

    return T.Compose(_pixel_ops(pre, preset) + _to_tensor_normalized(pre))


def pixel_transform(pre: Preprocessing, preset: str = "none"):
    """train_transform(pre, preset) up to the pixels: a PIL image of the crop, before ToTensor and Normalize.
    For a FrozenBackbone with `pixels`, which normalizes whole batches inside its engine."""
    from torchvision import transforms as T

    return T.Compose(_pixel_ops(pre, preset))


def _pixel_ops(pre: Preprocessing, preset: str) -> list:
    from torchvision import transforms as T

    interpolation = _interpolation(pre.interpolation)
    if preset == "none":  # the weights' own evaluation crop
        return [T.Resize(pre.resize_size, interpolation=interpolation), T.CenterCrop(pre.crop_size)]
    if preset == "light":
        return [
            T.RandomResizedCrop(pre.crop_size, scale=(0.5, 1.0), interpolation=interpolation),
            T.RandomHorizontalFlip(),
        ]
    if preset == "standard":
        return [
            T.RandomResizedCrop(pre.crop_size, scale=(0.25, 1.0), interpolation=interpolation),
            T.RandomHorizontalFlip(),
            T.ColorJitter(0.3, 0.3, 0.3, 0.05),
        ]
    raise ValueError(f"unknown augmentation preset {preset!r}; choose one of {', '.join(AUGMENT_PRESETS)}")


def transform_key(pre: Preprocessing, preset: str) -> str:
    """A stable description of a transform and of the decoding before it, part of the feature cache's key."""
    return f"{preset}|{pre.resize_size}|{pre.crop_size}|{pre.interpolation}|{pre.mean}|{pre.std}|{pre.decode}"
