"""`build_report(run_dir)`: a run's files plus a fresh look at its images, as one self-contained report.html.

Numbers come from the run's own files (metrics.json, history.csv, summary.json, model.json); only what
they do not hold is recomputed: the logits of one split (val by default, small) for the confidence,
reliability and coverage plots, the predictions grid and the top losses. When the images are gone those
parts say so and the rest of the report is still written.
"""

from __future__ import annotations

import csv
import json
import logging
import os
import tempfile
import time
from pathlib import Path

import numpy as np

from headstart.artifact import atomic_write_text, read_manifest
from headstart.device import one_torch_thread
from headstart.report import html as H
from headstart.report import sections as S
from headstart.report.figures import FigureWorker

__all__ = ["build_report"]

log = logging.getLogger(__name__)

def _json(path: Path) -> dict:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        log.warning("report: cannot read %s: %s", path, exc)
        return {}


def _history(path: Path) -> list[dict]:
    try:
        with path.open(newline="") as f:
            return list(csv.DictReader(f))
    except OSError:
        return []


def _dataset(run: Path, data, classes: list[str], config: dict):
    """(Dataset, None) rebuilt as training saw it (split.json, exclusions), or (None, why not)."""
    from headstart.data.dataset import DataError
    from headstart.data.exclusions import load_exclusions
    from headstart.data.folders import discover

    split_file = run / "split.json"
    root = data or _json(split_file).get("root")
    if not root:
        return None, "split.json names no data folder; pass the data folder to build the image sections"
    try:
        excluded = load_exclusions(config["exclude"], root) if config.get("exclude") else set()
        dataset = discover(root, split_file=split_file if split_file.is_file() else None, exclude=excluded)
    except (DataError, OSError, ValueError, KeyError) as exc:
        return None, f"the images are not available ({exc}); image sections skipped"
    unknown = sorted(set(dataset.classes) - set(classes))
    if unknown:
        return None, f"{root} has classes the model does not know: {unknown}; image sections skipped"
    return dataset, None


def _stored_logits(run_dir, split: str) -> tuple[list[str], np.ndarray] | None:
    """(paths, logits) that training saved for this split (logits.npz), or None."""
    stored = Path(run_dir) / "logits.npz"
    if not stored.is_file():
        return None
    with np.load(stored, allow_pickle=False) as saved:
        if f"paths_{split}" not in saved:
            return None
        return saved[f"paths_{split}"].tolist(), saved[f"logits_{split}"]


def _score(clf, dataset, split: str, run_dir=None, skipped: frozenset = frozenset()) -> S.Scored | None:
    """skipped: the files training could not read (summary.json)."""
    from headstart.runtime.images import ImageLoadError, open_image

    label_of = {path: clf.classes.index(dataset.classes[y]) for path, y in dataset.splits.get(split, [])}
    stored = _stored_logits(run_dir, split) if run_dir is not None else None
    # Training's logits stand while the split holds the files it scored and no others but those it could not
    # read (none added since): then no image is opened here.
    if stored is not None and stored[0]:
        paths, logits = stored
        saved = set(paths)
        if saved <= label_of.keys() and label_of.keys() - saved <= skipped:
            return S.Scored(split, dataset.root, paths, np.asarray([label_of[p] for p in paths]), logits, {})
    paths, images = [], []
    for path in label_of:
        try:
            images.append(open_image(path, reduce_to=clf.preprocessing.reduce_to))
        except ImageLoadError as exc:
            log.warning("report: skipping %s: %s", path, exc.reason)
            continue
        paths.append(path)
    if not images:
        return None
    return S.Scored(split, dataset.root, paths, np.asarray([label_of[p] for p in paths]), clf.logits(images),
                   dict(enumerate(images)))


def build_report(run_dir: str | os.PathLike, data: str | os.PathLike | None = None, *, split: str = "val",
                 top_n: int = 8, classifier=None, plots_dir: str | os.PathLike | None = None,
                 figures: FigureWorker | None = None) -> Path:
    """Write RUN/report.html and return its path.

    data: the image folder when it moved since training (default: the root in split.json). split: whose
    images are scored for the image plots. classifier: an already loaded `headstart.load(run_dir)`.
    plots_dir: also keep the PNGs there (they are always embedded in the page). figures: a started
    FigureWorker to draw in (training starts one early); by default one is started here and closed after.
    """
    from headstart.inference.classifier import load

    started = time.perf_counter()
    run = Path(run_dir)
    manifest = read_manifest(run)
    metrics, summary = _json(run / "metrics.json"), _json(run / "summary.json")
    metrics = {s: metrics[s] for s in S.ordered(metrics)}
    config, history = _json(run / "config.json"), _history(run / "history.csv")
    worker = figures or FigureWorker.start()  # before loading the model: its start-up overlaps torch's import
    try:
        clf = classifier or load(run)
        with one_torch_thread(), tempfile.TemporaryDirectory(prefix="headstart-report-") as tmp:
            try:
                page = _page(run, data, split, top_n, clf, manifest, metrics, summary, config, history,
                             Path(plots_dir) if plots_dir else Path(tmp), worker.draw)
            finally:  # after a failure too: the worker must be done writing before its folder is removed
                worker.settle()
    finally:
        if figures is None:
            worker.close()
    path = run / "report.html"
    atomic_write_text(path, page)
    log.info("report written to %s in %.1fs", path, time.perf_counter() - started)
    return path


def _page(run: Path, data, split: str, top_n: int, clf, manifest: dict, metrics: dict, summary: dict,
          config: dict, history: list[dict], out: Path, draw: S.Draw) -> str:
    dataset, why = _dataset(run, data, clf.classes, config)
    scored = None
    if dataset is not None:
        skipped = frozenset(s.get("path") for s in summary.get("skipped", []) if isinstance(s, dict))
        scored = _score(clf, dataset, split, run, skipped)
        why = f"no readable images in the {split} split" if scored is None else ""
    # The figures go to the workers as soon as their data is ready, while this process goes on preparing the
    # next: first those whose data is at hand, then the top losses, whose Grad-CAMs take this process longest
    # and whose grid takes a worker longest; the cheap figures last, so that the last one sent ends soon.
    drawn = {
        "curves": S.history_section(summary, history, out, draw),
        "confusion": S.confusion_section(metrics, clf.classes, out, draw),
        "calibration": S.calibration_section(metrics, clf.temperature, scored, why, out, draw),
        "rejection": S.rejection_section(metrics, clf.threshold, clf.temperature, scored, why, out, draw),
        "top-losses": S.top_losses_section(clf, scored, why, top_n, out, draw),
        "predictions": S.predictions_section(clf, scored, why, out, draw),
        "samples": S.samples_section(clf, dataset, config.get("augment") or "none", why, out, draw),
        "filters": S.filters_section(clf, out, draw),
    }
    sections = [
        S.dataset_section(summary, clf.classes),
        S.model_section(manifest),
        H.Section("config", "Configuration",
                  H.kv_table(config, columns=2) if config else H.note("config.json is missing")),
        drawn["curves"],
        S.metrics_section(metrics),
        S.per_class_section(metrics),
        drawn["confusion"],
        drawn["calibration"],
        drawn["rejection"],
        drawn["predictions"],
        drawn["top-losses"],
        drawn["samples"],
        drawn["filters"],
        S.time_size_section(run, summary, history, manifest),
    ]
    headline = [(f"{m['accuracy']:.1%}", f"{s} accuracy") for s, m in metrics.items() if "accuracy" in m]
    headline += [(str(manifest.get("backbone")), str(manifest.get("mode", ""))),
                 (f"{summary.get('seconds', 0):.0f} s", "training time")]
    return H.page(f"headstart run: {run.resolve().name}", sections, lead=H.cards(headline),
                  subtitle=f"{run.resolve()} · {manifest.get('created', '')}")
