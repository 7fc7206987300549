"""A trained model is never lost: signals leave a resumable run, NaN stops cleanly, weights are verified."""

import contextlib
import json
import os
import signal

import pytest
import torch
from torch import nn

import headstart
from headstart.artifact import ArtifactError
from headstart.training.callbacks import BestCheckpoint
from headstart.training.loop import NonFiniteLossError, Trainer, TrainingInterrupted


def _interrupt_at(epoch: int, sig=signal.SIGINT):
    def on_epoch(row):
        if row["epoch"] == epoch:
            os.kill(os.getpid(), sig)

    return on_epoch


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_interrupt_at_epoch_2_of_4_then_resume_matches(synthetic_data, tmp_path, sig):
    settings = dict(epochs=4, image_size=64, augment="light", views=2, seed=11)
    full = headstart.train(synthetic_data, out=str(tmp_path / "full"), **settings)

    run_dir = tmp_path / "cut"
    with pytest.raises(TrainingInterrupted, match="--resume"):
        headstart.train(synthetic_data, out=str(run_dir), on_epoch=_interrupt_at(2, sig), **settings)
    assert (run_dir / "resume.pt").is_file() and not (run_dir / "model.json").exists()
    state = torch.load(run_dir / "resume.pt", weights_only=True)
    assert state["epoch"] == 2

    resumed = headstart.train(resume=str(run_dir))
    assert len(resumed.history) == 4
    for a, b in zip(full.history, resumed.history):
        assert a["train_loss"] == pytest.approx(b["train_loss"], abs=1e-6)
        assert a["val_loss"] == pytest.approx(b["val_loss"], abs=1e-6)
    for split in ("val", "test"):
        assert resumed.metrics[split]["accuracy"] == pytest.approx(full.metrics[split]["accuracy"], abs=1e-6)
        assert resumed.metrics[split]["loss"] == pytest.approx(full.metrics[split]["loss"], abs=1e-6)
    assert not (run_dir / "resume.pt").exists(), "a finished run keeps no resume state"


def test_finetune_resume(synthetic_data, tmp_path):
    settings = dict(mode="finetune", epochs=3, image_size=64, batch_size=8, seed=2)
    full = headstart.train(synthetic_data, out=str(tmp_path / "full"), **settings)
    with pytest.raises(TrainingInterrupted):
        headstart.train(synthetic_data, out=str(tmp_path / "cut"), on_epoch=_interrupt_at(1), **settings)
    resumed = headstart.train(resume=str(tmp_path / "cut"))
    assert [round(r["train_loss"], 5) for r in resumed.history] == [round(r["train_loss"], 5) for r in full.history]


def test_nan_loss_stops_and_keeps_the_last_good_checkpoint():
    model = nn.Linear(4, 2)
    good = [(torch.randn(8, 4), torch.randint(0, 2, (8,)))]
    poisoned = [(torch.full((8, 4), float("nan")), torch.randint(0, 2, (8,)))]
    saved = []
    best = BestCheckpoint(save=lambda state, row: saved.append(row["epoch"]))

    class Fabric:  # one process: the loop needs only these from Fabric
        world_size = 1
        backward = staticmethod(lambda loss: loss.backward())
        autocast = staticmethod(contextlib.nullcontext)
        to_device = staticmethod(lambda batch: batch)

    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    trainer = Trainer(Fabric, model, optimizer, None, nn.CrossEntropyLoss(), callbacks=[best])
    trainer.fit(good, good, 1)
    with pytest.raises(NonFiniteLossError, match="last good checkpoint is kept"):
        trainer.fit(poisoned, good, 2)
    assert saved == [1] and best.best_state is not None


def test_load_verifies_the_weights_checksum(synthetic_data, tmp_path):
    run = headstart.train(synthetic_data, out=str(tmp_path / "r"), epochs=1, image_size=64)
    weights = run.run_dir / "model.safetensors"
    data = bytearray(weights.read_bytes())
    data[-1] ^= 0xFF
    weights.write_bytes(bytes(data))
    with pytest.raises(ArtifactError, match=r"model\.safetensors: sha256"):
        headstart.load(run.run_dir)


def test_resume_of_a_finished_run_says_so(synthetic_data, tmp_path):
    run = headstart.train(synthetic_data, out=str(tmp_path / "done"), epochs=1, image_size=64)
    from headstart.config import ConfigError

    with pytest.raises(ConfigError, match="nothing to resume"):
        headstart.train(resume=str(run.run_dir))
    assert json.loads((run.run_dir / "model.json").read_text())["classes"]


def test_saved_weights_may_differ_in_frozen_modules_only():
    from headstart.training.loop import load_weights

    model = nn.Sequential(nn.Linear(4, 4), nn.Linear(4, 2))
    model[0].requires_grad_(False)
    saved = {k: v.clone() + 1 for k, v in model.state_dict().items()}
    load_weights(model, {k: v for k, v in saved.items() if k.startswith("1.")})  # the frozen prefix bypassed
    assert torch.equal(model[1].weight, saved["1.weight"])
    load_weights(model, {**saved, "0.extra.weight": torch.zeros(1)})  # a module the loading side replaced
    with pytest.raises(KeyError, match="trainable"):
        load_weights(model, {k: v for k, v in saved.items() if k.startswith("0.")})
