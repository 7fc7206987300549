"""Finding the data: a folder tree read here, a CSV file list or a shards folder handed to their own modules.

``discover`` reads a folder tree, and hands a CSV file list (``data/file_list.py``) or a shards folder
(``data/shards.py``) to their own modules, so every caller gets one ``Dataset`` whatever the source.
"""

from __future__ import annotations

import logging
from pathlib import Path

from headstart.data.dataset import SPLIT_ALIASES, DataError, Dataset, finish_split
from headstart.data.file_list import is_file_list, read_file_list
from headstart.data.shards import is_shards_dir, read_shards
from headstart.runtime.images import is_image_file

__all__ = ["discover", "list_images"]

log = logging.getLogger(__name__)

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


def discover(data: str | Path, *, val_fraction: float = 0.2, seed: int = 42, split_file: str | Path | None = None,
             exclude: set[str] | frozenset[str] = frozenset()) -> Dataset:
    """Read DATA/{train,val|valid,test}/<class>/* or DATA/<class>/*, a CSV file list, or a shards folder.

    Without a val split, a stratified, seeded share of train becomes val. With split_file (a run's
    split.json), that exact split is rebuilt instead, so evaluation never scores training images.
    """
    root = Path(data).expanduser().resolve()
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
