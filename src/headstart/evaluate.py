"""`headstart evaluate RUN DATA`: score a saved run on a data split, with plots. Uses inference, data and report."""

from __future__ import annotations

import numpy as np

from headstart.runtime.metrics import classification_metrics, coverage_curve, softmax, threshold_for_accuracy

__all__ = ["evaluate_run"]


def evaluate_run(run_dir, data, *, split: str | None = None, threshold: float | None = None, out_dir=None,
                 batch_size: int = 32, target_accuracy: float | None = None, tta: str = "none") -> dict:
    """Score a saved run on DATA with its own split (split.json); write evaluation JSON and plots.

    DATA is a folder, a CSV file list or a shards folder (see data/folders.py `discover`). `split`: which split
    of DATA to score; by default test when present, else val. Unreadable files are skipped and listed.
    Reports calibration (ECE before/after temperature, reliability diagram), rejection at `threshold`, the
    accuracy/coverage curve, and with `target_accuracy` the threshold that reaches it.
    """
    from pathlib import Path

    from headstart.artifact import atomic_write_json
    from headstart.data.folders import DataError, discover
    from headstart.data.loading import decode_split
    from headstart.inference.classifier import load
    from headstart.report.plots import plot_confusion_matrix, plot_coverage, plot_reliability

    run_dir = Path(run_dir)
    clf = load(run_dir)
    split_file = run_dir / "split.json"
    dataset = discover(data, split_file=split_file if split_file.is_file() else None)
    if dataset.classes != clf.classes:
        extra = sorted(set(dataset.classes) - set(clf.classes))
        if extra:
            raise DataError(f"{data} has classes the model was not trained on: {extra}")
    index = {name: i for i, name in enumerate(clf.classes)}
    split = split or ("test" if "test" in dataset.splits else "val")
    if split not in dataset.splits:
        raise DataError(f"{data} has no {split} split (found: {', '.join(dataset.splits)})")
    # The loader train uses: files, CSV-listed files and shard members (SHARD.tar#member) alike, decoded in
    # threads, one shard open at a time; a bad item is skipped and listed, never a crash.
    decoded = decode_split(dataset.splits[split], short_side=None)
    skipped = [{"path": path, "reason": reason} for path, reason in decoded.failures]
    logits = clf.logits(decoded.images, batch_size, tta=tta)
    labels = np.array([index[dataset.classes[label]] for label in decoded.labels], dtype=np.int64)
    threshold = clf.threshold if threshold is None else threshold
    metrics = classification_metrics(logits, labels, clf.classes, temperature=clf.temperature,
                                      threshold=threshold)
    probs = softmax(logits, clf.temperature)
    metrics.update({"split": split, "data": dataset.root, "skipped": skipped, "classes": clf.classes, "tta": tta,
                    "coverage_curve": coverage_curve(probs, labels)})
    if target_accuracy is not None:
        metrics["target"] = {"accuracy": target_accuracy,
                             "suggested": threshold_for_accuracy(probs, labels, target_accuracy)}
    out_dir = Path(out_dir) if out_dir else run_dir / "evaluation"
    metrics["plots"] = {
        "confusion": str(plot_confusion_matrix(metrics["confusion_matrix"], clf.classes,
                                               out_dir / f"confusion_{split}.png")),
        "reliability": str(plot_reliability(logits, labels, clf.temperature, out_dir / f"reliability_{split}.png")),
        "coverage": str(plot_coverage(probs, labels, threshold, out_dir / f"coverage_{split}.png")),
    }
    metrics["confusion_png"] = metrics["plots"]["confusion"]
    atomic_write_json(out_dir / f"evaluation_{split}.json", metrics)
    return metrics
