"""Choosing the device and numeric precision: channels_last + bf16 where the CPU runs it fast, AMP on CUDA."""

from __future__ import annotations

import contextlib
import functools
import logging
import os
from pathlib import Path

__all__ = ["autocast", "cpu_has_fast_bf16", "resolve_accelerator", "resolve_precision"]

log = logging.getLogger(__name__)


@functools.cache
def cpu_has_fast_bf16() -> bool:
    """True where the CPU has native bf16 math (AMX or AVX512-BF16): there bf16 autocast is 2-3x faster.

    Without those instructions bf16 is emulated and slower than fp32, so we detect rather than assume.
    HEADSTART_CPU_BF16=0/1 overrides the detection.
    """
    override = os.environ.get("HEADSTART_CPU_BF16")
    if override in ("0", "1"):
        return override == "1"
    try:
        flags = Path("/proc/cpuinfo").read_text().split()
    except OSError:
        return False
    return "amx_bf16" in flags or "avx512_bf16" in flags


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


def autocast(accelerator: str, precision: str):
    """The autocast context for inference outside Fabric (feature extraction, prediction)."""
    import torch

    if precision == "bf16-mixed":
        return torch.autocast(accelerator, dtype=torch.bfloat16)
    if precision == "16-mixed":
        return torch.autocast(accelerator, dtype=torch.float16)
    return contextlib.nullcontext()
