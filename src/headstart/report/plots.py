"""matplotlib figures written as PNG files. Each function takes plain data and a path, and returns the path.

The charts (curves, confusion matrix, calibration, coverage, leaderboard) and the helpers every figure shares;
the image figures are in image_plots.py.
"""

from __future__ import annotations

import itertools
import math
import textwrap
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
from PIL import Image

__all__ = [
    "plot_confidence_histogram",
    "plot_confusion_matrix",
    "plot_coverage",
    "plot_history",
    "plot_leaderboard",
    "plot_reliability",
    "warm_up",
]

CORRECT, WRONG = "#1a7f37", "#cf222e"  # green / red, readable on white and for most colour-blind readers
DPI = 100



# Confusion matrices: cells written out up to this many classes; the figure's side in inches at most; tick labels
# for every class up to MATRIX_TICKS, else for every n-th.
ANNOTATED_CLASSES = 20
MATRIX_INCHES = 14.0
MATRIX_TICKS = 60

def _canvas(figsize: tuple[float, float]):
    """An empty figure at DPI on its own Agg canvas.

    Not pyplot: no global backend switch (a notebook that builds a report keeps its own), no figure manager to
    close, and the canvas's pixels can be read back after one draw."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=figsize, dpi=DPI)
    FigureCanvasAgg(fig)
    return fig


def warm_up() -> None:
    """Import matplotlib and draw some text once (loading the font cache), so that the first real figure
    costs only its own drawing: for a process that draws figures later (report/figures.py)."""
    fig = _canvas((1, 1))
    fig.text(0.5, 0.5, "headstart")
    fig.canvas.draw()


def _figure(figsize: tuple[float, float], **subplots):
    """(figure, Axes) as from pyplot.subplots: `subplots` goes to Figure.subplots."""
    fig = _canvas(figsize)
    return fig, fig.subplots(**subplots)


def _save(fig, path: str | Path, *, photo: bool = False) -> Path:
    """Write the figure as PNG after one draw of its canvas. savefig draws a figure that went through
    tight_layout twice (a layout pass, then the real one), and drawing is most of what a plot costs.
    `photo`: a grid of photographs, stored as 256 dithered colours, which keeps the page a third the size
    at a quality that reads the same."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.canvas.draw()
    rgb = Image.fromarray(np.asarray(fig.canvas.buffer_rgba())).convert("RGB")
    if photo:
        palette = rgb.quantize(256, method=Image.Quantize.FASTOCTREE)
        rgb = rgb.quantize(palette=palette, dither=Image.Dither.FLOYDSTEINBERG)
    rgb.save(path, format="PNG")
    return path


def _plain(text: object) -> str:
    """Text matplotlib shows as written: a class folder named "$x$" would otherwise be parsed as math."""
    return str(text).replace("$", r"\$")


def _wrap(text: object, width: int = 22) -> str:
    return _plain("\n".join(textwrap.wrap(str(text), width, break_long_words=True)) or str(text))



def _column(rows: Sequence[Mapping], key: str) -> np.ndarray:
    """A history column as floats; missing or empty cells (a CSV written with extra keys) become NaN."""
    values = []
    for row in rows:
        try:
            values.append(float(row.get(key)))
        except (TypeError, ValueError):
            values.append(float("nan"))
    return np.asarray(values)


def plot_history(rows: Sequence[Mapping], path: str | Path, *, title: str = "Training curves") -> Path:
    """Loss and accuracy per epoch, train and val. Rows may hold strings (read back from history.csv)."""
    epochs = _column(rows, "epoch")
    fig, (ax_loss, ax_acc) = _figure((10.5, 3.8), ncols=2)
    for ax, metric in ((ax_loss, "loss"), (ax_acc, "accuracy")):
        for split, style in (("train", "-o"), ("val", "-s")):
            ax.plot(epochs, _column(rows, f"{split}_{metric}"), style, markersize=3, label=split)
        ax.set_xlabel("epoch")
        ax.set_ylabel(metric)
        ax.set_title(metric)
        ax.grid(alpha=0.3)
        ax.legend()
        # auto mode: features epochs, then fine-tuning; mark where the phase changes
        phases = [row.get("phase") for row in rows]
        for i in range(1, len(phases)):
            if phases[i] != phases[i - 1] and phases[i]:
                ax.axvline(epochs[i] - 0.5, color="gray", linestyle="--", linewidth=1)
                ax.text(epochs[i] - 0.4, ax.get_ylim()[1], f" {phases[i]}", va="top", fontsize=8,
                        color="gray")
    ax_acc.set_ylim(-0.02, 1.02)
    fig.suptitle(_plain(title), fontsize=12)
    fig.tight_layout()
    return _save(fig, path)


def plot_confusion_matrix(matrix: list[list[int]], classes: list[str], path: str | Path, *,
                          title: str = "Confusion matrix") -> Path:
    """Raw counts and row-normalised rates side by side, each cell written out. With many classes the cells are
    left unwritten and the figure keeps a readable size: its cost no longer grows with the square of them."""
    counts = np.asarray(matrix, dtype=float)
    rates = counts / np.clip(counts.sum(axis=1, keepdims=True), 1, None)
    k = len(classes)
    size = min(max(4.0, 0.6 * k + 2), MATRIX_INCHES)
    fig, axes = _figure((2 * size + 1, size), ncols=2)
    ticks = range(0, k, max(1, -(-k // MATRIX_TICKS)))  # every class up to MATRIX_TICKS, else every n-th
    for ax, data, name, fmt in ((axes[0], counts, "counts", "{:.0f}"), (axes[1], rates, "normalized", "{:.2f}")):
        ax.imshow(data, cmap="Blues", vmin=0)
        ax.set_title(_plain(f"{title} ({name})"))
        ax.set_xticks(list(ticks), [_wrap(classes[i], 16) for i in ticks], rotation=45 if k <= MATRIX_TICKS
                      else 90, ha="right" if k <= MATRIX_TICKS else "center", fontsize=None if k <= 20 else 6)
        ax.set_yticks(list(ticks), [_wrap(classes[i], 16) for i in ticks], fontsize=None if k <= 20 else 6)
        ax.set_xlabel("predicted")
        ax.set_ylabel("true")
        if k > ANNOTATED_CLASSES:
            continue
        top = data.max() if data.size else 0
        for i in range(k):
            for j in range(k):
                ax.text(j, i, fmt.format(data[i, j]), ha="center", va="center",
                        color="white" if data[i, j] > top / 2 else "black", fontsize=8)
    fig.tight_layout()
    return _save(fig, path)


def plot_confidence_histogram(confidence: Sequence[float], correct: Sequence[bool], path: str | Path, *,
                              title: str = "Confidence of predictions", bins: int = 20) -> Path:
    """How sure the model is when it is right and when it is wrong."""
    confidence = np.asarray(confidence, dtype=float)
    correct = np.asarray(correct, dtype=bool)
    edges = np.linspace(0, 1, bins + 1)
    fig, ax = _figure((7, 3.6))
    ax.hist([confidence[correct], confidence[~correct]], bins=edges, stacked=True, color=[CORRECT, WRONG],
            label=[f"correct ({int(correct.sum())})", f"wrong ({int((~correct).sum())})"])
    ax.set_xlim(0, 1)
    ax.set_xlabel("confidence of the predicted class")
    ax.set_ylabel("images")
    ax.set_title(_plain(title))
    ax.legend(loc="upper left")
    ax.grid(alpha=0.3, axis="y")
    fig.tight_layout()
    return _save(fig, path)


def _reliability_bins(probs: np.ndarray, labels: np.ndarray, bins: int):
    # The same equal-width (lo, hi] bins as headstart.runtime.metrics.expected_calibration_error.
    confidence = probs.max(axis=1)
    correct = probs.argmax(axis=1) == labels
    edges = np.linspace(0, 1, bins + 1)
    acc, conf, count = np.full(bins, np.nan), np.full(bins, np.nan), np.zeros(bins, dtype=int)
    for b, (lo, hi) in enumerate(itertools.pairwise(edges)):
        inside = (confidence > lo) & (confidence <= hi)
        count[b] = inside.sum()
        if count[b]:
            acc[b], conf[b] = correct[inside].mean(), confidence[inside].mean()
    return edges, acc, conf, count


def plot_reliability(logits: np.ndarray, labels: Sequence[int], temperature: float, path: str | Path, *,
                     bins: int = 15, title: str = "Reliability") -> Path:
    """Accuracy against confidence per bin, before (T=1) and after temperature scaling."""
    from headstart.runtime.metrics import expected_calibration_error, softmax

    labels = np.asarray(labels)
    fig, axes = _figure((10, 4.4), ncols=2, sharey=True)
    for ax, t, name in ((axes[0], 1.0, "before"), (axes[1], temperature, "after")):
        probs = softmax(logits, t)
        edges, acc, conf, count = _reliability_bins(probs, labels, bins)
        width = edges[1] - edges[0]
        centers = edges[:-1] + width / 2
        filled = count > 0
        ax.bar(centers[filled], acc[filled], width=width * 0.95, color="#4c72b0", edgecolor="white",
               label="accuracy")
        ax.bar(centers[filled], (conf - acc)[filled], bottom=acc[filled], width=width * 0.95, color="none",
               edgecolor=WRONG, hatch="//", label="gap to confidence")
        ax.plot([0, 1], [0, 1], "--", color="gray", linewidth=1, label="perfect calibration")
        ece = expected_calibration_error(probs, labels, bins)
        ax.set_title(f"{name} (T={t:.3g}): ECE {ece:.3f}", fontsize=11)
        ax.set_xlim(0, 1)
        ax.set_ylim(0, 1.02)
        ax.set_xlabel("confidence")
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("accuracy")
    axes[0].legend(loc="upper left", fontsize=8)
    fig.suptitle(_plain(f"{title} ({len(labels)} images, {bins} bins)"), fontsize=12)
    fig.tight_layout()
    return _save(fig, path)


def plot_coverage(probs: np.ndarray, labels: Sequence[int], threshold: float, path: str | Path, *,
                  title: str = "Accuracy and coverage") -> Path:
    """Accuracy of the kept predictions and the share kept as the threshold rises; the chosen one marked."""
    from headstart.runtime.metrics import coverage_curve

    labels = np.asarray(labels)
    rows = coverage_curve(probs, labels)
    t = np.array([r["threshold"] for r in rows])
    coverage = np.array([r["coverage"] for r in rows])
    accuracy = np.array([r["accuracy"] for r in rows])
    chosen = coverage_curve(probs, labels, np.array([threshold]))[0]
    fig, (left, right) = _figure((10.5, 4), ncols=2)
    left.plot(t, accuracy, label="accuracy of kept", color="#4c72b0")
    left.plot(t, coverage, label="coverage (share kept)", color="#dd8452")
    left.axvline(threshold, color="gray", linestyle="--", linewidth=1)
    left.text(threshold, 0.02, f" threshold {threshold:.2f}", fontsize=8, color="gray")
    left.set_xlabel("confidence threshold")
    left.set_ylim(-0.02, 1.02)
    left.legend(loc="lower left", fontsize=8)
    left.grid(alpha=0.3)
    right.plot(coverage, accuracy, color="#4c72b0")
    right.plot([chosen["coverage"]], [chosen["accuracy"]], "o", color=WRONG, markersize=8,
               label=f"threshold {threshold:.2f}: coverage {chosen['coverage']:.0%}, "
                     f"accuracy {chosen['accuracy']:.1%}")
    right.set_xlabel("coverage")
    right.set_ylabel("accuracy")
    right.set_xlim(-0.02, 1.02)
    worst = np.nanmin(accuracy) if np.isfinite(accuracy).any() else 0.0
    right.set_ylim(max(0.0, min(0.9, worst - 0.05)), 1.01)
    right.legend(loc="lower left", fontsize=8)
    right.grid(alpha=0.3)
    fig.suptitle(_plain(title), fontsize=12)
    fig.tight_layout()
    return _save(fig, path)



def _overlap(a, b) -> float:
    """Area shared by two display-space boxes (x0, y0, x1, y1)."""
    return max(0.0, min(a[2], b[2]) - max(a[0], b[0])) * max(0.0, min(a[3], b[3]) - max(a[1], b[1]))


def _place_labels(fig, ax, labels, points) -> None:
    """Move each label to the corner of its point where it covers the fewest other points and labels.

    labels: annotations at their point; points: (x, y, radius in points) per label, in data coordinates.
    A handful of points does not warrant a dependency such as adjustText."""
    renderer = fig.canvas.get_renderer()
    scale = fig.dpi / 72
    inner = ax.get_window_extent(renderer)
    marks = []
    for x, y, r in points:
        cx, cy = ax.transData.transform((x, y))
        marks.append((cx - r * scale, cy - r * scale, cx + r * scale, cy + r * scale))
    placed: list[tuple[float, float, float, float]] = []
    for label, (_, _, r) in zip(labels, points):
        best = None
        for sx, sy in ((1, 1), (1, -1), (-1, 1), (-1, -1)):
            label.set_position((sx * (r + 3), sy * 3))
            label.set_ha("left" if sx > 0 else "right")
            label.set_va("bottom" if sy > 0 else "top")
            box = label.get_window_extent(renderer).extents
            area = (box[2] - box[0]) * (box[3] - box[1])
            cost = sum(_overlap(box, m) for m in marks) + sum(_overlap(box, p) for p in placed)
            cost += area - _overlap(box, inner.extents)  # any part outside the axes is hidden or clipped
            if best is None or cost < best[0]:
                best = (cost, sx, sy, box)
        _, sx, sy, box = best
        label.set_position((sx * (r + 3), sy * 3))
        label.set_ha("left" if sx > 0 else "right")
        label.set_va("bottom" if sy > 0 else "top")
        placed.append(tuple(box))


def plot_leaderboard(names: Sequence[str], latency_ms: Sequence[float], accuracy: Sequence[float],
                     size_mb: Sequence[float], path: str | Path, *,
                     test_accuracy: Sequence[float | None] | None = None,
                     latency_p95_ms: Sequence[float] | None = None, winner: str | None = None,
                     failed: Sequence[str] = (), title: str = "Backbones compared") -> Path:
    """Val accuracy against single-image latency (p50, a bar to p95), marker area ~ size on disk, each point
    labelled; test accuracy as a hollow diamond on the same vertical. Up and to the left is better."""
    import matplotlib

    fig, ax = _figure((8.5, 5.4))
    colors = matplotlib.colormaps["tab10"].colors
    top_size = max(size_mb, default=1.0) or 1.0
    labels, points = [], []
    for i, (name, x, y, mb) in enumerate(zip(names, latency_ms, accuracy, size_mb)):
        color = colors[i % len(colors)]
        if latency_p95_ms is not None:
            ax.plot([x, latency_p95_ms[i]], [y, y], color=color, linewidth=2.5, alpha=0.6, zorder=3,
                    label="latency p50 to p95" if i == 0 else None)
        test = test_accuracy[i] if test_accuracy is not None else None
        if test is not None:
            ax.plot([x, x], [y, test], ":", color=color, linewidth=1, zorder=3)
            ax.scatter([x], [test], s=40, facecolors="white", edgecolors=color, linewidths=1.5, marker="D",
                       zorder=4, label="test accuracy" if i == 0 else None)
        area = 60 + 900 * mb / top_size
        ax.scatter([x], [y], s=area, color=color, alpha=0.55, edgecolors="black",
                   linewidths=1.8 if name == winner else 0.5, zorder=2,
                   label="val accuracy (area ~ size on disk)" if i == 0 else None)
        text = f"{_plain(name)}{' (winner)' if name == winner else ''}\n{mb:.1f} MB, {x:.0f} ms"
        labels.append(ax.annotate(text, (x, y), xytext=(0, 0), textcoords="offset points", fontsize=9,
                                  fontweight="bold" if name == winner else "normal", zorder=5,
                                  bbox={"boxstyle": "round,pad=0.2", "facecolor": "white", "edgecolor": color,
                                        "alpha": 0.9}))
        points.append((x, y, math.sqrt(area) / 2))
    values = [v for v in [*accuracy, *(test_accuracy or [])] if v is not None]
    if values:
        low, high = min(values), max(values)
        pad = max(0.02, (high - low) * 0.4)
        bottom = max(0.0, low - pad)
        ax.set_ylim(bottom, high + pad)  # past 1.0 when needed, so a point at 1.0 is not cut in half
        ax.set_yticks([t for t in ax.get_yticks() if bottom <= t <= 1.0])
    right = max([*(latency_p95_ms or []), *latency_ms], default=1.0)
    ax.set_xlim(0, right * 1.5)  # room for labels right of the slowest point
    ax.set_xlabel("single-image latency, ms (p50; bar to p95)")
    ax.set_ylabel("accuracy")
    ax.grid(alpha=0.3)
    if names:
        ax.legend(loc="lower right", fontsize=8, markerscale=0.6)
    if failed:
        fig.text(0.01, 0.01, _plain(f"failed: {', '.join(failed)}"), fontsize=8, color=WRONG)
    ax.set_title(_plain(f"{title}: up and to the left is better"), fontsize=11)
    fig.tight_layout(rect=(0, 0.03 if failed else 0, 1, 1))
    _place_labels(fig, ax, labels, points)
    return _save(fig, path)
