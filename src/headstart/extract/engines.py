"""Compiled CPU runtimes (OpenVINO, ONNX Runtime) for the frozen backbone's forward pass, where they are several
times faster than eager PyTorch, fp32 and bf16 alike; bf16 runs on OpenVINO only (ONNX Runtime's CPU provider
has no bf16). Measurements: docs/benchmarks.md, "Extraction engines".

Both runtimes read the same ONNX graph, exported with the TorchScript exporter (far quicker than the dynamo
exporter). With a cache folder, the graph is kept under a key of everything it is made of (the module's structure
and weights, torch and the module's library versions, the input size), so a later run with the same backbone
skips the export, and OpenVINO keeps its compiled blob there too: nothing stale can be found under a key that
changed.

Only the frozen forward pass goes through here (feature extraction); anything that trains stays in torch.
Every engine is checked against the torch module on real images before use, and any failure (an operator the
exporter lacks, a runtime missing, a mismatch) moves on to the next engine, and finally to torch, with a log
line, never an error.
"""

from __future__ import annotations

import hashlib
import importlib.util
import io
import logging
import sys
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from torch import nn

from headstart.artifact import atomic_write_bytes
from headstart.onnx_export import OPSET, to_onnx

__all__ = ["COMPILED_ENGINES", "ENGINES", "frozen_forward"]

log = logging.getLogger(__name__)

# In the order "auto" tries them: OpenVINO first, as it ran faster than ONNX Runtime on EfficientNet-Lite's
# depthwise convolutions (docs/benchmarks.md, "Extraction engines").
COMPILED_ENGINES = ("openvino", "onnxruntime")
ENGINES = ("auto", "torch", *COMPILED_ENGINES)

# Relative to the features' scale: fp32 kernels in different orders differ by ~1e-6.
_PARITY_TOLERANCE = 1e-3
# bf16 keeps 8 bits of mantissa, so a bf16 engine is checked image by image: the L2 distance of its features to
# torch's fp32 features, relative to their length (which bounds both their direction and their scale). The bound
# sits above the worst image measured, OpenVINO and torch's autocast alike (docs/benchmarks.md, "bf16 feature
# check"); a wrong graph lands far above (a scale off by 1.5x is 0.5). A failed check costs speed only.
_BF16_MAX_RELATIVE_ERROR = 0.3
# int8 (NNCF post-training quantization) is checked the same way, with room for its coarser rounding: the worst
# test image of the dev sets measured 0.92 cosine to fp32 (digits), a relative L2 error near 0.4; a scale off by
# 1.5x is 0.5.
_INT8_MAX_RELATIVE_ERROR = 0.45
# What each runtime computes, by run precision: OpenVINO's inference precision hint ("int8": a quantized graph,
# its other layers in f32); ONNX Runtime fp32 only.
_PRECISIONS = {"openvino": {"32-true": "f32", "bf16-mixed": "bf16", "int8": "int8"},
               "onnxruntime": {"32-true": "f32"}}
# Images per OpenVINO request: small enough that every stream stays busy to the end of a batch of 64
# (docs/benchmarks.md, "Extraction engines").
_OPENVINO_CHUNK = 4

Runner = Callable[[np.ndarray], np.ndarray]


def frozen_forward(module: nn.Module, sample: torch.Tensor, *, engine: str, accelerator: str, precision: str,
                   cache_dir: Path | None = None) -> tuple[Callable[[torch.Tensor], torch.Tensor] | None, str]:
    """(function equal to `module(x)` for this eval-mode module, engine name), or (None, why torch).

    engine "auto" tries the compiled runtimes on the CPU, for the precisions each one computes (_PRECISIONS); on
    CUDA torch is the faster engine. `sample` is a real input batch (2+ images), used to check the export.
    cache_dir: where exported graphs and compiled blobs are kept between runs (None: export every time).
    """
    if engine == "torch":
        return None, "engine torch requested"
    wanted = COMPILED_ENGINES if engine == "auto" else (engine,)
    able = [n for n in wanted if precision in _PRECISIONS[n]]
    if accelerator != "cpu" or not able:
        if engine != "auto":
            log.warning("extract engine %s runs %s on the CPU only; using torch for %s %s", engine,
                        " or ".join(_PRECISIONS[engine]), accelerator, precision)
        return None, f"torch for {accelerator} {precision}"
    names = [n for n in able if importlib.util.find_spec(n)]
    reasons = [f"{n} is not installed" for n in able if n not in names]
    graphs = _Graphs(module, sample, cache_dir)
    for name in names:
        # The cached graph first, then a fresh export: a damaged or stale file costs one export, not the engine.
        for graph in graphs:
            try:
                run = _RUNTIMES[name](graph, torch.get_num_threads(), cache_dir, _PRECISIONS[name][precision],
                                      sample)
                forward = _checked(run, module, sample, max_relative_error={
                    "bf16-mixed": _BF16_MAX_RELATIVE_ERROR, "int8": _INT8_MAX_RELATIVE_ERROR}.get(precision))
            except Exception as exc:  # a runtime failure only costs speed: torch computes the same features
                reasons.append(f"{name} failed: {_first_line(exc)}")
                log.info("%s could not run the %s graph (%s)", name, graphs.source, reasons[-1])
                continue
            graphs.keep(graph)
            log.info("%s runs the %s graph", name, graphs.source)
            return forward, name
    if graphs.export_error:
        reasons.append(f"export failed: {graphs.export_error}")
    log.warning("no compiled runtime for extraction (%s); using torch", "; ".join(reasons))
    return None, "; ".join(reasons)


def _first_line(exc: Exception) -> str:
    reason = (str(exc).strip().splitlines() or [""])[0][:200]  # exporter errors can hold the whole graph
    return f"{type(exc).__name__}: {reason}"


class _Graphs:
    """The ONNX graphs to try, in order: the cached one (if any), then one exported now (once per run, however
    many engines try it). Only a graph that an engine has run and checked is written to the cache."""

    def __init__(self, module: nn.Module, sample: torch.Tensor, cache_dir: Path | None):
        self.module, self.sample = module, sample
        self.path: Path | None = None
        if cache_dir is not None:
            try:
                self.path = cache_dir / "onnx" / f"{_graph_key(module, sample)}.onnx"
            except Exception as exc:  # a state_dict that cannot be hashed (extra state, exotic tensors): no cache
                log.debug("no engine cache for this module: %s", _first_line(exc))
        self.fresh: bytes | None = None
        self.export_error: str | None = None
        self.source = ""

    def __iter__(self):
        cached = _read(self.path)
        if cached:
            self.source = "cached"
            yield cached
        if self.fresh is None and self.export_error is None:
            try:
                self.fresh = _export(self.module, self.sample)
            except Exception as exc:
                self.export_error = _first_line(exc)
                log.info("the backbone could not be exported to ONNX (%s)", self.export_error)
        if self.fresh is not None:
            self.source = "exported"
            yield self.fresh

    def keep(self, graph: bytes) -> None:
        if self.path is None or graph is not self.fresh:
            return
        try:
            atomic_write_bytes(self.path, graph)
        except OSError as exc:  # a read-only cache only costs the next run this export
            log.debug("could not keep the exported graph at %s: %s", self.path, exc)


def _checked(run: Runner, module: nn.Module, sample: torch.Tensor, *, max_relative_error: float | None = None
             ) -> Callable[[torch.Tensor], torch.Tensor]:
    """`run` as a tensor function, after checking it against `module` in fp32 on two real images (a whole batch
    would cost a torch pass): within _PARITY_TOLERANCE, or for a reduced-precision engine (bf16, int8), each
    row's relative L2 error within `max_relative_error`."""

    def forward(x: torch.Tensor) -> torch.Tensor:
        return torch.from_numpy(run(x.contiguous().numpy()))

    probe = sample[:2]
    with torch.inference_mode():
        expected = module(probe).float()
    got = forward(probe)
    if got.shape != expected.shape:
        raise ValueError(f"output shape {list(got.shape)} differs from torch's {list(expected.shape)}")
    if max_relative_error is not None:
        rows, reference = got.flatten(1), expected.flatten(1)
        # relative to each row's own length, however small (a random-weight network's features can be ~1e-8)
        lengths = reference.norm(dim=1).clamp_min(torch.finfo(torch.float32).tiny)
        error = ((rows - reference).norm(dim=1) / lengths).max().item()
        if not error <= max_relative_error:
            raise ValueError(f"reduced-precision output differs from torch's fp32 (relative L2 error {error:.3f})")
        return forward
    error = (got - expected).abs().max().item() / max(expected.abs().max().item(), 1e-6)
    if not error <= _PARITY_TOLERANCE:
        raise ValueError(f"output differs from torch (relative error {error:.2e})")
    return forward


def _graph_key(module: nn.Module, sample: torch.Tensor) -> str:
    """A digest of all that the exported graph depends on, the weights included (cheap next to an export)."""
    # Every library whose layers the module holds (timm's inside a torch Sequential, for instance): a new version
    # may trace differently from the same structure.
    libraries = sorted({type(m).__module__.split(".")[0] for m in module.modules()})
    versions = [(name, getattr(sys.modules.get(name), "__version__", None)) for name in libraries]
    digest = hashlib.sha256(repr((torch.__version__, versions, OPSET, str(sample.dtype), tuple(sample.shape[1:]),
                                  type(module).__qualname__, repr(module))).encode())
    for key, tensor in module.state_dict().items():
        digest.update(f"{key}:{tensor.dtype}:{tuple(tensor.shape)}".encode())
        digest.update(memoryview(tensor.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy()))
    return digest.hexdigest()[:32]


def _read(path: Path | None) -> bytes | None:
    try:
        return path.read_bytes() if path is not None else None
    except OSError:  # absent (the first run) or unreadable: export
        return None


def _export(module: nn.Module, sample: torch.Tensor) -> bytes:
    # No constant folding: both runtimes fold constants (BatchNorm into convolutions) as they compile.
    return to_onnx(module, sample, output_name="features", exporter="torchscript", fold_constants=False)


def _int8(model, sample: torch.Tensor):
    """NNCF's post-training int8 quantization of the OpenVINO model, calibrated on the first batch (its
    activations' ranges; the same algorithm `export --format openvino-int8` runs)."""
    import nncf

    calibration = sample.contiguous().numpy()
    log.info("int8 features: the backbone quantized by NNCF, calibrated on %d images (linear-probe accuracy "
             "within 0.5 point of fp32 on the dev sets, docs/benchmarks.md)", len(calibration))
    return nncf.quantize(model, nncf.Dataset(list(calibration), lambda x: x[None]), subset_size=len(calibration),
                         fast_bias_correction=True)


def _openvino(graph: bytes, threads: int, cache_dir: Path | None, precision: str, sample: torch.Tensor) -> Runner:
    import openvino as ov

    core = ov.Core()
    # The precision explicitly: OpenVINO would otherwise choose bf16 by itself on CPUs it counts as bf16-capable
    # (AMX, but also AVX-512 without bf16 units, where it emulates bf16), and an fp32 run wants fp32 features.
    # bf16 reaches here only where the run asked for it: `auto` picks it where the CPU has native bf16 (device.py).
    # No pinning: with several processes on one machine (--devices N on the CPU) each would pin its threads to
    # the same cores; alone, pinning made no measurable difference (docs/benchmarks.md, "Extraction engines").
    # THROUGHPUT: OpenVINO runs several streams with a share of the threads each (2 streams of 1 thread on 2
    # cores, say), fed small chunks through an async queue, instead of one request whose threads meet at every
    # layer: more images/s than the LATENCY hint, and a core taken by other work (an import, another process)
    # slows one stream instead of stalling all of them at each barrier.
    config = {"INFERENCE_NUM_THREADS": threads, "INFERENCE_PRECISION_HINT": "f32" if precision == "int8" else precision,
              "PERFORMANCE_HINT": "THROUGHPUT", "ENABLE_CPU_PINNING": False}
    if cache_dir is not None:  # OpenVINO keys its compiled blobs by graph and settings: a later compile is quicker
        config["CACHE_DIR"] = str(cache_dir / "openvino")
    model = core.read_model(io.BytesIO(graph))
    compiled = core.compile_model(_int8(model, sample) if precision == "int8" else model, "CPU", config)
    # Twice the requests the streams can run at once, so each stream has its next chunk waiting.
    queue = ov.AsyncInferQueue(compiled, 2 * compiled.get_property("OPTIMAL_NUMBER_OF_INFER_REQUESTS"))
    outputs: dict[int, np.ndarray] = {}
    queue.set_callback(lambda request, start: outputs.__setitem__(start, request.get_output_tensor(0).data.copy()))

    def run(x: np.ndarray) -> np.ndarray:
        """One batch at a time (the chunks share `outputs`): extraction calls it from one thread."""
        outputs.clear()
        starts = range(0, len(x), _OPENVINO_CHUNK)
        for start in starts:
            queue.start_async({0: x[start:start + _OPENVINO_CHUNK]}, userdata=start)
        queue.wait_all()
        if sorted(outputs) != list(starts):
            raise RuntimeError(f"OpenVINO answered {len(outputs)} of {len(starts)} chunks")
        return np.concatenate([outputs[start] for start in starts])

    return run


def _onnxruntime(graph: bytes, threads: int, cache_dir: Path | None, precision: str, sample: torch.Tensor
                 ) -> Runner:
    import onnxruntime as ort

    # Nothing to keep in cache_dir: ONNX Runtime optimises the graph as it loads it, quickly.
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.log_severity_level = 3
    session = ort.InferenceSession(graph, options, providers=["CPUExecutionProvider"])
    name = session.get_inputs()[0].name
    return lambda x: session.run(None, {name: x})[0]


_RUNTIMES: dict[str, Callable[[bytes, int, Path | None, str, torch.Tensor], Runner]] = {
    "openvino": _openvino, "onnxruntime": _onnxruntime}
