"""The dataset doctor: everything wrong with a data folder, found before training instead of during it.

``check_dataset`` never raises on a broken layout: it scans the folders itself (the same rules as
``folders.discover``) so that every problem is reported at once, each with what to do about it. A CSV file
list or a shards folder is read by ``discover`` itself (its errors are one line already), then every listed
image gets the same per-file checks, on its bytes.
Only three things are fatal: no classes to train on, a class in val/test that train lacks (or an
empty class folder in train, which ``discover`` refuses), and the same image content in two splits
(leakage). Everything else is a warning (training copes, maybe worse) or info.
Here: the layout's rules, the split, the class balance and the summary; each image's checks are in image_checks.py.
"""

from __future__ import annotations

import os
import time
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from headstart.data.dataset import SPLIT_ALIASES, SPLIT_ORDER, DataError, _stratified_split, data_base
from headstart.data.file_list import is_file_list
from headstart.data.folders import _class_dirs, _find_split, discover, list_images
from headstart.data.image_checks import Problem, _duplicate_problems, _Facts, _file_problems, _inspect_all
from headstart.data.shards import is_shards_dir, load_index
from headstart.runtime.images import is_image_file

__all__ = ["CheckReport", "Problem", "check_dataset", "class_weights", "summary_lines"]

IMBALANCE_THRESHOLD = 1.5  # the one definition training uses too (see class_weights)
FEW_IMAGES = 5  # a class with fewer training images than this can hardly be learned
_ORIGINS = {"folders": "split by folders", "generated": "val split generated from train",
            "file_list": "split by the list's split column", "shards": "split stored in the shards",
            "split.json": "split from a run's split.json"}


@dataclass
class CheckReport:
    """What ``check_dataset`` found. ``counts`` are usable images per split and class, after the val split."""

    root: str
    split_origin: str  # as Dataset.split_origin: "folders", "generated", "file_list" or "shards"
    classes: list[str]
    counts: dict[str, dict[str, int]]
    files: int
    modes: dict[str, int]
    formats: dict[str, int]
    imbalance_ratio: float | None
    class_weights: dict[str, float] | None
    problems: list[Problem]
    fast: bool
    seconds: float

    @property
    def fatal(self) -> bool:
        return any(p.severity == "fatal" for p in self.problems)

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "fatal": self.fatal}


def class_weights(counts: Sequence[int], mode: str = "auto") -> list[float] | None:
    """Training's loss weights: inverse frequency n/(k*count) when max/min count > 1.5, else None.

    The single definition of the rule (training should call this); None also when a class has no images.
    """
    if mode == "none" or not counts or min(counts) == 0 or max(counts) / min(counts) <= IMBALANCE_THRESHOLD:
        return None
    total, k = sum(counts), len(counts)
    return [total / (k * c) for c in counts]


def check_dataset(
    data: str | Path, *, fast: bool = False, val_fraction: float = 0.2, seed: int = 42, min_side: int = 32,
    exclude: Iterable[str | Path] = (), progress: Callable[[str, int, int], None] | None = None,
) -> CheckReport:
    """Inspect DATA and report every problem; never raises for a bad dataset.

    The full check reads, hashes and decodes every image (truncation and duplicates are found);
    ``fast=True`` reads headers only and skips duplicate detection, for a start-up check.
    ``val_fraction``/``seed`` reproduce the val split training generates when DATA has no val folder.
    DATA may also be a CSV file list or a shards folder; for shards, ``fast`` reads shards.json only.
    """
    start = time.perf_counter()
    root = Path(data).expanduser().resolve()
    problems: list[Problem] = []
    listed = is_file_list(root) or is_shards_dir(root)
    if not listed and not root.is_dir():
        problems.append(Problem("fatal", "not_found", f"data folder not found: {root}; check the path"))
        return CheckReport(str(root), "folders", [], {}, 0, {}, {}, None, None, problems, fast, 0.0)
    skip = {str(Path(p).expanduser().resolve()) for p in exclude}
    if listed:
        try:
            split_classes, files, origin, inspect = _listed_layout(root, skip, val_fraction, seed, fast, problems)
        except DataError as exc:
            problems.append(Problem("fatal", "bad_source", str(exc)))
            return CheckReport(str(root), "file_list", [], {}, 0, {}, {}, None, None, problems, fast, 0.0)
    else:
        class_dirs, files = _scan_layout(root, skip, problems)
        split_classes, inspect = {s: list(dirs) for s, dirs in class_dirs.items()}, True
    facts = _inspect_all(files, fast=fast, progress=progress) if inspect else files
    problems += _file_problems(facts, min_side)
    if listed:  # the split was made by discover, exactly as training makes it
        splits = {s: [f for f in facts if f.split == s and f.error is None] for s in split_classes}
    else:
        splits, origin = _assign_splits(class_dirs, facts, val_fraction, seed)
    classes = sorted(set().union(*split_classes.values())) if split_classes else []
    if not fast:
        problems += _duplicate_problems(splits, root, origin)
    counts = {}
    for split, items in splits.items():  # a generated val has train's classes
        per_class = Counter(f.label for f in items)
        counts[split] = {c: per_class[c] for c in split_classes.get(split, split_classes.get("train", []))}
    ratio, weights = _balance(counts.get("train", {}), problems)
    problems.sort(key=lambda p: ("fatal", "warning", "info").index(p.severity))
    return CheckReport(
        root=str(root), split_origin=origin, classes=classes, counts=counts,
        files=sum(1 for f in facts if f.info or f.error),
        modes=dict(Counter(f.info["mode"] for f in facts if f.info).most_common()),
        formats=dict(Counter(f.info["format"] for f in facts if f.info).most_common()),
        imbalance_ratio=ratio, class_weights=weights, problems=problems, fast=fast,
        seconds=round(time.perf_counter() - start, 3),
    )


def _scan_layout(root: Path, skip: set[str], problems: list[Problem]
                 ) -> tuple[dict[str, dict[str, Path]], list[_Facts]]:
    """Split -> class -> folder, and every image file to inspect; structural problems are appended."""
    found = {s: _find_split(root, s) for s in SPLIT_ALIASES}
    if all(d is None for d in found.values()):
        found = {"train": root}
    split_dirs = {s: d for s, d in found.items() if d is not None}
    class_dirs = {s: _class_dirs(d) for s, d in split_dirs.items()}
    files = [_Facts(p, s, c) for s, dirs in class_dirs.items() for c, d in dirs.items()
             for p in list_images(d) if str(p) not in skip]
    if "train" not in class_dirs or not class_dirs["train"]:
        where = split_dirs.get("train", root)
        problems.append(Problem("fatal", "no_classes", f"no class folders in {where}: put images in "
                                "DATA/<class>/*.jpg or DATA/train/<class>/*.jpg", [str(where)]))
    train = set(class_dirs.get("train", {}))
    others = {s: dirs for s, dirs in class_dirs.items() if s != "train" and train}
    extra = {s: sorted(set(dirs) - train) for s, dirs in others.items() if set(dirs) - train}
    if extra:
        where = "; ".join(f"{s}/ has {names}" for s, names in extra.items())
        msg = (f"classes missing from train/ ({where}): the model could never predict them; "
               "add them to train/ or remove them")
        problems.append(Problem("fatal", "class_mismatch", msg,
                                [str(others[s][c]) for s, names in extra.items() for c in names]))
    missing = {s: sorted(train - set(dirs)) for s, dirs in others.items() if train - set(dirs)}
    if missing:
        where = "; ".join(f"{s}/ lacks {names}" for s, names in missing.items())
        msg = f"{where}: those classes go unmeasured there; add their folders if you have images"
        problems.append(Problem("warning", "class_missing_from_split", msg))
    counted = Counter((f.split, f.label) for f in files)
    empty = {s: [str(d) for c, d in dirs.items() if not counted[s, c]] for s, dirs in class_dirs.items()}
    if empty.get("train"):  # discover refuses an empty train class outright, so it is fatal
        msg = f"{len(empty['train'])} class folder(s) in train/ hold no images: add images or remove them"
        problems.append(Problem("fatal", "empty_class", msg, empty["train"]))
    eval_empty = [d for s, dirs in empty.items() if s != "train" for d in dirs]
    if eval_empty:
        msg = f"{len(eval_empty)} class folder(s) in val/ or test/ hold no images: those go unmeasured there"
        problems.append(Problem("warning", "empty_eval_class", msg, eval_empty))
    loose = [str(p) for d in split_dirs.values() for p in sorted(d.iterdir())
             if p.is_file() and is_image_file(p)]
    if loose:
        msg = f"{len(loose)} image(s) sit outside any class folder and are ignored: move them into one"
        problems.append(Problem("warning", "loose_images", msg, loose))
    kinds = sorted({p.suffix.lower() or p.name for d in split_dirs.values() for p in d.rglob("*")
                    if p.is_file() and not is_image_file(p) and not p.name.startswith(".")})
    if kinds:
        problems.append(Problem("info", "non_image_files", f"files of type(s) {kinds[:8]} are not images "
                                "and are ignored"))
    return class_dirs, files


def _listed_layout(root: Path, skip: set[str], val_fraction: float, seed: int, fast: bool,
                   problems: list[Problem]) -> tuple[dict[str, list[str]], list[_Facts], str, bool]:
    """Split -> classes, the files to inspect, the split's origin and whether to inspect them, for a CSV list or
    shards, read by ``discover`` as training reads them (a DataError is the one fatal problem)."""
    dataset = discover(root, val_fraction=val_fraction, seed=seed, exclude=skip)
    for note in dataset.notes:
        problems.append(Problem("warning", "class_missing_from_split",
                                f"{note}: those classes go unmeasured there; add rows if you have images"))
    files = [_Facts(Path(p), s, dataset.classes[y]) for s, items in dataset.splits.items() for p, y in items]
    inspect = True
    if is_shards_dir(root):
        problems += _shard_file_problems(root)
        if fast:  # headers sit inside the shards: reading them means reading everything, so train does it once
            inspect = False
            problems.append(Problem("info", "index_only", "fast check of shards reads shards.json only; each "
                                    f"image is checked while training decodes it (`headstart check {root}` "
                                    "checks them all now)"))
    return {s: dataset.classes for s in dataset.splits}, files, dataset.split_origin, inspect


def _shard_file_problems(root: Path) -> list[Problem]:
    index = load_index(root)
    changed = [str(root / s["file"]) for shards in index["splits"].values() for s in shards
               if not (root / s["file"]).is_file() or (root / s["file"]).stat().st_size != s["bytes"]]
    if not changed:
        return []
    msg = (f"{len(changed)} shard(s) are missing or not the size shards.json records: their unreadable images "
           "are skipped; write the shards again")
    return [Problem("warning", "shards_changed", msg, changed)]


def _assign_splits(class_dirs: dict[str, dict[str, Path]], facts: list[_Facts], val_fraction: float, seed: int
                   ) -> tuple[dict[str, list[_Facts]], str]:
    """Usable files per split; without a val folder, the same stratified split training generates.

    The split is drawn over all listed files, unusable ones included, exactly as ``discover`` draws it
    (training drops unusable files only later, while decoding).
    """
    origin = "folders"
    if "val" not in class_dirs and "train" in class_dirs:
        origin = "generated"
        index = {c: i for i, c in enumerate(class_dirs["train"])}
        by_path = {str(f.path): f for f in facts if f.split == "train"}
        _, val = _stratified_split([(p, index[f.label]) for p, f in by_path.items()], val_fraction, seed)
        for p, _ in val:
            by_path[p].split = "val"
    splits = {s: [f for f in facts if f.split == s and f.error is None] for s in SPLIT_ORDER}
    kept = {s: v for s, v in splits.items() if s in class_dirs or (s == "val" and origin == "generated")}
    return kept, origin



def _balance(train_counts: dict[str, int], problems: list[Problem]
             ) -> tuple[float | None, dict[str, float] | None]:
    names, counts = list(train_counts), list(train_counts.values())
    few = [n for n, c in train_counts.items() if c < FEW_IMAGES]
    if few:
        problems.append(Problem("warning", "few_images", f"class(es) {few[:10]} have fewer than {FEW_IMAGES} "
                                "usable training images: add more for a reliable model"))
    if not counts or min(counts) == 0:
        return None, None
    ratio = max(counts) / min(counts)
    weights = class_weights(counts)
    if weights is not None:
        msg = (f"classes are imbalanced ({ratio:.1f}x largest/smallest in train): training weights the loss "
               "by inverse class frequency")
        problems.append(Problem("info", "imbalance", msg))
    return round(ratio, 3), (None if weights is None else dict(zip(names, weights, strict=True)))


def summary_lines(report: CheckReport) -> list[str]:
    """A one-screen summary that ends with what to do next."""
    lines = [f"data: {report.root}"]
    if report.classes:
        origin = _ORIGINS.get(report.split_origin, report.split_origin)
        names = ", ".join(report.classes[:6]) + (", ..." if len(report.classes) > 6 else "")
        lines.append(f"classes: {len(report.classes)} ({names}); {origin}")
        lines.append("images: " + ", ".join(f"{s} {sum(c.values())}" for s, c in report.counts.items())
                     + f"; {report.files} files checked" + (" (headers only)" if report.fast else ""))
    train = report.counts.get("train", {})
    if train and report.imbalance_ratio is not None:
        weights = "inverse-frequency class weights" if report.class_weights else "no class weights"
        lines.append(f"train per class: min {min(train.values())}, max {max(train.values())} "
                     f"(imbalance {report.imbalance_ratio:.2f}x: {weights})")
    shown = 16
    for p in report.problems[:shown]:
        example = ""
        if p.paths:
            first = os.path.relpath(p.paths[0], data_base(report.root))
            example = f" [{first}" + (f" +{len(p.paths) - 1} more]" if len(p.paths) > 1 else "]")
        lines.append(f"{p.severity.upper():8}{p.code}: {p.message}{example}")
    if len(report.problems) > shown:
        lines.append(f"... and {len(report.problems) - shown} more (see --json)")
    lines.append(_next_step(report))
    return lines


def _next_step(report: CheckReport) -> str:
    codes = {p.code for p in report.problems if p.severity == "fatal"}
    if codes == {"leakage"}:
        return (f"next: `headstart train {report.root}` leaves the leaked val/test copies out and lists them in "
                f"summary.json; `headstart check {report.root} --deep` also finds near copies and writes a review "
                "page and fixes.json for `train --fixes`")
    if codes:
        return "next: fix the FATAL problems above, then run `headstart check` again"
    if any(p.severity == "warning" for p in report.problems):
        return f"next: ready to train (`headstart train {report.root}`); the warnings above may cost accuracy"
    return f"next: all clear; train with `headstart train {report.root}`"
