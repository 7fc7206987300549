"""`headstart export RUN --format F` / `headstart.export(run, format=F)`: one entry point for every format.

Each format is built into a hidden staging folder inside the output folder, loaded back with its own runtime
and scored on the run's test split (val when there is none) against the PyTorch model: top-1 agreement, the
change in accuracy and ECE, the max logit difference, latency p50 and throughput at batch 32
(inference/scoring.py). Only an export that reaches its floor (100% top-1 agreement for fp32 formats, with
logits within 1e-3 of PyTorch's; 99% for int8) replaces the previous one, by rename; its scores go into
export.json beside it. Anything that fails (bad input, a refused export, an exception) leaves the output folder
as it was.

    format         written (in RUN, or --out)     runtime that scores it and runs it (predict/serve --engine)
    onnx           model.onnx                     ONNX Runtime
    onnx-int8      model.int8.onnx                ONNX Runtime (static QDQ int8, calibrated on train images)
    openvino       openvino/{model.xml,bin,json}  OpenVINO (fp32 weights)
    openvino-int8  openvino-int8/...              OpenVINO (NNCF post-training int8, calibrated likewise)
    web            web/ (index.html, ...)         onnxruntime-web in a browser; scored here with ONNX Runtime on
                                                  the same model bytes (the browser's agreement is tested)
    tflite         tflite/{model.tflite,json}     the LiteRT interpreter (litert-torch converts; the tflite extra)
"""

from __future__ import annotations

import datetime
import json
import logging
import os
import shutil
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

from headstart.artifact import ArtifactError, atomic_write_json, current_umask, read_manifest
from headstart.device import cpu_has_int8_dot
from headstart.inference.export import (
    CALIBRATION_IMAGES,
    DEFAULT_OPSET,
    EXPORTERS,
    TOLERANCE,
    ExportError,
    _decode,
    _synthetic_images,
    calibration_images,
    export_metadata,
    finish_onnx,
    fp32_onnx,
    run_images,
    torch_network,
)
from headstart.inference.scoring import agreement, timing
from headstart.runtime.onnx_engine import ONNX_FILE
from headstart.runtime.preprocess import Preprocessing, preprocess_batch

__all__ = ["EXPORT_RECORD", "FLOORS", "FORMATS", "ExportRefused", "ExportReport", "export", "read_export_record"]

log = logging.getLogger(__name__)

EXPORT_RECORD = "export.json"
RECORD_FORMAT = "headstart.export/1"
# format -> (what it writes in the output folder, is it int8)
FORMATS: dict[str, tuple[str, bool]] = {
    "onnx": (ONNX_FILE, False),
    "onnx-int8": ("model.int8.onnx", True),
    "openvino": ("openvino", False),
    "openvino-int8": ("openvino-int8", True),
    "web": ("web", False),
    "tflite": ("tflite", False),
}
# Minimum top-1 agreement with PyTorch on the scored split.
FLOORS = {"fp32": 1.0, "int8": 0.99}


class ExportRefused(ExportError):
    """The export was built and scored, and fell below its floor: nothing was written."""


@dataclass
class ExportReport:
    """One export: where it is, its size, its scores against PyTorch, and the floor it was held to."""

    format: str
    path: Path
    bytes: int
    seconds: float
    floor: float
    scores: dict = field(default_factory=dict)
    record: Path | None = None

    def to_dict(self) -> dict:
        return {**asdict(self), "path": str(self.path), "record": str(self.record) if self.record else None}


def read_export_record(folder: str | os.PathLike) -> dict:
    """export.json of a folder ({"format", "exports": {format: entry}}), empty when there is none."""
    path = Path(folder) / EXPORT_RECORD
    if not path.is_file():
        return {"format": RECORD_FORMAT, "exports": {}}
    try:
        record = json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise ArtifactError(f"{path}: not valid JSON ({exc})") from exc
    return record if record.get("format") == RECORD_FORMAT else {"format": RECORD_FORMAT, "exports": {}}


def _output_folder(run_dir: Path, out: str | os.PathLike | None) -> Path:
    """The output folder, created and proven writable (a temp file made and removed), or an ExportError."""
    folder = run_dir if out is None else Path(out)
    try:
        folder.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=folder, prefix=".write-test-"):
            pass
    except OSError as exc:
        raise ExportError(f"cannot write to the output folder {folder} ({exc.strerror or exc}); nothing written"
                          ) from None
    return folder


def _source_onnx(folder: Path, torch_clf, exporter: str, opset: int):
    """The fp32 graph every format starts from: the folder's model.onnx when it was exported from these weights
    with the same exporter and opset (the dynamo export costs 10-40 s), else a fresh export."""
    import onnx

    existing = folder / ONNX_FILE
    if existing.is_file():
        try:
            model = onnx.load(existing)
        except Exception:  # a damaged file: export again
            model = None
        if model is not None:
            props = {p.key: p.value for p in model.metadata_props}
            wanted = f"{exporter}, opset {opset}"
            if props.get("weights_sha256") == torch_clf.manifest["weights_sha256"] and \
                    props.get("exporter", "").endswith(wanted) and "quantization" not in props:
                log.info("starting from %s", existing)
                del model.metadata_props[:]
                return model
    return fp32_onnx(torch_clf, exporter, opset)


def _build(format: str, staging: Path, target: str, *, source, run_dir: Path, manifest: dict, exporter: str,
           opset: int, calibration, torch_clf) -> tuple[Path, object]:
    """Write the format into staging/target; return (its path, a Classifier on it with the format's runtime)."""
    path = staging / target
    if format in ("onnx", "onnx-int8"):
        from headstart.runtime.onnx_engine import load_onnx

        model, _ = finish_onnx(source, run_dir, manifest, exporter=exporter, opset=opset,
                               quantize="int8" if format == "onnx-int8" else None, images=calibration)
        path.write_bytes(model.SerializeToString())
        return path, load_onnx(path)
    path.mkdir()
    meta = dict(export_metadata(manifest), source=f"ONNX ({exporter} exporter, opset {opset})")
    if format in ("openvino", "openvino-int8"):
        from headstart.inference.export_openvino import write_openvino
        from headstart.runtime.openvino_engine import load_openvino

        write_openvino(source.SerializeToString(), path, meta, images=calibration)
        return path, load_openvino(path, engine=format)
    if format == "web":
        import onnxruntime as ort

        from headstart.inference.export_web import read_web_model, write_web
        from headstart.runtime.onnx_engine import OnnxClassifier

        # The page decodes at full size: its metadata says so (the scores above are on full-size decodes too).
        manifest = dict(manifest, preprocessing={**manifest["preprocessing"], "decode": "full"})
        meta = dict(meta, preprocessing={**meta["preprocessing"], "decode": "full"})
        model, _ = finish_onnx(source, run_dir, manifest, exporter=exporter, opset=opset, quantize=None)
        meta = write_web(model.SerializeToString(), path, meta)
        session = ort.InferenceSession(read_web_model(path), providers=["CPUExecutionProvider"])
        return path, OnnxClassifier(session=session, manifest=meta, path=path / "model.js")
    if format == "tflite":
        from headstart.inference.export_tflite import write_tflite
        from headstart.runtime.litert_engine import load_tflite

        write_tflite(torch_network(torch_clf), int(manifest["preprocessing"]["crop_size"]), path, meta)
        return path, load_tflite(path)
    raise ExportError(f"unknown format {format!r}")  # pragma: no cover - checked by export()


def _size(path: Path) -> int:
    return path.stat().st_size if path.is_file() else sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def _publish(built: Path, final: Path) -> None:
    """Put the staged file or folder at `final` by rename (a folder: the old one is renamed aside first)."""
    mode = 0o777 & ~current_umask()
    if built.is_dir():
        os.chmod(built, mode)  # mkdtemp's 0o700 would keep a static host or another user out
        for p in built.rglob("*"):
            os.chmod(p, mode if p.is_dir() else mode & 0o666)
    else:
        os.chmod(built, mode & 0o666)
    if final.is_dir() and not final.is_symlink():
        old = Path(tempfile.mkdtemp(prefix=f".{final.name}.old-", dir=final.parent))
        os.replace(final, old / final.name)
        try:
            os.replace(built, final)
        except OSError:
            os.replace(old / final.name, final)
            raise
        finally:
            shutil.rmtree(old, ignore_errors=True)
    else:
        os.replace(built, final)


def export(run_dir: str | os.PathLike, format: str = "onnx", out: str | os.PathLike | None = None, *,
           calibration: str | os.PathLike | None = None, calibration_count: int = CALIBRATION_IMAGES,
           exporter: str = "dynamo", opset: int = DEFAULT_OPSET, floor: float | None = None,
           max_images: int | None = None, measure_speed: bool = True) -> ExportReport:
    """Export a run to `format` in `out` (default: the run directory), scored on its test (else val) split.

    calibration: a folder of images for the int8 formats (default: up to `calibration_count` of the
    run's train images). floor: the minimum top-1 agreement with PyTorch (default FLOORS by precision); below
    it, an ExportError and nothing is written. max_images: score on an even sample of that many images.
    measure_speed: latency p50 and throughput at batch 32 (a few seconds).
    """
    from headstart.inference.classifier import load

    started = time.perf_counter()
    if floor is not None and not 0.0 <= floor <= 1.0:
        raise ExportError(f"floor {floor} is not a share of images between 0 and 1")
    if format not in FORMATS:
        raise ExportError(f"unknown format {format!r}; choose one of {', '.join(FORMATS)}")
    if exporter not in EXPORTERS:
        raise ExportError(f"unknown exporter {exporter!r}; choose one of {', '.join(EXPORTERS)}")
    run_dir = Path(run_dir)
    target, int8 = FORMATS[format]
    floor = FLOORS["int8" if int8 else "fp32"] if floor is None else float(floor)
    manifest = read_manifest(run_dir)  # a run of another headstart version is refused here, in one line
    folder = _output_folder(run_dir, out)
    if format == "web":
        from headstart.inference.export_web import runtime_files

        runtime_files()
    calibration_set = calibration_images(run_dir, calibration_count, calibration) if int8 else None
    torch_clf = load(run_dir)

    paths, labels, source_name = run_images(run_dir, max_images or 10**9, splits=("test", "val"))
    # Decoded as the format's client decodes: the web page at full size (a browser has no DCT-scaled decode),
    # the others as the model's preprocessing says; PyTorch scores the same decoded images.
    images, kept = _decode(paths, None if format == "web" else Preprocessing.from_dict(
        manifest["preprocessing"]).reduce_to)
    if images:
        labels = [labels[i] for i in kept] if labels is not None else None
    else:
        log.warning("the run's test/val images are not available; scoring on synthetic images")
        images, labels, source_name = _synthetic_images(), None, "synthetic"
    reference = torch_clf.logits(images)

    graph = _source_onnx(folder, torch_clf, exporter, opset)
    staging = Path(tempfile.mkdtemp(prefix=f".export-{format}-", suffix=".tmp", dir=folder))
    try:
        built, clf = _build(format, staging, target, source=graph, run_dir=run_dir, manifest=manifest,
                            exporter=exporter, opset=opset, calibration=calibration_set, torch_clf=torch_clf)
        scores = {"source": source_name, **agreement(reference, clf.logits(images), labels, clf.temperature)}
        if measure_speed:
            scores.update(timing(clf.run, preprocess_batch(images[:32], clf.preprocessing)))
        scores["runtime"] = _runtime_name(format)
        size = _size(built)
        if scores["top1_agreement"] < floor:
            why = "" if not int8 or cpu_has_int8_dot() else (
                " (this CPU has no int8 dot products, VNNI or AMX, where int8 runs less exactly)")
            raise ExportRefused(f"{format}: top-1 agreement with PyTorch {scores['top1_agreement']:.2%} on "
                              f"{scores['n']} {source_name} images is below the {floor:.0%} floor{why}; nothing "
                              f"written, earlier exports kept (--floor accepts less)")
        if not int8 and scores["max_abs_logit_diff"] > TOLERANCE:
            raise ExportRefused(f"{format}: logits differ from PyTorch's by up to {scores['max_abs_logit_diff']:.3g} "
                              f"(> {TOLERANCE:g}) on {scores['n']} {source_name} images: below the fp32 floor; "
                              f"nothing written, earlier exports kept")
        final = folder / target
        _publish(built, final)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    seconds = time.perf_counter() - started
    report = ExportReport(format=format, path=final, bytes=size, seconds=seconds, floor=floor, scores=scores,
                          record=folder / EXPORT_RECORD)
    record = read_export_record(folder)
    record["exports"][format] = {
        "path": str(final.relative_to(folder)), "bytes": size, "seconds": round(seconds, 2), "floor": floor,
        "weights_sha256": manifest["weights_sha256"], "backbone": manifest["backbone"],
        "exported_at": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        **scores,
    }
    atomic_write_json(folder / EXPORT_RECORD, record)
    log.info("wrote %s (%.1f MB) in %.1fs: %s", final, size / 1e6, seconds, scores)
    return report


def _runtime_name(format: str) -> str:
    if format == "tflite":
        from importlib.metadata import version

        return f"litert {version('ai-edge-litert')}"
    if format.startswith("openvino"):
        import openvino as ov

        return f"openvino {ov.get_version().split('-')[0]}"
    import onnxruntime as ort

    if format == "web":
        return (f"onnxruntime {ort.__version__} on the bundle's model bytes (the page runs them on "
                f"onnxruntime-web)")
    return f"onnxruntime {ort.__version__}"

