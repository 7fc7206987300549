"""Choosing the device and numeric precision: channels_last + bf16 where the CPU runs it fast, AMP on CUDA."""

from __future__ import annotations

import contextlib
import functools
import logging
import os
from pathlib import Path

__all__ = ["autocast", "cpu_has_fast_bf16", "cpu_has_int8_dot", "features_precision", "int8_weight_bits",
           "one_torch_thread", "resolve_accelerator", "resolve_precision"]

log = logging.getLogger(__name__)


def _cpuinfo() -> tuple[str, set[str]]:
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return "unknown", set()
    model = next((line.split(":", 1)[1].strip() for line in text.splitlines() if line.startswith("model name")),
                 "unknown")
    return model, set(text.split())


_FAST_BF16 = 1.1  # the speed-up over fp32 that makes bf16 worth its rounding


@functools.cache
def cpu_has_fast_bf16() -> bool:
    """True where bf16 autocast runs faster than fp32 on this CPU.

    Without native bf16 math (AMX or AVX512-BF16) bf16 is emulated and several times slower, so the flags
    decide first; where they promise bf16, a one-off measurement confirms it, cached per CPU model and torch
    version. HEADSTART_CPU_BF16=0/1 overrides both.
    """
    override = os.environ.get("HEADSTART_CPU_BF16")
    if override in ("0", "1"):
        return override == "1"
    model, flags = _cpuinfo()
    if not ({"amx_bf16", "avx512_bf16"} & flags):
        return False
    import json

    import torch

    from headstart.cache import cache_root

    record = cache_root() / "bf16-speed.json"
    key = f"{model}|torch {torch.__version__}|{torch.get_num_threads()} threads"
    try:
        known = json.loads(record.read_text())
    except (OSError, ValueError):
        known = {}
    if key not in known:
        # The best of up to 3 probes: one probe run while another process held the cores measured 0.93x on a
        # CPU whose bf16 runs 5-6x (a Zen 5 EPYC), and the cached verdict would have stood for every later run.
        known[key] = 0.0
        for _ in range(3):
            known[key] = max(known[key], _measure_bf16_speedup())
            if known[key] > _FAST_BF16:
                break
        log.info("bf16 autocast speed-up on this CPU: %.2fx", known[key])
        try:
            from headstart.artifact import atomic_write_json

            atomic_write_json(record, known)
        except OSError:
            pass  # a read-only cache only costs a re-measurement next time
    return known[key] > _FAST_BF16


def _measure_bf16_speedup() -> float:
    """fp32 time / bf16 time for a small convolutional stack in channels_last, each the fastest of 4 single
    passes after a warm-up, so that one time slice lost to another process cannot decide. Small, so cheap in a
    fresh process, and it gives the same verdict as a larger probe (docs/benchmarks.md, "bf16 probe")."""
    import time

    import torch
    from torch import nn

    net = nn.Sequential(nn.Conv2d(32, 64, 3, padding=1), nn.ReLU(), nn.Conv2d(64, 64, 3, padding=1, groups=64),
                        nn.Conv2d(64, 128, 1), nn.ReLU()).eval().to(memory_format=torch.channels_last)
    x = torch.randn(4, 32, 56, 56).contiguous(memory_format=torch.channels_last)

    def fastest(context) -> float:
        times = []
        with torch.inference_mode(), context:
            net(x)
            for _ in range(4):
                start = time.perf_counter()
                net(x)
                times.append(time.perf_counter() - start)
        return min(times)

    fp32 = fastest(contextlib.nullcontext())
    bf16 = fastest(torch.autocast("cpu", dtype=torch.bfloat16))
    return fp32 / max(bf16, 1e-9)


def resolve_accelerator(accelerator: str = "auto") -> str:
    import torch

    if accelerator == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if accelerator == "cuda" and not torch.cuda.is_available():
        from headstart.config import ConfigError

        raise ConfigError("accelerator cuda was asked for, but torch sees no CUDA device; use --accelerator cpu")
    return accelerator


def resolve_precision(precision: str, accelerator: str) -> str:
    """Map auto to a Fabric precision string: bf16-mixed on fast-bf16 CPUs and bf16-capable GPUs."""
    if precision != "auto":
        return "32-true" if precision == "32" else precision
    if accelerator == "cuda":
        import torch

        return "bf16-mixed" if torch.cuda.is_bf16_supported() else "16-mixed"
    return "bf16-mixed" if cpu_has_fast_bf16() else "32-true"


def cpu_has_int8_dot() -> bool:
    """True where the CPU multiplies int8 in one instruction (VNNI or AMX). HEADSTART_CPU_INT8=0/1 overrides.

    Without it (AVX2-only CPUs) OpenVINO's int8 kernels gain little over fp32 and NNCF's quantization must narrow
    the weights to avoid overflow; int8 features lost more than issue 21's half point of probe accuracy there
    (docs/benchmarks.md, "int8 extraction on an AVX2-only CPU")."""
    override = os.environ.get("HEADSTART_CPU_INT8")
    if override in ("0", "1"):
        return override == "1"
    return bool({"avx512_vnni", "avx_vnni", "amx_int8"} & _cpuinfo()[1])


def int8_weight_bits() -> int:
    """The bits int8 quantization gives weights here: 7 on CPUs without int8 dot products (ONNX Runtime's
    reduce_range, NNCF's overflow fix), whose u8 x s8 kernels add pairs of products in 16 bits, which full 8-bit
    weights can overflow; else 8."""
    return 8 if cpu_has_int8_dot() else 7


@functools.cache  # once per process: auto mode asks once per backbone
def _warn_no_int8_dot() -> None:
    log.warning("int8 features: this CPU has no int8 dot-product instructions (VNNI or AMX), where int8 features "
                "lose accuracy and barely gain speed; extracting in fp32")


def features_precision(setting: str, resolved: str, *, int8: bool = False, accelerator: str = "cpu") -> str:
    """The precision frozen features are extracted in: fp32 unless the user asked for less. `auto`'s bf16 speeds
    up training, but heads trained on bf16 features scored lower, and load() and exports predict in fp32
    (docs/benchmarks.md, "Accuracy (issue 18): frozen features in fp32 under auto precision"). `int8`
    (--int8-features) is honoured on CPUs with int8 dot products only, and says so where it is not."""
    if int8 and accelerator == "cpu":
        if cpu_has_int8_dot():
            return "int8"
        _warn_no_int8_dot()
        return "32-true"
    return "32-true" if setting == "auto" else resolved


def autocast(accelerator: str, precision: str):
    """The autocast context for inference outside Fabric (feature extraction, prediction)."""
    import torch

    if precision == "bf16-mixed":
        return torch.autocast(accelerator, dtype=torch.bfloat16)
    if precision == "16-mixed":
        return torch.autocast(accelerator, dtype=torch.float16)
    return contextlib.nullcontext()


@contextlib.contextmanager
def one_torch_thread():
    """Torch on one thread within the block, for work made of many tiny ops (a head's matmuls on cached
    features, Grad-CAM on a dozen images): there OpenMP's hand-offs cost more than the math, and on a busy
    machine each one waits for a time slice (docs/benchmarks.md, "One torch thread")."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)
