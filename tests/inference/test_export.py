"""ONNX export: parity with PyTorch on every backbone family, self-describing metadata, refusals, int8."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import onnx
import pytest

import headstart
from conftest import DEMO_DATA, make_synthetic_dataset
from headstart.artifact import ArtifactError
from headstart.inference.export import ExportError, check_parity, export_onnx
from headstart.runtime import ONNX_FORMAT, load_onnx

CLASSES = ["blue", "green", "red"]


def random_run(run_dir: Path, backbone: str, data: Path, image_size: int | None = None) -> Path:
    """A run directory as training writes it, around a randomly initialised network (no pretrained weights)."""
    import torch

    from headstart.backbones.model import build_network
    from headstart.backbones.registry import get_spec
    from headstart.data.folders import discover
    from headstart.training.checkpoint import save_model

    spec = get_spec(backbone)
    pre = spec.preprocessing if image_size is None else spec.preprocessing.with_crop(image_size)
    torch.manual_seed(0)
    net = build_network(spec, len(CLASSES), pretrained=False)
    run_dir.mkdir(parents=True)
    save_model(run_dir, net, {
        "backbone": spec.name, "classes": CLASSES, "preprocessing": pre.to_dict(),
        "head": {"type": "dropout_linear", "in_features": spec.in_features, "num_classes": len(CLASSES),
                 "dropout": 0.2},
        "temperature": 1.7, "threshold": 0.5, "mode": "features",
    })
    dataset = discover(data)
    (run_dir / "split.json").write_text(json.dumps(dataset.split_record(42, 0.2)))
    return run_dir


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    return make_synthetic_dataset(tmp_path_factory.mktemp("export") / "data",
                                  per_split={"train": 8, "val": 2, "test": 2})


@pytest.fixture(scope="module")
def lite_run(data, tmp_path_factory) -> Path:
    """A real (trained) efficientnet_lite0 run at 64 px, exported once for the tests that share it."""
    run_dir = tmp_path_factory.mktemp("lite") / "run"
    headstart.train(data, backbone="efficientnet_lite0", mode="features", epochs=2, image_size=64,
                    out=str(run_dir), report=False)
    export_onnx(run_dir)
    return run_dir


def assert_parity(parity: dict, n: int) -> None:
    assert parity["n"] == n
    assert parity["top1_agreement"] == 1.0 and parity["max_abs_logit_diff"] <= 1e-3
    assert parity["max_abs_input_diff"] <= 1e-5
    assert parity["end_to_end_top1_agreement"] == 1.0 and parity["end_to_end_max_abs_logit_diff"] <= 1e-3


@pytest.fixture
def reuse_lite_graph(lite_run, monkeypatch):
    """Skip re-exporting (10-40 s with the dynamo exporter) in tests about what happens after the export."""
    from headstart.inference import export

    def cached(*args, **kwargs):
        model = onnx.load(lite_run / "model.onnx")
        del model.metadata_props[:]
        return model

    monkeypatch.setattr(export, "_export_proto", cached)


# Every family in the registry, and each kind of layer it brings: the trained lite0 run (tf "same" padding,
# depthwise, ReLU6) is tested below; torchvision CNNs (SE + hardswish; LayerNorm + GELU + permutes), timm, and
# ViT (attention, at its native 224). resnet18 and efficientnet_b0 bring no op not covered here. A dynamo
# export costs 10-40 s on 2 cores, ViT-B's ~50 s plus a 330 MB model: it runs with the integration tests.
FAMILIES = [
    pytest.param("mobilenet_v3_small", 64, id="mobilenet_v3_small"),
    pytest.param("convnext_tiny", 64, id="convnext_tiny"),
    pytest.param("timm:resnet18", 64, id="timm:resnet18"),
    pytest.param("vit_b_16", None, id="vit_b_16", marks=pytest.mark.integration),
]


@pytest.mark.parametrize(("backbone", "size"), FAMILIES)
def test_parity_on_every_backbone_family(backbone, size, data, tmp_path):
    run_dir = random_run(tmp_path / "run", backbone, data, size)
    result = export_onnx(run_dir)
    assert result.path == run_dir / "model.onnx" and result.path.stat().st_size == result.bytes
    assert result.exporter == "dynamo" and result.opset == 18
    assert_parity(result.parity, n=6)  # the 2 test images of each of the 3 classes


def test_trained_lite_run_parity_and_metadata(lite_run):
    manifest = json.loads((lite_run / "model.json").read_text())
    model = onnx.load(lite_run / "model.onnx")
    onnx.checker.check_model(model, full_check=True)
    meta = {p.key: p.value for p in model.metadata_props}
    assert meta["format"] == ONNX_FORMAT and meta["backbone"] == "efficientnet_lite0"
    assert json.loads(meta["classes"]) == manifest["classes"] == CLASSES
    assert json.loads(meta["preprocessing"]) == manifest["preprocessing"]
    assert float(meta["temperature"]) == manifest["temperature"]
    assert float(meta["threshold"]) == manifest["threshold"]
    assert meta["weights_sha256"] == manifest["weights_sha256"]
    assert meta["headstart_version"] == headstart.__version__
    assert "round((height - crop_size) / 2)" in meta["usage"]  # the recipe for clients in other languages
    parity = json.loads(meta["parity"])
    assert_parity(parity, n=6)
    assert parity["source"] == "test split" and parity["passed"]
    assert parity["onnx_accuracy"] == parity["torch_accuracy"]
    assert [i.name for i in model.graph.input] == ["input"] and [o.name for o in model.graph.output] == ["logits"]
    assert not list(lite_run.glob(".*.tmp")), "a temp file was left behind"
    clf = load_onnx(lite_run)
    for batch in (1, 7):  # the batch axis is dynamic
        x = np.random.default_rng(batch).normal(size=(batch, 3, 64, 64)).astype(np.float32)
        assert clf.run(x).shape == (batch, 3)


def test_the_onnx_file_alone_is_enough(lite_run, tmp_path):
    alone = tmp_path / "elsewhere.onnx"
    shutil.copy(lite_run / "model.onnx", alone)
    clf = load_onnx(alone)
    torch_clf = headstart.load(lite_run)
    assert clf.classes == torch_clf.classes and clf.temperature == torch_clf.temperature
    assert clf.threshold == torch_clf.threshold and clf.preprocessing.to_dict() == torch_clf.manifest["preprocessing"]


def test_check_parity_on_given_images_and_without_the_data(lite_run, tmp_path):
    images = sorted((DEMO_DATA / "test").rglob("*.jpg"))[::10]
    assert_parity(check_parity(lite_run, images=images), n=len(images))
    moved = tmp_path / "moved"
    shutil.copytree(lite_run, moved)
    split = json.loads((moved / "split.json").read_text())
    (moved / "split.json").write_text(json.dumps(dict(split, root=str(tmp_path / "gone"))))
    parity = check_parity(moved)
    assert parity["source"] == "synthetic" and parity["n"] > 0
    assert_parity(parity, n=parity["n"])


def test_disagreement_is_refused_and_nothing_is_written(lite_run, reuse_lite_graph, tmp_path, monkeypatch):
    from headstart.inference import export

    run_dir = tmp_path / "run"
    shutil.copytree(lite_run, run_dir)
    before = (run_dir / "model.onnx").read_bytes()
    real = export._parity

    def broken(*args, **kwargs):
        return dict(real(*args, **kwargs), max_abs_logit_diff=0.5)

    monkeypatch.setattr(export, "_parity", broken)
    with pytest.raises(ExportError, match="nothing written"):
        export_onnx(run_dir)
    assert (run_dir / "model.onnx").read_bytes() == before
    assert sorted(p.name for p in run_dir.iterdir()) == sorted(p.name for p in lite_run.iterdir())


def test_stale_or_missing_export_is_refused(lite_run, tmp_path):
    run_dir = tmp_path / "run"
    shutil.copytree(lite_run, run_dir)
    manifest = json.loads((run_dir / "model.json").read_text())
    (run_dir / "model.json").write_text(json.dumps(dict(manifest, weights_sha256="0" * 64)))
    with pytest.raises(ArtifactError, match=r"other weights.*headstart export"):
        load_onnx(run_dir)
    (run_dir / "model.onnx").unlink()
    with pytest.raises(ArtifactError, match="headstart export"):
        load_onnx(run_dir)
    with pytest.raises(ExportError, match="unknown exporter"):
        export_onnx(run_dir, exporter="tflite")


@pytest.mark.filterwarnings("ignore:.*TorchScript-based ONNX export:DeprecationWarning")
@pytest.mark.filterwarnings("ignore:The feature will be removed:DeprecationWarning")
def test_torchscript_exporter_also_agrees(data, tmp_path):
    run_dir = random_run(tmp_path / "run", "mobilenet_v3_small", data, 64)
    result = export_onnx(run_dir, tmp_path / "ts.onnx", exporter="torchscript", opset=17)
    assert_parity(result.parity, n=6)
    assert onnx.load(result.path).opset_import[0].version == 17


@pytest.mark.parametrize("int8_dot", ["1", "0"])
def test_int8_export_is_static_qdq_and_smaller(lite_run, reuse_lite_graph, data, tmp_path, monkeypatch, int8_dot):
    """Weights in 8 bits where the CPU has int8 dot products (VNNI, AMX), in 7 bits where it has not (AVX2 only:
    its kernels saturate with 8-bit weights)."""
    monkeypatch.setenv("HEADSTART_CPU_INT8", int8_dot)
    run_dir = tmp_path / "run"
    shutil.copytree(lite_run, run_dir)
    result = export_onnx(run_dir, quantize="int8")
    assert result.path == run_dir / "model.int8.onnx" and result.quantize == "int8"
    assert result.bytes < 0.5 * (run_dir / "model.onnx").stat().st_size
    model = onnx.load(result.path)
    ops = {n.op_type for n in model.graph.node}
    assert {"QuantizeLinear", "DequantizeLinear"} <= ops and "ConvInteger" not in ops
    weights = [onnx.numpy_helper.to_array(t) for t in model.graph.initializer if t.data_type == onnx.TensorProto.INT8]
    largest = max(int(abs(w.astype(int)).max()) for w in weights if w.size > 1)
    assert largest in ((127,) if int8_dot == "1" else (63, 64)), largest
    # At 64 px a 2-epoch head has near-tied logits, so int8 may flip labels here: accuracy is measured on a
    # real run in test_real_demo_run_parity; here, only that parity was measured and is not held to fp32's bar.
    assert result.parity["n"] == 6 and "passed" not in result.parity
    clf = load_onnx(result.path)  # in a run directory, so also checked against model.json's weights
    assert "int8" in clf.manifest["quantization"] and clf.predict(next((data / "test").rglob("*.jpg")))[0]["top_k"]


@pytest.mark.integration
def test_real_demo_run_parity(tmp_path):
    """efficientnet_lite0 with its ImageNet weights at its native 224, trained on the bundled demo set. (int8 on
    real weights and data: tests/inference/test_deploy.py's test_int8_on_real_weights_and_data.)"""
    result = headstart.train(DEMO_DATA, backbone="efficientnet_lite0", mode="features", epochs=3,
                             out=str(tmp_path / "demo"), report=False)
    exported = export_onnx(result.run_dir)
    assert_parity(exported.parity, n=60)
    assert exported.parity["onnx_accuracy"] == exported.parity["torch_accuracy"] >= 0.8
