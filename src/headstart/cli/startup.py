"""The `headstart` command's start-up tricks. They run in the command's own process only (`install()`, called
by `headstart.cli.command`), never in a library call: a user's `import headstart` meets plain torch.

The command is a process that imports torch, timm and Lightning, trains for seconds and ends. Three things
cost it time that it never uses (measured seconds: docs/benchmarks.md, "Start-up"):
- torch._dynamo, torch.compile's tracer, comes in through names that only matter once something compiles
  (see _LazyDynamo): a stand-in answers them, and any other use imports the real package on the spot;
- grad-cam imports scikit-learn, SciPy and matplotlib at its top for CAM methods the report never calls:
  they are deferred (_DeferredModule) until something calls them;
- the cyclic garbage collector traverses the heavy imports' ~700k objects again and again: it is paused
  while a watched package imports, and what the import created is then frozen out of its reach.

All three hang on one import hook (_ImportHooks, first on sys.meta_path): the library's own plain imports
trigger them, wherever they happen, so decoding can still overlap torch's import. Hand-written because no
library offers post-import hooks for a process that owns its whole lifetime.
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

__all__ = ["install", "installed"]

log = logging.getLogger(__name__)

_DYNAMO = "torch._dynamo"
_DYNAMO_UTILS = "torch._dynamo.utils"
# package -> what it imports at its top and headstart never calls (grad-cam: CAM methods and plots).
DEFERRED = {"pytorch_grad_cam": ("matplotlib", "matplotlib.pyplot", "matplotlib.lines", "scipy.ndimage",
                                 "scipy.sparse", "scipy.sparse.linalg", "sklearn.decomposition")}
HOOKS = frozenset({"dynamo", "defer", "gc"})  # the three tricks above, each on its own
# Top-level packages whose import runs with the collector paused, then frozen.
HEAVY = {"torch", "torchvision", "timm", "lightning_fabric", "matplotlib", "pytorch_grad_cam", "onnx", "onnxscript",
         "openvino", "onnxruntime", "safetensors"}


class _DeferredCallable:
    """`from module import name` as seen during a deferred import: the real object is imported when called."""

    def __init__(self, module: str, name: str):
        self._module, self._name = module, name

    def __call__(self, *args, **kwargs):
        return getattr(importlib.import_module(self._module), self._name)(*args, **kwargs)

    def __repr__(self) -> str:
        return f"<deferred {self._module}.{self._name}>"


class _DeferredModule(types.ModuleType):
    """Stands in for a module while a package imports it: every name taken from it then is a _DeferredCallable
    (or a submodule's stand-in); afterwards, any name looked up imports the real module."""

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


def _eager_disable(fn=None, recursive=True, **_options):
    """torch._dynamo.disable in a process that never compiles: nothing is traced, so `fn` runs as it is."""
    return fn if fn is not None else _eager_disable


def _graph_break(msg: str = "") -> None:
    """torch._dynamo.graph_break outside a trace, where the real one does nothing either."""


def _standin_in_place() -> bool:
    return isinstance(sys.modules.get(_DYNAMO), _LazyDynamo)


class _OptimizedModuleType(type):
    """No object is an OptimizedModule before torch._dynamo is imported (torch.compile imports it)."""

    def __instancecheck__(cls, obj) -> bool:
        return _DYNAMO in sys.modules and not _standin_in_place() and isinstance(
            obj, sys.modules[_DYNAMO].OptimizedModule)

    def __subclasscheck__(cls, other) -> bool:
        return _DYNAMO in sys.modules and not _standin_in_place() and issubclass(
            other, sys.modules[_DYNAMO].OptimizedModule)


class _OptimizedModule(metaclass=_OptimizedModuleType):
    """torch._dynamo.OptimizedModule (what torch.compile returns) for isinstance checks, without the import."""


class _LazyDynamo(types.ModuleType):
    """torch._dynamo (or its utils) while it stands in. What the vision libraries and torch.optim take from it
    without compiling anything is answered here:
    - torchvision's roi_align takes `is_compile_supported` at import (called only in roi_align);
    - timm and torch.optim wrap functions with `disable` (nothing is traced here: the function itself);
    - torch.optim's step() calls `graph_break` (a no-op outside a trace);
    - Lightning Fabric takes `OptimizedModule` for isinstance checks.
    Any other name, like any import of one of its modules (_ImportHooks), imports the real package then and
    there: a newer version that uses more of it costs the time, never an error."""

    _lazy = {_DYNAMO: {"disable": lambda: _eager_disable, "graph_break": lambda: _graph_break,
                       "OptimizedModule": lambda: _OptimizedModule},
             _DYNAMO_UTILS: {"is_compile_supported": lambda: _DeferredCallable(_DYNAMO_UTILS,
                                                                               "is_compile_supported")}}

    def __getattr__(self, name: str):
        if name.startswith("__"):
            raise AttributeError(name)
        if _standin_in_place() and self.__name__ == _DYNAMO and name == "utils":
            return sys.modules[_DYNAMO_UTILS]
        lazy = self._lazy[self.__name__].get(name) if _standin_in_place() else None
        if lazy is not None:
            return lazy()
        log.debug("importing %s for %s.%s", _DYNAMO, self.__name__, name)
        _drop_dynamo_standin()
        return getattr(importlib.import_module(self.__name__), name)


def _install_dynamo_standin() -> None:
    standin = _LazyDynamo(_DYNAMO)
    standin.__path__ = []  # a package: `import torch._dynamo.utils` finds its stand-in below
    sys.modules[_DYNAMO], sys.modules[_DYNAMO_UTILS] = standin, _LazyDynamo(_DYNAMO_UTILS)


def _drop_dynamo_standin() -> None:
    for name in (_DYNAMO_UTILS, _DYNAMO):
        if isinstance(sys.modules.get(name), _LazyDynamo):
            del sys.modules[name]


class _RealDynamo(importlib.abc.Loader):
    """`import torch._dynamo.X` while the stand-in is in place would search its empty __path__ and fail: this
    loader drops the stand-in, imports the real torch._dynamo and then X, and hands X over unchanged."""

    def create_module(self, spec):
        log.debug("importing %s for %s", _DYNAMO, spec.name)
        _drop_dynamo_standin()
        importlib.import_module(_DYNAMO)
        module = importlib.import_module(spec.name)
        spec.loader_state = module.__spec__  # the import system sets __spec__ to `spec` next
        return module

    def exec_module(self, module) -> None:
        module.__spec__ = module.__spec__.loader_state  # executed by its own import: only its spec to put back


class _HookedLoader(importlib.abc.Loader):
    """A watched package's own loader, with the hooks before and after its module runs. The module keeps its
    own loader: this one is only in the spec while the import runs."""

    def __init__(self, loader, hooks: _ImportHooks):
        self.loader, self.hooks = loader, hooks

    def create_module(self, spec):
        return self.loader.create_module(spec)

    def exec_module(self, module) -> None:
        name = module.__name__
        self.hooks.before(name)
        try:
            module.__spec__.loader = self.loader
            module.__loader__ = self.loader
            try:
                self.loader.exec_module(module)
            except Exception as exc:
                if not self.hooks.deferred:
                    raise
                # a new version uses a deferred name at import: pay for the real modules and import it again
                log.debug("importing %s with deferred modules failed (%s); importing it whole", name, exc)
                self.hooks.undefer()
                for stale in [n for n in sys.modules if n.startswith(name + ".")]:
                    del sys.modules[stale]
                self.loader.exec_module(module)
        finally:
            self.hooks.after(name)


class _ImportHooks(importlib.abc.MetaPathFinder):
    """First on sys.meta_path in the command's process: wraps the loaders of the watched top-level packages,
    and answers `import torch._dynamo.X` (torch.compile's first step) with the real package."""

    def __init__(self, hooks: frozenset[str] = HOOKS):
        self.hooks = hooks
        self.depth = 0
        self.lock = threading.Lock()
        self.deferred: dict[str, _DeferredModule] = {}

    def find_spec(self, name, path=None, target=None):
        if name.startswith(_DYNAMO + ".") and _standin_in_place():
            return importlib.machinery.ModuleSpec(name, _RealDynamo())
        if name not in HEAVY and name not in DEFERRED:
            return None
        for finder in sys.meta_path:
            if finder is self or not hasattr(finder, "find_spec"):
                continue
            spec = finder.find_spec(name, path, target)
            if spec is not None:
                if spec.loader is not None and hasattr(spec.loader, "exec_module"):
                    spec.loader = _HookedLoader(spec.loader, self)
                return spec
        return None

    def before(self, name: str) -> None:
        with self.lock:  # two threads may import two watched packages at once
            if self.depth == 0 and "gc" in self.hooks:
                gc.disable()
            self.depth += 1
        if name in DEFERRED and "defer" in self.hooks:
            self._defer(DEFERRED[name])

    def after(self, name: str) -> None:
        if name == "torch" and _DYNAMO not in sys.modules and "dynamo" in self.hooks:
            _install_dynamo_standin()
        if name in DEFERRED:
            self.undefer()
        with self.lock:
            self.depth -= 1
            if self.depth == 0 and "gc" in self.hooks:
                gc.freeze()  # what the import created stays out of every later collection
                gc.enable()

    def undefer(self) -> None:
        for module, standin in self.deferred.items():
            standin._importing = False
            if sys.modules.get(module) is standin:
                del sys.modules[module]
        self.deferred = {}

    def _defer(self, modules: tuple[str, ...]) -> None:
        standins = {name: _DeferredModule(name, {}) for name in modules
                    if name.partition(".")[0] not in sys.modules}
        for name, standin in standins.items():
            standin._standins = standins
            if name.rpartition(".")[0] in standins:  # `from package import submodule` finds the submodule
                standins[name.rpartition(".")[0]].__path__ = []
        sys.modules.update(standins)
        self.deferred = standins


_hooks: _ImportHooks | None = None


def install() -> None:
    """Put the hooks in place for the rest of this process: for the `headstart` command alone, which compiles
    nothing and ends with its command. HEADSTART_STARTUP_HOOKS names the hooks to use, to measure each one:
    "0" none, "dynamo,defer,gc" (the default) all of them."""
    import os

    global _hooks
    wanted = os.environ.get("HEADSTART_STARTUP_HOOKS")
    hooks = HOOKS if wanted is None else frozenset(wanted.split(",")) & HOOKS
    if _hooks is not None or not hooks:
        return
    _hooks = _ImportHooks(hooks)
    sys.meta_path.insert(0, _hooks)
    if "torch" in sys.modules and _DYNAMO not in sys.modules and "dynamo" in hooks:
        _install_dynamo_standin()


def installed() -> bool:
    return _hooks is not None
