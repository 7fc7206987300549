"""The dataset doctor's per-image checks: each file's header, full decode and hash, read on a thread pool, and
the problems they show (unusable, small, rotated or animated images, copies within and across splits).

``Problem``, the one finding every check of the doctor reports, is defined here; check.py assembles the report.
"""

from __future__ import annotations

import hashlib
import logging
import os
from collections import Counter, defaultdict
from collections.abc import Callable
from contextlib import closing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from headstart.data.loading import map_items
from headstart.runtime.images import ImageLoadError, image_info, open_image

__all__ = ["Problem"]

log = logging.getLogger(__name__)

# Which extensions each PIL format is normally saved under; anything else is a (harmless) mismatch.
_FORMAT_EXTENSIONS = {
    "JPEG": {".jpg", ".jpeg"}, "MPO": {".jpg", ".jpeg"}, "PNG": {".png"}, "GIF": {".gif"}, "BMP": {".bmp"},
    "WEBP": {".webp"}, "TIFF": {".tif", ".tiff"},
}
# ImageLoadError reason prefix -> problem code; unusable files are skipped by training.
_UNUSABLE = {
    "empty file": "empty_file", "not an image": "not_an_image", "decompression bomb": "decompression_bomb",
    "permission denied": "unreadable", "file not found": "unreadable",
    "shard file not found": "unreadable", "unreadable shard": "unreadable", "missing from its shard": "unreadable",
}
_MESSAGES = {
    "unreadable": "{n} file(s) cannot be read (permissions?); training skips them: fix or delete them",
    "empty_file": "{n} zero-byte file(s); training skips them: delete them or copy them again",
    "not_an_image": "{n} file(s) with an image extension are not images; training skips them: delete them",
    "decompression_bomb": "{n} image(s) have too many pixels to decode safely; training skips them: "
                          "downscale them",
    "corrupt_image": "{n} truncated or corrupt image(s); training skips them: re-download or delete them",
    "too_small": "{n} image(s) are smaller than {min_side}px on a side; training upscales them: "
                 "check they belong",
    "exif_rotated": "{n} image(s) carry an EXIF rotation; they are used upright, as photo viewers show them",
    "format_mismatch": "{n} file(s) have an extension that does not match their format; they load fine",
    "animated": "{n} animated image(s); only the first frame is used",
}


@dataclass
class Problem:
    """One finding. ``message`` is one line and says what to do; ``paths``: the files or folders concerned."""

    severity: str  # "fatal" | "warning" | "info"
    code: str
    message: str
    paths: list[str] = field(default_factory=list)


@dataclass
class _Facts:
    path: Path
    split: str
    label: str
    sha1: str | None = None
    info: dict[str, Any] | None = None
    error: str | None = None  # problem code when the file is unusable


def _inspect_all(files: list[_Facts], *, fast: bool, progress: Callable[[str, int, int], None] | None
                 ) -> list[_Facts]:
    """Inspect files on a thread pool: file reads, hashing and PIL decoding all release the GIL.

    Each file gets its header facts (and hash, when full) or, when unusable, its problem code.
    """
    task = "checking headers" if fast else "checking images"
    workers = min(16, (os.cpu_count() or 1) + 2)  # a few more threads than cores hide file-read latency
    futures = map_items(lambda path, data: _inspect(path, data, fast), (str(f.path) for f in files),
                        workers=workers)
    with closing(futures):
        for done, (f, future) in enumerate(zip(files, futures), 1):
            try:
                f.sha1, f.info = future.result()
            except ImageLoadError as exc:
                f.error = next((code for prefix, code in _UNUSABLE.items() if exc.reason.startswith(prefix)),
                               "corrupt_image")
            except OSError as exc:  # read_bytes failing: permissions, I/O errors
                log.debug("cannot read %s: %s", f.path, exc)
                f.error = "unreadable"
            if progress is not None:
                progress(task, done, len(files))
    return files


def _inspect(path: str, data: bytes | None, fast: bool) -> tuple[str | None, dict[str, Any]]:
    """(sha1 or None when fast, header facts) of one file; data: a shard member's bytes, else read here."""
    if fast:
        return None, image_info(path if data is None else data)
    if data is None:
        data = Path(path).read_bytes()
    info = image_info(data)
    open_image(data)  # a full decode: the only way to catch a truncated file
    return hashlib.sha1(data).hexdigest(), info


def _file_problems(facts: list[_Facts], min_side: int) -> list[Problem]:
    groups: dict[str, list[str]] = defaultdict(list)
    for f in facts:
        if f.error:
            groups[f.error].append(str(f.path))
            continue
        if f.info is None:  # not inspected (a fast check of shards)
            continue
        info = f.info
        if min(info["width"], info["height"]) < min_side:
            groups["too_small"].append(str(f.path))
        if info["exif_rotated"]:
            groups["exif_rotated"].append(str(f.path))
        if f.path.suffix.lower() not in _FORMAT_EXTENSIONS.get(info["format"], ()):
            groups["format_mismatch"].append(str(f.path))
        if info["n_frames"] > 1:
            groups["animated"].append(str(f.path))
    problems = []
    for code, template in _MESSAGES.items():
        if groups[code]:
            severity = "info" if code in ("exif_rotated", "format_mismatch", "animated") else "warning"
            problems.append(Problem(severity, code, template.format(n=len(groups[code]), min_side=min_side),
                                    groups[code]))
    modes = Counter(f.info["mode"] for f in facts if f.info)
    if len(modes) > 1:
        mix = ", ".join(f"{m} {n}" for m, n in modes.most_common())
        problems.append(Problem("info", "mixed_modes", f"image modes are mixed ({mix}); all become RGB"))
    return problems


def _duplicate_problems(splits: dict[str, list[_Facts]], root: Path, origin: str) -> list[Problem]:
    groups: dict[str, list[_Facts]] = defaultdict(list)
    for items in splits.values():
        for f in items:
            groups[f.sha1].append(f)
    groups = {h: g for h, g in groups.items() if len(g) > 1}
    leaked, within, conflicting = [], [], []
    for g in groups.values():
        paths = [str(f.path) for f in g]
        if len({f.split for f in g}) > 1:
            leaked += paths
        elif len(g) > len({f.split for f in g}):
            within += paths
        if len({f.label for f in g}) > 1:
            conflicting += paths
    problems = []
    if leaked:
        where = "the generated train/val split" if origin == "generated" else "more than one split"
        msg = (f"{len(leaked)} files are copies of each other across {where}: scores would be inflated; "
               "`headstart train` leaves the val/test copies out (--strict refuses them)")
        problems.append(Problem("fatal", "leakage", msg, leaked))
    if within:
        msg = f"{len(within)} files are exact copies within a split (they count twice): keep one copy of each"
        problems.append(Problem("warning", "duplicates", msg, within))
    if conflicting:
        msg = f"{len(conflicting)} files hold one image under different classes: keep it in the right one"
        problems.append(Problem("warning", "conflicting_labels", msg, conflicting))
    return problems
