"""headstart.export(run, format=...): every format written, loaded back with its own runtime and scored on the
test split; floors that refuse and keep earlier exports; bad input refused in one line with nothing written."""

from __future__ import annotations

import importlib.util
import json
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

import headstart
from conftest import make_synthetic_dataset
from headstart.inference.deploy import EXPORT_RECORD, FORMATS, export, read_export_record
from headstart.inference.export import ExportError

SCORE_KEYS = {"source", "n", "top1_agreement", "max_abs_logit_diff", "accuracy_torch", "accuracy",
              "accuracy_change", "ece_torch", "ece", "ece_change", "runtime"}
SPEED_KEYS = {"latency_p50_ms", "throughput_ips", "batch"}
# The tflite format needs the tflite extra (litert-torch: jax, transformers, absl), which the dev install leaves
# out: absl puts a finder on sys.meta_path when OpenVINO imports it, which tests/cli/test_startup.py forbids.
HAS_LITERT = importlib.util.find_spec("litert_torch") is not None
TESTED = [fmt for fmt in FORMATS if fmt != "tflite" or HAS_LITERT]
needs_litert = pytest.mark.skipif(not HAS_LITERT, reason="the tflite format needs litert-torch: "
                                                         "pip install -c constraints.txt -e '.[tflite]'")


@pytest.fixture(scope="module")
def run(tmp_path_factory) -> Path:
    """A trained efficientnet_lite0 run at 64 px with every format exported once (torchscript: quicker)."""
    root = tmp_path_factory.mktemp("deploy")
    data = make_synthetic_dataset(root / "data", per_split={"train": 8, "val": 2, "test": 2})
    run_dir = headstart.train(data, backbone="efficientnet_lite0", mode="features", epochs=2, image_size=64,
                              out=str(root / "run"), report=False).run_dir
    for fmt in TESTED:
        # At 64 px a 2-epoch head has near-tied logits, so int8 may flip labels: its floor is tested below.
        export(run_dir, fmt, exporter="torchscript", floor=0.0 if "int8" in fmt else None,
               measure_speed=fmt == "onnx-int8")
    return run_dir


def snapshot(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def test_every_format_is_written_scored_and_recorded(run):
    record = read_export_record(run)["exports"]
    assert set(record) == set(TESTED)
    for fmt, row in record.items():
        assert set(row) >= SCORE_KEYS, fmt
        assert row["source"] == "test split" and row["n"] == 6
        assert (run / row["path"]).exists() and row["bytes"] > 100_000
        if "int8" in fmt:
            assert row["floor"] == 0.0
        else:  # fp32: the same labels, logits within float noise, the same accuracy and ECE
            assert row["floor"] == 1.0 and row["top1_agreement"] == 1.0, fmt
            assert row["max_abs_logit_diff"] < 1e-4 and row["accuracy_change"] == 0, fmt
            assert abs(row["ece_change"]) < 1e-4, fmt
    assert set(record["onnx-int8"]) >= SPEED_KEYS and record["onnx-int8"]["throughput_ips"] > 0
    assert record["onnx-int8"]["bytes"] < 0.4 * record["onnx"]["bytes"]
    assert record["openvino-int8"]["bytes"] < 0.5 * record["openvino"]["bytes"]
    assert record["openvino"]["runtime"].startswith("openvino")
    assert not list(run.glob(".export-*")) and not list(run.glob(".*.tmp"))


def test_every_artifact_describes_itself(run):
    manifest = json.loads((run / "model.json").read_text())
    for folder in ("openvino", "openvino-int8", "web", *(["tflite"] if HAS_LITERT else [])):
        meta = json.loads((run / folder / "model.json").read_text())
        assert meta["classes"] == manifest["classes"] and meta["threshold"] == manifest["threshold"]
        assert meta["temperature"] == manifest["temperature"]
        # the page decodes at full size (a browser has no DCT-scaled JPEG decode), and says so
        decode = "full" if folder == "web" else "reduced"
        assert meta["preprocessing"] == {**manifest["preprocessing"], "decode": decode}, folder
        assert meta["weights_sha256"] == manifest["weights_sha256"] and "round(" in meta["usage"]
    assert "NNCF" in json.loads((run / "openvino-int8" / "model.json").read_text())["quantization"]
    ir = (run / "openvino" / "model.xml").read_text()
    assert 'element_type="f16"' not in ir  # fp32 weights, not OpenVINO's default fp16 compression
    assert {p.name for p in (run / "web").iterdir()} == {"index.html", "topk.js", "app.js", "style.css", "ort.js",
                                                         "ort-wasm.js", "model.js", "model.json"}



@needs_litert
def test_tflite_is_scored_with_the_litert_interpreter(run):
    tflite = json.loads((run / "tflite" / "model.json").read_text())
    assert tflite["format"] == "headstart.tflite/1" and tflite["converter"].startswith("litert-torch")
    assert {p.name for p in (run / "tflite").iterdir()} == {"model.tflite", "model.json"}
    row = read_export_record(run)["exports"]["tflite"]
    assert row["runtime"].startswith("litert") and row["top1_agreement"] == 1.0 and row["max_abs_logit_diff"] < 1e-4


@pytest.mark.parametrize("engine", ["onnx-int8", "openvino", "openvino-int8"])
def test_load_each_engine_predicts_like_its_score(run, engine):
    split = json.loads((run / "split.json").read_text())
    paths = [str(Path(split["root"]) / f) for f in split["files"]["test"]]
    clf, reference = headstart.load(run, engine=engine), headstart.load(run)
    ours, theirs = clf.predict(paths), reference.predict(paths)
    agree = np.mean([a["top_k"][0][0] == b["top_k"][0][0] for a, b in zip(ours, theirs)])
    assert agree == pytest.approx(read_export_record(run)["exports"][engine]["top1_agreement"])
    assert clf.classes == reference.classes and clf.threshold == reference.threshold


def test_a_format_below_its_floor_is_refused_and_the_earlier_export_is_kept(run, tmp_path, monkeypatch):
    from headstart.inference import deploy

    copy = tmp_path / "run"
    shutil.copytree(run, copy)
    before = snapshot(copy)
    real = deploy.agreement

    def one_flip(*args, **kwargs):
        return dict(real(*args, **kwargs), top1_agreement=5 / 6)

    monkeypatch.setattr(deploy, "agreement", one_flip)
    for fmt in ("openvino", "onnx"):
        with pytest.raises(ExportError, match=r"83\.33% on 6 test split images is below the 100% floor"):
            export(copy, fmt, exporter="torchscript", measure_speed=False)
    monkeypatch.setenv("HEADSTART_CPU_INT8", "1")
    with pytest.raises(ExportError, match="below the 99% floor; nothing written"):
        export(copy, "openvino-int8", exporter="torchscript", measure_speed=False)
    monkeypatch.setenv("HEADSTART_CPU_INT8", "0")  # an AVX2-only CPU: the refusal says why int8 is less exact
    with pytest.raises(ExportError, match=r"below the 99% floor \(this CPU has no int8 dot products"):
        export(copy, "onnx-int8", exporter="torchscript", measure_speed=False)
    assert snapshot(copy) == before  # model.onnx, openvino/, export.json: all as they were, no staging left
    assert sorted(p.name for p in copy.iterdir()) == sorted(p.name for p in run.iterdir())


def test_a_new_export_replaces_the_folder_whole(run, tmp_path):
    out = tmp_path / "deploy"
    export(run, "openvino", out, exporter="torchscript", measure_speed=False)
    (out / "openvino" / "stale.txt").write_text("from an older export")
    export(run, "openvino", out, exporter="torchscript", measure_speed=False)
    assert sorted(p.name for p in (out / "openvino").iterdir()) == ["model.bin", "model.json", "model.xml"]
    assert set(read_export_record(out)["exports"]) == {"openvino"}
    assert sorted(p.name for p in out.iterdir()) == [EXPORT_RECORD, "openvino"]


def cli(*args: str):
    from headstart.cli import app

    return CliRunner().invoke(app, ["export", *args])


def one_line_error(result, code: int, pattern: str) -> None:
    assert result.exit_code == code, result.output
    assert "Traceback" not in result.output
    lines = [line for line in result.output.strip().splitlines() if line.strip()]
    assert len(lines) == 1 and pattern in lines[0], result.output


def test_tflite_without_its_converter_says_how_to_install_it(run, tmp_path, monkeypatch):
    copy = tmp_path / "run"
    shutil.copytree(run, copy)
    before = snapshot(copy)
    monkeypatch.setitem(sys.modules, "litert_torch", None)  # as if the tflite extra were not installed
    with pytest.raises(ExportError, match=r"needs litert-torch: pip install 'headstart\[tflite\]'"):
        export(copy, "tflite", measure_speed=False)
    assert snapshot(copy) == before


def test_bad_input_is_one_line_and_writes_nothing(run, tmp_path):
    copy = tmp_path / "run"
    shutil.copytree(run, copy)
    before = snapshot(copy)
    one_line_error(cli(str(copy), "--format", "coreml"), 2, "unknown format 'coreml'; choose one of onnx, onnx-int8")
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    one_line_error(cli(str(copy), "--format", "onnx", "--out", str(blocker / "out")), 2,
                   "cannot write to the output folder")
    one_line_error(cli(str(copy), "--format", "openvino-int8", "--calibration", str(tmp_path / "nowhere")), 2,
                   "calibration set")
    # the run's train images gone: nothing to calibrate on
    split = json.loads(before["split.json"])
    (copy / "split.json").write_text(json.dumps(dict(split, root=str(tmp_path / "gone"))))
    one_line_error(cli(str(copy), "--format", "onnx-int8"), 2, "int8 calibration needs training images")
    (copy / "split.json").write_bytes(before["split.json"])
    # a run directory written by another headstart version (another model.json format)
    manifest = json.loads(before["model.json"])
    (copy / "model.json").write_text(json.dumps(dict(manifest, format="headstart.model/2")))
    one_line_error(cli(str(copy), "--format", "openvino"), 2, "unknown format 'headstart.model/2'")
    (copy / "model.json").write_bytes(before["model.json"])
    assert snapshot(copy) == before
    assert not blocker.with_name("out").exists()


def test_cli_refusal_exits_1_in_one_line_and_the_table_lists_every_format(run, tmp_path, monkeypatch):
    from headstart.cli import support
    from headstart.inference import deploy

    monkeypatch.setattr(support.out, "width", 200)  # the table's nine columns, unwrapped

    copy = tmp_path / "run"
    shutil.copytree(run, copy)
    done = cli(str(copy), "--format", "web", "--exporter", "torchscript")
    assert done.exit_code == 0, done.output
    for fmt in TESTED:
        assert fmt in done.output
    assert "top-1 agree" in done.output and "img/s (batch 32)" in done.output
    monkeypatch.setattr(deploy, "agreement", lambda *a, **k: {"n": 6, "top1_agreement": 0.5,
                                                              "max_abs_logit_diff": 1.0})
    one_line_error(cli(str(copy), "--format", "web", "--exporter", "torchscript"), 1,
                   "web: top-1 agreement with PyTorch 50.00% on 6 test split images is below the 100% floor")


@pytest.mark.integration
def test_int8_on_real_weights_and_data(shared, tmp_path):
    """efficientnet_lite0 with its ImageNet weights at 224 px on pizza_steak_sushi (75 test images), from the
    default (dynamo) graph. Measured: 72-75 of 75 agree depending on the CPU (docs/export.md; on an AVX2-only CPU
    with 7-bit weights, docs/benchmarks.md "int8 exports on an AVX2-only CPU"), under the 99% floor at times,
    which the default would refuse (tested above); a floor of 93% accepts them, one export per format.
    The torchscript exporter's graph quantizes worse (71/75 on ONNX Runtime: timm's 'same' padding stays a
    run-time Pad subgraph there), so this test does not take that shortcut."""
    run_dir = headstart.train(shared / "datasets" / "pizza_steak_sushi", backbone="efficientnet_lite0",
                              mode="features", epochs=5, out=str(tmp_path / "pss"), report=False).run_dir
    export(run_dir, "onnx", measure_speed=False)  # its model.onnx is the int8 formats' source: one dynamo export
    for fmt in ("onnx-int8", "openvino-int8"):
        row = export(run_dir, fmt, measure_speed=False, floor=0.93).scores
        assert row["n"] == 75 and row["top1_agreement"] >= 0.94, (fmt, row)
        assert abs(row["accuracy_change"]) <= 0.03 and abs(row["ece_change"]) <= 0.03, (fmt, row)
