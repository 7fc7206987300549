"""Grad-CAM through `headstart.load` for a CNN and a ViT, overlays, explain_images and top_losses."""

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import headstart
from conftest import make_synthetic_dataset
from headstart.backbones.model import build_network, count_parameters
from headstart.backbones.registry import get_spec
from headstart.inference.classifier import TorchClassifier as Classifier
from headstart.report.explain import (
    display_crop,
    explain_images,
    first_conv_weights,
    gradcam,
    overlay,
    target_layer,
    top_losses,
)
from headstart.training.checkpoint import save_model

CLASSES = ["ants", "bees", "wasps"]


def _random_run(run_dir: Path, backbone: str, crop: int | None = None) -> Path:
    """A loadable run directory with random weights: no training, no downloads."""
    spec = get_spec(backbone)
    torch.manual_seed(0)
    net = build_network(spec, len(CLASSES), pretrained=False)
    pre = spec.preprocessing if crop is None else spec.preprocessing.with_crop(crop)
    run_dir.mkdir(parents=True)
    save_model(run_dir, net, {
        "backbone": spec.name, "classes": CLASSES, "preprocessing": pre.to_dict(),
        "head": {"type": "dropout_linear", "in_features": spec.in_features, "num_classes": len(CLASSES),
                 "dropout": 0.2},
        "temperature": 1.0, "threshold": 0.5, "mode": "features", "parameters": count_parameters(net),
    })
    return run_dir


def _photo(seed: int, size=(90, 70)) -> Image.Image:
    """Smooth blobs rather than white noise, so activations vary across the image."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:size[1], 0:size[0]] / max(size)
    img = np.stack([np.sin(x * rng.uniform(3, 9) + rng.uniform(0, 6)) * np.cos(y * rng.uniform(3, 9))
                    for _ in range(3)], axis=-1)
    return Image.fromarray(((img + 1) * 127.5).astype(np.uint8))


@pytest.fixture(scope="module")
def resnet(tmp_path_factory):
    return headstart.load(_random_run(tmp_path_factory.mktemp("resnet") / "run", "resnet18", crop=64))


def _assert_cams(cams, n, side):
    assert len(cams) == n
    for cam in cams:
        assert cam.shape == (side, side) and cam.dtype == np.float32
        assert cam.min() >= 0 and cam.max() <= 1
        assert cam.max() - cam.min() > 0.5, "a Grad-CAM map should not be constant"


def test_cnn_gradcam_maps_batches_and_cleans_up(resnet):
    images = [_photo(i) for i in range(3)]
    cams = gradcam(resnet, images, batch_size=2)
    _assert_cams(cams, 3, 64)
    np.testing.assert_allclose(gradcam(resnet, images[2:])[0], cams[2], atol=1e-4)  # batching changes nothing
    assert not any(m._forward_hooks for m in resnet.net.modules()), "hooks left behind"
    assert all(p.grad is None for p in resnet.net.parameters()), "gradients left behind"
    assert all(p.requires_grad for p in resnet.net.parameters()), "parameters left frozen"


def test_cnn_gradcam_target_class_changes_the_map(resnet):
    image = _photo(7)
    by_name = gradcam(resnet, [image], "bees")[0]
    assert not np.allclose(by_name, gradcam(resnet, [image], "wasps")[0], atol=1e-3)
    np.testing.assert_allclose(by_name, gradcam(resnet, [image], 1)[0], atol=1e-6)
    with pytest.raises(ValueError, match="unknown class"):
        gradcam(resnet, [image], "hornets")


def test_vit_gradcam():
    # Built in memory: saving and reloading 330 MB of random weights would only re-test `load`.
    spec = get_spec("vit_b_16")
    torch.manual_seed(0)
    net = build_network(spec, len(CLASSES), pretrained=False).eval()
    clf = Classifier(net=net, manifest={"backbone": spec.name, "classes": CLASSES,
                                        "preprocessing": spec.preprocessing.to_dict()})
    layer, reshape = target_layer(clf.net, get_spec("vit_b_16"), torch.zeros(1, 3, 224, 224))
    assert layer is clf.net.backbone.encoder.layers[-1].ln_1
    assert reshape(torch.zeros(2, 197, 768)).shape == (2, 768, 14, 14)
    _assert_cams(gradcam(clf, [_photo(1, (260, 230)), _photo(2)]), 2, 224)
    assert first_conv_weights(clf.net).shape == (768, 3, 16, 16)


@pytest.mark.parametrize("backbone, expected", [("resnet18", "layer4"), ("mobilenet_v3_small", "features")])
def test_cnn_target_layer_is_the_last_spatial_map(backbone, expected):
    spec = get_spec(backbone)
    net = build_network(spec, 3, pretrained=False).eval()
    layer, reshape = target_layer(net, spec, torch.zeros(1, 3, 64, 64))
    assert layer is net.backbone.get_submodule(expected) and reshape is None


def test_overlay_and_display_crop(resnet):
    image = _photo(3, (120, 80))
    crop = display_crop(resnet, image)
    assert crop.size == (64, 64)
    cam = np.zeros((64, 64), np.float32)
    cam[:32] = 1.0
    out = overlay(crop, cam)
    assert out.size == crop.size and out.mode == "RGB"
    hot, cold = np.asarray(out)[:32].astype(float), np.asarray(out)[32:].astype(float)
    assert hot[..., 0].mean() > cold[..., 0].mean() + 40, "the hot half should be redder"
    assert overlay(image, cam).size == image.size  # a map of another size is resized to the image


@pytest.fixture(scope="module")
def lite_run(tmp_path_factory):
    """A real efficientnet_lite0 run (pretrained, features mode) on small synthetic colour classes."""
    root = tmp_path_factory.mktemp("lite")
    data = make_synthetic_dataset(root / "data", per_split={"train": 8, "val": 4}, size=72)
    result = headstart.train(data, image_size=64, epochs=2, out=str(root / "run"), seed=0)
    return result.run_dir, data, result.load()


def test_explain_images_writes_overlays_and_reports_bad_files(lite_run, tmp_path):
    run_dir, data, clf = lite_run
    bad = tmp_path / "broken.jpg"
    bad.write_bytes(b"not an image")
    good = sorted((data / "val" / "red").glob("*.jpg"))[:2]
    results = explain_images(run_dir, [good[0], bad, good[1]], tmp_path / "out")
    assert [("error" in r) for r in results] == [False, True, False]
    assert results[1]["path"] == str(bad) and results[1]["error"]
    for r in (results[0], results[2]):
        assert r["label"] in ("red", "green", "blue") and 0 < r["confidence"] <= 1
        with Image.open(r["overlay"]) as img:
            assert img.size == (64, 64)
    layer, _ = target_layer(clf.net, get_spec("efficientnet_lite0"), torch.zeros(1, 3, 64, 64))
    assert layer is clf.net.backbone.bn2  # timm EfficientNet: the last BatchNormAct, after conv_head
    forced = explain_images(run_dir, good[:1], tmp_path / "forced", class_name="blue", classifier=clf)[0]
    assert forced["label"] == "blue" and Path(forced["overlay"]).is_file()
    with pytest.raises(ValueError, match="unknown class"):
        explain_images(run_dir, good[:1], tmp_path / "x", class_name="purple", classifier=clf)


def test_top_losses_ranks_by_loss(lite_run, tmp_path):
    _, data, clf = lite_run
    items = [(p, "blue") for p in sorted((data / "val" / "red").glob("*.jpg"))]  # deliberately mislabelled
    items += [(p, "green") for p in sorted((data / "val" / "green").glob("*.jpg"))]
    result = top_losses(clf, items, n=5, out=tmp_path / "top.png")
    losses = [r["loss"] for r in result.rows]
    assert len(losses) == 5 and losses == sorted(losses, reverse=True)
    assert all(r["true"] == "blue" and not r["correct"] for r in result.rows[:4]), "mislabelled ones first"
    assert result.wrong >= 4
    assert result.plot.read_bytes().startswith(b"\x89PNG")
    # precomputed logits give the same answer without a second pass over every image
    images = [Image.open(p).convert("RGB") for p, _ in items]
    again = top_losses(clf, items, n=5, logits=clf.logits(images))
    assert [r["path"] for r in again.rows] == [r["path"] for r in result.rows] and again.plot is None
