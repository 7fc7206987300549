"""fixes.json: the changes a review chose (relabel, exclude), applied by training, never written into DATA.

    {"format": "headstart.fixes/1", "root": "/abs/DATA",
     "fixes": [{"path": "train/pizza/1.jpg", "action": "relabel", "label": "steak", "reason": "label_issue"},
               {"path": "test/pizza/9.jpg", "action": "exclude", "reason": "leakage", "duplicate_of": "..."}]}

Paths are relative to DATA (or to a CSV list's folder), as in the `check --fix-split` file, which is read as a
fixes file whose every entry is an exclusion ("headstart.exclude/1"). "keep" entries are allowed and change
nothing. A bad file is refused whole, in one line, before anything is trained.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path

from headstart.artifact import atomic_write_json
from headstart.data.dataset import DataError, Dataset, data_base
from headstart.data.shards import shard_member

__all__ = ["FIXES_FORMAT", "Fixes", "apply_relabels", "fixes_record", "load_fixes", "write_fixes"]

FIXES_FORMAT = "headstart.fixes/1"
EXCLUDE_FORMAT = "headstart.exclude/1"  # what `check --fix-split` writes
ACTIONS = ("keep", "relabel", "exclude")


@dataclass
class Fixes:
    """A fixes file resolved against DATA: absolute paths to leave out and to relabel (path -> class name)."""

    file: str
    exclude: set[str] = field(default_factory=set)
    relabel: dict[str, str] = field(default_factory=dict)
    entries: list[dict] = field(default_factory=list)  # as written, for summary.json


def fixes_record(root: str | Path, fixes: list[dict]) -> dict:
    """The document written to fixes.json (the review page builds the same one in the browser)."""
    return {"format": FIXES_FORMAT, "root": str(root),
            "fixes": [f for f in fixes if f.get("action") in ("relabel", "exclude")]}


def write_fixes(path: str | Path, root: str | Path, fixes: list[dict]) -> Path:
    path = Path(path)
    atomic_write_json(path, fixes_record(root, fixes))
    return path


def load_fixes(file: str | Path, data: str | Path, classes: list[str] | None = None) -> Fixes:
    """Read and check a fixes (or fix-split) file against DATA: every path must exist, every label be a class."""
    file = Path(file).expanduser()
    try:
        record = json.loads(file.read_text())
    except FileNotFoundError:
        raise DataError(f"fixes file not found: {file}") from None
    except (OSError, ValueError) as exc:
        raise DataError(f"fixes file {file} is not readable JSON: {exc}") from None
    if not isinstance(record, dict) or record.get("format") not in (FIXES_FORMAT, EXCLUDE_FORMAT):
        got = record.get("format") if isinstance(record, dict) else type(record).__name__
        raise DataError(f"{file} has unknown format {got!r}: expected {FIXES_FORMAT!r} (from `headstart check "
                        f"--deep`) or {EXCLUDE_FORMAT!r} (from --fix-split)")
    if record["format"] == EXCLUDE_FORMAT:
        entries = [{"path": p, "action": "exclude", "reason": "leakage"} for p in record.get("exclude", [])]
    else:
        entries = record.get("fixes")
    if not isinstance(entries, list):
        raise DataError(f"{file}: 'fixes' must be a list of {{path, action[, label]}}")
    base = data_base(Path(data).expanduser().resolve())
    fixes = Fixes(str(file))
    for n, entry in enumerate(entries, 1):
        where = f"{file}, fix {n}"
        if not isinstance(entry, dict) or not isinstance(entry.get("path"), str):
            raise DataError(f"{where}: each fix needs a 'path' (relative to {base})")
        action = entry.get("action")
        if action not in ACTIONS:
            raise DataError(f"{where}: unknown action {action!r}; use one of {', '.join(ACTIONS)}")
        path = os.path.normpath(base / entry["path"])
        if shard_member(path) is None and not Path(path).is_file():
            raise DataError(f"{where}: {entry['path']} is not a file in {base}; was the fixes file written for "
                            "another folder?")
        if action == "relabel":
            label = entry.get("label")
            if classes is not None and label not in classes:
                raise DataError(f"{where}: unknown class {label!r} for {entry['path']}; classes are "
                                f"{', '.join(classes)}")
            fixes.relabel[path] = label
        elif action == "exclude":
            fixes.exclude.add(path)
        fixes.entries.append(entry)
    return fixes


def apply_relabels(dataset: Dataset, fixes: Fixes) -> list[dict]:
    """Give the listed files their new class in `dataset` (in place); returns each change made."""
    index = {name: i for i, name in enumerate(dataset.classes)}
    unknown = sorted({label for label in fixes.relabel.values() if label not in index})
    if unknown:
        raise DataError(f"{fixes.file}: unknown class(es) {unknown}; classes are {', '.join(dataset.classes)}")
    changes, seen = [], set()
    base = data_base(dataset.root)
    for split, items in dataset.splits.items():
        for k, (path, label) in enumerate(items):
            new = fixes.relabel.get(os.path.normpath(path))
            if new is None:
                continue
            seen.add(os.path.normpath(path))
            if index[new] != label:
                items[k] = (path, index[new])
                changes.append({"path": os.path.relpath(path, base), "split": split,
                                "from": dataset.classes[label], "to": new})
    missing = sorted(set(fixes.relabel) - seen - fixes.exclude)
    if missing:
        raise DataError(f"{fixes.file}: {os.path.relpath(missing[0], base)} is not among the images training "
                        "reads (unreadable or not in a class folder)")
    return changes
