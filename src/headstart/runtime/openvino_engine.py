"""The OpenVINO engine: a classifier from an OpenVINO IR folder (`headstart export RUN --format openvino` or
`openvino-int8`) on the OpenVINO runtime, numpy and Pillow. No torch.

The folder holds model.xml + model.bin and a model.json beside them with what a client needs (classes,
preprocessing, temperature, threshold, the source weights' sha256); the run directory is optional.
"""

from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from headstart.artifact import MANIFEST_FILE, ArtifactError, read_manifest
from headstart.runtime.classifier import BatchEngine, checked_manifest

__all__ = ["OPENVINO_DIRS", "OPENVINO_FORMAT", "OpenVinoClassifier", "load_openvino", "read_export_manifest"]

log = logging.getLogger(__name__)

OPENVINO_FORMAT = "headstart.openvino/1"
OPENVINO_XML = "model.xml"
# The folder each export format writes inside the run directory.
OPENVINO_DIRS = {"openvino": "openvino", "openvino-int8": "openvino-int8"}


def read_export_manifest(folder: Path, expected_format: str) -> dict[str, Any]:
    """The model.json beside an exported model (not the run's own model.json), decoded and checked."""
    path = folder / MANIFEST_FILE
    try:
        meta = json.loads(path.read_text())
    except FileNotFoundError:
        raise ArtifactError(f"{path}: not found; the export folder is incomplete, export it again") from None
    except (OSError, json.JSONDecodeError) as exc:
        raise ArtifactError(f"{path}: unreadable ({exc})") from exc
    if meta.get("format") != expected_format:
        raise ArtifactError(f"{path}: not a {expected_format} export (format {meta.get('format')!r}); export it "
                            f"with `headstart export RUN --format ...`")
    return checked_manifest(meta, str(path))


@dataclass
class OpenVinoClassifier(BatchEngine):
    """The Classifier on an OpenVINO compiled model (CPU, fp32 inference precision for non-int8 layers)."""

    compiled: Any
    manifest: dict
    path: Path

    def __post_init__(self) -> None:
        self._request = self.compiled.create_infer_request()

    def run(self, batch: np.ndarray) -> np.ndarray:
        """Logits for an already preprocessed float32 NCHW batch."""
        result = self._request.infer({0: np.ascontiguousarray(batch, dtype=np.float32)})
        return np.array(result[self.compiled.output(0)], dtype=np.float32, copy=True)


def _resolve(path: Path, engine: str) -> tuple[Path, Path | None]:
    """(the export folder, the run directory it belongs to, if any) from a run directory, the folder or its xml."""
    if path.is_file() and path.suffix == ".xml":
        path = path.parent
    if not path.is_dir():
        raise ArtifactError(f"{path}: no such run directory or OpenVINO export folder")
    if (path / OPENVINO_XML).is_file():
        return path, path.parent if (path.parent / MANIFEST_FILE).is_file() and \
            (path.parent / "model.safetensors").is_file() else None
    folder = path / OPENVINO_DIRS[engine]
    if not (folder / OPENVINO_XML).is_file():
        raise ArtifactError(f"{folder / OPENVINO_XML}: not found; create it with "
                            f"`headstart export {path} --format {engine}`")
    return folder, path


def load_openvino(run_or_folder: str | os.PathLike, *, engine: str = "openvino",
                  threads: int | None = None) -> OpenVinoClassifier:
    """An OpenVinoClassifier from a run directory (its openvino/ or openvino-int8/ folder, as `engine` says),
    an export folder or its model.xml. threads: inference threads (default: OpenVINO's)."""
    if engine not in OPENVINO_DIRS:
        raise ArtifactError(f"unknown OpenVINO engine {engine!r}; choose one of {', '.join(OPENVINO_DIRS)}")
    folder, run_dir = _resolve(Path(run_or_folder), engine)
    meta = read_export_manifest(folder, OPENVINO_FORMAT)
    if run_dir is not None:
        expected = read_manifest(run_dir).get("weights_sha256")
        if meta.get("weights_sha256") != expected:
            raise ArtifactError(f"{folder}: exported from other weights than {run_dir / MANIFEST_FILE}; re-export "
                                f"with `headstart export {run_dir} --format {engine}`")
    try:
        import openvino as ov
    except ImportError:
        raise ArtifactError("the OpenVINO engine needs the openvino package: pip install 'headstart[openvino]'"
                            ) from None
    # fp32 explicitly: OpenVINO would pick bf16 by itself on CPUs it counts as bf16-capable, and the export was
    # scored in fp32. One request, all threads: the same setting for latency (1 image) and batches.
    config: dict[str, Any] = {"INFERENCE_PRECISION_HINT": "f32", "PERFORMANCE_HINT": "LATENCY"}
    if threads:
        config["INFERENCE_NUM_THREADS"] = int(threads)
    try:
        core = ov.Core()
        compiled = core.compile_model(core.read_model(str(folder / OPENVINO_XML)), "CPU", config)
    except Exception as exc:  # OpenVINO raises RuntimeError subclasses of its own for unreadable models
        raise ArtifactError(f"{folder / OPENVINO_XML}: OpenVINO cannot load it ({str(exc).splitlines()[0]})"
                            ) from exc
    crop = meta["preprocessing"]["crop_size"]
    shape = compiled.input(0).get_partial_shape()
    if [str(d) for d in list(shape)[1:]] != ["3", str(crop), str(crop)]:
        raise ArtifactError(f"{folder}: input shape {shape} does not match preprocessing crop {crop}")
    log.info("loaded %s (%s, %d classes)", folder, meta.get("backbone"), len(meta["classes"]))
    return OpenVinoClassifier(compiled=compiled, manifest=meta, path=folder)
