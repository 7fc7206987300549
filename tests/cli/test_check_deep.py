"""`headstart check DATA --deep` and `headstart train DATA --fixes`, as a user runs them: outputs land in
./<data>-check (or --out), never in DATA; the features computed by check are the ones train reads; a bad fixes
file is one line and changes nothing."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys

from conftest import noisy_dataset


def run(*args, cwd=None, cache=None):
    env = {**os.environ, **({"HEADSTART_CACHE": str(cache)} if cache else {})}
    proc = subprocess.run([sys.executable, "-m", "headstart.cli", *map(str, args)], capture_output=True, text=True,
                          env=env, timeout=600, cwd=cwd)
    assert "Traceback" not in proc.stdout + proc.stderr, proc.stdout + proc.stderr
    return proc


def snapshot(root):
    """Every file under root with its content hash and mtime: anything written, moved or touched shows."""
    return {str(p.relative_to(root)): (hashlib.sha1(p.read_bytes()).hexdigest(), p.stat().st_mtime_ns)
            for p in sorted(root.rglob("*")) if p.is_file()}


def test_check_deep_then_train_with_the_fixes(tmp_path):
    data = noisy_dataset(tmp_path / "photos")
    before = snapshot(data)
    work = tmp_path / "work"
    work.mkdir()
    cache = tmp_path / "cache"  # empty: what check computes and train reuses is this test's own
    check = run("check", data, "--deep", "--accept-suggested", "--image-size", 64, cwd=work, cache=cache)
    assert check.returncode == 1, check.stdout + check.stderr  # the leaked copy is fatal for the doctor
    out = work / "photos-check"
    assert sorted(p.name for p in out.iterdir()) == ["audit.html", "audit.json", "fixes.json"]
    assert str(out / "audit.html") in check.stdout.replace("\n", "")
    assert "train/green/red_3.jpg" in check.stdout
    audit = json.loads((out / "audit.json").read_text())
    # every image extracted now, the exact copy once for both files
    assert audit["quality_ranking"][0] == "train/green/red_3.jpg" and audit["computed"] == audit["images"] - 1

    trained = run("train", data, "--fixes", out / "fixes.json", "--image-size", 64, "--epochs", 2, "--no-report",
                  "--no-progress", "--out", tmp_path / "run", cache=cache)
    assert trained.returncode == 0, trained.stderr
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert {"path": "train/green/red_3.jpg", "split": summary_split(tmp_path / "run", "red_3.jpg"),
            "from": "green", "to": "red"} in summary["fixes"]["relabeled"]
    assert str(data / "test" / "blue" / "copy_of_blue_0.jpg") in summary["excluded"]
    assert summary["extraction"]["computed"] == 0  # check's features, found in the cache
    assert snapshot(data) == before


def summary_split(run_dir, name):
    split = json.loads((run_dir / "split.json").read_text())["files"]
    return next(s for s, files in split.items() for f in files if f.endswith(name))


def test_bad_fixes_and_an_out_inside_data_are_one_line_and_change_nothing(tmp_path):
    data = noisy_dataset(tmp_path / "photos")
    before = snapshot(data)
    fixes = tmp_path / "fixes.json"
    fixes.write_text(json.dumps({"format": "headstart.fixes/1", "fixes": [
        {"path": "train/red/red_0.jpg", "action": "relabel", "label": "purple"}]}))
    refused = run("train", data, "--fixes", fixes, "--image-size", 64, "--no-progress", "--out", tmp_path / "r")
    assert refused.returncode == 2 and "unknown class(es) ['purple']" in refused.stderr
    assert len(refused.stderr.strip().splitlines()) == 1 and not (tmp_path / "r").exists()
    missing = run("train", data, "--fixes", tmp_path / "nope.json", "--no-progress", "--out", tmp_path / "r")
    assert missing.returncode == 2 and "fixes file not found" in missing.stderr
    inside = run("check", data, "--fix-split", "--out", data / "audit")
    assert inside.returncode == 2 and "inside the data folder" in inside.stderr
    assert snapshot(data) == before
