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
their import finish without paying for those, and `import_without_dynamo` imports torchvision, timm and
Lightning Fabric without torch._dynamo (for good, in a `compile_free_process`).
"""

from __future__ import annotations

import gc
import importlib
import importlib.abc
import importlib.machinery
import logging
import sys
import threading
import types
from collections.abc import Callable, Iterator
from contextlib import contextmanager

__all__ = ["compile_free_process", "deferred_imports", "freeze_imports", "import_deferring", "import_without_dynamo",
           "paused_gc"]

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
        if isinstance(sys.modules.get(self._module), _LazyDynamo):  # called during the import it was taken in
            _drop_lazy_dynamo()
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


# torch._dynamo (torch.compile's tracer: ~1.2 s to import, with SymPy and torch.distributed's FSDP and DTensor)
# comes in through code that needs it only once something is compiled:
# - torchvision's ops/roi_align.py takes `is_compile_supported` from its utils at import (called in roi_align);
# - timm decorates methods with torch.compiler.disable at import, which calls torch._dynamo.disable;
# - Lightning Fabric's wrappers.py takes `OptimizedModule` at import, for isinstance checks;
# - torch.optim imports it on the first call of an optimizer's method: `disable` (torch._disable_dynamo wraps
#   add_param_group, zero_grad...) and `graph_break` (around every step()), both for the tracer's sake.
# Those names are all they use of it (torch 2.14, torchvision 0.29, timm 1.0, lightning-fabric 2.6).
_DYNAMO = "torch._dynamo"
_DYNAMO_UTILS = "torch._dynamo.utils"
_compile_free = False  # compile_free_process() was called


def _lazy_disable(fn=None, recursive=True, **_options):
    """torch._dynamo.disable as torch defers it inside itself (torch._disable_dynamo): the real disable() wraps
    `fn` on its first call. Only `reason` (for error messages) is dropped."""
    import torch

    return torch._disable_dynamo(fn, recursive)


def _eager_disable(fn=None, recursive=True, **_options):
    """torch._dynamo.disable in a process that never compiles: nothing is ever traced, so `fn` runs as it is."""
    return fn if fn is not None else _eager_disable


def _graph_break(msg: str = "") -> None:
    """torch._dynamo.graph_break outside a trace, where the real one does nothing either."""


def _standin_in_place() -> bool:
    return isinstance(sys.modules.get(_DYNAMO), _LazyDynamo)


class _OptimizedModuleType(type):
    """No object is a torch._dynamo.OptimizedModule before torch._dynamo is imported (torch.compile imports it);
    from then on, the real class answers."""

    def __instancecheck__(cls, obj) -> bool:
        imported = _DYNAMO in sys.modules and not _standin_in_place()
        return imported and isinstance(obj, sys.modules[_DYNAMO].OptimizedModule)

    def __subclasscheck__(cls, other) -> bool:
        imported = _DYNAMO in sys.modules and not _standin_in_place()
        return imported and issubclass(other, sys.modules[_DYNAMO].OptimizedModule)


class _OptimizedModule(metaclass=_OptimizedModuleType):
    """torch._dynamo.OptimizedModule (what torch.compile returns) for isinstance checks, without the import."""


class _LazyDynamo(types.ModuleType):
    """torch._dynamo or its utils while it stands in: the names listed above are answered without importing it,
    and any other name, like any import of one of its modules (_RealSubmodules), imports the real module then
    and there (a newer version that uses more of it costs the time, never an error). Once it steps aside, every
    name is the real module's."""

    _lazy = {_DYNAMO: {"disable": lambda: _eager_disable if _compile_free else _lazy_disable,
                       "graph_break": lambda: _graph_break, "OptimizedModule": lambda: _OptimizedModule},
             _DYNAMO_UTILS: {"is_compile_supported": lambda: _DeferredCallable(_DYNAMO_UTILS, "is_compile_supported")}}

    def __init__(self, name: str):
        super().__init__(name)
        self._standing_in = True

    def __getattr__(self, name: str):
        if name.startswith("__"):  # the import system's probes (__path__, __spec__...): plain module answers
            raise AttributeError(name)
        if self._standing_in and self.__name__ == _DYNAMO and name == "utils":
            return sys.modules[_DYNAMO_UTILS]
        lazy = self._lazy[self.__name__].get(name) if self._standing_in else None
        if lazy is not None:
            return lazy()
        if self._standing_in:
            log.debug("importing %s for %s.%s", _DYNAMO, self.__name__, name)
        _drop_lazy_dynamo()  # from here on, the real modules
        return getattr(importlib.import_module(self.__name__), name)


class _RealSubmodules(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    """While the stand-in is in sys.modules, `import torch._dynamo.X` (torch.compile's first step is one) would
    search the stand-in's empty __path__ and fail. This finder, first on sys.meta_path, answers such imports with
    the real module: its loader drops the stand-in, imports the real torch._dynamo and then X, and hands X over
    unchanged. Hand-written because no library defers a package whose own modules are imported by name."""

    def find_spec(self, name, path=None, target=None):
        if not name.startswith(_DYNAMO + ".") or not _standin_in_place():
            return None
        return importlib.machinery.ModuleSpec(name, self)

    def create_module(self, spec):
        log.debug("importing %s for %s", _DYNAMO, spec.name)
        _drop_lazy_dynamo()
        importlib.import_module(_DYNAMO)
        module = importlib.import_module(spec.name)
        spec.loader_state = module.__spec__  # the import system sets __spec__ to `spec` next
        return module

    def exec_module(self, module) -> None:
        module.__spec__ = module.__spec__.loader_state  # executed by its own import: only its spec to put back


_real_submodules = _RealSubmodules()
_standins_lock = threading.Lock()  # several threads may load models, and each may drop the stand-ins


def _install_lazy_dynamo() -> None:
    standin = _LazyDynamo(_DYNAMO)
    standin.__path__ = []  # a package: `import torch._dynamo.utils` finds its stand-in below
    with _standins_lock:
        sys.modules[_DYNAMO], sys.modules[_DYNAMO_UTILS] = standin, _LazyDynamo(_DYNAMO_UTILS)
        sys.meta_path.insert(0, _real_submodules)


def _drop_lazy_dynamo() -> None:
    with _standins_lock:
        for name in (_DYNAMO_UTILS, _DYNAMO):
            module = sys.modules.get(name)
            if isinstance(module, _LazyDynamo):
                module._standing_in = False
                del sys.modules[name]
        if _real_submodules in sys.meta_path:
            sys.meta_path.remove(_real_submodules)


def compile_free_process() -> None:
    """From now on, torch._dynamo's stand-in stays in place after import_without_dynamo: torch.optim's first
    call, 1.2 s into a training run of a few seconds, no longer imports torch._dynamo. For a process that never
    compiles (the `headstart` command): functions that torch, timm and the optimizers mark "not to be traced"
    stay plain functions, which only matters to torch.compile, and any other use of torch._dynamo imports it
    as usual."""
    global _compile_free
    _compile_free = True


def import_without_dynamo(*packages: str) -> None:
    """Import torch, then `packages` (timm, torchvision, lightning_fabric), with torch._dynamo left for later
    (see _LazyDynamo): ~1.2 s less where it is never needed (loading a model to predict; any run in a
    compile-free process). Nothing changes where torch._dynamo is imported already, or where torch does not
    defer it itself (torch._disable_dynamo)."""
    with paused_gc():
        import torch

        deferring = _DYNAMO not in sys.modules and callable(getattr(torch, "_disable_dynamo", None))
        if deferring:
            _install_lazy_dynamo()
        try:
            for package in packages:
                importlib.import_module(package)
        finally:
            if deferring and not _compile_free:
                _drop_lazy_dynamo()
