"""The ONNX engine: numpy preprocessing equal to torchvision's, and the torch engine's exact output format."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import headstart
from headstart.artifact import ArtifactError
from headstart.runtime import UNSURE, load_onnx, preprocess, preprocess_batch
from headstart.runtime.images import open_image
from headstart.runtime.preprocess import Preprocessing, center_crop_box
from image_corpus import BAD_FILES, GOOD_FILES, make_corpus

IMAGENET = {"mean": [0.485, 0.456, 0.406], "std": [0.229, 0.224, 0.225]}
INCEPTION = {"mean": [0.5, 0.5, 0.5], "std": [0.5, 0.5, 0.5]}
# (width, height): landscape, portrait, odd sizes, already the resize size, smaller than the crop, extreme.
SIZES = [(320, 240), (241, 333), (257, 256), (256, 300), (64, 97), (31, 17), (1000, 73), (5, 1)]


def torch_eval(pre: dict):
    from headstart.data.transforms import eval_transform
    from headstart.runtime.preprocess import Preprocessing

    return eval_transform(Preprocessing.from_dict(pre))


def noise_image(w: int, h: int, seed: int) -> Image.Image:
    rng = np.random.default_rng(seed)
    smooth = np.linspace(0, 255, w)[None, :, None] * np.linspace(0.2, 1, h)[:, None, None]
    return Image.fromarray(np.clip(smooth + rng.normal(0, 40, (h, w, 3)), 0, 255).astype(np.uint8))


@pytest.mark.parametrize("interpolation", ["bilinear", "bicubic", "nearest"])
@pytest.mark.parametrize(("resize", "crop", "norm"), [(256, 224, IMAGENET), (73, 64, INCEPTION), (97, 96, IMAGENET)])
def test_preprocess_equals_torchvision(interpolation, resize, crop, norm):
    pre = {"resize_size": resize, "crop_size": crop, "interpolation": interpolation, **norm}
    spec, transform = Preprocessing.from_dict(pre), torch_eval(pre)
    images = [noise_image(w, h, seed) for seed, (w, h) in enumerate(SIZES)]
    batch = preprocess_batch(images, spec)
    assert batch.shape == (len(SIZES), 3, crop, crop) and batch.dtype == np.float32
    for img, ours in zip(images, batch):
        assert np.abs(ours - transform(img).numpy()).max() <= 1e-5, img.size


def test_preprocess_equals_torchvision_on_every_readable_file(tmp_path):
    corpus = make_corpus(tmp_path)
    pre = {"resize_size": 36, "crop_size": 32, "interpolation": "bicubic", **IMAGENET}
    transform = torch_eval(pre)
    for name in GOOD_FILES:
        img = open_image(corpus[name])
        assert np.abs(preprocess(img, Preprocessing.from_dict(pre)) - transform(img).numpy()).max() <= 1e-5, name


def test_center_crop_rounds_halves_to_even_like_torchvision():
    from torchvision.transforms import functional as F

    ramp = Image.fromarray((np.arange(11 * 12).reshape(11, 12) % 256).astype(np.uint8))
    for crop in (4, 5, 6):  # (11 - 5) / 2 = 3.0, (11 - 4) / 2 = 3.5 -> 4, (12 - 5) / 2 = 3.5 -> 4, ...
        top, left = center_crop_box(ramp.width, ramp.height, crop)
        expected = np.asarray(F.center_crop(ramp, [crop, crop]))
        assert np.array_equal(np.asarray(ramp)[top:top + crop, left:left + crop], expected), crop
    assert center_crop_box(13, 13, 10) == (2, 2)  # 1.5 rounds to 2
    assert center_crop_box(11, 11, 10) == (0, 0)  # 0.5 rounds to 0, not 1


@pytest.fixture(scope="module")
def run(tmp_path_factory) -> Path:
    from conftest import make_synthetic_dataset
    from headstart.inference.export import export_onnx

    root = tmp_path_factory.mktemp("engine")
    data = make_synthetic_dataset(root / "data", per_split={"train": 8, "val": 3, "test": 2})
    result = headstart.train(data, mode="features", epochs=3, image_size=64, out=str(root / "run"))
    export_onnx(result.run_dir)
    return result.run_dir


@pytest.fixture(scope="module")
def engines(run):
    return headstart.load(run), load_onnx(run)


@pytest.fixture(scope="module")
def inputs(run, tmp_path_factory) -> list:
    import json

    split = json.loads((run / "split.json").read_text())
    corpus = make_corpus(tmp_path_factory.mktemp("corpus"))
    good = [Path(split["root"]) / f for f in split["files"]["test"]]
    return [*good, corpus["good_rgb.jpg"], *(corpus[name] for name in BAD_FILES), Image.new("L", (50, 70), 90),
            str(good[0]), corpus["exif_rotated.jpg"].parent / "missing.jpg"]


def assert_same_results(ours: list[dict], theirs: list[dict]):
    assert len(ours) == len(theirs)
    for a, b in zip(ours, theirs):
        assert a.keys() == b.keys() and a["path"] == b["path"]
        if "error" in b:
            assert a == b
            continue
        assert a["label"] == b["label"] and a["confidence"] == pytest.approx(b["confidence"], abs=1e-5)
        assert [c for c, _ in a["top_k"]] == [c for c, _ in b["top_k"]]
        assert np.allclose([p for _, p in a["top_k"]], [p for _, p in b["top_k"]], atol=1e-5)
        assert all(type(x) is type(y) for x, y in zip([a["confidence"], *a["top_k"][0]],
                                                       [b["confidence"], *b["top_k"][0]]))


def test_same_interface_and_values_as_the_torch_engine(engines):
    torch_clf, onnx_clf = engines
    assert onnx_clf.classes == torch_clf.classes == ["blue", "green", "red"]
    assert onnx_clf.temperature == torch_clf.temperature and onnx_clf.threshold == torch_clf.threshold


@pytest.mark.parametrize(("top_k", "threshold"), [(3, None), (1, 0.0), (10, 0.999)])
def test_predict_output_equals_the_torch_engine(engines, inputs, top_k, threshold):
    torch_clf, onnx_clf = engines
    ours = onnx_clf.predict(inputs, top_k=top_k, threshold=threshold, batch_size=4)
    assert_same_results(ours, torch_clf.predict(inputs, top_k=top_k, threshold=threshold))
    errors = [r for r in ours if "error" in r]
    assert len(errors) == len(BAD_FILES) + 1 and all(r["error"] for r in errors)
    assert ours[len(inputs) - 3]["path"] == f"<image {len(inputs) - 3}>"
    predicted = [r for r in ours if "error" not in r]
    assert all(len(r["top_k"]) == min(top_k, 3) for r in predicted)
    if threshold == 0.999:
        assert any(r["label"] == UNSURE for r in predicted)
    if threshold == 0.0:
        assert not any(r["label"] == UNSURE for r in predicted)


def test_single_input_and_batch_size_do_not_change_results(engines, inputs):
    _, onnx_clf = engines
    one = onnx_clf.predict(inputs[0])
    assert len(one) == 1 and one[0]["path"] == str(inputs[0])
    images = [open_image(p) for p in inputs[:5]]
    assert np.allclose(onnx_clf.logits(images, batch_size=1), onnx_clf.logits(images, batch_size=32), atol=1e-5)
    assert onnx_clf.logits([]).shape == (0, 3)


def test_load_onnx_refuses_what_is_not_a_headstart_export(run, tmp_path):
    import onnx

    plain = onnx.load(run / "model.onnx")
    del plain.metadata_props[:]
    onnx.save(plain, tmp_path / "plain.onnx")
    with pytest.raises(ArtifactError, match="not a headstart ONNX export"):
        load_onnx(tmp_path / "plain.onnx")
    (tmp_path / "junk.onnx").write_bytes(b"not a model")
    with pytest.raises(ArtifactError, match="cannot load"):
        load_onnx(tmp_path / "junk.onnx")
    with pytest.raises(ArtifactError, match="no such"):
        load_onnx(tmp_path / "nothing.onnx")


def test_every_engine_decodes_a_large_jpeg_as_training_does(engines, tmp_path):
    """New runs decode JPEGs at a reduced DCT scale (Preprocessing.decode "reduced"); every engine's predict from
    a path decodes so, giving what the image decoded that way gives, and a full decode differs."""
    y, x = np.mgrid[0:768, 0:1024]
    path = tmp_path / "big.jpg"
    Image.fromarray(np.stack([x % 256, y % 256, (x * y) % 256], -1).astype(np.uint8)).save(path, quality=90)
    for clf in engines:
        pre = clf.preprocessing
        assert pre.decode == "reduced" and pre.reduce_to == pre.resize_size
        reduced = open_image(path, reduce_to=pre.reduce_to)
        assert reduced.size[0] < 1024  # decoded at 1/2, 1/4 or 1/8 scale
        from_path, = clf.predict([path], top_k=3)
        same, = clf.predict([reduced], top_k=3)
        assert [c for c, _ in from_path["top_k"]] == [c for c, _ in same["top_k"]]
        assert np.allclose([p for _, p in from_path["top_k"]], [p for _, p in same["top_k"]], atol=1e-6)
        assert not np.allclose(clf.logits([reduced]), clf.logits([open_image(path)]), atol=1e-6)


def test_preprocessing_without_a_decode_field_is_a_full_decode():
    """Artifacts written before the field existed were trained on full-size decodes, and keep them."""
    old = {"crop_size": 224, "resize_size": 256, "mean": [0.5] * 3, "std": [0.5] * 3, "interpolation": "bicubic"}
    assert Preprocessing.from_dict(old).decode == "full" and Preprocessing.from_dict(old).reduce_to is None
    new = Preprocessing.from_dict({**old, "decode": "reduced"})
    assert Preprocessing.from_dict(new.to_dict()) == new and new.reduce_to == 256
    with pytest.raises(ValueError, match="decode"):
        Preprocessing.from_dict({**old, "decode": "thumbnail"})
