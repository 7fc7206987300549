"""A second process that draws the report's figures while this one computes its Grad-CAMs.

A run's report is about 1.5 s of matplotlib drawing and 1.4 s of Grad-CAM (the grad-cam package's import,
which pulls in scikit-learn, then torch work), measured on pizza_steak_sushi on a 2-core CPU. Both hold the
GIL, so threads would take turns; two processes use both cores. The worker imports matplotlib as it starts,
on a core that training's start-up leaves idle.

Why a plain subprocess and not multiprocessing: a "spawn" or "forkserver" worker re-runs the user's main
script, so a script that calls headstart.train() without an `if __name__ == "__main__":` guard would train
again inside the worker; and "fork" copies a process that may be running threads (decoding pools, OpenMP,
a notebook's), which can deadlock the copy. `python -c` imports only this module. Requests and replies are
pickles on the child's stdin and stdout, between this process and the child it started, nothing else.

A worker failure costs only speed: a figure it cannot draw is drawn here.
"""

from __future__ import annotations

import logging
import os
import pickle
import queue
import subprocess
import threading
from collections.abc import Callable
from pathlib import Path

from headstart.child import child_pipes, start_child

__all__ = ["FigureWorker"]

log = logging.getLogger(__name__)


class FigureWorker:
    """`draw(plot_function, *args)` starts a figure in the worker process and returns a function that waits
    for its path. `FigureWorker.start()` has a worker only where there is a core to spare for it; without
    one, `draw` draws in this process at once. Close it (or use it as a context manager) when done."""

    def __init__(self, process: subprocess.Popen | None = None):
        self._process = process
        self._lost: str | None = None if process else "no worker"  # why the worker can answer no more
        self._sent = 0  # requests written, numbered from 0; replies come back in the same order
        self._replies: list[tuple[bool, object]] = []

    @classmethod
    def start(cls) -> FigureWorker:
        return cls(start_child(__name__, "serve"))

    def draw(self, function: Callable[..., Path], *args, **kwargs) -> Callable[[], Path]:
        """Start `function(*args, **kwargs)`: a module-level plotting function (it is sent by name) with
        picklable arguments. The returned function waits for the figure and returns its path."""
        number = self._send(function, args, kwargs)
        if number is None:
            path = function(*args, **kwargs)
            return lambda: path

        def result() -> Path:
            done, value = self._reply(number)
            if done:
                return value
            # The worker is gone, or the plot failed there: an error of the plot itself is raised again here,
            # with this process's traceback.
            log.debug("figure worker: %s; drawing %s here", value, function.__name__)
            return function(*args, **kwargs)

        return result

    def settle(self) -> None:
        """Wait until the worker has answered every request: after this, it writes no more files."""
        if self._sent:
            self._reply(self._sent - 1)

    def _send(self, function: Callable, args: tuple, kwargs: dict) -> int | None:
        if self._lost:
            return None
        try:  # the whole request first: a failure here must not leave half a request in the pipe
            request = pickle.dumps((function, args, kwargs), protocol=pickle.HIGHEST_PROTOCOL)
        except Exception as exc:  # an argument that cannot be pickled: this figure is drawn here
            log.debug("figure worker: cannot send %s (%s: %s)", function.__name__, type(exc).__name__, exc)
            return None
        try:
            self._process.stdin.write(request)
            self._process.stdin.flush()
        except OSError as exc:  # the worker has died
            self._lost = f"the worker stopped ({type(exc).__name__}: {exc})"
            return None
        self._sent += 1
        return self._sent - 1

    def _reply(self, number: int) -> tuple[bool, object]:
        while len(self._replies) <= number:
            if self._lost:
                self._replies.append((False, self._lost))
                continue
            try:
                self._replies.append(pickle.load(self._process.stdout))
            except Exception as exc:  # EOF or garbage: nothing read after this could be trusted
                self._lost = f"the worker stopped ({type(exc).__name__}: {exc})"
        return self._replies[number]

    def close(self) -> None:
        """End the worker (it exits when its input closes) and wait for it. Later figures are drawn here."""
        process, self._process = self._process, None
        self._lost = self._lost or "closed"
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
    # Every reply is flushed and the figures are files: skip the interpreter's teardown of matplotlib (~0.1 s
    # that the parent would wait for).
    os._exit(0)
