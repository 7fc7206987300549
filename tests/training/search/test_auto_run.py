"""Auto mode end to end through the CLI: within its budget, scored by cross-validation, and the kept winner is an
ordinary run that reloads and predicts what training scored."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from types import SimpleNamespace

import numpy as np
import pytest

from conftest import make_synthetic_dataset
from headstart.cli import train as cli_train
from headstart.runtime.metrics import softmax

BUDGET = 40


def _run(*args) -> subprocess.CompletedProcess:
    """The CLI in a fresh process, as a user runs it."""
    proc = subprocess.run([sys.executable, "-m", "headstart.cli", *map(str, args)], capture_output=True, text=True,
                          env=os.environ.copy(), timeout=300)
    assert proc.returncode == 0, proc.stderr
    return proc


@pytest.fixture(scope="module")
def auto_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("auto")
    data = make_synthetic_dataset(root / "data", per_split={"train": 10, "val": 4, "test": 4})
    started = time.perf_counter()
    proc = _run("train", data, "--mode", "auto", "--budget", f"{BUDGET}s", "--image-size", 64, "--no-progress",
               "--no-report", "--out", root / "run")
    return SimpleNamespace(data=data, run_dir=root / "run", proc=proc, wall=time.perf_counter() - started)


def test_auto_finishes_within_its_budget_and_prints_what_it_tried(auto_run):
    summary = json.loads((auto_run.run_dir / "summary.json").read_text())
    search = summary["search"]
    assert search["budget_seconds"] == BUDGET and summary["seconds"] <= BUDGET * 1.1
    assert summary["extraction"]["precision"] == "32-true"  # frozen features under --precision auto
    assert search["folds"] == 5 and search["selection"].startswith("5-fold stratified cross-validation")
    assert "auto: what was tried" in auto_run.proc.stdout and f"winner: {search['winner']}" in auto_run.proc.stdout
    winners = [c for c in search["candidates"] if c["winner"]]
    assert len(winners) == 1 and winners[0]["name"] == search["winner"]
    rank = search["candidates"].index(winners[0])  # the rows come in search order, cheapest first
    assert all(winners[0]["cv_mean"] > c["cv_mean"] for c in search["candidates"][:rank])  # no cheaper one beat it
    history = (auto_run.run_dir / "history.csv").read_text().splitlines()
    assert len(history) == len(search["candidates"]) + 1


def test_the_winner_reloads_and_predicts_what_training_scored(auto_run):
    import headstart

    search = json.loads((auto_run.run_dir / "summary.json").read_text())["search"]
    winner = next(c for c in search["candidates"] if c["winner"])
    manifest = json.loads((auto_run.run_dir / "model.json").read_text())
    assert manifest["backbone"] == winner["backbone"] and manifest["mode"] == "auto"
    saved = np.load(auto_run.run_dir / "logits.npz")
    paths = [str(p) for p in saved["paths_test"]]
    clf = headstart.load(auto_run.run_dir)
    predicted = np.array([[dict(r["top_k"])[c] for c in clf.classes] for r in clf.predict(paths, top_k=3)])
    expected = softmax(saved["logits_test"], manifest["temperature"])
    np.testing.assert_allclose(predicted, expected, atol=2e-3)


def test_features_mode_suggests_auto_below_its_bar(monkeypatch):
    printed = []
    monkeypatch.setattr(cli_train.out, "print", lambda text, **kw: printed.append(str(text)))

    def result(val_accuracy):
        return SimpleNamespace(search=None, metrics={"val": {"temperature": 1.0}},
                               history=[{"epoch": 1, "val_accuracy": val_accuracy, "val_loss": 0.1}],
                               best={"epoch": 1, "val_accuracy": val_accuracy},
                               config=SimpleNamespace(mode="features", data="photos"))

    cli_train._print_fit(result(0.95))
    assert "--mode auto --budget 10m" in printed[-1]
    printed.clear()
    cli_train._print_fit(result(cli_train.SUGGEST_AUTO_BELOW))
    assert not any("--mode auto" in line for line in printed)


def test_a_winner_on_a_smaller_backbone_trains_and_scores_on_its_own_decode(tmp_path):
    """auto decodes every split once, at the largest backbone's size; a winner on a smaller backbone is refitted on
    and scored on its own decode, the one load() makes: the run's train and test scores are its saved model's.
    In a fresh process (its engines at three native sizes stay out of this worker), with the first candidate, the
    run's own efficientnet_lite0, standing in for the cross-validation's winner."""
    import headstart

    data = make_synthetic_dataset(tmp_path / "data", per_split={"train": 8, "val": 3, "test": 4}, size=400)
    script = (
        "import sys, headstart\n"
        "from headstart.training.search import run as search_run\n"
        "search_run._best = lambda candidates, held_out=0: candidates[0] if candidates else None\n"
        "headstart.train(sys.argv[1], mode='auto', budget='60s', epochs=1, views=1, precision='32', report=False,\n"
        "                out=sys.argv[2], seed=0)\n")
    proc = subprocess.run([sys.executable, "-c", script, str(data), str(tmp_path / "run")], capture_output=True,
                          text=True, env=os.environ.copy(), timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    run_dir = tmp_path / "run"
    summary = json.loads((run_dir / "summary.json").read_text())
    planned = [c["name"] for c in summary["search"]["candidates"] + summary["search"]["skipped"]]
    assert any(name.startswith("efficientnet_lite2") for name in planned)  # so every split was decoded for lite2
    manifest = json.loads((run_dir / "model.json").read_text())
    assert manifest["backbone"] == "efficientnet_lite0"
    saved = np.load(run_dir / "logits.npz")
    clf = headstart.load(run_dir)
    for split in ("test", "train"):  # the head was refitted on the train images as load() decodes them too
        predicted = np.array([[dict(r["top_k"])[c] for c in clf.classes]
                              for r in clf.predict([str(p) for p in saved[f"paths_{split}"]], top_k=3)])
        expected = softmax(saved[f"logits_{split}"], manifest["temperature"])
        # log-probabilities: from the larger decode, these confident images moved by ~4e-5 in probability but by
        # 3.7-4.4 in the small classes' log-probabilities (~1e-3 from the right decode)
        np.testing.assert_allclose(np.log(np.clip(predicted, 1e-7, None)), np.log(np.clip(expected, 1e-7, None)),
                                   atol=0.05, err_msg=split)
