"""The report's sections, each built from the run's files and, where it shows images, the scored split."""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from headstart.report import html as H
from headstart.report import image_plots, plots
from headstart.report.search_plot import plot_search

log = logging.getLogger(__name__)

GRID_IMAGES = 12
# Above this many classes a per-class table is summarised, and shown whole only in a closed <details>: the
# page would otherwise open on 102 rows for Flowers-102.
MANY_CLASSES = 20
WORST_SHOWN = 10

# FigureWorker.draw: starts a plot function, returns a function that waits for the figure's path.
Draw = Callable[..., Callable[[], Path]]


@dataclass
class Scored:
    """The readable images of one split with labels (indices into the model's classes) and logits. Images
    are opened when first asked for: the stored logits spare opening the others."""

    split: str
    root: str
    paths: list[str]
    labels: np.ndarray
    logits: np.ndarray
    opened: dict[int, object]

    def image(self, i: int):
        """The i-th image (raises ImageLoadError when it has become unreadable since it was scored)."""
        from headstart.runtime.images import open_image

        if i not in self.opened:
            self.opened[i] = open_image(self.paths[i])
        return self.opened[i]


def ordered(splits) -> list[str]:
    """Split names in reading order: train, val, test, then any others."""
    rank = {"train": 0, "val": 1, "test": 2}
    return sorted(splits, key=lambda s: (rank.get(s, 3), s))


def _spread(items: list, k: int) -> list:
    """k items evenly spread over a list sorted by class, so every class shows up."""
    if len(items) <= k:
        return list(items)
    return [items[i] for i in np.linspace(0, len(items) - 1, k).round().astype(int)]


def dataset_section(summary: dict, classes: list[str]) -> H.Section:
    counts = summary.get("counts", {})
    splits = ordered(counts)
    rows = [[c] + [counts[s].get(c, 0) for s in splits] for c in classes]
    rows.append(["total"] + [sum(counts[s].values()) for s in splits])
    table = H.table(["class"] + splits, rows)
    body = [H.para(f"{len(classes)} classes from {summary.get('data', '?')}; "
                   f"split: {summary.get('split_origin', '?')}.")]
    if len(classes) > MANY_CLASSES and splits:
        first = counts[splits[0]]
        body += [H.para(_counts_line(splits[0], {c: first.get(c, 0) for c in classes})),
                 H.details(f"Images per class and split, all {len(classes)} classes", table)]
    else:
        body.append(table)
    body += [H.note(n) for n in summary.get("notes", [])]
    skipped = summary.get("skipped", [])
    body.append(H.para(f"Skipped files: {len(skipped)}."))
    if skipped:
        body.append(H.table(["file", "reason"], [(s["path"], s["reason"]) for s in skipped[:50]]))
        if len(skipped) > 50:
            body.append(H.note(f"... and {len(skipped) - 50} more (summary.json lists them all)"))
    return H.Section("dataset", "Dataset", "".join(body))


def _counts_line(split: str, per_class: dict[str, int]) -> str:
    """Many classes' image counts in one line: their range, and the classes with the fewest (the ones that
    most need more images)."""
    fewest = sorted(per_class.items(), key=lambda item: (item[1], item[0]))[:5]
    values = list(per_class.values())
    return (f"Images per class in {split}: {min(values)} to {max(values)}, median {np.median(values):g}; "
            f"fewest: {', '.join(f'{c} ({n})' for c, n in fewest)}.")


def model_section(manifest: dict) -> H.Section:
    params = manifest.get("parameters", {})
    rows = {
        "backbone": manifest.get("backbone"),
        "weights": manifest.get("weight_source", {}).get("description") or manifest.get("weight_source"),
        "mode": manifest.get("mode"),
        "trainable parameters": params.get("trainable"),
        "total parameters": params.get("total"),
        "head": manifest.get("head"),
        "preprocessing": manifest.get("preprocessing"),
        "temperature": manifest.get("temperature"),
        "threshold": manifest.get("threshold"),
        "headstart version": manifest.get("headstart_version"),
        "created": manifest.get("created"),
        "weights sha256": manifest.get("weights_sha256"),
    }
    return H.Section("model", "Model", H.kv_table(rows))


def curves_section(history: list[dict], out: Path, draw: Draw) -> H.Section:
    if not history:
        return H.Section("curves", "Training curves", H.note("history.csv is missing or empty"))
    png = draw(plots.plot_history, history, out / "curves.png")
    return H.Section("curves", "Training curves", lambda: H.figure(png(), "loss and accuracy per epoch"))


def history_section(summary: dict, history: list[dict], out: Path, draw: Draw) -> H.Section:
    """An auto run's search (its history.csv lists candidates, not epochs), else the training curves."""
    search = summary.get("search")
    return search_section(search, out, draw) if isinstance(search, dict) else curves_section(history, out, draw)


def score_name(search: dict) -> str:
    """What a search's candidates were scored by: cross-validation, or the val split alone (large sets)."""
    return "CV accuracy" if search.get("folds", 2) > 1 else "val accuracy"


def search_section(search: dict, out: Path, draw: Draw) -> H.Section:
    tried = search.get("candidates") or []
    if not tried:
        return H.Section("search", "Search", H.note("summary.json lists no search candidates"))
    # The best mean first, then the lower loss, then the one tried first (sorted is stable).
    ranked = sorted(tried, key=lambda c: (-(c.get("cv_mean") or 0.0), c.get("cv_loss") or 0.0))
    winner = next((c["name"] for c in ranked if c.get("winner")), search.get("winner"))
    score = score_name(search)
    body = [H.para(f"{len(tried)} candidates scored by {search.get('selection', '?')}, in "
                   f"{search.get('seconds') or 0:.0f} s of a {search.get('budget_seconds') or 0:.0f} s budget. "
                   "The winner is the cheapest candidate (the first tried) whose mean is within one standard error "
                   f"of the best mean {score} (the one-standard-error rule), so a costlier one must win by more "
                   "than luck; ± spread is the standard deviation of a candidate's fold accuracies."),
            H.table(["candidate", score, "± spread", "seconds", "trials"],
                    [(f"{c['name']} (winner)" if c["name"] == winner else c["name"], c.get("cv_mean"),
                      c.get("cv_std"), round(c["seconds"], 1), c.get("trials")) for c in ranked])]
    if search.get("skipped"):
        body.append(H.table(["skipped candidate", "reason"],
                            [(s.get("name"), s.get("reason")) for s in search["skipped"]]))
    columns = zip(*[(c["name"], c["seconds"], c["cv_mean"], c.get("cv_std") or 0.0) for c in ranked])
    png = draw(plot_search, *columns, out / "search.png", winner=winner, folds=search.get("folds"))
    return H.Section("search", "Search", lambda: "".join(body) + H.figure(
        png(), "cross-validated accuracy against seconds per candidate"))


_METRIC_ROWS = (("images", "n"), ("accuracy", "accuracy"), ("loss (NLL)", "loss"),
                ("NLL after temperature", "nll_calibrated"), ("ECE", "ece"), ("ECE after temperature",
                                                                               "ece_calibrated"))


def metrics_section(metrics: dict) -> H.Section:
    splits = list(metrics)
    rows = [[name] + [metrics[s].get(key) for s in splits] for name, key in _METRIC_ROWS]
    return H.Section("metrics", "Metrics", H.table(["metric"] + splits, rows))


def per_class_section(metrics: dict) -> H.Section:
    header = ["class", "precision", "recall", "F1", "support"]
    body = []
    for split, m in metrics.items():
        rows = [(c, v["precision"], v["recall"], v["f1"], v["support"])
                for c, v in m.get("per_class", {}).items()]
        body.append(f"<h3>{H.esc(split)}</h3>")
        if len(rows) > MANY_CLASSES:  # the classes that need attention first, all of them a click away
            worst = sorted(rows, key=lambda row: (row[3], row[0]))[:WORST_SHOWN]
            body += [H.table(header, worst, caption=f"the {len(worst)} classes with the lowest F1"),
                     H.details(f"All {len(rows)} classes", H.table(header, rows))]
        else:
            body.append(H.table(header, rows))
    return H.Section("per-class", "Per-class metrics", "".join(body))


def confusion_section(metrics: dict, classes: list[str], out: Path, draw: Draw) -> H.Section:
    pngs = [(s, draw(plots.plot_confusion_matrix, m["confusion_matrix"], classes, out / f"confusion_{s}.png",
                     title=f"{s} split")) for s, m in metrics.items() if "confusion_matrix" in m]
    if not pngs:
        return H.Section("confusion", "Confusion matrix", H.note("metrics.json has no matrix"))
    return H.Section("confusion", "Confusion matrix",
                     lambda: "".join(H.figure(png(), f"confusion matrix, {s}") for s, png in pngs))


def calibration_section(metrics: dict, temperature: float, scored: Scored | None, why: str,
                         out: Path, draw: Draw) -> H.Section:
    from headstart.runtime.metrics import softmax

    body = [H.para(f"Temperature T = {temperature:.4g}, fitted on val to minimise its NLL; probabilities "
                   "are softmax(logits / T). ECE: expected calibration error, 15 equal-width bins."),
            H.table(["split", "ECE before", "ECE after", "NLL before", "NLL after"],
                    [(s, m.get("ece"), m.get("ece_calibrated"), m.get("loss"), m.get("nll_calibrated"))
                     for s, m in metrics.items()])]
    if scored is None:
        return H.Section("calibration", "Calibration", "".join(body) + H.note(why))
    caveat = " (the split T was fitted on, so 'after' is optimistic)" if scored.split == "val" else ""
    probs = softmax(scored.logits, temperature)
    reliability = draw(plots.plot_reliability, scored.logits, scored.labels, temperature, out / "reliability.png",
                       title=f"Reliability, {scored.split}")
    confidence = draw(plots.plot_confidence_histogram, probs.max(axis=1), probs.argmax(axis=1) == scored.labels,
                      out / "confidence.png", title=f"Calibrated confidence, {scored.split}")
    return H.Section("calibration", "Calibration", lambda: "".join(body) + H.figure(
        reliability(), "reliability diagram", f"{scored.split} split{caveat}") + H.figure(
        confidence(), "confidence histogram"))


def rejection_section(metrics: dict, threshold: float, temperature: float, scored: Scored | None, why: str,
                       out: Path, draw: Draw) -> H.Section:
    from headstart.runtime.metrics import softmax

    rejection = {s: m["rejection"] for s, m in metrics.items() if "rejection" in m}
    rows = [(s, r["threshold"], r["rejected_rate"], r["accepted_accuracy"]) for s, r in rejection.items()]
    body = [H.para(f"Predictions whose calibrated confidence is below {threshold:.2f} are answered "
                   "'unsure'."),
            H.table(["split", "threshold", "rejected", "accuracy of accepted"], rows)]
    if scored is None:
        return H.Section("rejection", "Rejection", "".join(body) + H.note(why))
    png = draw(plots.plot_coverage, softmax(scored.logits, temperature), scored.labels, threshold,
               out / "coverage.png", title=f"Accuracy and coverage, {scored.split}")
    return H.Section("rejection", "Rejection", lambda: "".join(body) + H.figure(png(), "accuracy against coverage"))


def predictions_section(clf, scored: Scored | None, why: str, out: Path, draw: Draw) -> H.Section:
    from headstart.report.explain import display_crop
    from headstart.runtime.images import ImageLoadError
    from headstart.runtime.metrics import softmax

    if scored is None:
        return H.Section("predictions", "Predictions", H.note(why))
    chosen, images = [], []
    for i in _spread(list(range(len(scored.paths))), GRID_IMAGES):
        try:
            images.append(display_crop(clf, scored.image(i)))
            chosen.append(i)
        except ImageLoadError as exc:  # changed since training scored it
            log.warning("report: skipping %s: %s", scored.paths[i], exc.reason)
    if not chosen:
        return H.Section("predictions", "Predictions", H.note(f"no readable images in the {scored.split} split"))
    probs = softmax(scored.logits[chosen], clf.temperature)
    png = draw(
        image_plots.plot_prediction_grid, images, [clf.classes[scored.labels[i]] for i in chosen],
        [clf.classes[j] for j in probs.argmax(axis=1)], probs.max(axis=1), out / "predictions.png",
        title=f"Predictions on {scored.split} (calibrated confidence)")
    return H.Section("predictions", "Predictions", lambda: H.figure(png(), "a grid of predictions"))


def top_losses_section(clf, scored: Scored | None, why: str, n: int, out: Path, draw: Draw) -> H.Section:
    from headstart.report.explain import cam_panels, top_loss_captions, top_losses

    if scored is None:
        return H.Section("top-losses", "Top losses", H.note(why))
    items = list(zip(scored.paths, scored.labels.tolist()))
    result = top_losses(clf, items, n, logits=scored.logits)
    body = [H.para(f"The {len(result.rows)} {scored.split} images with the highest loss; {result.wrong} of "
                   f"{len(items)} are misclassified. Grad-CAM shows where the model looked for its "
                   "prediction.")]
    png = None
    if result.rows:  # the Grad-CAMs here (torch), their grid in the worker
        png = draw(image_plots.plot_top_losses, *cam_panels(clf, result.images, [r["pred"] for r in result.rows]),
                   *top_loss_captions(result.rows), out / "top_losses.png", title=result.title)
    table = H.table([f"file (in {scored.root})", "true", "predicted", "confidence", "loss"],
                    [(os.path.relpath(r["path"], scored.root), r["true"], r["pred"], r["confidence"], r["loss"])
                     for r in result.rows])
    return H.Section("top-losses", "Top losses", lambda: "".join(body) + (
        H.figure(png(), "top losses with Grad-CAM") if png else "") + table)


def samples_section(clf, dataset, augment: str, why: str, out: Path, draw: Draw) -> H.Section:
    import torch

    from headstart.data.transforms import train_transform
    from headstart.runtime.images import ImageLoadError, open_image
    from headstart.runtime.preprocess import Preprocessing

    title = "Training samples"
    if dataset is None or not dataset.splits.get("train"):
        return H.Section("samples", title, H.note(why or "no training images"))
    pre = Preprocessing.from_dict(clf.manifest["preprocessing"])
    transform = train_transform(pre, augment)
    torch.manual_seed(0)  # the same augmented samples every time the report is rebuilt
    tensors, labels = [], []
    for path, y in _spread(dataset.splits["train"], GRID_IMAGES):
        try:
            tensors.append(transform(open_image(path)).numpy())
            labels.append(dataset.classes[y])
        except ImageLoadError:
            continue
    if not tensors:
        return H.Section("samples", title, H.note("no readable training images"))
    png = draw(image_plots.plot_image_grid, tensors, labels, out / "samples.png", mean=pre.mean, std=pre.std,
               title=f"Training samples, augmentation preset '{augment}'")
    return H.Section("samples", title, lambda: H.figure(png(), "augmented training samples"))


def filters_section(clf, out: Path, draw: Draw) -> H.Section:
    from headstart.report.explain import first_conv_weights

    weights = first_conv_weights(clf.net)
    if weights is None:
        return H.Section("filters", "First-layer filters", H.note("the network has no RGB convolution"))
    png = draw(image_plots.plot_conv_filters, weights, out / "filters.png")
    return H.Section("filters", "First-layer filters", lambda: H.figure(png(), "first convolution filters"))


def time_size_section(run: Path, summary: dict, history: list[dict], manifest: dict) -> H.Section:
    seconds = [float(r["seconds"]) for r in history if r.get("seconds") not in (None, "")]
    weights = run / manifest.get("weights_file", "model.safetensors")
    size = weights.stat().st_size if weights.is_file() else manifest.get("weights_bytes")
    extraction = summary.get("extraction") if isinstance(summary.get("extraction"), dict) else None
    search = summary.get("search") if isinstance(summary.get("search"), dict) else None
    per_epoch = {} if search else {  # an auto run's history rows are candidates, shown in the search section
        "epochs": summary.get("epochs_run", len(history)),
        "seconds per epoch, mean": float(np.mean(seconds)) if seconds else None,
        "seconds per epoch, min / max": f"{min(seconds):.3g} / {max(seconds):.3g}" if seconds else None,
        "feature extraction, computed / total": (f"{extraction.get('computed')} / {extraction.get('total')}"
                                                 if extraction else None),
    }
    rows = {
        "whole run (s)": summary.get("seconds"),
        **per_epoch,
        **({"search (s) / budget (s)": f"{search.get('seconds') or 0:.0f} / {search.get('budget_seconds') or 0:.0f}",
            "candidates tried / skipped": f"{len(search['candidates'])} / {len(search['skipped'])}"}
           if search else {}),
        "accelerator, precision": f"{summary.get('accelerator', '?')}, {summary.get('precision', '?')}",
        "model.safetensors": f"{size / 2**20:.1f} MiB ({size:,} bytes)" if size else None,
    }
    return H.Section("time-size", "Time and size", H.kv_table(rows, header=("measure", "value")))
