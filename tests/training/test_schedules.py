"""Optimizers and learning-rate schedules follow their definitions; early stopping stops."""

import pytest
import torch

from headstart.config import TrainConfig
from headstart.training.callbacks import EarlyStopping
from headstart.training.schedules import build_optimizer, build_scheduler


def _lrs(schedule: str, steps_per_epoch=4, epochs=10, **kw):
    cfg = TrainConfig(data="d", schedule=schedule, lr=0.1, epochs=epochs, **kw)
    param = torch.nn.Parameter(torch.zeros(1))
    optimizer = build_optimizer([{"params": [param], "lr": cfg.lr}], cfg)
    scheduler = build_scheduler(optimizer, cfg, steps_per_epoch, epochs)
    out = []
    for _ in range(steps_per_epoch * epochs):
        out.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        scheduler.step()
    return out


@pytest.mark.parametrize(("name", "kind"), [("sgd", torch.optim.SGD), ("adam", torch.optim.Adam),
                                            ("adamw", torch.optim.AdamW)])
def test_optimizers(name, kind):
    cfg = TrainConfig(data="d", optimizer=name, lr=0.01)
    assert isinstance(build_optimizer([{"params": [torch.nn.Parameter(torch.zeros(1))]}], cfg), kind)


def test_cosine_with_warmup():
    lrs = _lrs("cosine", warmup_epochs=2)
    assert lrs[0] == pytest.approx(0.001) and lrs[8] == pytest.approx(0.1)  # ramps over 2 epochs of 4 steps
    assert all(a <= b for a, b in zip(lrs[:8], lrs[1:9]))
    assert all(a >= b for a, b in zip(lrs[8:], lrs[9:])) and lrs[-1] < 0.001


def test_step_schedule():
    lrs = _lrs("step", step_size=3, gamma=0.1)
    assert lrs[0] == pytest.approx(0.1) and lrs[4 * 3] == pytest.approx(0.01) and lrs[4 * 6] == pytest.approx(0.001)


def test_onecycle_peaks_in_the_middle():
    lrs = _lrs("onecycle")
    peak = max(range(len(lrs)), key=lrs.__getitem__)
    assert lrs[peak] == pytest.approx(0.1) and 0 < peak < len(lrs) - 1 and lrs[-1] < lrs[0]


def test_early_stopping_after_patience():
    class T:
        should_stop = False

    stop, trainer = EarlyStopping(patience=2), T()
    for epoch, acc in enumerate([0.5, 0.6, 0.6, 0.55]):
        stop.on_epoch_end(trainer, epoch, {"val_accuracy": acc, "val_loss": 1.0})
    assert trainer.should_stop
