"""ResumeCheckpoint writes at most every `every` seconds and keeps the epochs in between as copies, written
when fit ends however it ends."""

from __future__ import annotations

import torch

from headstart.training.callbacks import ResumeCheckpoint


class _Trainer:
    """What the callback reads of a trainer: a state whose tensors training changes in place."""

    def __init__(self):
        self.weight = torch.zeros(2)

    def state_dict(self) -> dict:
        return {"weight": self.weight}


def test_epochs_between_writes_are_kept_as_copies_and_written_at_fit_end():
    written = []
    callback = ResumeCheckpoint(lambda state: written.append(state["weight"].clone()), every=3600)
    trainer = _Trainer()
    for epoch in range(3):
        trainer.weight += 1  # the epoch's training, in place
        callback.on_epoch_end(trainer, epoch, {})
    assert [w.tolist() for w in written] == [[1.0, 1.0]]  # the first epoch at once; 2 and 3 wait
    trainer.weight += 1  # an epoch that is interrupted half-way changes the weights too
    callback.on_fit_end(trainer)
    assert [w.tolist() for w in written] == [[1.0, 1.0], [3.0, 3.0]]  # the last completed epoch, not the live state
    callback.on_fit_end(trainer)
    assert len(written) == 2  # nothing pending any more


def test_with_no_interval_every_epoch_is_written():
    written = []
    callback = ResumeCheckpoint(lambda state: written.append(state["weight"].tolist()), every=0)
    trainer = _Trainer()
    for epoch in range(3):
        trainer.weight += 1
        callback.on_epoch_end(trainer, epoch, {})
    callback.on_fit_end(trainer)
    assert written == [[1.0, 1.0], [2.0, 2.0], [3.0, 3.0]]


def test_the_copies_between_writes_live_on_the_cpu(monkeypatch):
    from headstart.training import callbacks

    moved = []
    original = torch.Tensor.to

    def spy(self, *args, **kwargs):
        moved.append((args, kwargs))
        return original(self, *args, **kwargs)

    monkeypatch.setattr(torch.Tensor, "to", spy)
    copy = callbacks._cpu_copy({"model": {"w": torch.ones(2)}, "history": [{"loss": 1.0}], "step": (3, torch.zeros(1))})
    assert moved == [(("cpu",), {"copy": True})] * 2
    assert copy["history"] == [{"loss": 1.0}] and copy["step"][0] == 3


def test_a_failed_final_write_does_not_hide_the_error_that_ended_training():
    import pytest

    from headstart.training.errors import TrainingInterrupted
    from headstart.training.loop import Trainer

    def disk_full(state):
        raise OSError("no space left on device")

    resume = ResumeCheckpoint(disk_full, every=3600)
    resume._written_at = 0.0  # as if it had written a moment ago: the next epochs wait
    resume._pending = {"weight": torch.zeros(1)}
    trainer = Trainer(None, torch.nn.Linear(1, 1), None, None, None, callbacks=[resume])
    trainer._run = lambda *a: (_ for _ in ()).throw(TrainingInterrupted("interrupted after epoch 3"))
    with pytest.raises(TrainingInterrupted):
        trainer.fit([], [], 5)
    trainer._run = lambda *a: []
    resume._pending = {"weight": torch.zeros(1)}
    with pytest.raises(OSError):  # when nothing else went wrong, the failed write is the error
        trainer.fit([], [], 5)
