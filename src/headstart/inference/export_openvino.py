"""OpenVINO IR exports (`--format openvino` and `openvino-int8`): the fp32 ONNX graph read by OpenVINO, saved
as model.xml + model.bin in fp32 (not OpenVINO's default fp16 weights: the fp32 format is held to 100% top-1
agreement), or quantized to int8 by NNCF's post-training quantization calibrated on training images.
A model.json beside them carries what a client needs (runtime.openvino_engine reads it)."""

from __future__ import annotations

import io
import logging
from pathlib import Path

from PIL import Image

from headstart.artifact import atomic_write_json
from headstart.device import int8_weight_bits
from headstart.runtime.openvino_engine import OPENVINO_FORMAT, OPENVINO_XML
from headstart.runtime.preprocess import Preprocessing, preprocess

__all__ = ["ir_size", "write_openvino"]

log = logging.getLogger(__name__)


def _quantize(model, images: list[Image.Image], preprocessing: dict, weight_bits: int):
    """NNCF post-training quantization (int8 weights and activations, the default 'performance' preset). With
    7-bit weights, NNCF's overflow fix on every layer (for CPUs without int8 dot products, whose kernels saturate
    otherwise); else NNCF's default, the first layer only (docs/benchmarks.md, "int8 exports on an AVX2-only
    CPU")."""
    import nncf
    from nncf.quantization.advanced_parameters import AdvancedQuantizationParameters, OverflowFix

    spec = Preprocessing.from_dict(preprocessing)
    # One image per item: NNCF collects its statistics item by item; preprocessing happens as it asks.
    dataset = nncf.Dataset(images, lambda img: preprocess(img, spec)[None])
    return nncf.quantize(model, dataset, subset_size=len(images), fast_bias_correction=True,
                         advanced_parameters=AdvancedQuantizationParameters(
                             overflow_fix=OverflowFix.ENABLE if weight_bits == 7 else OverflowFix.FIRST_LAYER))


def write_openvino(onnx_bytes: bytes, folder: Path, meta: dict, *, images: list[Image.Image] | None = None
                   ) -> dict:
    """model.xml + model.bin + model.json in `folder`, from a serialized fp32 ONNX model; int8 when `images`
    (the calibration set) are given. Returns the metadata written."""
    import openvino as ov

    core = ov.Core()
    model = core.read_model(io.BytesIO(onnx_bytes))
    meta = dict(meta, format=OPENVINO_FORMAT, openvino_version=ov.get_version())
    if images is not None:
        bits = int8_weight_bits()
        model = _quantize(model, images, meta["preprocessing"], bits)
        meta["quantization"] = (f"int8 by NNCF post-training quantization (performance preset, {bits}-bit "
                                f"weights), calibrated on {len(images)} train images")
    ov.save_model(model, str(folder / OPENVINO_XML), compress_to_fp16=False)
    atomic_write_json(folder / "model.json", meta)
    return meta


def ir_size(folder: Path) -> int:
    return int(sum(p.stat().st_size for p in folder.iterdir() if p.is_file()))

