"""The figure of an auto run's search: each candidate recipe's cross-validated accuracy against its cost."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from headstart.report.plots import CORRECT, _figure, _place_labels, _plain, _save, _wrap

__all__ = ["plot_search"]

OTHER = "#4c72b0"
# Seconds spanning more than this ratio go on a log axis: the cheap heads would otherwise share one pixel column.
LOG_SPAN = 20


def plot_search(names: Sequence[str], seconds: Sequence[float], cv_mean: Sequence[float],
                cv_std: Sequence[float], path: str | Path, *, winner: str | None = None, folds: int | None = None,
                title: str = "Search") -> Path:
    """CV accuracy (bar: ± one std over the folds) against seconds spent per candidate, each point labelled,
    the winner highlighted. Up and to the left is better."""
    fig, ax = _figure((8.5, 5.2))
    labels, points = [], []
    for name, x, y, err in zip(names, seconds, cv_mean, cv_std):
        won = name == winner
        color, size = (CORRECT, 11) if won else (OTHER, 7)
        ax.errorbar([x], [y], yerr=[err], fmt="o", color=color, markersize=size, capsize=4, elinewidth=1.5,
                    markeredgecolor="black" if won else color, zorder=3 if won else 2)
        text = _wrap(name, 36) + ("\n(winner)" if won else "")
        labels.append(ax.annotate(text, (x, y), xytext=(0, 0), textcoords="offset points", fontsize=8,
                                  fontweight="bold" if won else "normal", color=color, zorder=5, multialignment="left",
                                  bbox={"boxstyle": "round,pad=0.2", "facecolor": "white", "edgecolor": color,
                                        "alpha": 0.9}))
        points.append((x, y, size / 2))
    if names:
        low = min(m - s for m, s in zip(cv_mean, cv_std))
        high = max(m + s for m, s in zip(cv_mean, cv_std))
        pad = max(0.02, (high - low) * 0.3)
        ax.set_ylim(max(0.0, low - pad), high + pad)  # past 1.0 when needed, so a bar reaching it shows whole
        ax.set_yticks([t for t in ax.get_yticks() if max(0.0, low - pad) <= t <= 1.0])
        fastest, slowest = max(min(seconds), 1e-3), max(max(seconds), 1e-3)
        if slowest / fastest > LOG_SPAN:
            ax.set_xscale("log")
            ax.set_xlim(fastest / 2, slowest * 4)  # room for the labels on either side
        else:
            ax.set_xlim(0, slowest * 1.6)
    ax.set_xlabel("seconds spent on the candidate")
    ax.set_ylabel("val accuracy" if folds == 1 else
                  f"CV accuracy (mean ± std over {folds} folds)" if folds else "CV accuracy (mean ± std)")
    ax.grid(alpha=0.3)
    ax.set_title(_plain(f"{title}: up and to the left is better"), fontsize=11)
    fig.tight_layout()
    _place_labels(fig, ax, labels, points)
    return _save(fig, path)
