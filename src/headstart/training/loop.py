"""Pure training steps and the small loop that owns the state, on Lightning Fabric.

`train_one_epoch` and `evaluate_batches` return plain dicts. `Trainer` runs epochs, calls the named
callbacks and keeps the history. Fabric supplies devices, precision (bf16/fp16 autocast) and distribution,
so this file never handles a process group or an autocast context itself.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable, Iterable
from contextlib import nullcontext

import torch
from torch import nn

from headstart.training.callbacks import Callback
from headstart.training.distributed import any_rank, gather_rows, reduce_sum
from headstart.training.errors import NonFiniteLossError, TrainingInterrupted

__all__ = ["NonFiniteLossError", "Trainer", "TrainingInterrupted", "evaluate_batches", "load_weights",
           "train_one_epoch"]

log = logging.getLogger(__name__)


def train_one_epoch(model: nn.Module, batches: Iterable, optimizer, scheduler, loss_fn: Callable, fabric,
                    *, train_mode: Callable[[nn.Module], None] | None = None, channels_last: bool = False,
                    should_stop: Callable[[], bool] = lambda: False, accumulate: int = 1,
                    sharded: bool = False) -> dict:
    """One pass over `batches` of (inputs, labels). Returns loss, accuracy, images and seconds.

    accumulate: optimizer steps every N batches (gradients of the first N-1 are not synced across ranks).
    sharded: each rank holds a different share of the data, so the returned numbers are summed over ranks.
    should_stop is polled between batches, by all ranks together when sharded: a signal abandons the epoch
    (the last completed one is saved).
    """
    if train_mode is None:
        model.train()
    else:
        train_mode(model)
    started = time.perf_counter()
    total_loss, correct, seen = 0.0, 0, 0
    count = len(batches) if hasattr(batches, "__len__") else None
    optimizer.zero_grad(set_to_none=True)
    for step, (inputs, labels) in enumerate(batches, start=1):
        # With several processes every step is a collective (DDP's gradient sync): they stop together or not
        # at all, or the ones that go on wait forever for the ones that left.
        if any_rank(fabric, should_stop()):
            raise TrainingInterrupted("interrupted during an epoch")
        inputs, labels = fabric.to_device((inputs, labels))  # a no-op for loaders that Fabric set up
        if channels_last and inputs.dim() == 4:
            inputs = inputs.contiguous(memory_format=torch.channels_last)
        boundary = step % accumulate == 0 or step == count
        window_start = (step - 1) // accumulate * accumulate
        window = min(accumulate, count - window_start) if count else accumulate  # the last one may be short
        skip_sync = fabric.no_backward_sync(model, enabled=not boundary) if accumulate > 1 else nullcontext()
        with skip_sync:
            logits = model(inputs)
            loss = loss_fn(logits.float(), labels)
            if any_rank(fabric, not math.isfinite(loss.item())):
                raise NonFiniteLossError(f"the training loss became {loss.item()}: lower the learning rate "
                                         f"(--lr) or check the data; the last good checkpoint is kept")
            fabric.backward(loss / window)
        if boundary:
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            if scheduler is not None:
                scheduler.step()
        total_loss += loss.item() * len(labels)
        correct += int((logits.argmax(1) == labels).sum())
        seen += len(labels)
    seconds = time.perf_counter() - started
    if sharded:
        total_loss, correct, seen = reduce_sum(fabric, total_loss, correct, seen)
    return {"loss": total_loss / max(seen, 1), "accuracy": correct / max(seen, 1), "images": int(seen),
            "seconds": seconds}


@torch.no_grad()
def evaluate_batches(model: nn.Module, batches: Iterable, loss_fn: Callable, fabric, *,
                     channels_last: bool = False, sharded: bool = False) -> dict:
    """Loss and accuracy over `batches`, with the logits and labels (on the CPU) for further metrics.

    sharded: each rank holds its strided share (distributed.shard_indices) of the split; the logits of all
    ranks are gathered in the split's order, so every rank computes the metrics of the whole split.
    """
    model.eval()
    all_logits, all_labels = [], []
    for inputs, labels in batches:
        if channels_last and inputs.dim() == 4:
            inputs = inputs.contiguous(memory_format=torch.channels_last)
        with fabric.autocast():
            logits = model(inputs)
        all_logits.append(logits.float().cpu())
        all_labels.append(labels.cpu())
    logits = torch.cat(all_logits) if all_logits else torch.empty(0, 0)
    labels = torch.cat(all_labels) if all_labels else torch.empty(0, dtype=torch.long)
    if sharded:
        n = int(reduce_sum(fabric, len(labels))[0])
        logits, labels = gather_rows(fabric, logits, n), gather_rows(fabric, labels, n)
    loss = float(loss_fn(logits, labels)) if len(labels) else 0.0
    accuracy = float((logits.argmax(1) == labels).float().mean()) if len(labels) else 0.0
    return {"loss": loss, "accuracy": accuracy, "logits": logits, "labels": labels}


def load_weights(module: nn.Module, state: dict) -> None:
    """Load saved weights into a module whose frozen part may differ from the saving one's: a cached frozen
    prefix is swapped for Identity (training/prefix.py) on one process but not on several, so a state saved on
    one world size lacks, or carries extra, frozen keys. Those hold the pretrained weights either way; every
    trainable parameter must be in the state."""
    missing, _ = module.load_state_dict(state, strict=False)
    trainable = {name for name, p in module.named_parameters() if p.requires_grad}
    if trainable & set(missing):
        raise KeyError(f"the saved state lacks trainable weights: {sorted(trainable & set(missing))[:3]}")


class Trainer:
    """Owns model, optimizer, scheduler and history; runs epochs and the callbacks between them."""

    def __init__(self, fabric, model: nn.Module, optimizer, scheduler, loss_fn: Callable, *,
                 callbacks: list[Callback] = (), train_mode: Callable[[nn.Module], None] | None = None,
                 channels_last: bool = False, on_epoch: Callable[[dict], None] | None = None,
                 generators: list[torch.Generator] = (), phase: str = "train",
                 should_stop: Callable[[], bool] = lambda: False, accumulate: int = 1, sharded: bool = False):
        self.fabric = fabric
        self.model = model
        self.optimizer = optimizer
        self.scheduler = scheduler
        self.loss_fn = loss_fn
        self.callbacks = list(callbacks)
        self.train_mode = train_mode
        self.channels_last = channels_last
        self.on_epoch = on_epoch
        self.generators = list(generators)  # data-order RNGs, saved with the state so a resume replays them
        self.phase = phase
        self.interrupted = should_stop
        self.accumulate = accumulate
        self.sharded = sharded  # each rank trains and evaluates its own share (DDP); else all see all data
        self.history: list[dict] = []
        self.should_stop = False
        self.epoch = 0

    @property
    def module(self) -> nn.Module:
        """The bare model, without Fabric's wrapper."""
        return getattr(self.model, "module", self.model)

    def state_dict(self) -> dict:
        """Everything needed to continue exactly: weights, optimizer, scheduler, epoch, history, RNGs."""
        return {
            "phase": self.phase,
            "epoch": self.epoch,
            "model": self.module.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict() if self.scheduler is not None else {},
            "history": self.history,
            "callbacks": [cb.state_dict() for cb in self.callbacks],
            "rng": {"torch": torch.get_rng_state(), "generators": [g.get_state() for g in self.generators]},
        }

    def load_state_dict(self, state: dict) -> None:
        load_weights(self.module, state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        if self.scheduler is not None and state["scheduler"]:
            self.scheduler.load_state_dict(state["scheduler"])
        self.epoch = state["epoch"]
        self.history = list(state["history"])
        for cb, cb_state in zip(self.callbacks, state["callbacks"]):
            cb.load_state_dict(cb_state)
        torch.set_rng_state(state["rng"]["torch"])
        for g, g_state in zip(self.generators, state["rng"]["generators"]):
            g.set_state(g_state)

    def fit(self, train_batches: Iterable, val_batches: Iterable, epochs: int) -> list[dict]:
        """Run epochs up to `epochs` (or an early stop); the callbacks hear on_fit_end however it ends."""
        try:
            history = self._run(train_batches, val_batches, epochs)
        except BaseException:
            self._end(unwinding=True)
            raise
        self._end(unwinding=False)
        return history

    def _end(self, *, unwinding: bool) -> None:
        for cb in self.callbacks:
            try:
                cb.on_fit_end(self)
            except Exception as exc:
                if not unwinding:
                    raise
                # the error on its way out (an interrupt, a NaN loss) is the one to report
                log.warning("%s could not finish (%s: %s)", type(cb).__name__, type(exc).__name__, exc)

    def _run(self, train_batches: Iterable, val_batches: Iterable, epochs: int) -> list[dict]:
        # A plain loss for validation: smoothing and class weights belong to training only.
        val_loss = nn.CrossEntropyLoss()
        while self.epoch < epochs and not self.should_stop:
            for cb in self.callbacks:
                cb.on_epoch_start(self, self.epoch)
            sampler = getattr(train_batches, "sampler", None)
            if hasattr(sampler, "set_epoch"):
                sampler.set_epoch(self.epoch)  # DistributedSampler: a new shuffle each epoch, the same on all ranks
            train = train_one_epoch(self.model, train_batches, self.optimizer, self.scheduler, self.loss_fn,
                                    self.fabric, train_mode=self.train_mode, channels_last=self.channels_last,
                                    should_stop=self.interrupted, accumulate=self.accumulate, sharded=self.sharded)
            val = evaluate_batches(self.model, val_batches, val_loss, self.fabric, channels_last=self.channels_last,
                                   sharded=self.sharded)
            row = {"epoch": self.epoch + 1, "train_loss": train["loss"], "train_accuracy": train["accuracy"],
                   "val_loss": val["loss"], "val_accuracy": val["accuracy"], "seconds": train["seconds"],
                   "images_per_second": train["images"] / max(train["seconds"], 1e-9),
                   "lr": self.optimizer.param_groups[0]["lr"]}
            self.history.append(row)
            self.epoch += 1
            for cb in self.callbacks:
                cb.on_epoch_end(self, self.epoch - 1, row)
            log.info("epoch %d: train loss %.4f acc %.4f, val loss %.4f acc %.4f, %.1fs", row["epoch"],
                     row["train_loss"], row["train_accuracy"], row["val_loss"], row["val_accuracy"], row["seconds"])
            if self.on_epoch is not None:
                self.on_epoch(row)
            if any_rank(self.fabric, self.interrupted()):
                raise TrainingInterrupted(f"interrupted after epoch {self.epoch}")
        return self.history
