"""The trainer's few named callbacks: keep the best checkpoint, stop early, unfreeze stages on a schedule,
save the state for --resume."""

from __future__ import annotations

import copy
import logging
import time
from collections.abc import Callable
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from headstart.training.loop import Trainer

__all__ = ["BestCheckpoint", "Callback", "EarlyStopping", "ResumeCheckpoint", "UnfreezeSchedule", "best_row",
           "is_better"]

log = logging.getLogger(__name__)


def is_better(row: dict, best: dict | None) -> bool:
    """Higher val accuracy wins; on a tie, lower val loss."""
    if best is None:
        return True
    if row["val_accuracy"] != best["val_accuracy"]:
        return row["val_accuracy"] > best["val_accuracy"]
    return row["val_loss"] < best["val_loss"]


def best_row(history: list[dict]) -> dict | None:
    """The best epoch of a history by the one rule above (the first of equals)."""
    best = None
    for row in history:
        if is_better(row, best):
            best = row
    return best


class Callback:
    def on_epoch_start(self, trainer: Trainer, epoch: int) -> None:
        """Called before each training epoch."""

    def on_epoch_end(self, trainer: Trainer, epoch: int, row: dict) -> None:
        """Called after validation with the epoch's history row."""

    def on_fit_end(self, trainer: Trainer) -> None:
        """Called as fit ends: finished, stopped early, interrupted, or failed."""

    def state_dict(self) -> dict:
        return {}

    def load_state_dict(self, state: dict) -> None:
        """Restore what state_dict returned (for resuming)."""


class BestCheckpoint(Callback):
    """Keeps the weights of the best epoch by validation score, in memory, and hands them to `save`."""

    def __init__(self, save: Callable[[dict, dict], None] | None = None):
        self.best_row: dict | None = None
        self.best_state: dict | None = None
        self.save = save

    def on_epoch_end(self, trainer: Trainer, epoch: int, row: dict) -> None:
        if is_better(row, self.best_row):
            self.best_row = dict(row)
            self.best_state = copy.deepcopy(trainer.module.state_dict())
            row["best"] = True
            if self.save is not None:
                self.save(self.best_state, self.best_row)

    def state_dict(self) -> dict:
        return {"best_row": self.best_row, "best_state": self.best_state}

    def load_state_dict(self, state: dict) -> None:
        self.best_row, self.best_state = state["best_row"], state["best_state"]


class EarlyStopping(Callback):
    """Stops after `patience` epochs without a better validation score."""

    def __init__(self, patience: int):
        self.patience = patience
        self.best_row: dict | None = None
        self.stale = 0

    def on_epoch_end(self, trainer: Trainer, epoch: int, row: dict) -> None:
        if is_better(row, self.best_row):
            self.best_row, self.stale = dict(row), 0
            return
        self.stale += 1
        if self.stale >= self.patience:
            log.info("early stop at epoch %d: no better val score for %d epochs", epoch + 1, self.patience)
            trainer.should_stop = True

    def state_dict(self) -> dict:
        return {"best_row": self.best_row, "stale": self.stale}

    def load_state_dict(self, state: dict) -> None:
        self.best_row, self.stale = state["best_row"], state["stale"]


class UnfreezeSchedule(Callback):
    """Gradual unfreezing: every `every` epochs, the next frozen stage (from the head down) starts training.

    Every stage is in the optimizer from the start with its own lr; a frozen stage has no gradients, which
    every torch optimizer skips, so unfreezing is only flipping requires_grad.
    """

    def __init__(self, every: int, stages: list[list]):
        self.every = every
        self.pending = list(stages)  # ordered from the head downwards
        for params in self.pending:
            for p in params:
                p.requires_grad_(False)

        self.unfrozen = 0

    def on_epoch_start(self, trainer: Trainer, epoch: int) -> None:
        if epoch == 0 or epoch % self.every or not self.pending:
            return
        self._unfreeze_next()
        log.info("epoch %d: unfroze one more stage (%d left frozen)", epoch + 1, len(self.pending))

    def _unfreeze_next(self) -> None:
        for p in self.pending.pop(0):
            p.requires_grad_(True)
        self.unfrozen += 1

    def state_dict(self) -> dict:
        return {"unfrozen": self.unfrozen}

    def load_state_dict(self, state: dict) -> None:
        while self.unfrozen < state["unfrozen"]:
            self._unfreeze_next()


def _cpu_copy(value):
    """A copy of a state (dicts, lists, tensors, plain values) with every tensor on the CPU: a copy kept on a
    GPU would hold the weights and the optimizer's moments a second time in its memory."""
    import torch

    if isinstance(value, torch.Tensor):
        return value.detach().to("cpu", copy=True)
    if isinstance(value, dict):
        return {k: _cpu_copy(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(_cpu_copy(v) for v in value)
    return copy.deepcopy(value)


class ResumeCheckpoint(Callback):
    """The trainer's full state after every epoch, for --resume: an interrupt loses at most the epoch in progress.

    It goes to disk (atomically, with an fsync) at most every `every` seconds; the epochs in between are kept
    as a copy in memory and written when fit ends, however it ends (finished, stopped, interrupted, failed).
    Epochs of a few milliseconds (a head on cached features) would otherwise spend most of their time
    waiting for the disk (docs/benchmarks.md, "Resume checkpoint writes"). Only a killed process (SIGKILL,
    power loss) can lose epochs, those of the last `every` seconds."""

    def __init__(self, save: Callable[[dict], None], every: float = 2.0):
        self.save, self.every = save, every
        self._written_at: float | None = None
        self._pending: dict | None = None

    def on_epoch_end(self, trainer: Trainer, epoch: int, row: dict) -> None:
        if self._written_at is not None and time.monotonic() - self._written_at < self.every:
            self._pending = _cpu_copy(trainer.state_dict())  # the live tensors change in the next epoch
            return
        self._write(trainer.state_dict())

    def on_fit_end(self, trainer: Trainer) -> None:
        if self._pending is not None:
            self._write(self._pending)

    def _write(self, state: dict) -> None:
        self.save(state)
        self._written_at, self._pending = time.monotonic(), None
