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
