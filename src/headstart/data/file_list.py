"""A CSV file list as a dataset: ``path,label[,split]`` rows instead of a folder tree.

An optional header row (``path,label[,split]``; ``file``/``filename``/``image`` and ``class`` are accepted
too) is skipped. Relative paths start from the CSV's own folder. Split values are those of folder names
(train/training, val/valid/validation, test/testing); without a split column, or without val rows, val is
held out of train exactly as for folders. Class order is sorted, as for folders. A bad row is one
DataError that names the CSV's line, so a list of a million rows is fixed by its line number.
"""

from __future__ import annotations

import csv
import os
from dataclasses import dataclass
from pathlib import Path

from headstart.data.dataset import SPLIT_ALIASES, DataError, Dataset, finish_split

__all__ = ["FileListRow", "is_file_list", "parse_file_list", "read_file_list"]

_PATH_HEADERS = {"path", "file", "filename", "image"}
_LABEL_HEADERS = {"label", "class"}
_SPLIT_OF = {alias: split for split, aliases in SPLIT_ALIASES.items() for alias in aliases}


@dataclass(frozen=True)
class FileListRow:
    """One row: the absolute, normalised path, its label, its split (None without a split column)."""

    line: int
    path: str
    label: str
    split: str | None


def is_file_list(path: str | Path) -> bool:
    path = Path(path)
    return path.suffix.lower() == ".csv" and path.is_file()


def parse_file_list(csv_path: str | Path) -> list[FileListRow]:
    """Every row of the list, checked: the file exists, a label, a known split, no path listed twice."""
    csv_path = Path(csv_path).expanduser().resolve()
    base = csv_path.parent
    rows: list[FileListRow] = []
    first_line: dict[str, int] = {}
    columns = None  # 2 or 3, fixed by the first row so that a forgotten split cell is caught
    # utf-8-sig: spreadsheet programs start their CSV exports with a byte-order mark
    with open(csv_path, newline="", encoding="utf-8-sig") as f:
        reader = csv.reader(f)
        for cells in reader:
            where = f"{csv_path.name} line {reader.line_num}"
            cells = [c.strip() for c in cells]
            if not any(cells):
                continue
            if columns is None and cells[0].lower() in _PATH_HEADERS and len(cells) > 1 \
                    and cells[1].lower() in _LABEL_HEADERS:
                columns = len(cells)
                if columns == 3 and cells[2].lower() != "split":
                    raise DataError(f"{where}: the third column must be 'split', not {cells[2]!r}")
                continue
            if len(cells) not in (2, 3):
                raise DataError(f"{where}: expected path,label[,split], got {len(cells)} columns")
            if columns is None:
                columns = len(cells)
            elif len(cells) != columns:
                expected = "path,label,split" if columns == 3 else "path,label"
                raise DataError(f"{where}: expected {columns} columns ({expected}) like the rows above, "
                                f"got {len(cells)}")
            rows.append(_row(cells, where, reader.line_num, base, first_line))
    if not rows:
        raise DataError(f"{csv_path} lists no images: expected rows of path,label[,split]")
    return rows


def _row(cells: list[str], where: str, line: int, base: Path, first_line: dict[str, int]) -> FileListRow:
    name, label = cells[0], cells[1]
    if not name:
        raise DataError(f"{where}: empty path")
    if not label:
        raise DataError(f"{where}: empty label for {name}")
    split = None
    if len(cells) == 3:
        split = _SPLIT_OF.get(cells[2].lower())
        if split is None:
            raise DataError(f"{where}: unknown split {cells[2]!r}; use train, val or test")
    path = os.path.normpath(base / Path(name).expanduser())
    if path in first_line:
        raise DataError(f"{where}: {name} is listed twice (first on line {first_line[path]})")
    first_line[path] = line
    if not os.path.isfile(path):
        raise DataError(f"{where}: file not found: {name}")
    return FileListRow(line, path, label, split)


def read_file_list(csv_path: str | Path, *, val_fraction: float = 0.2, seed: int = 42,
                   split_file: str | Path | None = None, exclude: set[str] | frozenset[str] = frozenset()
                   ) -> Dataset:
    """The list as a Dataset (what ``discover`` returns for a ``.csv``); its root is the CSV file."""
    csv_path = Path(csv_path).expanduser().resolve()
    rows = [r for r in parse_file_list(csv_path) if r.path not in exclude]
    classes = sorted({r.label for r in rows})
    index = {name: i for i, name in enumerate(classes)}
    splits: dict[str, list[tuple[str, int]]] = {}
    for r in rows:
        splits.setdefault(r.split or "train", []).append((r.path, index[r.label]))
    if "train" not in splits:
        raise DataError(f"{csv_path} has no train rows: the split column needs some rows marked train")
    in_train = {y for _, y in splits["train"]}
    notes = []
    for split, items in splits.items():
        labels = {y for _, y in items}
        extra = sorted(classes[y] for y in labels - in_train)
        if extra:
            raise DataError(f"classes {extra} are in {split} rows of {csv_path.name} but not in train rows: the "
                            "model could never predict them; add train rows for them or remove those rows")
        missing = sorted(classes[y] for y in in_train - labels)
        if missing:
            notes.append(f"{split} has no rows for class(es) {missing}")
    splits, origin = finish_split(csv_path, splits, "file_list", val_fraction=val_fraction, seed=seed,
                                  split_file=split_file)
    return Dataset(root=str(csv_path), classes=classes, splits=splits, split_origin=origin, notes=notes)
