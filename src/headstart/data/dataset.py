"""What every data source becomes: a Dataset (files per split as (path, class index), sorted class names), and
the split rules they share (a run's split.json wins; without a val split, a seeded stratified share of train)."""

from __future__ import annotations

import json
import logging
import os
import random
from dataclasses import dataclass, field
from pathlib import Path

__all__ = ["SPLIT_ALIASES", "SPLIT_ORDER", "DataError", "Dataset", "data_base", "finish_split"]

log = logging.getLogger(__name__)

SPLIT_ALIASES = {"train": ("train", "training"), "val": ("val", "valid", "validation"), "test": ("test", "testing")}
SPLIT_ORDER = tuple(SPLIT_ALIASES)  # when content repeats across splits, the earliest copy is kept


class DataError(ValueError):
    """The data folder cannot be used as it is. The message is one line and says what to do."""


@dataclass
class Dataset:
    """Files per split as (path, class index), with the sorted class names shared by every split."""

    root: str
    classes: list[str]
    splits: dict[str, list[tuple[str, int]]]
    # "folders" (DATA/train, DATA/val...), "file_list" (a CSV's split column), "shards" (written into the shards),
    # "generated" (val held out of train by headstart) or "split.json" (rebuilt from a run's record)
    split_origin: str
    notes: list[str] = field(default_factory=list)

    def counts(self) -> dict[str, dict[str, int]]:
        return {
            split: {name: sum(1 for _, y in items if y == i) for i, name in enumerate(self.classes)}
            for split, items in self.splits.items()
        }

    def split_record(self, seed: int, val_fraction: float) -> dict:
        """What split.json holds: enough to rebuild the same split from the same folder."""
        base = data_base(self.root)
        rel = {s: [os.path.relpath(p, base) for p, _ in items] for s, items in self.splits.items()}
        return {"root": self.root, "origin": self.split_origin, "seed": seed, "val_fraction": val_fraction,
                "classes": self.classes, "files": rel}


def data_base(root: str | Path) -> Path:
    """The folder that a source's relative paths start from: DATA itself, or a CSV file list's folder."""
    root = Path(root)
    return root.parent if root.suffix.lower() == ".csv" and not root.is_dir() else root


def _stratified_split(items: list[tuple[str, int]], fraction: float, seed: int):
    rng = random.Random(seed)
    train, val = [], []
    for label in sorted({y for _, y in items}):
        members = [item for item in items if item[1] == label]
        rng.shuffle(members)
        n_val = max(1, round(len(members) * fraction)) if len(members) > 1 else 0
        val += members[:n_val]
        train += members[n_val:]
    return sorted(train), sorted(val)


def finish_split(root: Path, splits: dict[str, list[tuple[str, int]]], origin: str, *, val_fraction: float,
                 seed: int, split_file: str | Path | None) -> tuple[dict[str, list[tuple[str, int]]], str]:
    """The split rules every listed source shares: a run's split.json wins; else no val means a generated one."""
    if split_file is not None:
        return _apply_split_file(root, Path(split_file), splits), "split.json"
    if "val" not in splits and "train" in splits:
        splits = dict(splits)
        splits["train"], splits["val"] = _stratified_split(splits["train"], val_fraction, seed)
        log.info("no val split: held out %d of train as val (seed %d)", len(splits["val"]), seed)
        return splits, "generated"
    return splits, origin


def _apply_split_file(root: Path, split_file: Path, scanned: dict) -> dict:
    record = json.loads(split_file.read_text())
    if record.get("origin") != "generated":
        return scanned  # the source itself defines the split
    base = data_base(root)
    labels = {os.path.relpath(p, base): y for items in scanned.values() for p, y in items}
    splits = {}
    for split, files in record["files"].items():
        kept = [(os.path.normpath(base / f), labels[f]) for f in files if f in labels]
        if len(kept) < len(files):
            log.warning("%d file(s) of the saved %s split are no longer in %s", len(files) - len(kept), split, root)
        splits[split] = kept
    for split, items in scanned.items():
        if split not in ("train",) and split not in splits:
            splits[split] = items
    return splits
