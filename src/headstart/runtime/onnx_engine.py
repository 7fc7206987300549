"""The ONNX engine: a classifier from `model.onnx` alone, on ONNX Runtime, numpy and Pillow. No torch.

Everything it needs (classes, preprocessing, temperature, threshold) is read from the ONNX file's own
metadata, written by `headstart export`; the run directory is optional.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from headstart.artifact import MANIFEST_FILE, ArtifactError
from headstart.runtime.classifier import BatchEngine, checked_manifest

__all__ = ["ONNX_FILE", "ONNX_FORMAT", "OnnxClassifier", "load_onnx", "read_onnx_metadata"]

log = logging.getLogger(__name__)

ONNX_FORMAT = "headstart.onnx/1"
ONNX_FILE = "model.onnx"
# Metadata values that are JSON documents rather than plain strings.
_JSON_KEYS = ("classes", "preprocessing", "parity")


def read_onnx_metadata(props: dict[str, str], source: str) -> dict[str, Any]:
    """The headstart metadata of an ONNX file (its metadata_props as a dict), decoded and checked."""
    if props.get("format") != ONNX_FORMAT:
        raise ArtifactError(f"{source}: not a headstart ONNX export (metadata format {props.get('format')!r}, "
                            f"expected {ONNX_FORMAT}); export it with `headstart export RUN`")
    meta: dict[str, Any] = dict(props)
    try:
        for key in _JSON_KEYS:
            if key in meta:
                meta[key] = json.loads(meta[key])
    except ValueError as exc:
        raise ArtifactError(f"{source}: damaged headstart metadata ({type(exc).__name__}: {exc})") from exc
    return checked_manifest(meta, source)


@dataclass
class OnnxClassifier(BatchEngine):
    """The Classifier on an onnxruntime.InferenceSession."""

    session: Any
    manifest: dict
    path: Path

    def __post_init__(self) -> None:
        self._input = self.session.get_inputs()[0].name

    def run(self, batch: np.ndarray) -> np.ndarray:
        """Logits for an already preprocessed float32 NCHW batch."""
        return self.session.run(None, {self._input: np.ascontiguousarray(batch, dtype=np.float32)})[0]


def _resolve(run_or_onnx: str | os.PathLike) -> tuple[Path, Path | None]:
    """(the .onnx file, the run directory it belongs to, if any)."""
    path = Path(run_or_onnx)
    if path.is_dir():
        onnx_path = path / ONNX_FILE
        if not onnx_path.is_file():
            raise ArtifactError(f"{onnx_path}: not found; create it with `headstart export {path}`")
        return onnx_path, path
    if not path.is_file():
        raise ArtifactError(f"{path}: no such run directory or .onnx file")
    return path, path.parent if (path.parent / MANIFEST_FILE).is_file() else None


def _check_not_stale(meta: dict, onnx_path: Path, run_dir: Path | None) -> None:
    """An export of older weights next to a retrained model.json would silently serve the old model."""
    if run_dir is None:
        return
    from headstart.artifact import read_manifest

    expected = read_manifest(run_dir).get("weights_sha256")
    if meta.get("weights_sha256") != expected:
        raise ArtifactError(
            f"{onnx_path}: exported from other weights than {run_dir / MANIFEST_FILE} "
            f"({str(meta.get('weights_sha256'))[:12]}... vs {str(expected)[:12]}...); "
            f"re-export with `headstart export {run_dir}`"
        )


def load_onnx(run_or_onnx: str | os.PathLike, *, providers: Sequence[str] | None = None,
              threads: int | None = None) -> OnnxClassifier:
    """An OnnxClassifier from a run directory (its model.onnx) or from a .onnx file exported by headstart.

    providers: ONNX Runtime execution providers, CPU by default; threads: intra-op threads (default: ORT's).
    """
    import onnxruntime as ort

    onnx_path, run_dir = _resolve(run_or_onnx)
    options = ort.SessionOptions()
    if threads:
        options.intra_op_num_threads = threads
    try:
        session = ort.InferenceSession(str(onnx_path), sess_options=options,
                                       providers=list(providers or ["CPUExecutionProvider"]))
    except Exception as exc:  # onnxruntime raises its own exception types for unreadable models
        raise ArtifactError(f"{onnx_path}: ONNX Runtime cannot load it ({exc})") from exc
    meta = read_onnx_metadata(session.get_modelmeta().custom_metadata_map, str(onnx_path))
    _check_not_stale(meta, onnx_path, run_dir)
    crop = meta["preprocessing"]["crop_size"]
    shape = session.get_inputs()[0].shape
    if list(shape[1:]) != [3, crop, crop]:
        raise ArtifactError(f"{onnx_path}: input shape {shape} does not match preprocessing crop {crop}")
    log.info("loaded %s (%s, %d classes)", onnx_path, meta.get("backbone"), len(meta["classes"]))
    return OnnxClassifier(session=session, manifest=meta, path=onnx_path)
