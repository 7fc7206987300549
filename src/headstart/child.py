"""Helper processes: a plain Python subprocess that runs one of headstart's functions, talking in pickles over
its stdin and stdout.

Training's start-up and the report each have work that would fight this process for the GIL: decoding the
images while torch is imported (data/background.py), drawing figures while Grad-CAMs are computed
(report/figures.py). A second process uses the second core without taking turns with this one.

Why not multiprocessing: a "spawn" or "forkserver" child re-runs the user's main script, so a script that
calls headstart.train() without an `if __name__ == "__main__":` guard would train again inside it; and "fork"
copies a process that may be running threads (decoding pools, OpenMP, a notebook's), which can deadlock the
copy. `python -c` imports only the module it names.
"""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
from typing import BinaryIO

__all__ = ["child_pipes", "end_child", "start_child", "usable_cores"]

log = logging.getLogger(__name__)


def usable_cores() -> int:
    """The cores this process may run on (its affinity where the OS has one)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # macOS and Windows have no affinity call
        return os.cpu_count() or 1


def start_child(module: str, function: str, *, pass_fds: tuple[int, ...] = ()) -> subprocess.Popen | None:
    """`module.function()` in a new Python process with this one's sys.path and piped stdin/stdout, or None
    where no second core or no interpreter can be had (embedded Python, a sandbox): the caller then does the
    work itself."""
    if usable_cores() < 2:
        return None
    code = f"import sys; sys.path[:] = {sys.path!r}; from {module} import {function}; {function}()"
    try:
        return subprocess.Popen([sys.executable, "-c", code], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                pass_fds=pass_fds)
    except OSError as exc:
        log.debug("no helper process for %s (%s); the work is done in this process", module, exc)
        return None


def child_pipes() -> tuple[BinaryIO, BinaryIO]:
    """In the child: (requests, replies). Ctrl-C is the parent's to handle (it then closes the child's stdin).
    Replies get their own copy of stdout, and stdout itself then goes to stderr, so that a stray print (from
    Python or a C library) cannot corrupt them."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    replies = os.fdopen(os.dup(sys.stdout.fileno()), "wb")
    os.dup2(sys.stderr.fileno(), sys.stdout.fileno())
    return sys.stdin.buffer, replies


def end_child() -> None:
    """Ends a helper process (never the user's) without the interpreter's teardown: its replies are flushed and
    its outputs are files, so nothing is lost, and the parent need not wait for torch or matplotlib to unload."""
    os._exit(0)
