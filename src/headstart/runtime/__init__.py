"""Torch-free inference: ONNX Runtime + numpy + Pillow. Nothing under headstart.runtime imports torch.

    from headstart.runtime import load_onnx
    clf = load_onnx("runs/my-run")          # RUN/model.onnx, written by `headstart export RUN`
    clf.predict(["photo.jpg"])
"""

from headstart.runtime.onnx_engine import (
    ONNX_FILE,
    ONNX_FORMAT,
    OnnxClassifier,
    load_onnx,
    read_onnx_metadata,
)
from headstart.runtime.preprocess import preprocess, preprocess_batch
from headstart.runtime.results import UNSURE, build_predictions, predict_images

__all__ = [
    "ONNX_FILE",
    "ONNX_FORMAT",
    "UNSURE",
    "OnnxClassifier",
    "build_predictions",
    "load_onnx",
    "predict_images",
    "preprocess",
    "preprocess_batch",
    "read_onnx_metadata",
]
