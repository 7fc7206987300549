"""headstart: transfer learning on images, from a folder of labelled photos to a calibrated classifier.

    import headstart
    run = headstart.train("photos/", backbone="efficientnet_lite0", mode="features")
    clf = headstart.load(run.run_dir)
    clf.predict(["new.jpg"])

Imports are lazy: `import headstart` does not import torch, so the CLI starts fast.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from headstart._version import __version__

if TYPE_CHECKING:
    from headstart.compare import compare
    from headstart.data.check import check_dataset as check
    from headstart.evaluate import evaluate_run as evaluate
    from headstart.inference.classifier import load
    from headstart.inference.deploy import export
    from headstart.runtime.classifier import Classifier
    from headstart.training import RunResult, train

__all__ = ["Classifier", "RunResult", "__version__", "check", "compare", "evaluate", "export", "load", "train"]

# name -> (module, attribute): imported on first use
_LAZY = {
    "train": ("headstart.training", "train"),
    "RunResult": ("headstart.training", "RunResult"),
    "load": ("headstart.inference.classifier", "load"),
    "Classifier": ("headstart.runtime.classifier", "Classifier"),
    "check": ("headstart.data.check", "check_dataset"),
    "evaluate": ("headstart.evaluate", "evaluate_run"),
    "export": ("headstart.inference.deploy", "export"),
    "compare": ("headstart.compare", "compare"),
}


def __getattr__(name: str):
    if name in _LAZY:
        import importlib

        module, attribute = _LAZY[name]
        return getattr(importlib.import_module(module), attribute)
    raise AttributeError(f"module 'headstart' has no attribute {name!r}")
