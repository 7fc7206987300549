"""Leaving files out: the list `headstart check --fix-split` writes, and how training reads it (`--exclude`).

DATA is never modified (it may be read-only): the copies that leak across splits are listed in
``headstart-fix-split.json`` instead, relative to DATA (or to a CSV list's folder), for training to skip.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from collections import defaultdict
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

from headstart.artifact import atomic_write_text
from headstart.data.dataset import SPLIT_ALIASES, SPLIT_ORDER, data_base
from headstart.data.file_list import is_file_list
from headstart.data.folders import discover
from headstart.data.shards import ShardReader, is_shards_dir, shard_member

if TYPE_CHECKING:
    from headstart.data.check import CheckReport

__all__ = ["FIX_SPLIT_FILE", "fix_split", "load_exclusions"]

log = logging.getLogger(__name__)

FIX_SPLIT_FILE = "headstart-fix-split.json"


def load_exclusions(file: str | Path, root: str | Path) -> set[str]:
    """Absolute paths listed in a ``fix_split`` file (relative to DATA, or to a CSV list's folder), for training
    to leave out."""
    record = json.loads(Path(file).read_text())
    base = data_base(Path(root).expanduser().resolve())
    return {os.path.normpath(base / rel) for rel in record.get("exclude", [])}


def fix_split(data: str | Path, report: CheckReport, out_dir: str | Path | None = None) -> Path:
    """Write ``headstart-fix-split.json`` listing the files to leave out so no content repeats across splits.

    With folder splits the train copy is kept and the val/test copies are excluded (val before test);
    with a generated split every copy of every duplicate but one is excluded, since the redrawn split
    decides where copies land. DATA is never modified (it may be read-only). Returns the file written.
    """
    if report.fast:
        raise ValueError("fix_split needs the full check's duplicate detection: check_dataset(fast=False)")
    root = Path(data).expanduser().resolve()
    # A generated split is redrawn after exclusion, so every duplicate, not only today's leaked ones, must go.
    codes = ("leakage", "duplicates") if report.split_origin == "generated" else ("leakage",)
    dupes = [path for p in report.problems if p.code in codes for path in p.paths]
    hashes: dict[str, list[str]] = defaultdict(list)
    with ShardReader() as reader:  # content hashes again: the report holds paths only, and leakage sets are small
        for path in dupes:
            data = reader.read(path) if shard_member(path) else Path(path).read_bytes()
            hashes[hashlib.sha1(data).hexdigest()].append(path)
    exclude, kept_for = [], {}
    generated = report.split_origin == "generated"
    rank, base = _split_ranks(root), data_base(root)
    for paths in hashes.values():
        ordered = sorted(paths, key=lambda p: (rank(p), p))
        keep = rank(ordered[0])
        for p in ordered[1:]:
            if not generated and rank(p) == keep:
                continue  # a second copy in the kept split is no leakage: the duplicates warning covers it
            rel = os.path.relpath(p, base)
            exclude.append(rel)
            kept_for[rel] = os.path.relpath(ordered[0], base)
    out = Path(out_dir or ".").expanduser() / FIX_SPLIT_FILE
    record = {"format": "headstart.exclude/1", "root": str(root), "exclude": sorted(exclude),
              "duplicate_of": dict(sorted(kept_for.items())),
              "reason": "same image content in more than one split (leakage); the listed copies are left out"}
    atomic_write_text(out, json.dumps(record, indent=2) + "\n")
    log.info("wrote %s: %d file(s) to exclude", out, len(exclude))
    return out


def _split_ranks(root: Path) -> Callable[[str], int]:
    """path -> rank of its split: from the folder it sits in, or for a CSV list or shards, from their split."""
    if not (is_file_list(root) or is_shards_dir(root)):
        return lambda path: _split_rank(root, path)
    split_of = {p: s for s, items in discover(root).splits.items() for p, _ in items}
    return lambda path: SPLIT_ORDER.index(split_of[path]) if path in split_of else len(SPLIT_ORDER)


def _split_rank(root: Path, path: str) -> int:
    """0 for train/, 1 for val/, 2 for test/; in a DATA/<class> layout every file ranks alike."""
    top = Path(path).relative_to(root).parts[0].lower()
    return next((i for i, s in enumerate(SPLIT_ORDER) if top in SPLIT_ALIASES[s]), len(SPLIT_ORDER))
