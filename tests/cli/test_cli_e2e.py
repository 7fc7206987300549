"""End to end through the CLI: train, evaluate, predict, then reload in a fresh process."""

import json
import os
import subprocess
import sys

import pytest

HEADSTART = [sys.executable, "-m", "headstart.cli"]


def run(*args, check=True):
    proc = subprocess.run([*HEADSTART, *map(str, args)], capture_output=True, text=True, env=os.environ.copy(),
                          timeout=300)
    if check and proc.returncode != 0:
        raise AssertionError(f"exit {proc.returncode}\nstdout:\n{proc.stdout}\nstderr:\n{proc.stderr}")
    return proc


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    from conftest import make_synthetic_dataset

    root = tmp_path_factory.mktemp("e2e")
    data = make_synthetic_dataset(root / "data")
    run_dir = root / "run"
    proc = run("train", data, "--out", run_dir, "--epochs", 6, "--image-size", 64, "--no-progress")
    return data, run_dir, proc


def test_train_writes_a_self_describing_run(trained):
    _, run_dir, proc = trained
    for name in ("model.safetensors", "model.json", "config.json", "history.csv", "metrics.json", "split.json",
                 "summary.json", "train.log"):
        assert (run_dir / name).is_file(), name
    assert not list(run_dir.glob(".*.tmp")), "a temp file was left behind"
    manifest = json.loads((run_dir / "model.json").read_text())
    assert manifest["classes"] == ["blue", "green", "red"]
    assert manifest["backbone"] == "efficientnet_lite0" and manifest["preprocessing"]["crop_size"] == 64
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert set(metrics) == {"val", "test"}
    assert metrics["test"]["accuracy"] >= 0.9 and "loss" in metrics["test"]
    history = (run_dir / "history.csv").read_text().splitlines()
    assert len(history) == 7 and history[0].startswith("epoch,")
    assert "wall time" in proc.stdout and str(run_dir) in proc.stdout


def test_evaluate_prints_and_writes(trained):
    data, run_dir, _ = trained
    out = json.loads(run("evaluate", run_dir, data, "--json").stdout)
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert out["split"] == "test" and out["accuracy"] == pytest.approx(metrics["test"]["accuracy"])
    assert len(out["confusion_matrix"]) == 3 and sum(map(sum, out["confusion_matrix"])) == 18
    assert (run_dir / "evaluation" / "confusion_test.png").stat().st_size > 1000
    text = run("evaluate", run_dir, data).stdout
    assert "precision" in text and "confusion matrix" in text
    # a folder of class folders, no split folders (`headstart evaluate RUN photos/val`): scored whole
    whole = json.loads(run("evaluate", run_dir, data / "val", "--json").stdout)
    assert whole["split"] == "all" and whole["n"] == 18 and whole["data"] == str(data / "val")


def test_predict_json_lines_with_a_bad_file(trained, tmp_path):
    data, run_dir, _ = trained
    bad = tmp_path / "broken.jpg"
    bad.write_text("not an image")
    lines = run("predict", run_dir, data / "test", bad, "--json", "--top-k", 2).stdout.splitlines()
    rows = [json.loads(line) for line in lines]
    assert len(rows) == 19
    assert rows[-1] == {"path": str(bad), "error": rows[-1]["error"]} and "not an image" in rows[-1]["error"]
    good = rows[:-1]
    assert all(set(r) == {"path", "label", "confidence", "top_k"} and len(r["top_k"]) == 2 for r in good)
    correct = sum(r["label"] == os.path.basename(os.path.dirname(r["path"])) for r in good)
    assert correct >= 16
    unsure = [json.loads(x) for x in run("predict", run_dir, data / "test", "--json", "--threshold", 1.0)
              .stdout.splitlines()]
    assert all(r["label"] == "unsure" for r in unsure)


def test_reload_in_a_fresh_process_predicts_the_same(trained):
    data, run_dir, _ = trained
    cli_rows = [json.loads(x) for x in run("predict", run_dir, data / "test", "--json").stdout.splitlines()]
    code = (
        "import json, sys, headstart\n"
        "clf = headstart.load(sys.argv[1])\n"
        "from headstart.inference.classifier import expand_paths\n"
        "print(json.dumps(clf.predict(expand_paths([sys.argv[2]]))))\n"
    )
    proc = subprocess.run([sys.executable, "-c", code, str(run_dir), str(data / "test")], capture_output=True,
                          text=True, check=True, timeout=300)
    api_rows = json.loads(proc.stdout)
    assert [r["label"] for r in api_rows] == [r["label"] for r in cli_rows]
    metrics = json.loads((run_dir / "metrics.json").read_text())
    accuracy = sum(r["label"] == os.path.basename(os.path.dirname(r["path"])) for r in api_rows) / len(api_rows)
    assert accuracy == pytest.approx(metrics["test"]["accuracy"])


def test_existing_run_is_not_overwritten(trained):
    data, run_dir, _ = trained
    before = (run_dir / "model.safetensors").read_bytes()
    proc = run("train", data, "--out", run_dir, "--epochs", 1, "--image-size", 64, "--no-progress", check=False)
    assert proc.returncode == 2
    assert "already exists" in proc.stderr and "Traceback" not in proc.stderr + proc.stdout
    assert (run_dir / "model.safetensors").read_bytes() == before


def test_bad_option_is_one_line(trained):
    data, _, _ = trained
    proc = run("train", data, "--mode", "linear", "--no-progress", check=False)
    assert proc.returncode == 2 and "mode must be one of" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_evaluate_calibration_target_and_tta(trained):
    data, run_dir, _ = trained
    out = json.loads(run("evaluate", run_dir, data, "--json", "--threshold", 0.6, "--target-accuracy", 0.5,
                         "--tta", "five-crop").stdout)
    assert out["tta"] == "five-crop"
    assert {"ece", "ece_calibrated", "rejection", "coverage_curve", "target"} <= set(out)
    assert out["target"]["suggested"]["accuracy"] >= 0.5
    assert out["rejection"]["threshold"] == 0.6
    for path in out["plots"].values():
        assert os.path.getsize(path) > 1000
    flipped = [json.loads(x) for x in run("predict", run_dir, data / "test", "--json", "--tta", "flip")
               .stdout.splitlines()]
    assert len(flipped) == 18 and all("label" in r for r in flipped)
    bad = run("predict", run_dir, data / "test", "--tta", "rotate", check=False)
    assert bad.returncode == 2 and "five-crop" in bad.stderr


def test_inspect_explain_and_report_commands(trained, tmp_path):
    data, run_dir, _ = trained
    image = sorted((data / "test" / "red").iterdir())[0]
    info = json.loads(run("inspect", "efficientnet_lite0", "--image", image, "--json").stdout)
    assert info["in_features"] == 1280 and len(info["predictions"][0]["top_k"]) == 5
    rows = [json.loads(x) for x in run("explain", run_dir, image, "--out", tmp_path / "cam", "--json")
            .stdout.splitlines()]
    assert rows[0]["label"] in ("blue", "green", "red") and os.path.getsize(rows[0]["overlay"]) > 1000
    (run_dir / "report.html").unlink()
    assert "report written" in run("report", run_dir).stdout and (run_dir / "report.html").stat().st_size > 10_000
    listing = {row["name"]: row for row in json.loads(run("backbones", "--json").stdout)}
    assert listing["efficientnet_lite0"]["offline"] is True and "vit_b_16" in listing


@pytest.mark.parametrize("args", [
    ["--image", "a.jpg", "b.jpg"],  # the README's `--image IMG...`
    ["--image", "a.jpg", "--image", "b.jpg"],
    ["a.jpg", "b.jpg"],
    [],
])
def test_inspect_takes_several_images_after_one_option(monkeypatch, args):
    """Only the argument parsing: inspect_backbone is replaced by a stand-in that records what it was given."""
    from typer.testing import CliRunner

    from headstart.backbones import inspect
    from headstart.cli.entrypoint import app

    calls = []
    info = {"name": "efficientnet_lite0", "family": "efficientnet_lite", "weights": "w", "head": "classifier",
            "in_features": 1280, "parameters": {"total": 1, "trainable": 1}, "preprocessing": {}, "stages": []}
    monkeypatch.setattr(inspect, "inspect_backbone", lambda name, weights, images: calls.append(images) or {
        **info, "predictions": [{"path": p, "top_k": [["tabby", 0.9]]} for p in images]})
    result = CliRunner().invoke(app, ["inspect", "efficientnet_lite0", *args, "--json"])
    assert result.exit_code == 0, result.output
    expected = [a for a in args if a.endswith(".jpg")]
    assert calls == [expected]
    assert [p["path"] for p in json.loads(result.stdout)["predictions"]] == expected
