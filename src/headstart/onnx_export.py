"""The one torch.onnx.export wrapper: a module to an ONNX graph with a dynamic batch axis. Feature extraction
(extract/engines.py) and `headstart export` (inference/export.py) both call it."""

from __future__ import annotations

import contextlib
import io
import logging
import warnings

__all__ = ["EXPORTERS", "INPUT_NAME", "OPSET", "ExportError", "to_onnx"]

log = logging.getLogger(__name__)

OPSET = 18  # torchlib (the dynamo exporter's op library) is written against it; ONNX Runtime >= 1.14 runs it
INPUT_NAME = "input"
EXPORTERS = ("torchscript", "dynamo")


class ExportError(RuntimeError):
    """The module could not be exported to ONNX; the message says why in one line."""


@contextlib.contextmanager
def _quiet(*loggers: str):
    """onnx_ir/onnxscript log every graph rewrite at INFO: hundreds of lines that would drown `-v` output."""
    saved = [(logging.getLogger(name), logging.getLogger(name).level) for name in loggers]
    for logger, _ in saved:
        logger.setLevel(max(logger.getEffectiveLevel(), logging.WARNING))
    try:
        yield
    finally:
        for logger, level in saved:
            logger.setLevel(level)


@contextlib.contextmanager
def _plain_attention():
    """Attention's fused inference kernel has no ONNX form; the plain path exports (ViT)."""
    import torch

    fastpath = torch.backends.mha.get_fastpath_enabled()
    torch.backends.mha.set_fastpath_enabled(False)
    try:
        yield
    finally:
        torch.backends.mha.set_fastpath_enabled(fastpath)


def to_onnx(module, example, *, output_name: str, exporter: str = "torchscript", opset: int = OPSET,
            fold_constants: bool = True) -> bytes:
    """The eval-mode `module` as a serialized ONNX model: input INPUT_NAME, output `output_name`, batch axis
    dynamic. `example` is one input batch (its first row is traced).

    exporter "torchscript" exports in a fraction of a second; "dynamo" (torch.export + onnxscript, torch's
    supported path) takes seconds but folds static shapes such as EfficientNet-Lite's "same" padding into a
    smaller graph. fold_constants=False leaves folding to the runtime that loads the graph.
    """
    import torch

    if exporter not in EXPORTERS:
        raise ExportError(f"unknown exporter {exporter!r}; choose one of {', '.join(EXPORTERS)}")
    module = module.to(memory_format=torch.contiguous_format)
    names = {"input_names": [INPUT_NAME], "output_names": [output_name], "opset_version": opset}
    # A normal tensor, two rows: tracing cannot use inference-mode tensors, and a batch of 1 can get
    # specialised away by the dynamo exporter.
    with torch.inference_mode(False), torch.no_grad():
        example = example[:2].clone() if len(example) >= 2 else torch.cat([example, example])
    with _plain_attention(), torch.inference_mode(False), torch.no_grad():
        if exporter == "dynamo":
            try:
                with _quiet("onnx_ir", "onnxscript"):
                    program = torch.onnx.export(module, (example,), dynamo=True, verbose=False, external_data=False,
                                                dynamic_shapes=({0: torch.export.Dim("batch")},),
                                                optimize=fold_constants, **names)
            except ImportError as exc:
                raise ExportError(f"the dynamo exporter needs onnxscript ({exc}): pip install onnxscript, or "
                                  f"export with exporter='torchscript'") from exc
            return program.model_proto.SerializeToString()
        buffer = io.BytesIO()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # the TorchScript exporter's deprecation notice
            torch.onnx.export(module, (example,), buffer, dynamo=False, do_constant_folding=fold_constants,
                              dynamic_axes={INPUT_NAME: {0: "batch"}, output_name: {0: "batch"}}, **names)
        return buffer.getvalue()
