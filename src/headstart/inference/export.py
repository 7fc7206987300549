"""`headstart export RUN`: the trained network as a self-describing ONNX file, with its parity measured.

The file carries everything a client needs in its metadata_props (classes, preprocessing, temperature,
threshold, source weights sha256), so `headstart.runtime.load_onnx` - or a client in any language - needs
nothing else. Before anything is written, ONNX Runtime's logits are compared with PyTorch's on the run's own
test/val images; an export that disagrees is refused, never written.

The exporter is torch's dynamo one (torch.export + onnxscript): it is torch's default and supported path
(the TorchScript exporter is deprecated and slated for removal), and it folds static shapes such as
EfficientNet-Lite's "same" padding into a much smaller graph. `exporter="torchscript"` remains for models
that torch.export cannot capture; it also exports faster (docs/benchmarks.md, "ONNX export and int8
quantization").
"""

from __future__ import annotations

import json
import logging
import os
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from headstart._version import __version__
from headstart.artifact import ArtifactError, atomic_write_bytes, read_manifest
from headstart.device import int8_weight_bits
from headstart.onnx_export import OPSET
from headstart.runtime.images import ImageLoadError, open_image
from headstart.runtime.onnx_engine import (
    ONNX_FILE,
    ONNX_FORMAT,
    OnnxClassifier,
    load_onnx,
    read_onnx_metadata,
)
from headstart.runtime.preprocess import PREPROCESSING_STEPS, Preprocessing, preprocess_batch

__all__ = ["CALIBRATION_IMAGES", "DEFAULT_OPSET", "EXPORTERS", "ExportError", "ExportResult", "calibration_images",
           "check_parity", "export_metadata", "export_onnx", "finish_onnx", "fp32_onnx", "run_images"]

log = logging.getLogger(__name__)

DEFAULT_OPSET = OPSET
EXPORTERS = ("dynamo", "torchscript")
QUANTIZE = ("int8",)
TOLERANCE = 1e-3  # max |logit difference| accepted between PyTorch and ONNX Runtime (fp32)
MAX_PARITY_IMAGES = 200
CALIBRATION_IMAGES = 300  # "a few hundred": evenly sampled from the train split
_USAGE = ("input 'input': float32 [batch, 3, crop_size, crop_size], preprocessed as in 'preprocessing' (steps "
          "below); output 'logits': float32 [batch, len(classes)]; calibrated probabilities = "
          "softmax(logits / temperature); predict 'unsure' when the top probability < threshold.\n")


class ExportError(ArtifactError):
    """The export failed or disagrees with PyTorch; nothing was written."""


@dataclass
class ExportResult:
    """What `export_onnx` wrote: the file, its parity with PyTorch (also in its metadata), how it was made."""

    path: Path
    parity: dict
    exporter: str
    opset: int
    quantize: str | None
    bytes: int
    seconds: float


def run_images(run_dir: str | os.PathLike, max_images: int = MAX_PARITY_IMAGES,
               splits: Sequence[str] = ("test", "val")) -> tuple[list[str], list[int] | None, str]:
    """The run's own images from split.json, from the first of `splits` that has some: (paths, labels, source).

    Evenly sampled down to max_images; labels come from the class folder names; empty when the data is gone.
    """
    run_dir = Path(run_dir)
    split_file = run_dir / "split.json"
    if not split_file.is_file():
        return [], None, "none"
    record = json.loads(split_file.read_text())
    root, files = Path(record.get("root", "")), record.get("files", {})
    classes = record.get("classes") or json.loads((run_dir / "model.json").read_text())["classes"]
    for split in splits:
        found = [(root / f, Path(f).parent.name) for f in files.get(split, [])]
        found = [(p, c) for p, c in found if p.is_file() and c in classes]
        if found:
            keep = np.unique(np.linspace(0, len(found) - 1, min(len(found), max_images)).round().astype(int))
            found = [found[i] for i in keep]
            return [str(p) for p, _ in found], [classes.index(c) for _, c in found], f"{split} split"
    return [], None, "none"


def _synthetic_images(n: int = 8, seed: int = 0) -> list[Image.Image]:
    """Smooth gradients plus noise in several aspect ratios: a parity check when the data folder is gone."""
    rng = np.random.default_rng(seed)
    out = []
    for i in range(n):
        h, w = [(240, 320), (333, 250), (257, 257), (500, 281)][i % 4]
        y, x = np.mgrid[0:h, 0:w] / max(h, w)
        base = np.stack([x, y, (x + y) / 2], -1) * rng.uniform(80, 255, 3)
        out.append(Image.fromarray(np.clip(base + rng.normal(0, 25, (h, w, 3)), 0, 255).astype(np.uint8)))
    return out


def _decode(images: Sequence, reduce_to: int | None = None) -> tuple[list[Image.Image], list[int]]:
    decoded, kept = [], []
    for i, item in enumerate(images):
        try:
            decoded.append(item.convert("RGB") if isinstance(item, Image.Image) else
                           open_image(item, reduce_to=reduce_to))
            kept.append(i)
        except ImageLoadError as exc:
            log.warning("parity: skipping %s", exc)
    return decoded, kept


def _parity(torch_clf, onnx_clf: OnnxClassifier, images: list[Image.Image], labels: Sequence[int] | None,
            batch_size: int = 32) -> dict:
    """The torch engine vs ONNX Runtime, on the same torch-preprocessed batch and end to end."""
    import torch

    from headstart.data.transforms import eval_transform

    transform = eval_transform(Preprocessing.from_dict(torch_clf.manifest["preprocessing"]))
    torch_logits, same_logits, e2e_logits, input_diff = [], [], [], 0.0
    for start in range(0, len(images), batch_size):
        chunk = images[start:start + batch_size]
        torch_logits.append(torch_clf.logits(chunk, batch_size))
        x_torch = torch.stack([transform(img) for img in chunk]).numpy()
        x_numpy = preprocess_batch(chunk, onnx_clf.preprocessing)
        input_diff = max(input_diff, float(np.abs(x_torch - x_numpy).max()))
        same_logits.append(onnx_clf.run(x_torch))
        e2e_logits.append(onnx_clf.run(x_numpy))
    ref, same, e2e = (np.concatenate(v) for v in (torch_logits, same_logits, e2e_logits))
    out = {
        "n": len(images),
        "top1_agreement": float((ref.argmax(1) == same.argmax(1)).mean()),
        "max_abs_logit_diff": float(np.abs(ref - same).max()),
        "max_abs_input_diff": input_diff,
        "end_to_end_top1_agreement": float((ref.argmax(1) == e2e.argmax(1)).mean()),
        "end_to_end_max_abs_logit_diff": float(np.abs(ref - e2e).max()),
    }
    if labels is not None:
        labels = np.asarray(labels)
        out["torch_accuracy"] = float((ref.argmax(1) == labels).mean())
        out["onnx_accuracy"] = float((e2e.argmax(1) == labels).mean())
    return out


def _parity_images(run_dir: Path, images: Sequence | None) -> tuple[list[Image.Image], list[int] | None, str]:
    if images is not None:
        decoded, _ = _decode(images)
        if not decoded:
            raise ExportError("parity: none of the given images can be read")
        return decoded, None, "given"
    paths, labels, source = run_images(run_dir)
    decoded, kept = _decode(paths)
    if not decoded:
        log.warning("parity: the run's images are not available; using synthetic images")
        return _synthetic_images(), None, "synthetic"
    return decoded, [labels[i] for i in kept] if labels is not None else None, source


def check_parity(run_dir: str | os.PathLike, onnx_path: str | os.PathLike | None = None,
                 images: Sequence | None = None) -> dict:
    """PyTorch (fp32, eval) vs ONNX Runtime on the same images (default: the run's test/val images).

    {"n", "source", "top1_agreement", "max_abs_logit_diff"} on the same torch-preprocessed batch, plus
    "max_abs_input_diff" (numpy/PIL vs torchvision preprocessing) and "end_to_end_top1_agreement" /
    "end_to_end_max_abs_logit_diff" (the ONNX engine's own preprocessing); accuracies when labels are known.
    """
    from headstart.inference.classifier import load

    run_dir = Path(run_dir)
    decoded, labels, source = _parity_images(run_dir, images)
    onnx_clf = load_onnx(onnx_path or run_dir / ONNX_FILE)
    return {"source": source, **_parity(load(run_dir), onnx_clf, decoded, labels)}


def _export_proto(net, crop: int, exporter: str, opset: int):
    """The network as an onnx.ModelProto with a dynamic batch axis (headstart.onnx_export.to_onnx)."""
    import onnx
    import torch

    from headstart import onnx_export

    try:
        graph = onnx_export.to_onnx(net, torch.randn(2, 3, crop, crop), output_name="logits", exporter=exporter,
                                    opset=opset)
    except onnx_export.ExportError as exc:
        raise ExportError(str(exc)) from exc
    return onnx.load_from_string(graph)


def export_metadata(manifest: dict) -> dict:
    """What every export format carries for a client (classes, preprocessing, temperature, threshold, the source
    weights), as plain data: ONNX files hold it as metadata_props, other formats as a model.json beside them."""
    return {
        "classes": list(manifest["classes"]),
        "preprocessing": Preprocessing.from_dict(manifest["preprocessing"]).to_dict(),
        "temperature": float(manifest.get("temperature", 1.0)),
        "threshold": float(manifest.get("threshold", 0.5)),
        "backbone": str(manifest["backbone"]),
        "headstart_version": __version__,
        "weights_sha256": str(manifest["weights_sha256"]),
        "usage": _USAGE + PREPROCESSING_STEPS,
    }


def _metadata(manifest: dict, exporter: str, opset: int) -> dict[str, str]:
    import torch

    return {
        "format": ONNX_FORMAT,
        "classes": json.dumps(list(manifest["classes"])),
        "preprocessing": json.dumps(Preprocessing.from_dict(manifest["preprocessing"]).to_dict()),
        "temperature": repr(float(manifest.get("temperature", 1.0))),
        "threshold": repr(float(manifest.get("threshold", 0.5))),
        "backbone": str(manifest["backbone"]),
        "headstart_version": __version__,
        "weights_sha256": str(manifest["weights_sha256"]),
        "exporter": f"torch {torch.__version__} {exporter}, opset {opset}",
        "usage": _USAGE + PREPROCESSING_STEPS,
    }


def _set_metadata(model, meta: dict[str, str]) -> None:
    del model.metadata_props[:]
    for key, value in meta.items():
        model.metadata_props.add(key=key, value=value)


def calibration_images(run_dir: Path, count: int = CALIBRATION_IMAGES, folder: str | os.PathLike | None = None
                       ) -> list[Image.Image]:
    """Up to `count` decoded images for int8 calibration: the run's train split (evenly sampled), or `folder`'s
    images (recursive). An ExportError when there are none, before anything is quantized or written."""
    if folder is not None:
        from headstart.data.folders import list_images

        folder = Path(folder)
        if not folder.is_dir():
            raise ExportError(f"calibration set {folder}: no such folder; nothing written")
        paths = [str(p) for p in list_images(folder)]
        if len(paths) > count:
            paths = [paths[i] for i in np.unique(np.linspace(0, len(paths) - 1, count).round().astype(int))]
        where = str(folder)
    else:
        paths, _, _ = run_images(run_dir, count, splits=("train",))
        where = f"the run's train split ({run_dir / 'split.json'})"
    # decoded as the model's prediction decodes them
    images, _ = _decode(paths, Preprocessing.from_dict(read_manifest(run_dir)["preprocessing"]).reduce_to)
    if not images:
        raise ExportError(f"int8 calibration needs training images and none can be read from {where}; pass a "
                          f"folder of them with --calibration DIR; nothing written")
    return images


def _quantize_int8(model, run_dir: Path, preprocessing: dict, workdir: Path,
                   images: list[Image.Image] | None = None, weight_bits: int = 8) -> tuple:
    """Static int8 (QDQ, per-channel weights), calibrated on up to CALIBRATION_IMAGES of the run's train images.

    Not quantize_dynamic: on EfficientNet-Lite0 its ConvInteger kernels ran slower than fp32 on the CPU and
    cost test accuracy, where static QDQ kept the accuracy and ran faster (docs/benchmarks.md, "ONNX export
    and int8 quantization").
    """
    import onnx
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    if images is None:
        paths, _, _ = run_images(run_dir, CALIBRATION_IMAGES, splits=("train", "val"))
        images, _ = _decode(paths, Preprocessing.from_dict(preprocessing).reduce_to)
    if not images:
        raise ExportError(f"int8 quantization calibrates on the run's training images, and none of them can be "
                          f"read (see {run_dir / 'split.json'}); export without quantize")
    batch = preprocess_batch(images, Preprocessing.from_dict(preprocessing))

    class Calibration(CalibrationDataReader):
        def __init__(self, size: int = 8):
            self.chunks = iter([{"input": batch[i:i + size]} for i in range(0, len(batch), size)])

        def get_next(self) -> dict | None:
            return next(self.chunks, None)

    src, pre, dst = workdir / "fp32.onnx", workdir / "pre.onnx", workdir / "int8.onnx"
    model = onnx.ModelProto.FromString(model.SerializeToString())
    # The exporter's value_info can contradict ORT's shape inference; ORT recomputes it anyway.
    del model.graph.value_info[:]
    onnx.save(model, src)
    quant_pre_process(str(src), str(pre))
    # 7-bit weights where the CPU has no int8 dot products: its u8 x s8 kernels saturate 16-bit sums with 8-bit
    # weights (docs/benchmarks.md, "int8 exports on an AVX2-only CPU").
    quantize_static(str(pre), str(dst), Calibration(), quant_format=QuantFormat.QDQ, per_channel=True,
                    weight_type=QuantType.QInt8, activation_type=QuantType.QUInt8, reduce_range=weight_bits == 7)
    return onnx.load(dst), len(images)


def torch_network(torch_clf):
    """A fresh fp32 copy of the loaded net in the default memory format (the loaded one is channels_last)."""
    import torch

    return torch_clf.net.float().eval().to(memory_format=torch.contiguous_format)


def fp32_onnx(torch_clf, exporter: str = "dynamo", opset: int = DEFAULT_OPSET):
    """The run's network as an fp32 onnx.ModelProto (dynamic batch), no metadata yet."""
    crop = int(torch_clf.manifest["preprocessing"]["crop_size"])
    return _export_proto(torch_network(torch_clf), crop, exporter, opset)


def finish_onnx(model, run_dir: Path, manifest: dict, *, exporter: str, opset: int, quantize: str | None,
                images: list[Image.Image] | None = None) -> tuple:
    """(the model, quantized when asked, with headstart's metadata and checked by onnx.checker; the metadata)."""
    import onnx

    meta = _metadata(manifest, exporter, opset)
    if quantize:
        with tempfile.TemporaryDirectory() as tmp:
            bits = int8_weight_bits()
            model, calibrated = _quantize_int8(model, run_dir, manifest["preprocessing"], Path(tmp), images, bits)
        meta["quantization"] = (f"int8 static QDQ, per-channel {bits}-bit weights, "
                                f"calibrated on {calibrated} train images")
    else:
        model = onnx.ModelProto.FromString(model.SerializeToString())
    _set_metadata(model, meta)
    model.doc_string = f"headstart {manifest['backbone']} classifier; see metadata 'usage'"
    try:
        onnx.checker.check_model(model, full_check=True)
    except onnx.checker.ValidationError as exc:
        raise ExportError(f"the exported model does not pass onnx.checker: {exc}") from exc
    return model, meta


def _checked_parity(model, torch_clf, run_dir: Path, images: Sequence | None, tolerance: float | None) -> dict:
    """Parity of an in-memory ONNX model; with a tolerance, an ExportError when the logits differ beyond it."""
    import onnxruntime as ort

    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    # The metadata as load_onnx will read it back: the round trip is checked too.
    onnx_clf = OnnxClassifier(session=session, path=Path("<memory>"), manifest=read_onnx_metadata(
        session.get_modelmeta().custom_metadata_map, "exported model"))
    decoded, labels, source = _parity_images(run_dir, images)
    parity = {"source": source, **_parity(torch_clf, onnx_clf, decoded, labels)}
    log.info("parity: %s", parity)
    if tolerance is not None:
        worst = max(parity["max_abs_logit_diff"], parity["end_to_end_max_abs_logit_diff"])
        parity["passed"] = worst <= tolerance
        if not parity["passed"]:
            raise ExportError(f"ONNX Runtime disagrees with PyTorch: max |logit difference| {worst:.3g} > "
                              f"{tolerance:g} on {parity['n']} images; nothing written. Try "
                              f"exporter='torchscript' or another opset")
    return parity


def export_onnx(run_dir: str | os.PathLike, out: str | os.PathLike | None = None, *, opset: int = DEFAULT_OPSET,
                exporter: str = "dynamo", check: bool = True, quantize: str | None = None,
                images: Sequence | None = None, tolerance: float = TOLERANCE) -> ExportResult:
    """Export a run to ONNX (fp32, eval, dynamic batch) at `out` (default RUN/model.onnx, or model.int8.onnx).

    check: measure parity with PyTorch first (see check_parity), store it in the metadata, and refuse an fp32
    export whose logits differ by more than `tolerance`. quantize="int8": static int8 (see _quantize_int8),
    not held to the tolerance; its parity and accuracy are reported instead. images: parity images instead of
    the run's test/val images.
    """
    import torch

    from headstart.inference.classifier import load

    if exporter not in EXPORTERS:
        raise ExportError(f"unknown exporter {exporter!r}; choose one of {', '.join(EXPORTERS)}")
    if quantize not in (None, *QUANTIZE):
        raise ExportError(f"unknown quantization {quantize!r}; choose one of {', '.join(QUANTIZE)}")
    started = time.perf_counter()
    run_dir = Path(run_dir)
    name = ONNX_FILE if quantize is None else "model.int8.onnx"
    out = run_dir / name if out is None else Path(out) / name if Path(out).is_dir() else Path(out)
    torch_clf = load(run_dir)
    manifest = torch_clf.manifest
    # A fresh fp32 copy in the default memory format: the loaded net is channels_last for inference speed.
    net = torch_clf.net.float().eval().to(memory_format=torch.contiguous_format)
    crop = int(manifest["preprocessing"]["crop_size"])
    log.info("exporting %s (%s) with the %s exporter, opset %d", run_dir, manifest["backbone"], exporter, opset)
    model = _export_proto(net, crop, exporter, opset)
    model, meta = finish_onnx(model, run_dir, manifest, exporter=exporter, opset=opset, quantize=quantize)
    parity: dict = {}
    if check:
        parity = _checked_parity(model, torch_clf, run_dir, images, tolerance=None if quantize else tolerance)
        meta["parity"] = json.dumps(parity)
        _set_metadata(model, meta)
    data = model.SerializeToString()
    atomic_write_bytes(out, data)
    seconds = time.perf_counter() - started
    log.info("wrote %s (%.1f MB) in %.1fs", out, len(data) / 1e6, seconds)
    return ExportResult(path=out, parity=parity, exporter=exporter, opset=opset, quantize=quantize,
                        bytes=len(data), seconds=seconds)
