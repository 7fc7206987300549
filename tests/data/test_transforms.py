"""Transforms from a backbone's preprocessing: the eval one equals the torch-free numpy pipeline, augmentations
are reproducible from the seed, pixel_transform is train_transform up to normalization, and the cache key tells
transforms apart."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image
from torchvision import transforms as T

from headstart.data.transforms import (
    AUGMENT_PRESETS,
    eval_transform,
    five_crop_transforms,
    pixel_transform,
    train_transform,
    transform_key,
)
from headstart.runtime.preprocess import Preprocessing, preprocess, resize_short_side

PRE = Preprocessing(crop_size=32, resize_size=37, mean=(0.485, 0.456, 0.406), std=(0.229, 0.224, 0.225),
                    interpolation="bicubic")
ODD_SIZES = [(53, 41), (41, 67), (37, 37), (101, 38), (29, 31)]  # (width, height); the last smaller than resize


def _image(width: int, height: int, seed: int = 0) -> Image.Image:
    rng = np.random.default_rng(seed)
    ramp = np.linspace(0, 255, width)[None, :, None] * np.linspace(0.3, 1, height)[:, None, None]
    return Image.fromarray(np.clip(ramp + rng.normal(0, 50, (height, width, 3)), 0, 255).astype(np.uint8))


@pytest.mark.parametrize("pre", [PRE, Preprocessing(24, 24, (0.5,) * 3, (0.5,) * 3, "bilinear")])
def test_eval_transform_equals_the_numpy_pipeline(pre):
    transform = eval_transform(pre)
    for seed, size in enumerate(ODD_SIZES):
        image = _image(*size, seed=seed)
        out = transform(image)
        assert out.shape == (3, pre.crop_size, pre.crop_size) and out.dtype == torch.float32
        assert np.abs(out.numpy() - preprocess(image, pre)).max() <= 1e-6, size


def test_eval_transform_of_an_image_decoded_at_the_resize_size_is_unchanged():
    """Decoding resizes to resize_size once (data/loading.py): the eval transform's own resize is then a no-op."""
    for seed, size in enumerate(ODD_SIZES):
        image = _image(*size, seed=seed)
        resized = resize_short_side(image, PRE.resize_size, PRE.interpolation)
        assert torch.equal(eval_transform(PRE)(resized), eval_transform(PRE)(image)), size


@pytest.mark.parametrize("preset", ["light", "standard"])
def test_augmentations_are_reproducible_from_the_seed(preset):
    image, transform = _image(60, 45), train_transform(PRE, preset)

    def views(seed):
        torch.manual_seed(seed)
        return [transform(image) for _ in range(3)]

    first, again, other = views(5), views(5), views(6)
    assert all(v.shape == (3, 32, 32) for v in first)
    assert all(torch.equal(a, b) for a, b in zip(first, again))
    assert not torch.equal(first[0], other[0])
    assert not torch.equal(first[0], first[1])  # random within a seed's stream


def test_none_is_the_eval_transform():
    image = _image(53, 41)
    torch.manual_seed(0)
    assert torch.equal(train_transform(PRE, "none")(image), eval_transform(PRE)(image))


@pytest.mark.parametrize("preset", AUGMENT_PRESETS)
def test_pixel_transform_then_normalization_is_the_train_transform(preset):
    image = _image(60, 45, seed=3)
    finish = T.Compose([T.ToTensor(), T.Normalize(PRE.mean, PRE.std)])
    torch.manual_seed(11)
    pixels = pixel_transform(PRE, preset)(image)
    torch.manual_seed(11)
    expected = train_transform(PRE, preset)(image)
    assert isinstance(pixels, Image.Image) and pixels.size == (32, 32) and pixels.mode == "RGB"
    assert torch.equal(finish(pixels), expected)


def test_transform_key_tells_transforms_apart():
    variants = [PRE, PRE.with_crop(48), Preprocessing(32, 40, PRE.mean, PRE.std, PRE.interpolation),
                Preprocessing(32, 37, PRE.mean, PRE.std, "bilinear"), Preprocessing(32, 37, (0.5,) * 3, PRE.std,
                                                                                    "bicubic"),
                Preprocessing(32, 37, PRE.mean, (0.5,) * 3, "bicubic")]
    keys = [transform_key(pre, preset) for pre in variants for preset in AUGMENT_PRESETS]
    assert len(set(keys)) == len(keys) == 18
    same = Preprocessing.from_dict(PRE.to_dict())
    assert transform_key(same, "light") == transform_key(PRE, "light")  # stable: a cache key across runs


def test_an_unknown_preset_is_refused():
    for build in (train_transform, pixel_transform):
        with pytest.raises(ValueError, match="unknown augmentation preset 'heavy'; choose one of none, light"):
            build(PRE, "heavy")


def test_five_crop_gives_the_four_corners_and_the_center():
    image = _image(53, 41, seed=1)
    views = [view(image) for view in five_crop_transforms(PRE)]
    assert len(views) == 5 and all(v.shape == (3, 32, 32) for v in views)
    assert torch.equal(views[4], eval_transform(PRE)(image))  # the center crop is the eval view
    resized = np.asarray(resize_short_side(image, PRE.resize_size, PRE.interpolation), dtype=np.float32) / 255
    h, w = resized.shape[:2]
    mean, std = np.asarray(PRE.mean, np.float32), np.asarray(PRE.std, np.float32)
    corners = [resized[:32, :32], resized[:32, w - 32:], resized[h - 32:, :32], resized[h - 32:, w - 32:]]
    for view, corner in zip(views, corners):  # torchvision's order: top-left, top-right, bottom-left, bottom-right
        np.testing.assert_allclose(view.numpy(), ((corner - mean) / std).transpose(2, 0, 1), atol=1e-6)
    assert len({v.numpy().tobytes() for v in views}) == 5
