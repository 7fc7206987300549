"""Dataset layouts, class order and the train/val split (saved as split.json so evaluation reuses it).

``discover`` reads a folder tree, and hands a CSV file list (``data/file_list.py``) or a shards folder
(``data/shards.py``) to their own modules, so every caller gets one ``Dataset`` whatever the source.
"""

from __future__ import annotations

import json
import logging
import os
import random
from dataclasses import dataclass, field
from pathlib import Path

from headstart.runtime.images import is_image_file

__all__ = ["DataError", "Dataset", "data_base", "discover", "list_images"]

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


def list_images(folder: Path) -> list[Path]:
    """Image files below folder, recursively, in a stable sorted order; hidden files skipped."""
    return sorted(
        p for p in folder.rglob("*") if p.is_file() and is_image_file(p) and not p.name.startswith(".")
    )


def _class_dirs(folder: Path) -> dict[str, Path]:
    return {p.name: p for p in sorted(folder.iterdir()) if p.is_dir() and not p.name.startswith(".")}


def _find_split(root: Path, split: str) -> Path | None:
    for alias in SPLIT_ALIASES[split]:
        if (root / alias).is_dir():
            return root / alias
    return None


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


def discover(data: str | Path, *, val_fraction: float = 0.2, seed: int = 42, split_file: str | Path | None = None,
             exclude: set[str] | frozenset[str] = frozenset()) -> Dataset:
    """Read DATA/{train,val|valid,test}/<class>/* or DATA/<class>/*, a CSV file list, or a shards folder.

    Without a val split, a stratified, seeded share of train becomes val. With split_file (a run's
    split.json), that exact split is rebuilt instead, so evaluation never scores training images.
    """
    root = Path(data).expanduser().resolve()
    # Imported here: both modules build on this one (Dataset, DataError, the split rules).
    from headstart.data.file_list import is_file_list, read_file_list
    from headstart.data.shards import is_shards_dir, read_shards

    if is_file_list(root):
        return read_file_list(root, val_fraction=val_fraction, seed=seed, split_file=split_file, exclude=exclude)
    if is_shards_dir(root):
        return read_shards(root, exclude=exclude)  # the split is part of the shards
    if not root.is_dir():
        raise DataError(f"data folder not found: {root}")
    found = {s: _find_split(root, s) for s in SPLIT_ALIASES}
    if found["train"] is None and found["val"] is None and found["test"] is None:
        found = {"train": root, "val": None, "test": None}
    split_dirs = {s: d for s, d in found.items() if d is not None}
    class_dirs = {s: _class_dirs(d) for s, d in split_dirs.items()}
    classes = sorted(set().union(*[set(c) for c in class_dirs.values()]))
    if not classes:
        raise DataError(f"no class folders in {root}: expected DATA/<class>/*.jpg or DATA/train/<class>/*.jpg")
    notes = []
    reference = "train" if "train" in class_dirs else next(iter(class_dirs))
    for split, dirs in class_dirs.items():
        missing = sorted(set(class_dirs[reference]) - set(dirs))
        extra = sorted(set(dirs) - set(class_dirs[reference]))
        if extra:
            raise DataError(f"classes {extra} are in {split}/ but not in {reference}/: the model could never "
                            f"predict them; add them to {reference}/ or remove them from {split}/")
        if missing:
            notes.append(f"{split}/ has no folder for class(es) {missing}")
    index = {name: i for i, name in enumerate(classes)}
    splits = {
        split: [(str(p), index[name]) for name, d in dirs.items() for p in list_images(d) if str(p) not in exclude]
        for split, dirs in class_dirs.items()
    }
    empty = [name for name, d in class_dirs.get("train", {}).items() if not list_images(d)]
    if empty:
        raise DataError(f"class folder(s) {empty} in {split_dirs['train']} hold no images; add images or remove them")
    splits, origin = finish_split(root, splits, "folders", val_fraction=val_fraction, seed=seed,
                                  split_file=split_file)
    return Dataset(root=str(root), classes=classes, splits=splits, split_origin=origin, notes=notes)


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
