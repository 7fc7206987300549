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
    from headstart.predict import Classifier, load
    from headstart.training import RunResult, train

__all__ = ["Classifier", "RunResult", "__version__", "load", "train"]

_LAZY = {
    "train": "headstart.training",
    "RunResult": "headstart.training",
    "load": "headstart.predict",
    "Classifier": "headstart.predict",
}


def __getattr__(name: str):
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'headstart' has no attribute {name!r}")
