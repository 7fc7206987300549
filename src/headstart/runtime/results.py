"""The prediction result format, shared by every engine (torch and ONNX): one definition, no torch.

`predict_images(inputs, logits_fn, ...)` opens the inputs safely, runs `logits_fn` on the decoded images and
returns one dict per input, in order: {"path", "label", "confidence", "top_k"}, or {"path", "error"} for a
file that cannot be used. The label is "unsure" when the calibrated confidence is below the threshold.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence

import numpy as np
from PIL import Image

from headstart.runtime.images import ImageLoadError, open_image
from headstart.runtime.metrics import softmax

__all__ = ["UNSURE", "build_predictions", "predict_images"]

UNSURE = "unsure"

Inputs = str | os.PathLike | Image.Image | Sequence


def build_predictions(names: Sequence[str], probs: np.ndarray, classes: Sequence[str], *, top_k: int,
                      threshold: float) -> list[dict]:
    """Result dicts from calibrated probabilities [N, classes], one per name."""
    k = max(1, min(top_k, len(classes)))
    out = []
    for name, row in zip(names, probs):
        order = np.argsort(-row, kind="stable")[:k]
        confidence = float(row[order[0]])
        out.append({
            "path": str(name),
            "label": classes[order[0]] if confidence >= threshold else UNSURE,
            "confidence": confidence,
            "top_k": [[classes[j], float(row[j])] for j in order],
        })
    return out


def predict_images(inputs: Inputs, logits_fn: Callable[[list[Image.Image]], np.ndarray], *,
                   classes: Sequence[str], temperature: float, threshold: float, top_k: int,
                   names: Sequence[str] | None = None, reduce_to: int | None = None) -> list[dict]:
    """One result per input, in order: paths are opened safely, PIL images taken as they are, and an
    ImageLoadError in the inputs stands for an item already found unusable (a server's bad upload). The usable
    images go to `logits_fn` in one call; `names` (default: the paths, or "<image i>") label the results;
    `reduce_to`: open_image's (the model's Preprocessing.reduce_to)."""
    items = [inputs] if isinstance(inputs, (str, os.PathLike, Image.Image)) else list(inputs)
    if names is None:
        names = [f"<image {i}>" if isinstance(item, (Image.Image, ImageLoadError)) else str(item)
                 for i, item in enumerate(items)]
    results: list[dict | None] = [None] * len(items)
    images, where = [], []
    for i, item in enumerate(items):
        try:
            if isinstance(item, ImageLoadError):
                raise item
            images.append(item.convert("RGB") if isinstance(item, Image.Image) else
                          open_image(item, reduce_to=reduce_to))
            where.append(i)
        except ImageLoadError as exc:
            results[i] = {"path": names[i], "error": exc.reason}
    if images:
        probs = softmax(logits_fn(images), temperature)
        rows = build_predictions([names[i] for i in where], probs, classes, top_k=top_k, threshold=threshold)
        for i, row in zip(where, rows):
            results[i] = row
    return results  # type: ignore[return-value]
