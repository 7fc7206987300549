"""The LiteRT (TensorFlow Lite) engine: a classifier from a `headstart export RUN --format tflite` folder on the
LiteRT interpreter (`ai-edge-litert`), numpy and Pillow. No torch.

The folder holds model.tflite (fp32, a batch of one image, NCHW as the ONNX export) and a model.json beside it
with what a client needs (classes, preprocessing, temperature, threshold, the source weights' sha256).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from headstart.artifact import ArtifactError
from headstart.runtime.classifier import BatchEngine
from headstart.runtime.openvino_engine import read_export_manifest

__all__ = ["TFLITE_FILE", "TFLITE_FORMAT", "LiteRTClassifier", "load_tflite"]

TFLITE_FORMAT = "headstart.tflite/1"
TFLITE_FILE = "model.tflite"


@dataclass
class LiteRTClassifier(BatchEngine):
    """The Classifier on a LiteRT interpreter (XNNPACK on the CPU). The model takes one image per call, as
    phones run it; a batch is run image by image."""

    interpreter: Any
    manifest: dict
    path: Path

    def __post_init__(self) -> None:
        self.interpreter.allocate_tensors()
        self._input = self.interpreter.get_input_details()[0]["index"]
        self._output = self.interpreter.get_output_details()[0]["index"]

    def run(self, batch: np.ndarray) -> np.ndarray:
        """Logits for an already preprocessed float32 NCHW batch."""
        rows = []
        for image in np.ascontiguousarray(batch, dtype=np.float32):
            self.interpreter.set_tensor(self._input, image[None])
            self.interpreter.invoke()
            rows.append(np.array(self.interpreter.get_tensor(self._output)[0], dtype=np.float32, copy=True))
        return np.stack(rows) if rows else np.zeros((0, len(self.classes)), dtype=np.float32)


def load_tflite(folder: str | os.PathLike, *, threads: int | None = None) -> LiteRTClassifier:
    """A LiteRTClassifier from a tflite export folder (or its model.tflite)."""
    folder = Path(folder)
    if folder.is_file():
        folder = folder.parent
    if not (folder / TFLITE_FILE).is_file():
        raise ArtifactError(f"{folder / TFLITE_FILE}: not found; create it with `headstart export RUN --format "
                            f"tflite`")
    meta = read_export_manifest(folder, TFLITE_FORMAT)
    try:
        from ai_edge_litert.interpreter import Interpreter
    except ImportError:
        raise ArtifactError("the tflite engine needs the LiteRT interpreter: pip install ai-edge-litert") from None
    interpreter = Interpreter(model_path=str(folder / TFLITE_FILE), num_threads=threads)
    return LiteRTClassifier(interpreter=interpreter, manifest=meta, path=folder / TFLITE_FILE)
