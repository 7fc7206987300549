"""The messy-folder corpus through train, evaluate, predict and check: per-file messages, no traceback,
good files unaffected, exit codes as documented (non-zero only for fatal problems)."""

import json
import os
import shutil
import subprocess
import sys

import pytest

from conftest import make_synthetic_dataset
from image_corpus import BAD_FILES, GOOD_FILES, make_corpus


def run(*args):
    proc = subprocess.run([sys.executable, "-m", "headstart.cli", *map(str, args)], capture_output=True,
                          text=True, env=os.environ.copy(), timeout=600)
    assert "Traceback" not in proc.stdout + proc.stderr, proc.stdout + proc.stderr
    return proc


@pytest.fixture(scope="module")
def messy(tmp_path_factory):
    root = tmp_path_factory.mktemp("messy")
    data = make_synthetic_dataset(root / "data", per_split={"train": 10, "val": 5, "test": 5})
    corpus = make_corpus(root / "corpus")
    for name, path in corpus.items():  # every odd file lands in train/red; the unreadable ones in test/blue too
        shutil.copy(path, data / "train" / "red" / f"odd_{name}")
        if name in BAD_FILES:  # good copies in two splits would be leakage, which the doctor rightly calls fatal
            shutil.copy(path, data / "test" / "blue" / f"odd_{name}")
    return data, root / "corpus"


@pytest.fixture(scope="module")
def trained(messy, tmp_path_factory):
    data, _ = messy
    run_dir = tmp_path_factory.mktemp("run") / "r"
    proc = run("train", data, "--out", run_dir, "--epochs", 3, "--image-size", 64, "--no-progress")
    return run_dir, proc


def test_train_skips_bad_files_and_lists_them(trained):
    run_dir, proc = trained
    assert proc.returncode == 0, proc.stderr
    summary = json.loads((run_dir / "summary.json").read_text())
    skipped = {os.path.basename(s["path"]) for s in summary["skipped"]}
    assert {f"odd_{n}" for n in BAD_FILES} <= skipped
    assert not skipped & {f"odd_{n}" for n in GOOD_FILES}, "a good file was skipped"
    for name in BAD_FILES:
        assert f"odd_{name}" in proc.stdout
    assert "decompression bomb" in proc.stdout
    counts = summary["counts"]  # usable images only
    assert counts["train"] == {"blue": 10, "green": 10, "red": 10 + len(GOOD_FILES)}
    assert counts["test"] == {"blue": 5, "green": 5, "red": 5}


def test_evaluate_reports_skipped_files(trained, messy):
    run_dir, _ = trained
    data, _ = messy
    proc = run("evaluate", run_dir, data, "--json")
    assert proc.returncode == 0, proc.stderr
    result = json.loads(proc.stdout)
    assert {os.path.basename(s["path"]) for s in result["skipped"]} == {f"odd_{n}" for n in BAD_FILES}
    assert result["n"] == 15


def test_predict_gives_one_line_per_file(trained, messy):
    run_dir, _ = trained
    _, corpus = messy
    proc = run("predict", run_dir, corpus, "--json")
    assert proc.returncode == 0, proc.stderr
    rows = {os.path.basename(r["path"]): r for r in map(json.loads, proc.stdout.splitlines())}
    assert set(rows) == set(BAD_FILES) | set(GOOD_FILES)
    for name in BAD_FILES:
        assert set(rows[name]) == {"path", "error"} and rows[name]["error"]
    for name in GOOD_FILES:
        assert rows[name]["label"] in ("blue", "green", "red", "unsure")


def test_check_warns_but_is_not_fatal(messy):
    data, _ = messy
    proc = run("check", data, "--json")
    assert proc.returncode == 0, proc.stdout
    report = json.loads(proc.stdout)
    codes = {p["code"] for p in report["problems"]}
    assert {"corrupt_image", "empty_file", "not_an_image", "decompression_bomb"} <= codes
    text = run("check", data)
    assert text.returncode == 0 and "next:" in text.stdout


def test_check_exits_non_zero_on_leakage_and_train_leaves_the_copy_out_unless_strict(messy, tmp_path):
    data, _ = messy
    leaky = tmp_path / "leaky"
    shutil.copytree(data, leaky)
    shutil.copy(leaky / "train" / "red" / "red_0.jpg", leaky / "val" / "red" / "copy.jpg")
    proc = run("check", leaky)
    assert proc.returncode == 1 and "leak" in proc.stdout.lower()
    refused = run("train", leaky, "--out", tmp_path / "r", "--image-size", 64, "--no-progress", "--strict")
    assert refused.returncode == 2 and "headstart check" in refused.stderr and not (tmp_path / "r").exists()
    trained = run("train", leaky, "--out", tmp_path / "t", "--image-size", 64, "--no-progress", "--epochs", 1,
                  "--no-report")
    assert trained.returncode == 0, trained.stderr
    summary = json.loads((tmp_path / "t" / "summary.json").read_text())
    assert summary["leakage_left_out"] == [{"path": "val/red/copy.jpg", "split": "val",
                                            "copy_of": "train/red/red_0.jpg", "kind": "exact"}]
    assert "left 1 copies" in trained.stdout
