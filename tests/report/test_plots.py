"""Every plot writes a real PNG from plain synthetic data; display helpers undo normalization exactly."""

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from headstart.report import image_plots, plots

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
CLASSES = ["cat", "dog", "a $long$ class name with spaces"]
MEAN, STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


def _assert_png(path: Path, min_side: int = 150) -> None:
    data = Path(path).read_bytes()
    assert data.startswith(PNG_SIGNATURE)
    assert len(data) > 1024
    with Image.open(path) as img:
        img.load()  # decodes the whole file: a truncated PNG fails here
        assert min(img.size) >= min_side


def _photos(n: int, rng) -> list[Image.Image]:
    return [Image.fromarray(rng.integers(0, 255, (40 + i, 56, 3), dtype=np.uint8)) for i in range(n)]


@pytest.fixture
def rng():
    return np.random.default_rng(0)


@pytest.fixture
def scored(rng):
    """Logits of 3 classes for 90 images, right about 80% of the time."""
    labels = rng.integers(0, 3, 90)
    logits = rng.normal(0, 1, (90, 3))
    logits[np.arange(90), np.where(rng.random(90) < 0.8, labels, (labels + 1) % 3)] += 3
    return logits, labels


def test_image_grid_of_normalized_tensors(tmp_path, rng):
    chw = [((rng.random((3, 32, 32)) - np.array(MEAN)[:, None, None]) / np.array(STD)[:, None, None])
           for _ in range(7)]
    _assert_png(image_plots.plot_image_grid(chw, [CLASSES[i % 3] for i in range(7)], tmp_path / "grid.png",
                                      mean=MEAN, std=STD))


def test_prediction_grid(tmp_path, rng):
    images = _photos(8, rng)
    true = [CLASSES[i % 3] for i in range(8)]
    pred = [CLASSES[(i // 2) % 3] for i in range(8)]
    _assert_png(image_plots.plot_prediction_grid(images, true, pred, rng.random(8), tmp_path / "pred.png"))


def test_top_losses_grid(tmp_path, rng):
    images = _photos(5, rng)
    _assert_png(image_plots.plot_top_losses(images, images[::-1], CLASSES[:2] * 2 + ["cat"], ["dog"] * 5,
                                      rng.random(5), rng.random(5) * 3, tmp_path / "top.png"))


def test_history_from_csv_strings_with_phases(tmp_path):
    rows = [{"epoch": str(e), "train_loss": str(1 / e), "train_accuracy": str(1 - 1 / (e + 1)),
             "val_loss": str(1.2 / e), "val_accuracy": "" if e == 3 else str(1 - 1.2 / (e + 2)),
             "phase": "features" if e <= 4 else "finetune"} for e in range(1, 9)]
    _assert_png(plots.plot_history(rows, tmp_path / "curves.png"))


def _drawn_confusion(matrix, path, monkeypatch) -> list[dict]:
    """What plot_confusion_matrix drew, per panel, read back by meaning: the axis labels, and each cell's
    annotation keyed by (the y tick label of its row, the x tick label of its column), with the image's value there."""
    drawn = []
    save = plots._save
    monkeypatch.setattr(plots, "_save", lambda fig, out, **kw: drawn.append(fig) or save(fig, out, **kw))
    _assert_png(plots.plot_confusion_matrix(matrix, CLASSES, path))
    panels = []
    for ax in drawn.pop().axes:
        rows = dict(zip(ax.get_yticks(), (t.get_text() for t in ax.get_yticklabels())))
        cols = dict(zip(ax.get_xticks(), (t.get_text() for t in ax.get_xticklabels())))
        image = ax.images[0]
        left, right, bottom, top = image.get_extent()
        assert (left, right) == (-0.5, len(CLASSES) - 0.5) and (bottom, top) == (len(CLASSES) - 0.5, -0.5)
        cells = {}
        for text in ax.texts:
            x, y = text.get_position()
            key = (rows[y], cols[x])
            cells[key] = (float(text.get_text()), float(image.get_array()[int(y), int(x)]))  # image row y, col x
        panels.append({"x": ax.get_xlabel(), "y": ax.get_ylabel(), "cells": cells})
    return panels


def test_confusion_matrix_rows_are_true_classes_and_columns_predicted(tmp_path, monkeypatch):
    """matrix[i][j]: images of true class i predicted as class j (runtime/metrics.py), deliberately asymmetric."""
    matrix = np.array([[5, 1, 0], [8, 7, 1], [0, 3, 9]])
    names = [plots._wrap(c, 16) for c in CLASSES]

    def read_back(drawn):
        counts, rates = drawn
        assert (counts["y"], counts["x"]) == (rates["y"], rates["x"]) == ("true", "predicted")
        assert len(counts["cells"]) == len(rates["cells"]) == len(names) ** 2
        for text, pixel in counts["cells"].values():
            assert text == pixel  # the colour and the number of a cell agree
        shown = np.array([[counts["cells"][t, p][0] for p in names] for t in names])
        recall = np.array([[rates["cells"][t, p][0] for p in names] for t in names])
        return shown, recall

    shown, recall = read_back(_drawn_confusion(matrix.tolist(), tmp_path / "cm.png", monkeypatch))
    np.testing.assert_array_equal(shown, matrix)
    np.testing.assert_allclose(recall, matrix / matrix.sum(axis=1, keepdims=True), atol=0.005)  # per true class
    np.testing.assert_allclose(recall.sum(axis=1), 1, atol=0.015)

    # The reading above catches a plot that draws the matrix transposed: read the same way, a transposed
    # drawing differs from the matrix, counts and rates alike.
    flipped, flipped_recall = read_back(_drawn_confusion(matrix.T.tolist(), tmp_path / "cm_t.png", monkeypatch))
    assert not np.array_equal(flipped, matrix)
    assert not np.allclose(flipped_recall, matrix / matrix.sum(axis=1, keepdims=True), atol=0.005)


def test_a_confusion_matrix_of_many_classes_stays_small_and_unwritten(tmp_path, monkeypatch):
    """102 classes: the cells' numbers are left out (20,808 texts made the figure the report's slowest part)
    and the figure's side is capped, so the PNG's size no longer grows with the number of classes."""
    import matplotlib.axes

    texts, sizes = [], []
    real_text, real_save = matplotlib.axes.Axes.text, plots._save

    def count_text(self, *args, **kwargs):
        texts.append(args)
        return real_text(self, *args, **kwargs)

    def spy_save(fig, path):
        sizes.append(tuple(fig.get_size_inches()))
        return real_save(fig, path)

    monkeypatch.setattr(matplotlib.axes.Axes, "text", count_text)
    monkeypatch.setattr(plots, "_save", spy_save)
    k = 102
    matrix = np.random.default_rng(0).integers(0, 5, (k, k)).tolist()
    path = plots.plot_confusion_matrix(matrix, [f"class {i}" for i in range(k)], tmp_path / "cm.png")
    assert texts == [] and max(sizes[0]) <= 2 * plots.MATRIX_INCHES + 1
    assert Image.open(path).size[0] < 4000
    plots.plot_confusion_matrix([[1, 2], [3, 4]], ["a", "b"], tmp_path / "small.png")
    assert len(texts) == 8  # a small matrix keeps its numbers, in both panels


def test_confidence_histogram(tmp_path, rng):
    _assert_png(plots.plot_confidence_histogram(rng.random(50), rng.random(50) > 0.3, tmp_path / "conf.png"))


def test_reliability_before_and_after(tmp_path, scored):
    logits, labels = scored
    _assert_png(plots.plot_reliability(logits, labels, 1.7, tmp_path / "rel.png"))


def test_coverage_curve(tmp_path, scored):
    from headstart.runtime.metrics import softmax

    logits, labels = scored
    _assert_png(plots.plot_coverage(softmax(logits), labels, 0.6, tmp_path / "cov.png"))


@pytest.mark.parametrize("shape", [(32, 3, 3, 3), (768, 3, 16, 16)])
def test_conv_filters(tmp_path, rng, shape):
    _assert_png(image_plots.plot_conv_filters(rng.normal(size=shape), tmp_path / "filters.png"))


def test_to_display_undoes_normalization(rng):
    pixels = rng.random((20, 30, 3)).astype(np.float32)
    chw = ((pixels - np.array(MEAN)) / np.array(STD)).transpose(2, 0, 1)
    np.testing.assert_allclose(image_plots.to_display(chw, MEAN, STD), pixels, atol=1e-5)
    uint8 = (pixels * 255).astype(np.uint8)
    np.testing.assert_allclose(image_plots.to_display(Image.fromarray(uint8)), uint8 / 255.0, atol=1e-6)
