"""Writing weights: the final model.safetensors + model.json, and the best-so-far checkpoint, atomically."""

from __future__ import annotations

import time
from pathlib import Path

import torch
from torch import nn

from headstart._version import __version__
from headstart.artifact import MODEL_FORMAT, atomic_write_bytes, atomic_write_json, sha256_file

__all__ = ["save_checkpoint", "save_model", "state_bytes"]


def state_bytes(state: dict[str, torch.Tensor], metadata: dict[str, str] | None = None) -> bytes:
    from safetensors.torch import save

    return save({k: v.detach().cpu().contiguous() for k, v in state.items()}, metadata=metadata)


def save_checkpoint(run_dir: Path, state: dict[str, torch.Tensor], row: dict) -> None:
    """The best weights so far (head only in features mode), so a crash never loses the best epoch."""
    atomic_write_bytes(run_dir / "checkpoint.safetensors", state_bytes(state, {"epoch": str(row["epoch"])}))


def save_model(run_dir: Path, net: nn.Module, manifest: dict) -> dict:
    """model.safetensors first, then model.json with its sha256: a reader never sees a json without weights."""
    weights = run_dir / "model.safetensors"
    atomic_write_bytes(weights, state_bytes(net.state_dict()))
    full = {
        "format": MODEL_FORMAT,
        "headstart_version": __version__,
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        **manifest,
        "weights_file": weights.name,
        "weights_sha256": sha256_file(weights),
        "weights_bytes": weights.stat().st_size,
    }
    atomic_write_json(run_dir / "model.json", full)
    return full
