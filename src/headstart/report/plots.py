"""matplotlib figures written as PNG files. Each function takes plain data and a path, and returns the path."""

from __future__ import annotations

from pathlib import Path

import numpy as np

__all__ = ["plot_confusion_matrix"]


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")  # no display on servers and in CI
    import matplotlib.pyplot as plt

    return plt


def plot_confusion_matrix(matrix: list[list[int]], classes: list[str], path: str | Path, *,
                          title: str = "Confusion matrix") -> Path:
    """Raw counts and row-normalised rates side by side."""
    plt = _pyplot()
    counts = np.asarray(matrix, dtype=float)
    rates = counts / np.clip(counts.sum(axis=1, keepdims=True), 1, None)
    size = max(4.0, 0.6 * len(classes) + 2)
    fig, axes = plt.subplots(1, 2, figsize=(2 * size + 1, size))
    for ax, data, name, fmt in ((axes[0], counts, "counts", "{:.0f}"), (axes[1], rates, "normalized", "{:.2f}")):
        ax.imshow(data, cmap="Blues", vmin=0)
        ax.set_title(f"{title} ({name})")
        ax.set_xticks(range(len(classes)), classes, rotation=45, ha="right")
        ax.set_yticks(range(len(classes)), classes)
        ax.set_xlabel("predicted")
        ax.set_ylabel("true")
        top = data.max() if data.size else 0
        for i in range(len(classes)):
            for j in range(len(classes)):
                ax.text(j, i, fmt.format(data[i, j]), ha="center", va="center",
                        color="white" if data[i, j] > top / 2 else "black", fontsize=8)
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
