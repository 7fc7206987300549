"""The exported int8 and OpenVINO artifacts run without torch: `headstart predict --engine E` in a process where
torch cannot be imported, `serve --engine E`, and refusals for a missing or stale export."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from test_no_torch import PRELUDE

import headstart
from headstart.artifact import ArtifactError

ENGINES = ("onnx-int8", "openvino", "openvino-int8")


@pytest.fixture(scope="module")
def run(tmp_path_factory) -> Path:
    from conftest import make_synthetic_dataset
    from headstart.inference.deploy import export

    root = tmp_path_factory.mktemp("openvino")
    data = make_synthetic_dataset(root / "data", per_split={"train": 8, "val": 3, "test": 2})
    run_dir = headstart.train(data, mode="features", epochs=3, image_size=64, out=str(root / "run"),
                              report=False).run_dir
    for engine in ENGINES:  # int8 on a 64 px toy model may flip near-tied labels: no floor here
        export(run_dir, engine, exporter="torchscript", floor=0.0, measure_speed=False)
    return run_dir


def test_cli_predict_with_each_exported_engine_without_torch(run):
    folder = Path(json.loads((run / "split.json").read_text())["root"]) / "test"
    code = PRELUDE + textwrap.dedent("""
        from headstart.cli import main
        sys.argv = ["headstart", "predict", *sys.argv[1:]]
        main()
    """)
    from headstart.inference.classifier import expand_paths

    for engine in ENGINES:
        proc = subprocess.run([sys.executable, "-c", code, str(run), str(folder), "--engine", engine, "--json"],
                              capture_output=True, text=True, timeout=180, env=os.environ.copy())
        assert proc.returncode == 0, proc.stderr[-3000:]
        rows = [json.loads(line) for line in proc.stdout.splitlines()]
        expected = headstart.load(run, engine=engine).predict(expand_paths([folder]))
        assert [r["label"] for r in rows] == [r["label"] for r in expected] and len(rows) == 6, engine
        assert [r["top_k"][0][1] for r in rows] == pytest.approx([r["top_k"][0][1] for r in expected], abs=1e-5)


@pytest.mark.parametrize("engine", ["openvino", "onnx-int8"])
def test_serve_with_an_exported_engine(run, engine):
    from fastapi.testclient import TestClient

    from headstart.serve import create_app

    image = next((Path(json.loads((run / "split.json").read_text())["root"]) / "test").rglob("*.jpg"))
    with TestClient(create_app(run, engine=engine)) as client:
        response = client.post("/predict", files={"files": (image.name, image.read_bytes(), "image/jpeg")})
        assert response.status_code == 200, response.text
        body = response.json()
        assert body["engine"] == engine and body["predictions"][0]["label"] in ("blue", "green", "red", "unsure")
        assert client.get("/model").json()["classes"] == ["blue", "green", "red"]


def test_a_missing_or_stale_export_is_refused(run, tmp_path):
    copy = tmp_path / "run"
    shutil.copytree(run, copy)
    manifest = json.loads((copy / "model.json").read_text())
    (copy / "model.json").write_text(json.dumps(dict(manifest, weights_sha256="0" * 64)))
    with pytest.raises(ArtifactError, match="other weights"):
        headstart.load(copy, engine="openvino")
    shutil.rmtree(copy / "openvino-int8")
    with pytest.raises(ArtifactError, match="--format openvino-int8"):
        headstart.load(copy, engine="openvino-int8")
    (copy / "openvino" / "model.json").unlink()
    with pytest.raises(ArtifactError, match="incomplete"):
        headstart.load(copy / "openvino", engine="openvino")
    # the folder alone (no run directory around it) is enough
    alone = tmp_path / "alone"
    shutil.copytree(run / "openvino-int8", alone)
    assert headstart.load(alone, engine="openvino-int8").classes == ["blue", "green", "red"]
