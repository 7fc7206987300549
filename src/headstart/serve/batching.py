"""Micro-batching: concurrent requests share one model call.

Requests queue their decoded images. One worker thread takes the oldest waiting request, gathers more, runs
ONE `logits_fn` call on them all and hands each request its own rows. The model is only ever called from
that thread, so it never runs concurrently with itself; other work that must not overlap with inference
(Grad-CAM hooks the network's layers) goes onto the same thread through `run()`.

How long a batch waits for company: at most `window_ms` after its first request arrived (requests that
queued while the model was busy have already waited, so under load a batch leaves as soon as the model is
free), and only while more are known to be on the way: a request announces itself with `expecting()` when
it starts reading and decoding its images, so a lone request is never held back for a window in which no
other can arrive. The batch also leaves once it has `max_batch` images. `window_ms=0` turns merging off:
each request is its own model call, in arrival order.
"""

from __future__ import annotations

import asyncio
import collections
import logging
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import numpy as np

__all__ = ["BatchStats", "MicroBatcher", "Ticket"]

log = logging.getLogger(__name__)

LogitsFn = Callable[[list[Any]], np.ndarray]


@dataclass
class BatchStats:
    """What the worker has done so far: model calls, the requests and images they served, the largest one."""

    batches: int = 0
    requests: int = 0
    images: int = 0
    largest: int = 0

    def to_dict(self) -> dict[str, int]:
        return {"batches": self.batches, "requests": self.requests, "images": self.images,
                "largest": self.largest}


@dataclass
class _Job:
    images: list[Any]
    future: Future = field(default_factory=Future)
    arrived: float = field(default_factory=time.monotonic)


@dataclass
class _Call:
    fn: Callable[..., Any]
    args: tuple
    future: Future = field(default_factory=Future)


class Ticket:
    """A request on its way to the batcher (see MicroBatcher.expecting); spent when it submits."""

    def __init__(self, batcher: MicroBatcher) -> None:
        self._batcher, self.open = batcher, True


_STOP = object()


class MicroBatcher:
    """Queues images from many callers and runs `logits_fn` on merged batches, on one worker thread.

    `logits_fn(images) -> np.ndarray [len(images), classes]`. A single request larger than `max_batch` is
    run alone, whole (the engine splits it into its own batches).
    """

    def __init__(self, logits_fn: LogitsFn, *, window_ms: float = 5.0, max_batch: int = 32,
                 name: str = "headstart-batcher") -> None:
        if window_ms < 0:
            raise ValueError(f"window_ms must be >= 0, got {window_ms}")
        if max_batch < 1:
            raise ValueError(f"max_batch must be >= 1, got {max_batch}")
        self._logits_fn = logits_fn
        self.window_s = window_ms / 1000.0
        self.max_batch = max_batch
        self._items: collections.deque = collections.deque()
        self._cond = threading.Condition()
        self._expected = 0  # requests announced but not submitted yet
        self._stats = BatchStats()
        self._closed = False
        self._thread = threading.Thread(target=self._work, name=name, daemon=True)
        self._thread.start()

    @property
    def closed(self) -> bool:
        return self._closed

    @property
    def stats(self) -> BatchStats:
        """A consistent copy of the counters."""
        with self._cond:
            return BatchStats(**self._stats.to_dict())

    @contextmanager
    def expecting(self) -> Iterator[Ticket]:
        """Announce a request that will submit soon, so that a gathering batch may wait for it."""
        ticket = Ticket(self)
        with self._cond:
            self._expected += 1
        try:
            yield ticket
        finally:
            self._spend(ticket)

    def _spend(self, ticket: Ticket | None) -> None:
        # called with or without the lock held (Condition's lock is reentrant)
        if ticket is not None and ticket.open:
            with self._cond:
                ticket.open = False
                self._expected -= 1
                self._cond.notify_all()

    def _put(self, item: Any, ticket: Ticket | None = None) -> None:
        with self._cond:
            if self._closed:
                raise RuntimeError("the batcher is closed")
            self._items.append(item)
            self._spend(ticket)
            self._cond.notify_all()

    def submit(self, images: Sequence[Any], ticket: Ticket | None = None) -> Future:
        """A future of the logits rows for `images`, in order."""
        job = _Job(list(images))
        if not job.images:
            self._spend(ticket)
            job.future.set_result(np.zeros((0, 0), dtype=np.float32))
            return job.future
        self._put(job, ticket)
        return job.future

    async def logits(self, images: Sequence[Any], ticket: Ticket | None = None) -> np.ndarray:
        """Awaitable `submit`: cancelling the awaiting task drops the request if it has not started yet."""
        return await asyncio.wrap_future(self.submit(images, ticket))

    async def run(self, fn: Callable[..., Any], *args: Any) -> Any:
        """Run `fn(*args)` on the worker thread, between batches, and await its result."""
        call = _Call(fn, args)
        self._put(call)
        return await asyncio.wrap_future(call.future)

    def close(self, timeout: float = 10.0) -> None:
        """Finish what is queued, then stop the worker."""
        with self._cond:
            if self._closed:
                return
            self._items.append(_STOP)
            self._closed = True
            self._cond.notify_all()
        self._thread.join(timeout)

    def _work(self) -> None:
        while True:
            with self._cond:
                while not self._items:
                    self._cond.wait()
                item = self._items.popleft()
                batch = [item] if item is _STOP or isinstance(item, _Call) else self._gather(item)
            if item is _STOP:
                return
            if isinstance(item, _Call):
                self._run_call(item)
            else:
                self._run_batch(batch)

    def _gather(self, first: _Job) -> list[_Job]:
        """`first` plus queued jobs that fit in max_batch, waiting for announced ones until the window ends.

        Called with the lock held. A call, the stop marker or a job too big to fit ends the batch and stays
        first in the queue.
        """
        batch, count = [first], len(first.images)
        if self.window_s <= 0:
            return batch
        deadline = first.arrived + self.window_s
        while count < self.max_batch:
            if self._items:
                item = self._items[0]
                if not isinstance(item, _Job) or count + len(item.images) > self.max_batch:
                    break
                batch.append(self._items.popleft())
                count += len(item.images)
                continue
            remaining = deadline - time.monotonic()
            if self._expected == 0 or remaining <= 0:
                break
            self._cond.wait(remaining)
        return batch

    def _run_call(self, call: _Call) -> None:
        if not call.future.set_running_or_notify_cancel():
            return
        try:
            call.future.set_result(call.fn(*call.args))
        except BaseException as exc:  # handed to the awaiting request, which decides what to answer
            call.future.set_exception(exc)

    def _run_batch(self, batch: list[_Job]) -> None:
        # requests whose caller went away are dropped before the model sees them
        jobs = [job for job in batch if job.future.set_running_or_notify_cancel()]
        if not jobs:
            return
        images = [img for job in jobs for img in job.images]
        try:
            logits = np.asarray(self._logits_fn(images))
            if len(logits) != len(images):
                raise RuntimeError(f"the model returned {len(logits)} rows for {len(images)} images")
        except BaseException as exc:
            log.exception("model call on %d image(s) failed", len(images))
            for job in jobs:
                job.future.set_exception(exc)
            return
        with self._cond:
            self._stats.batches += 1
            self._stats.requests += len(jobs)
            self._stats.images += len(images)
            self._stats.largest = max(self._stats.largest, len(images))
        start = 0
        for job in jobs:
            job.future.set_result(logits[start:start + len(job.images)])
            start += len(job.images)
