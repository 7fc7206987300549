"""Start-up speed: what makes importing the heavy libraries faster, shared by training, loading and the report.

Importing torch, Lightning and timm allocates ~700k objects, and every 700 allocations Python's cyclic
garbage collector runs, traversing more of them as they pile up: ~0.5 s of a ~3.4 s import (measured on a
2-core CPU: 2.9 vs 3.4 s; the grad-cam package 1.1 vs 1.4 s). Module objects are not garbage, so pausing the
collector while importing frees nothing later.

After the pause, the collector still meets those objects: they sit in its youngest generation, and the
collections that promote them to the oldest traverse them all, in whatever thread allocates next (an ONNX
export, the decoding threads). A command that ends with its process (the `headstart` command) can call
`freeze_imports()` so that each paused block ends with gc.freeze(): the imported objects are left out of every
later collection. A library call does not freeze by default: in a notebook, gc.freeze() would also keep the
user's own objects out of reach, and any cyclic garbage among them would never be freed.

Some packages import, at their top, heavy libraries for features we never call: `deferred_imports` lets
their import finish without paying for those.
"""

from __future__ import annotations

import gc
import importlib
import logging
import sys
import threading
import types
from collections.abc import Callable, Iterator
from contextlib import contextmanager

__all__ = ["deferred_imports", "freeze_imports", "import_deferring", "paused_gc"]

log = logging.getLogger(__name__)

_lock = threading.Lock()
_depth = 0  # blocks open now, in any thread
_was_enabled = True  # the collector's state when the outermost block opened
_freeze = False  # freeze_imports() was called


def freeze_imports() -> None:
    """From now on, the outermost paused_gc block ends with gc.freeze(). For a process that ends when its
    command does; measured on pizza_steak_sushi (`headstart train --mode features`, 2 cores), 9.0-9.3 s
    instead of 10.2 s."""
    global _freeze
    _freeze = True


@contextmanager
def paused_gc() -> Iterator[None]:
    """The cyclic garbage collector paused inside the block (reference counting still frees memory), and
    restored as it was when the last open block closes: a caller that had disabled it keeps it disabled, and
    blocks that overlap in several threads (a server loading models) cannot leave it off."""
    global _depth, _was_enabled
    with _lock:
        if _depth == 0:
            _was_enabled = gc.isenabled()
            gc.disable()
        _depth += 1
    try:
        yield
    finally:
        with _lock:
            _depth -= 1
            if _depth == 0 and _freeze:
                gc.freeze()
            if _depth == 0 and _was_enabled:
                gc.enable()


class _DeferredCallable:
    """`from module import name` as seen during a deferred import: the real object is imported when called."""

    def __init__(self, module: str, name: str):
        self._module, self._name = module, name

    def __call__(self, *args, **kwargs):
        return getattr(importlib.import_module(self._module), self._name)(*args, **kwargs)

    def __repr__(self) -> str:
        return f"<deferred {self._module}.{self._name}>"


class _DeferredModule(types.ModuleType):
    """Stands in for a module while a package imports it. While `importing`, every name taken from it is a
    _DeferredCallable (or a submodule's stand-in); afterwards, any name looked up imports the real module."""

    def __init__(self, name: str, standins: dict[str, _DeferredModule]):
        super().__init__(name)
        self._standins = standins
        self._importing = True

    def __getattr__(self, name: str):
        if name.startswith("__"):  # the import system's probes (__path__, __spec__...): plain module answers
            raise AttributeError(name)
        if not self._importing:
            return getattr(importlib.import_module(self.__name__), name)
        return self._standins.get(f"{self.__name__}.{name}") or _DeferredCallable(self.__name__, name)


@contextmanager
def deferred_imports(*modules: str) -> Iterator[None]:
    """Inside the block, `modules` are stand-ins whose names resolve on first call: for a package whose import
    pulls in libraries that only features we never call use (grad-cam imports scikit-learn, SciPy and
    matplotlib for CAM methods and plots headstart does not use: 1.2 s of its 1.3 s import).

    Only modules whose top-level package is not imported yet are deferred, and only for imports that take
    callables (`from scipy.ndimage import zoom`). The stand-ins leave sys.modules when the block ends, so a later
    import gets the real modules. Use it around one import, with a plain import as the fallback
    (`import_deferring`): an import that uses a stand-in in any other way fails inside the block.
    """
    standins: dict[str, _DeferredModule] = {}
    for name in modules:
        if name.partition(".")[0] not in sys.modules:
            standins[name] = _DeferredModule(name, standins)
    for name in standins:
        if name.rpartition(".")[0] in standins:  # `from package import submodule` finds the submodule
            standins[name.rpartition(".")[0]].__path__ = []
    sys.modules.update(standins)
    try:
        yield
    finally:
        for name, standin in standins.items():
            standin._importing = False
            if sys.modules.get(name) is standin:
                del sys.modules[name]


def import_deferring(load: Callable[[], object], deferred: tuple[str, ...], package: str) -> object:
    """`load()` (which imports `package`) with `deferred` modules deferred; if that fails, every module of
    `package` it left behind is dropped and `load()` runs again as a plain import."""
    try:
        with paused_gc(), deferred_imports(*deferred):
            return load()
    except Exception as exc:  # a new version of the package uses a deferred name at import: pay for it
        log.debug("importing %s with %s deferred failed (%s: %s); importing it whole", package,
                  ", ".join(deferred), type(exc).__name__, exc)
        for name in [n for n in sys.modules if n == package or n.startswith(package + ".")]:
            del sys.modules[name]
    with paused_gc():
        return load()
