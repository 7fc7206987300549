"""train()'s parts, one by one: settings resolved, the data planned, the session opened and closed, the best
epoch chosen, leakage refused, the model's cache id, and the files write_run leaves in the run directory."""

from __future__ import annotations

import csv
import hashlib
import io
import json
import logging
import os
import signal
import time
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from torch import nn

from conftest import make_synthetic_dataset
from headstart.backbones.model import HeadstartNet
from headstart.backbones.registry import get_spec
from headstart.config import MACHINE_SETTINGS, ConfigError, TrainConfig
from headstart.data.check import Problem
from headstart.data.dataset import DataError, Dataset
from headstart.data.loading import DecodedSplit
from headstart.training.modes import FitResult
from headstart.training.run import DataPlan, RunResult, _leave_out_leakage, _model_id, plan_data, resolve_config
from headstart.training.session import open_session, prepare_run_dir
from headstart.training.write import write_run

SPEC = get_spec("efficientnet_lite0")


# resolve_config

@pytest.mark.parametrize(("mode", "epochs", "lr", "augment", "views"), [
    ("features", 30, 3e-3, "none", 1), ("finetune", 8, 1e-3, "light", 4), ("auto", 8, 1e-3, "light", 4),
])
def test_resolve_config_fills_the_modes_defaults(mode, epochs, lr, augment, views):
    cfg = resolve_config(Path("photos"), None, None, {"mode": mode})
    assert (cfg.data, cfg.epochs, cfg.lr, cfg.augment, cfg.views) == ("photos", epochs, lr, augment, views)


def test_resolve_config_keeps_what_was_given():
    cfg = resolve_config("photos", None, None, {"mode": "finetune", "epochs": 3, "lr": 0.01, "views": 0})
    assert (cfg.epochs, cfg.lr, cfg.views, cfg.augment) == (3, 0.01, 0, "light")
    given = TrainConfig(data="elsewhere", mode="finetune", unfreeze="all")
    cfg = resolve_config(None, given, None, {})
    assert cfg.data == "elsewhere" and cfg.views == 0 and given.views is None  # resolved() is a copy


def test_resolve_config_names_train_in_an_unknown_keyword():
    with pytest.raises(ConfigError, match=r"^train\(\) got an unexpected keyword argument 'epoch'$"):
        resolve_config("photos", None, None, {"epoch": 3})


def _saved_run(tmp_path: Path) -> Path:
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    saved = TrainConfig(data="photos", mode="finetune", epochs=None, lr=0.02, devices=1)
    (run_dir / "config.json").write_text(json.dumps(saved.to_dict()))
    return run_dir


def test_resume_reads_the_saved_config_and_changes_only_machine_settings(tmp_path):
    run_dir = _saved_run(tmp_path)
    cfg = resolve_config(None, None, run_dir, {"num_workers": 2, "extract_engine": "torch"})
    assert (cfg.data, cfg.mode, cfg.lr, cfg.num_workers, cfg.extract_engine) == ("photos", "finetune", 0.02, 2,
                                                                                     "torch")
    assert cfg.epochs == 8  # resolved like any other config
    assert set(MACHINE_SETTINGS) == {"accelerator", "devices", "num_nodes", "strategy", "num_workers",
                                     "extract_engine"}


@pytest.mark.parametrize("call", [
    dict(data="photos", config=None, settings={}),
    dict(data=None, config=TrainConfig(data="photos"), settings={}),
    dict(data=None, config=None, settings={"epochs": 3}),
    dict(data=None, config=None, settings={"num_workers": 2, "lr": 0.1}),
])
def test_resume_refuses_anything_but_machine_settings(tmp_path, call):
    run_dir = _saved_run(tmp_path)
    with pytest.raises(ConfigError) as info:
        resolve_config(call["data"], call["config"], run_dir, call["settings"])
    assert ", ".join(MACHINE_SETTINGS) in str(info.value)


# plan_data

def test_plan_data_returns_the_spec_preprocessing_and_splits(tmp_path):
    root = make_synthetic_dataset(tmp_path / "data", per_split={"train": 5, "val": 2, "test": 1}, size=40)
    plan = plan_data(TrainConfig(data=str(root), image_size=64).resolved())
    assert plan.spec is SPEC and plan.preprocessing == SPEC.preprocessing.with_crop(64)
    assert plan.dataset.classes == ["blue", "green", "red"]
    assert {s: len(items) for s, items in plan.dataset.splits.items()} == {"train": 15, "val": 6, "test": 3}
    assert plan.excluded == set() and plan.warnings == []
    assert plan_data(TrainConfig(data=str(root)).resolved()).preprocessing == SPEC.preprocessing


def test_plan_data_raises_on_fatal_problems_and_logs_warnings(tmp_path, caplog):
    root = make_synthetic_dataset(tmp_path / "data", per_split={"train": 5, "val": 2, "test": 1}, size=40)
    for image in (root / "val" / "blue").iterdir():  # a warning: blue goes unmeasured in val
        image.unlink()
    (root / "val" / "blue").rmdir()
    with caplog.at_level(logging.WARNING, logger="headstart"):
        plan = plan_data(TrainConfig(data=str(root)).resolved())
    assert [p.code for p in plan.warnings] == ["class_missing_from_split"]
    assert plan.warnings[0].message in caplog.text

    (root / "test" / "purple").mkdir()  # fatal: a class that train/ lacks
    (root / "test" / "red" / "red_0.jpg").rename(root / "test" / "purple" / "p.jpg")
    with pytest.raises(DataError, match=r"classes missing from train/.*Run `headstart check .*` for the full report"):
        plan_data(TrainConfig(data=str(root)).resolved())
    with pytest.raises(DataError, match="data folder not found"):
        plan_data(TrainConfig(data=str(tmp_path / "nowhere")).resolved())


def test_plan_data_leaves_out_the_excluded_files(tmp_path):
    root = make_synthetic_dataset(tmp_path / "data", per_split={"train": 3, "val": 2}, size=40)
    exclude = tmp_path / "exclude.json"
    exclude.write_text(json.dumps({"exclude": ["train/red/red_0.jpg"]}))
    plan = plan_data(TrainConfig(data=str(root), exclude=str(exclude)).resolved())
    gone = str(root / "train" / "red" / "red_0.jpg")
    assert plan.excluded == {gone}
    assert gone not in [p for p, _ in plan.dataset.splits["train"]] and len(plan.dataset.splits["train"]) == 8


def test_plan_data_on_resume_rebuilds_the_saved_split(tmp_path):
    flat = tmp_path / "flat"  # no val folder: val is held out of train by the seed
    make_synthetic_dataset(tmp_path / "made", per_split={"train": 10}, size=40)
    (tmp_path / "made" / "train").rename(flat)
    first = plan_data(TrainConfig(data=str(flat), seed=1).resolved())
    assert first.dataset.split_origin == "generated"
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    (run_dir / "split.json").write_text(json.dumps(first.dataset.split_record(1, 0.2)))

    other_seed = plan_data(TrainConfig(data=str(flat), seed=2).resolved())
    assert sorted(other_seed.dataset.splits["val"]) != sorted(first.dataset.splits["val"])
    resumed = plan_data(TrainConfig(data=str(flat), seed=2).resolved(), resume=run_dir)
    assert resumed.dataset.split_origin == "split.json"
    for split in ("train", "val"):
        assert sorted(resumed.dataset.splits[split]) == sorted(first.dataset.splits[split])


# RunResult.best

def _result(history):
    return RunResult(Path("r"), {}, history, [], [], 0.0, TrainConfig(data="d"))


def test_best_is_the_highest_val_accuracy_then_the_lowest_val_loss_then_the_first():
    rows = [{"epoch": 1, "val_accuracy": 0.5, "val_loss": 0.1},
            {"epoch": 2, "val_accuracy": 0.8, "val_loss": 0.9},
            {"epoch": 3, "val_accuracy": 0.8, "val_loss": 0.7},
            {"epoch": 4, "val_accuracy": 0.8, "val_loss": 0.7},
            {"epoch": 5, "val_accuracy": 0.6, "val_loss": 0.2}]
    assert _result(rows).best["epoch"] == 3
    assert _result([*rows, {"epoch": 6, "val_accuracy": 0.9, "val_loss": 5.0}]).best["epoch"] == 6
    assert _result([]).best is None


# _leave_out_leakage

def _split(paths, hashes):
    return DecodedSplit(list(paths), [0] * len(paths), None, list(hashes))


def _plan(decoded, root="/d"):
    dataset = Dataset(root, ["a"], {s: [(p, 0) for p in d.paths] for s, d in decoded.items()}, "folders")
    return DataPlan(None, None, dataset, set(), [])


def test_the_same_image_within_one_split_is_not_leakage(tmp_path):
    fresh = tmp_path / "run"
    fresh.mkdir()
    decoded = {"train": _split(["/d/a", "/d/b"], ["h1", "h1"]), "val": _split(["/d/c"], ["h2"])}
    assert _leave_out_leakage(decoded, TrainConfig(data="/d", strict=True), _plan(decoded), fresh) == []
    assert fresh.is_dir() and decoded["train"].paths == ["/d/a", "/d/b"]


def _leaky():
    return {"train": _split(["/d/t/a.jpg", "/d/t/b.jpg"], ["h1", "h2"]), "val": _split(["/d/v/c.jpg"], ["h2"]),
            "test": _split(["/d/x/d.jpg", "/d/x/e.jpg"], ["h1", "h9"])}


def test_copies_in_val_and_test_are_left_out_and_listed():
    decoded = _leaky()
    plan = _plan(decoded)
    left = _leave_out_leakage(decoded, TrainConfig(data="/d"), plan, None)
    assert left == [{"path": "v/c.jpg", "split": "val", "copy_of": "t/b.jpg", "kind": "exact"},
                    {"path": "x/d.jpg", "split": "test", "copy_of": "t/a.jpg", "kind": "exact"}]
    assert decoded["val"].paths == [] and decoded["test"].paths == ["/d/x/e.jpg"]
    assert decoded["test"].hashes == ["h9"] and decoded["train"].paths == ["/d/t/a.jpg", "/d/t/b.jpg"]
    assert plan.dataset.splits["test"] == [("/d/x/e.jpg", 0)]  # split.json records the split as trained


def test_strict_refuses_leakage_and_removes_the_fresh_run_dir(tmp_path):
    decoded = _leaky()
    fresh = tmp_path / "run"
    fresh.mkdir()
    (fresh / "config.json").write_text("{}")
    cfg = TrainConfig(data="photos", strict=True)
    with pytest.raises(DataError, match=r"^2 image\(s\) appear in more than one split \(e\.g\. /d/t/b\.jpg and "
                                        r"/d/v/c\.jpg\).*Without --strict"):
        _leave_out_leakage(decoded, cfg, _plan(decoded), fresh)
    assert not fresh.exists()

    resumed = tmp_path / "resumed"  # not this run's own folder: left alone
    resumed.mkdir()
    with pytest.raises(DataError):
        _leave_out_leakage(_leaky(), cfg, _plan(_leaky()), None)
    assert resumed.is_dir()


# _model_id

def test_model_id_names_the_weights(tmp_path):
    assert _model_id(TrainConfig(data="d"), SPEC) == f"efficientnet_lite0|{SPEC.weights.kind}:{SPEC.weights.ref}"
    weights = tmp_path / "w.safetensors"
    weights.write_bytes(b"some weights")
    own = _model_id(TrainConfig(data="d", weights=str(weights)), SPEC)
    assert own == f"efficientnet_lite0|file:{hashlib.sha256(b'some weights').hexdigest()}"
    weights.write_bytes(b"other weights")  # other contents, same path: another id (another feature cache key)
    assert _model_id(TrainConfig(data="d", weights=str(weights)), SPEC) != own


# prepare_run_dir

def test_default_run_dirs_count_up(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    cfg = TrainConfig(data=str(tmp_path / "my photos"), mode="finetune")
    made = [prepare_run_dir(cfg) for _ in range(3)]
    stem = "my_photos-efficientnet_lite0-finetune"
    assert made == [Path("runs") / stem, Path("runs") / f"{stem}-2", Path("runs") / f"{stem}-3"]
    assert all(d.is_dir() for d in made)


def test_an_existing_out_is_refused_unless_empty_or_overwritten(tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    assert prepare_run_dir(TrainConfig(data="d", out=str(out))) == out  # empty: used as it is
    (out / "model.json").write_text("{}")
    with pytest.raises(ConfigError, match=r"already exists and is not empty.*--overwrite"):
        prepare_run_dir(TrainConfig(data="d", out=str(out)))
    assert (out / "model.json").read_text() == "{}"
    assert prepare_run_dir(TrainConfig(data="d", out=str(out), overwrite=True)) == out
    assert out.is_dir() and list(out.iterdir()) == []
    nested = tmp_path / "a" / "b" / "c"
    assert prepare_run_dir(TrainConfig(data="d", out=str(nested))) == nested and nested.is_dir()


def test_an_out_that_is_a_file_is_refused_with_a_config_error(tmp_path):
    out = tmp_path / "notes.txt"
    out.write_text("mine")
    with pytest.raises(ConfigError, match=r"notes\.txt"):
        prepare_run_dir(TrainConfig(data="d", out=str(out)))
    assert out.read_text() == "mine"


# open_session

@pytest.fixture
def package_logger():
    logger = logging.getLogger("headstart")
    level, handlers = logger.level, list(logger.handlers)
    logger.setLevel(logging.WARNING)
    yield logger
    logger.setLevel(level)
    assert logger.handlers == handlers


def _train_logs(logger) -> list[logging.FileHandler]:
    return [h for h in logger.handlers if isinstance(h, logging.FileHandler) and h.baseFilename.endswith("train.log")]


def test_open_session_opens_train_log_and_guards_signals_then_undoes_both(tmp_path, package_logger):
    cfg = TrainConfig(data="d", out=str(tmp_path / "run"), accelerator="cpu", precision="32")
    sigint = signal.getsignal(signal.SIGINT)
    with open_session(cfg) as session:
        assert session.run_dir == tmp_path / "run" and session.run_dir.is_dir() and session.created
        assert (session.accelerator, session.precision, session.rank0, session.world) == ("cpu", "32-true", True, 1)
        assert [h.baseFilename for h in _train_logs(package_logger)] == [str(tmp_path / "run" / "train.log")]
        assert package_logger.level == logging.INFO  # train.log gets INFO whatever the console shows
        logging.getLogger("headstart.training.test").info("an epoch ended")
        assert signal.getsignal(signal.SIGINT) != sigint
        assert not session.should_stop()
        os.kill(os.getpid(), signal.SIGINT)  # the first Ctrl-C only asks to stop
        deadline = time.monotonic() + 5
        while not session.should_stop() and time.monotonic() < deadline:
            time.sleep(0.01)
        assert session.should_stop()
    assert _train_logs(package_logger) == [] and package_logger.level == logging.WARNING
    assert signal.getsignal(signal.SIGINT) == sigint
    assert "INFO headstart.training.test: an epoch ended" in (tmp_path / "run" / "train.log").read_text()


def test_open_session_undoes_everything_when_the_block_raises(tmp_path, package_logger):
    cfg = TrainConfig(data="d", out=str(tmp_path / "run"), accelerator="cpu", precision="32")
    sigint, sigterm = signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM)
    with pytest.raises(RuntimeError, match="boom"), open_session(cfg) as session:
        assert _train_logs(package_logger)
        raise RuntimeError("boom")
    assert session.run_dir.is_dir()
    assert _train_logs(package_logger) == [] and package_logger.level == logging.WARNING
    assert (signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM)) == (sigint, sigterm)


def test_open_session_on_resume_uses_the_run_dir_as_it_is(tmp_path, package_logger):
    run_dir = tmp_path / "cut"
    run_dir.mkdir()
    (run_dir / "resume.pt").write_bytes(b"state")
    cfg = TrainConfig(data="d", out=str(tmp_path / "ignored"), accelerator="cpu", precision="32")
    with open_session(cfg, resume=run_dir) as session:
        assert session.run_dir == run_dir and not session.created
    assert (run_dir / "resume.pt").read_bytes() == b"state" and not (tmp_path / "ignored").exists()


def test_open_session_refuses_sync_bn_on_the_cpu_before_making_the_run_dir(tmp_path, package_logger):
    cfg = TrainConfig(data="d", mode="finetune", sync_bn=True, out=str(tmp_path / "run"), accelerator="cpu")
    with pytest.raises(ConfigError, match="sync_bn"), open_session(cfg):
        pass
    assert not (tmp_path / "run").exists()


# write_run

def test_write_run_writes_every_file_of_the_run(tmp_path):
    from safetensors.torch import load_file

    run_dir = tmp_path / "run"
    run_dir.mkdir()
    for leftover in ("checkpoint.safetensors", "resume.pt"):
        (run_dir / leftover).write_bytes(b"left from training")
    torch.manual_seed(0)
    net = HeadstartNet(nn.Sequential(nn.Conv2d(3, 4, 3), nn.AdaptiveAvgPool2d(1), nn.Flatten()), 4, 2)
    cfg = TrainConfig(data="photos", mode="auto", threshold=0.7, report=False).resolved()
    classes = ["cat", "dog"]
    decoded = {"train": DecodedSplit(["t0.jpg", "t1.jpg", "t2.jpg"], [0, 1, 1], None, ["a", "b", "c"]),
               "val": DecodedSplit(["v0.jpg", "v1.jpg"], [1, 0], None, ["d", "e"])}
    logits = {"train": torch.randn(3, 2), "val": torch.randn(2, 2)}
    history = [{"epoch": 1, "val_accuracy": 0.5, "phase": "features"},
               {"epoch": 2, "val_accuracy": 1.0, "phase": "finetune", "best": True}]
    result = FitResult(history, logits, {s: torch.tensor(d.labels) for s, d in decoded.items()}, {"computed": 5})
    metrics = {"val": {"accuracy": 0.5, "loss": 0.69, "extra": 1}}
    session = SimpleNamespace(run_dir=run_dir, accelerator="cpu", precision="32-true", world=1,
                              fabric=SimpleNamespace(strategy=SingleDeviceLike()))
    ctx = SimpleNamespace(cfg=cfg, spec=SPEC, preprocessing=SPEC.preprocessing.with_crop(64), net=net,
                          decoded=decoded)
    dataset = SimpleNamespace(root="/data/photos", classes=classes, split_origin="folders", notes=["a note"])
    plan = SimpleNamespace(dataset=dataset, excluded={"/data/photos/train/x.jpg"},
                           warnings=[Problem("warning", "imbalance", "imbalanced", ["train/cat"])], relabeled=[],
                           left_out=[{"path": "val/v9.jpg", "split": "val", "copy_of": "train/t0.jpg",
                                      "kind": "exact"}])

    write_run(session, ctx, plan, result, temperature=1.5, metrics=metrics, skipped=[("bad.jpg", "truncated")],
              seconds=12.5, figures=None)

    assert sorted(p.name for p in run_dir.iterdir()) == ["history.csv", "logits.npz", "metrics.json", "model.json",
                                                          "model.safetensors", "summary.json"]
    weights = load_file(run_dir / "model.safetensors")
    assert weights.keys() == net.state_dict().keys()
    assert all(torch.equal(weights[k], v) for k, v in net.state_dict().items())
    model = json.loads((run_dir / "model.json").read_text())
    assert model["weights_sha256"] == hashlib.sha256((run_dir / "model.safetensors").read_bytes()).hexdigest()
    assert (model["classes"], model["temperature"], model["threshold"], model["mode"]) == (classes, 1.5, 0.7, "auto")
    assert model["backbone"] == "efficientnet_lite0" and model["preprocessing"]["crop_size"] == 64
    assert model["head"] == {"type": "dropout_linear", "in_features": 4, "num_classes": 2, "dropout": 0.2}
    assert model["metrics"] == {"val": {"accuracy": 0.5, "loss": 0.69}}
    assert json.loads((run_dir / "metrics.json").read_text()) == metrics

    with np.load(run_dir / "logits.npz") as saved:
        assert sorted(saved.files) == ["logits_train", "logits_val", "paths_train", "paths_val"]
        np.testing.assert_array_equal(saved["logits_val"], logits["val"].numpy())
        assert saved["paths_train"].tolist() == ["t0.jpg", "t1.jpg", "t2.jpg"]

    rows = list(csv.DictReader(io.StringIO((run_dir / "history.csv").read_text())))
    assert list(rows[0]) == ["epoch", "val_accuracy", "phase", "best"]  # every field of every row
    assert [(r["epoch"], r["phase"], r["best"]) for r in rows] == [("1", "features", ""), ("2", "finetune", "True")]

    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["counts"] == {"train": {"cat": 1, "dog": 2}, "val": {"cat": 1, "dog": 1}}
    assert summary["skipped"] == [{"path": "bad.jpg", "reason": "truncated"}]
    assert summary["warnings"] == [{"code": "imbalance", "message": "imbalanced", "paths": ["train/cat"]}]
    assert summary["excluded"] == ["/data/photos/train/x.jpg"] and summary["notes"] == ["a note"]
    assert summary["leakage_left_out"] == plan.left_out and summary["fixes"] is None
    assert (summary["epochs_run"], summary["extraction"], summary["seconds"]) == (2, {"computed": 5}, 12.5)
    assert (summary["strategy"], summary["world_size"], summary["mode"]) == ("SingleDeviceLike", 1, "auto")
    assert summary["weights_bytes"] == (run_dir / "model.safetensors").stat().st_size


class SingleDeviceLike:
    """A strategy object: summary.json records its class name."""


def test_a_bf16_session_scores_what_the_reloaded_model_predicts(tmp_path, monkeypatch):
    """Under auto precision on a CPU with native bf16 (forced here), training runs bf16 but the frozen features
    are fp32, as load() computes them: the test accuracy a run reports is what its saved model predicts."""
    import headstart
    from headstart import device
    from headstart.runtime.metrics import softmax

    monkeypatch.setenv("HEADSTART_CPU_BF16", "1")
    device.cpu_has_fast_bf16.cache_clear()
    try:
        data = make_synthetic_dataset(tmp_path / "data", per_split={"train": 6, "val": 3, "test": 4})
        run = headstart.train(str(data), mode="features", image_size=64, epochs=3, report=False,
                              out=str(tmp_path / "run"))
    finally:
        device.cpu_has_fast_bf16.cache_clear()
    summary = json.loads((run.run_dir / "summary.json").read_text())
    assert summary["precision"] == "bf16-mixed" and summary["extraction"]["precision"] == "32-true"
    saved = np.load(run.run_dir / "logits.npz")
    clf = headstart.load(run.run_dir)
    predicted = np.array([[dict(r["top_k"])[c] for c in clf.classes]
                          for r in clf.predict([str(p) for p in saved["paths_test"]], top_k=len(clf.classes))])
    temperature = json.loads((run.run_dir / "model.json").read_text())["temperature"]
    # fp32 engines differ by ~5e-4 here; bf16 features (the old behaviour) were off by up to 1.5e-2
    np.testing.assert_allclose(predicted, softmax(saved["logits_test"], temperature), atol=2e-3)
