"""Worker processes that draw the report's figures while this one computes its Grad-CAMs.

A run's report is mostly matplotlib drawing and Grad-CAM (docs/benchmarks.md, "Report figures"). Both
hold the GIL, so threads would take turns; processes use every core.
Two workers (headstart.child processes) share the figures; each imports matplotlib as it starts, on a core
that training's start-up leaves idle (~100 MB of memory each). Requests and replies are pickles on a
worker's stdin and stdout, between this process and the child it started, nothing else.

A worker failure costs only speed: a figure it cannot draw is drawn here.
"""

from __future__ import annotations

import logging
import pickle
import queue
import subprocess
import threading
from collections.abc import Callable
from pathlib import Path

from headstart.child import child_pipes, end_child, start_child

__all__ = ["FigureWorker"]

log = logging.getLogger(__name__)

# Worker processes: two share a report's drawing while this process computes the Grad-CAMs.
WORKERS = 2


class _Channel:
    """One worker process: requests numbered from 0 in the order written, replies read back in that order."""

    def __init__(self, process: subprocess.Popen):
        self.process: subprocess.Popen | None = process
        self.lost: str | None = None  # why the worker can answer no more
        self.sent = 0
        self._replies: list[tuple[bool, object]] = []

    def send(self, request: bytes) -> int | None:
        if self.lost:
            return None
        try:
            self.process.stdin.write(request)
            self.process.stdin.flush()
        except OSError as exc:  # the worker has died
            self.lost = f"the worker stopped ({type(exc).__name__}: {exc})"
            return None
        self.sent += 1
        return self.sent - 1

    def reply(self, number: int) -> tuple[bool, object]:
        while len(self._replies) <= number:
            if self.lost:
                self._replies.append((False, self.lost))
                continue
            try:
                self._replies.append(pickle.load(self.process.stdout))
            except Exception as exc:  # EOF or garbage: nothing read after this could be trusted
                self.lost = f"the worker stopped ({type(exc).__name__}: {exc})"
        return self._replies[number]

    def settle(self) -> None:
        if self.sent:
            self.reply(self.sent - 1)

    def close(self) -> None:
        process, self.process = self.process, None
        self.lost = self.lost or "closed"
        if process is None:
            return
        try:
            process.stdin.close()
            process.wait(timeout=10)
        except (OSError, subprocess.TimeoutExpired):
            process.kill()
            process.wait()
        finally:
            process.stdout.close()


class FigureWorker:
    """`draw(plot_function, *args)` starts a figure in a worker process and returns a function that waits
    for its path. `FigureWorker.start()` has workers only where there is a core to spare; without one, `draw`
    draws in this process at once. Close it (or use it as a context manager) when done."""

    def __init__(self, processes: list[subprocess.Popen] = ()):
        self._channels = [_Channel(p) for p in processes]

    @classmethod
    def start(cls, workers: int = WORKERS) -> FigureWorker:
        started = [start_child(__name__, "serve") for _ in range(workers)]
        return cls([p for p in started if p is not None])

    def draw(self, function: Callable[..., Path], *args, **kwargs) -> Callable[[], Path]:
        """Start `function(*args, **kwargs)`: a module-level plotting function (it is sent by name) with
        picklable arguments, on the worker with the fewest figures so far. The returned function waits for the
        figure and returns its path."""
        channels = [c for c in self._channels if not c.lost]
        sent = None
        if channels:
            try:  # the whole request first: a failure here must not leave half a request in a pipe
                request = pickle.dumps((function, args, kwargs), protocol=pickle.HIGHEST_PROTOCOL)
            except Exception as exc:  # an argument that cannot be pickled: this figure is drawn here
                log.debug("figure worker: cannot send %s (%s: %s)", function.__name__, type(exc).__name__, exc)
            else:
                channel = min(channels, key=lambda c: c.sent)
                sent = channel.send(request)
        if sent is None:
            path = function(*args, **kwargs)
            return lambda: path

        def result() -> Path:
            done, value = channel.reply(sent)
            if done:
                return value
            # The worker is gone, or the plot failed there: an error of the plot itself is raised again here,
            # with this process's traceback.
            log.debug("figure worker: %s; drawing %s here", value, function.__name__)
            return function(*args, **kwargs)

        return result

    def settle(self) -> None:
        """Wait until the workers have answered every request: after this, they write no more files."""
        for channel in self._channels:
            channel.settle()

    def close(self) -> None:
        """End the workers (each exits when its input closes) and wait for them. Later figures are drawn here."""
        for channel in self._channels:
            channel.close()

    def __enter__(self) -> FigureWorker:
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()


def serve() -> None:
    """The worker's loop: draw each request from stdin, reply on stdout, in order, until stdin closes (the
    parent closed it, or died). Requests are read on a thread so that the parent never waits to send."""
    requests, replies = child_pipes()
    pending: queue.SimpleQueue = queue.SimpleQueue()

    def read() -> None:
        while True:
            try:
                pending.put(pickle.load(requests))
            except Exception:  # EOF: the parent is done
                pending.put(None)
                return

    threading.Thread(target=read, daemon=True, name="headstart-figure-requests").start()
    from headstart.report.plots import warm_up

    warm_up()
    while (request := pending.get()) is not None:
        function, args, kwargs = request
        try:
            reply = (True, function(*args, **kwargs))
        except Exception as exc:
            reply = (False, f"{function.__name__} failed: {type(exc).__name__}: {exc}")
        try:
            pickle.dump(reply, replies, protocol=pickle.HIGHEST_PROTOCOL)
            replies.flush()
        except OSError:  # the parent is gone
            break
    end_child()
