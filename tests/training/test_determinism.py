"""The same seed gives the same metrics; class weights switch on only for imbalanced data."""

import json

import headstart
from headstart.training.run import _class_weights


def test_same_seed_same_metrics(synthetic_data, tmp_path):
    kwargs = dict(epochs=4, image_size=64, augment="light", views=2)
    a = headstart.train(synthetic_data, out=str(tmp_path / "a"), seed=3, **kwargs)
    b = headstart.train(synthetic_data, out=str(tmp_path / "b"), seed=3, **kwargs)
    assert json.loads((a.run_dir / "metrics.json").read_text()) == json.loads((b.run_dir / "metrics.json").read_text())
    assert [r["train_loss"] for r in a.history] == [r["train_loss"] for r in b.history]
    summary = json.loads((b.run_dir / "summary.json").read_text())
    assert summary["extraction"]["computed"] == 0, "the second run must reuse the feature cache"


def test_finetune_runs_and_keeps_best(synthetic_data, tmp_path):
    result = headstart.train(synthetic_data, out=str(tmp_path / "ft"), mode="finetune", epochs=2, image_size=64,
                             unfreeze="2", batch_size=8, gradual_unfreeze=1)
    best = max(result.history, key=lambda r: (r["val_accuracy"], -r["val_loss"]))
    assert result.metrics["val"]["accuracy"] == best["val_accuracy"]
    config = json.loads((result.run_dir / "config.json").read_text())
    assert config["mode"] == "finetune" and config["epochs"] == 2 and config["lr"] == 1e-3


def test_class_weights_only_when_imbalanced():
    assert _class_weights([0] * 10 + [1] * 9, 2, "auto") is None
    weights = _class_weights([0] * 30 + [1] * 10, 2, "auto")
    assert weights[1] > weights[0]
    assert _class_weights([0] * 30 + [1] * 10, 2, "none") is None
