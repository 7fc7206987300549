"""`headstart evaluate RUN DATA`: score a saved run on a data split, with plots. Uses inference, data and report."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np

from headstart.runtime.metrics import classification_metrics, coverage_curve, softmax, threshold_for_accuracy

__all__ = ["evaluate_run"]


def evaluate_run(run_dir, data, *, split: str | None = None, threshold: float | None = None, out_dir=None,
                 batch_size: int = 32, target_accuracy: float | None = None, tta: str = "none") -> dict:
    """Score a saved run on DATA with its own split (split.json); write evaluation JSON and plots.

    DATA is a folder, a CSV file list or a shards folder (see data/folders.py `discover`). `split`: which split
    of DATA to score; by default test when present, else val. DATA without splits of its own (DATA/<class>/*)
    is scored whole as split "all", unless the run trained on it: then on the val split that it held out.
    Unreadable files are skipped and listed.
    Reports calibration (ECE before/after temperature, reliability diagram), rejection at `threshold`, the
    accuracy/coverage curve, and with `target_accuracy` the threshold that reaches it.
    """
    from headstart.artifact import atomic_write_json
    from headstart.data.dataset import DataError
    from headstart.data.folders import discover
    from headstart.data.loading import decode_split
    from headstart.inference.classifier import load
    from headstart.report.plots import plot_confusion_matrix, plot_coverage, plot_reliability

    run_dir = Path(run_dir)
    clf = load(run_dir)
    split_file = run_dir / "split.json"
    record = json.loads(split_file.read_text()) if split_file.is_file() else {}
    dataset, notes = discover(data), []
    if dataset.split_origin != "generated" and split_file.is_file():  # split folders: the run's own val, as trained
        dataset = discover(data, split_file=split_file)
    elif dataset.split_origin == "generated":  # no split of its own: the val that discover held out is arbitrary
        trained = _trained_on(dataset, record)
        if record.get("origin") == "generated" and (trained or _holds_recorded_files(dataset, record)):
            dataset = discover(data, split_file=split_file)  # the run's own data: its held-out val, never train
        elif split in (None, "all"):
            dataset.splits = {"all": sorted(dataset.splits["train"] + dataset.splits["val"])}
            split = "all"
            if trained:
                notes.append(f"{trained} of these images are in the run's training split: their scores are "
                             f"optimistic")
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
    decoded = decode_split(dataset.splits[split], short_side=None, reduce_to=clf.preprocessing.reduce_to)
    skipped = [{"path": path, "reason": reason} for path, reason in decoded.failures]
    logits = clf.logits(decoded.images, batch_size, tta=tta)
    labels = np.array([index[dataset.classes[label]] for label in decoded.labels], dtype=np.int64)
    threshold = clf.threshold if threshold is None else threshold
    metrics = classification_metrics(logits, labels, clf.classes, temperature=clf.temperature,
                                      threshold=threshold)
    probs = softmax(logits, clf.temperature)
    metrics.update({"split": split, "data": dataset.root, "skipped": skipped, "classes": clf.classes, "tta": tta,
                    "coverage_curve": coverage_curve(probs, labels), "notes": notes})
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


def _trained_on(dataset, record: dict) -> int:
    """How many of the dataset's images are, by path, in the training split that split.json records."""
    from headstart.data.dataset import data_base

    if not record.get("root"):
        return 0
    base = data_base(record["root"])
    train = {os.path.normpath(base / f) for f in record.get("files", {}).get("train", [])}
    return sum(p in train for items in dataset.splits.values() for p, _ in items)


def _holds_recorded_files(dataset, record: dict) -> bool:
    """Whether the dataset holds every file split.json records, by path relative to its root: the run's data,
    moved. Not one file in common is enough, as numbered file names (cat/1.jpg) repeat across folders."""
    from headstart.data.dataset import data_base

    base = data_base(dataset.root)
    found = {os.path.relpath(p, base) for items in dataset.splits.values() for p, _ in items}
    recorded = {f for files in record.get("files", {}).values() for f in files}
    return bool(recorded) and recorded <= found
