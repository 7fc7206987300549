"""The TFLite / LiteRT export (`--format tflite`): the run's network converted by `litert-torch` (PyPI, the
PyTorch converter of Google's AI Edge stack) to model.tflite, fp32, one image per call in NCHW like the ONNX
export, with a model.json beside it carrying what a client needs (runtime.litert_engine reads it)."""

from __future__ import annotations

import contextlib
import io
from pathlib import Path

from headstart.artifact import atomic_write_json
from headstart.inference.export import ExportError
from headstart.runtime.litert_engine import TFLITE_FILE, TFLITE_FORMAT

__all__ = ["write_tflite"]


def write_tflite(net, crop: int, folder: Path, meta: dict) -> dict:
    """model.tflite + model.json in `folder` (which exists and is empty). Returns the metadata written."""
    import torch

    try:
        import litert_torch
    except ImportError:
        raise ExportError("the tflite format needs litert-torch: pip install 'headstart[tflite]'; nothing "
                          "written") from None
    # The converter prints its progress to stdout; the export's own log and table say what happened.
    with contextlib.redirect_stdout(io.StringIO()):
        converted = litert_torch.convert(net, (torch.zeros(1, 3, crop, crop),))
        converted.export(str(folder / TFLITE_FILE))
    from importlib.metadata import version

    meta = dict(meta, format=TFLITE_FORMAT, input="float32 [1, 3, crop, crop] (NCHW), one image per call",
                converter=f"litert-torch {version('litert-torch')}")
    atomic_write_json(folder / "model.json", meta)
    return meta
