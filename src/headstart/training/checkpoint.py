"""Writing weights: the final model.safetensors + model.json, and the best-so-far checkpoint, atomically."""

from __future__ import annotations

import io
import signal
import threading
import time
from pathlib import Path

import torch
from torch import nn

from headstart._version import __version__
from headstart.artifact import MODEL_FORMAT, atomic_write_bytes, atomic_write_json, sha256_file

__all__ = ["InterruptGuard", "load_resume", "save_checkpoint", "save_model", "save_resume", "state_bytes"]


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


RESUME_FILE = "resume.pt"


def save_resume(run_dir: Path, state: dict) -> None:
    """The trainer's state for `--resume`. torch.save of tensors and plain containers only, so that
    load_resume can read it with weights_only=True (no code runs on load)."""
    buffer = io.BytesIO()
    torch.save(state, buffer)
    atomic_write_bytes(run_dir / RESUME_FILE, buffer.getvalue())


def load_resume(run_dir: Path) -> dict:
    path = Path(run_dir) / RESUME_FILE
    if not path.is_file():
        from headstart.config import ConfigError

        raise ConfigError(f"{path} not found: nothing to resume (the run finished, or never completed an epoch)")
    return torch.load(path, map_location="cpu", weights_only=True)


class InterruptGuard:
    """While active, the first SIGINT/SIGTERM only sets a flag; the trainer stops at the next batch.

    A second signal falls through to the previous handler (Ctrl-C twice still kills at once).
    """

    def __init__(self):
        self.signal: int | None = None
        self._previous: dict[int, object] = {}

    def __call__(self) -> bool:
        return self.signal is not None

    def _handle(self, signum, frame) -> None:
        if self.signal is not None:
            previous = self._previous.get(signum)
            if callable(previous):
                previous(signum, frame)
            raise KeyboardInterrupt
        self.signal = signum

    def __enter__(self):
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGINT, signal.SIGTERM):
                self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(self, *exc) -> None:
        for sig, previous in self._previous.items():
            signal.signal(sig, previous)
