"""The image figures: photo grids (samples, predictions, top losses with Grad-CAM) and the first convolution's
filters, written as PNG files with plots.py's helpers.

No torch here: images come as PIL images or arrays (HWC uint8/float, or CHW normalized with mean/std, which is
what a torchvision transform returns; `np.asarray` turns a CPU tensor into such an array).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from PIL import Image

from headstart.report.plots import CORRECT, DPI, WRONG, _canvas, _figure, _plain, _save, _wrap

__all__ = ["plot_conv_filters", "plot_image_grid", "plot_prediction_grid", "plot_top_losses", "to_display"]


def to_display(image, mean: Sequence[float] | None = None, std: Sequence[float] | None = None) -> np.ndarray:
    """An HxWx3 float array in [0, 1] from a PIL image, an HWC array, or a normalized CHW array/tensor."""
    arr = np.asarray(image.convert("RGB") if hasattr(image, "convert") else image, dtype=np.float32)
    if arr.ndim == 3 and arr.shape[0] in (1, 3) and arr.shape[-1] not in (1, 3):
        arr = arr.transpose(1, 2, 0)  # CHW (a transform's output) -> HWC
        if mean is not None and std is not None:
            arr = arr * np.asarray(std, dtype=np.float32) + np.asarray(mean, dtype=np.float32)
    elif arr.max(initial=0) > 1:
        arr = arr / 255.0
    if arr.ndim == 2 or arr.shape[-1] == 1:
        arr = np.repeat(arr.reshape(arr.shape[0], arr.shape[1], 1), 3, axis=2)
    return np.clip(arr, 0, 1)


def _tile(image, side: int, mean: Sequence[float] | None = None, std: Sequence[float] | None = None) -> Image.Image:
    """The image as RGB uint8, scaled (with antialiasing) so that its longer side is `side` pixels."""
    tile = Image.fromarray((to_display(image, mean, std) * 255).round().astype(np.uint8))
    scale = side / max(tile.size)
    return tile.resize((max(1, round(tile.width * scale)), max(1, round(tile.height * scale))),
                       Image.Resampling.BICUBIC)


def _photo_grid(tiles: Sequence[Image.Image], captions: Sequence[str], colors: Sequence[str], path: str | Path, *,
                columns: int, title: str, cell: int, fontsize: float) -> Path:
    """Photos in a grid, each under a coloured caption, as one mosaic image plus text on a single figure.

    One image with the photos pasted in, scaled by PIL with antialiasing, takes a fraction of the time that a
    subplot per photo took in layout and drawing (docs/benchmarks.md, "Report figures")."""
    columns = max(1, min(columns, len(tiles)))
    rows = [range(start, min(start + columns, len(tiles))) for start in range(0, len(tiles), columns)]
    gap, header, line = 10, 36, fontsize * 1.25 * DPI / 72  # pixels: between cells, title, a caption line
    # each row as tall as its tallest caption and photo: (caption height, photo height)
    heights = [(math.ceil(max(captions[i].count("\n") + 1 for i in row) * line) + 4,
                max(tiles[i].height for i in row)) for row in rows]
    width, height = columns * (cell + gap) + gap, header + sum(c + h + gap for c, h in heights)
    mosaic = Image.new("RGB", (width, height), "white")
    fig = _canvas((width / DPI, height / DPI))
    top = header
    for row, (caption, tallest) in zip(rows, heights):
        top += caption
        for column, i in enumerate(row):
            left = gap + column * (cell + gap)
            mosaic.paste(tiles[i], (left + (cell - tiles[i].width) // 2, top))
            fig.text((left + cell / 2) / width, 1 - (top - 2) / height, captions[i], ha="center", va="bottom",
                     fontsize=fontsize, color=colors[i], linespacing=1.1)
        top += tallest + gap
    fig.figimage(np.asarray(mosaic), 0, 0, zorder=0)
    fig.suptitle(_plain(title), fontsize=12, y=1 - 8 / height, va="top")
    return _save(fig, path, photo=True)


def plot_image_grid(images: Sequence, labels: Sequence[str], path: str | Path, *,
                    mean: Sequence[float] | None = None, std: Sequence[float] | None = None,
                    title: str = "Training samples (as augmented)", columns: int = 6) -> Path:
    """Images with their labels; normalized CHW arrays are un-normalized with mean/std for display."""
    cell = 160
    return _photo_grid([_tile(image, cell, mean, std) for image in images], [_wrap(label) for label in labels],
                       ["black"] * len(images), path, columns=columns, title=title, cell=cell, fontsize=9)


def plot_prediction_grid(images: Sequence, true: Sequence[str], pred: Sequence[str],
                         confidence: Sequence[float], path: str | Path, *,
                         mean: Sequence[float] | None = None, std: Sequence[float] | None = None,
                         title: str = "Predictions", columns: int = 6) -> Path:
    """Each image titled true/pred/confidence, green when right and red when wrong."""
    cell = 160
    return _photo_grid([_tile(image, cell, mean, std) for image in images],
                       [f"true: {_wrap(t, 18)}\npred: {_wrap(p, 18)}\n{c:.2f}" for t, p, c in zip(true, pred,
                                                                                               confidence)],
                       [CORRECT if t == p else WRONG for t, p in zip(true, pred)], path, columns=columns,
                       title=title, cell=cell, fontsize=8)


def plot_top_losses(images: Sequence, overlays: Sequence, true: Sequence[str], pred: Sequence[str],
                    confidence: Sequence[float], loss: Sequence[float], path: str | Path, *,
                    title: str = "Top losses", pairs_per_row: int = 2) -> Path:
    """Each case as two panels, the image and its Grad-CAM for the predicted class, titled true/pred."""
    cell = 200
    tiles, captions, colors = [], [], []
    for image, cam, t, p, c, value in zip(images, overlays, true, pred, confidence, loss):
        tiles += [_tile(image, cell), _tile(cam, cell)]
        captions += [f"true: {_wrap(t, 20)}\npred: {_wrap(p, 20)}", f"Grad-CAM, {c:.2f}\nloss {value:.2f}"]
        colors += [CORRECT if t == p else WRONG] * 2
    return _photo_grid(tiles, captions, colors, path, columns=2 * pairs_per_row, title=title, cell=cell,
                       fontsize=9)

def plot_conv_filters(weights: np.ndarray, path: str | Path, *, max_filters: int = 64,
                      title: str = "First convolution's filters") -> Path:
    """Filters [N, 3, k, k] as RGB tiles, each stretched to [0, 1] on its own so its pattern shows."""
    weights = np.asarray(weights, dtype=np.float32)
    total = len(weights)
    weights = weights[:max_filters]
    n, _, kh, kw = weights.shape
    columns = math.ceil(math.sqrt(n))
    rows = math.ceil(n / columns)
    # one mosaic in one Axes: a subplot per filter is slow to lay out and draw (docs/benchmarks.md, "Report figures")
    pad = max(1, kh // 4)
    mosaic = np.ones((rows * (kh + pad) + pad, columns * (kw + pad) + pad, 3), dtype=np.float32)
    for i, w in enumerate(weights):
        w = w.transpose(1, 2, 0)
        r, c = divmod(i, columns)
        top, left = pad + r * (kh + pad), pad + c * (kw + pad)
        mosaic[top:top + kh, left:left + kw] = (w - w.min()) / max(float(w.max() - w.min()), 1e-8)
    side = min(7.0, max(4.5, 0.6 * columns))
    fig, ax = _figure((side, side * mosaic.shape[0] / mosaic.shape[1] + 0.4))
    ax.imshow(mosaic, interpolation="nearest")
    ax.axis("off")
    shown = f"{n} of {total}" if n < total else f"{n}"
    ax.set_title(_plain(f"{title}: {shown}, {kh}x{kw} px"), fontsize=10)
    fig.tight_layout()
    return _save(fig, path)
