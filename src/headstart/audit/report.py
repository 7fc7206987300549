"""`audit_dataset`: the doctor's full check plus the deep audit, as one report; `write_audit` writes its files.

Each finding carries the action the audit suggests (relabel a label issue to its suggested class, exclude the
val/test copy of a leaked image, the second copy of a duplicate and an off-topic training image, keep anything
else) so that `--accept-suggested` and the review page's untouched choices write the same fixes.json.
"""

from __future__ import annotations

import logging
import os
import time
from collections import defaultdict
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from headstart.artifact import atomic_write_json, atomic_write_text
from headstart.data.check import CheckReport, check_dataset
from headstart.data.dataset import SPLIT_ORDER, DataError, data_base

__all__ = ["AuditReport", "Finding", "audit_dataset", "audit_lines", "default_out_dir", "write_audit"]

log = logging.getLogger(__name__)


@dataclass
class Finding:
    """One thing to review. path: the file a fix applies to; other: its pair (the kept copy, a typical image)."""

    id: str
    kind: str  # "label_issue" | "leakage" | "near_duplicate" | "outlier"
    path: str  # relative to DATA
    split: str
    score: float
    message: str
    suggested: str  # "relabel" | "exclude" | "keep"
    given: str | None = None
    label: str | None = None  # the suggested class of a label issue
    other: str | None = None
    typical: dict[str, str] = field(default_factory=dict)  # class -> a typical image of it (relative)


@dataclass
class AuditReport:
    check: CheckReport
    classes: list[str]
    images: int
    computed: int  # features extracted now; the rest came from the cache
    findings: list[Finding]
    label_issues: list[dict]
    duplicates: list[dict]
    outliers: list[dict]
    health: dict
    quality_ranking: list[str]  # every image, most suspect label first (for benchmarks and scripts)
    seconds: dict[str, float]

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["check"] = self.check.to_dict()
        return out

    def suggested_fixes(self) -> list[dict]:
        return [fix for f in self.findings if (fix := _fix(f, f.suggested))]


def default_out_dir(data: str | Path) -> Path:
    """./<name>-check: named after the data, in the current directory."""
    name = Path(data).expanduser().resolve().name
    return Path.cwd() / f"{Path(name).stem if name.lower().endswith('.csv') else name}-check"


def audit_dataset(data: str | Path, *, backbone: str = "efficientnet_lite0", weights: str | None = None,
                  image_size: int | None = None, val_fraction: float = 0.2, seed: int = 42,
                  progress: Callable[[str, int, int], None] | None = None) -> AuditReport:
    """The full check of DATA, then label issues, near-duplicates, outliers and class health from the cached
    features of `backbone` (computed once, and found again by `headstart train` with the same backbone)."""
    from headstart.audit.duplicates import near_duplicates
    from headstart.audit.features import embed_dataset
    from headstart.audit.labels import class_health, label_issues, out_of_fold_probabilities
    from headstart.audit.outliers import outliers
    from headstart.data.folders import discover

    times: dict[str, float] = {}
    clock = time.perf_counter()
    check = check_dataset(data, val_fraction=val_fraction, seed=seed, progress=progress)
    times["check"] = _lap(clock)
    if any(p.severity == "fatal" and p.code != "leakage" for p in check.problems):
        raise DataError("the data cannot be audited until the FATAL problems of `headstart check` are fixed: "
                        + " ".join(p.message for p in check.problems if p.severity == "fatal"))
    dataset = discover(data, val_fraction=val_fraction, seed=seed)
    clock = time.perf_counter()
    emb = embed_dataset(dataset, backbone=backbone, weights=weights, image_size=image_size, progress=progress)
    times["features"] = _lap(clock)
    clock = time.perf_counter()
    k = len(emb.classes)
    probs = out_of_fold_probabilities(emb.features, emb.labels, k) if k > 1 else np.ones((len(emb), 1))
    issues, quality = label_issues(probs, emb.labels, emb.classes, emb.paths, emb.splits)
    health = class_health(probs, emb.labels, emb.classes)
    times["labels"] = _lap(clock)
    clock = time.perf_counter()
    tiny = {p for prob in check.problems if prob.code == "too_small" for p in prob.paths}
    dupes = near_duplicates(emb, tiny)
    times["duplicates"] = _lap(clock)
    clock = time.perf_counter()
    far = outliers(emb)
    times["outliers"] = _lap(clock)
    base = data_base(dataset.root)
    rel = lambda p: os.path.relpath(p, base)  # noqa: E731
    typical = {emb.classes[c]: rel(emb.paths[i]) for c, i in _typical(probs, emb.labels, k).items()}
    findings = _findings(issues, dupes, _exact_leaks(emb), far, typical, rel)
    return AuditReport(
        check=check, classes=emb.classes, images=len(emb), computed=emb.computed, findings=findings,
        label_issues=[{**asdict(i), "path": rel(i.path)} for i in issues],
        duplicates=[{**asdict(d), "first": rel(d.first), "second": rel(d.second), "leakage": d.leakage}
                    for d in dupes],
        outliers=[{**asdict(o), "path": rel(o.path)} for o in far], health=health,
        quality_ranking=[rel(emb.paths[i]) for i in np.argsort(quality, kind="stable")], seconds=times)


def _lap(start: float) -> float:
    return round(time.perf_counter() - start, 3)


def _typical(probs: np.ndarray, labels: np.ndarray, k: int) -> dict[int, int]:
    """Per class, the image the out-of-fold head is surest belongs to it: what the class looks like."""
    out = {}
    for c in range(k):
        members = np.flatnonzero(labels == c)
        if len(members):
            out[c] = int(members[np.argmax(probs[members, c])])
    return out


def _exact_leaks(emb) -> list[tuple[tuple[str, str], tuple[str, str]]]:
    """((path, split) kept, (path, split) leaked) of byte-identical files in different splits, the earlier split
    kept."""
    by_hash: dict[str, list[int]] = defaultdict(list)
    for i, h in enumerate(emb.hashes):
        by_hash[h].append(i)
    pairs = []
    for group in by_hash.values():
        group.sort(key=lambda i: (SPLIT_ORDER.index(emb.splits[i]), emb.paths[i]))
        kept = (emb.paths[group[0]], emb.splits[group[0]])
        pairs += [(kept, (emb.paths[i], emb.splits[i])) for i in group[1:] if emb.splits[i] != kept[1]]
    return pairs


def _findings(issues, dupes, exact, far, typical, rel) -> list[Finding]:
    out: list[Finding] = []
    for n, i in enumerate(issues, 1):
        out.append(Finding(f"label-{n}", "label_issue", rel(i.path), i.split, round(1 - i.quality, 4),
                           f"labelled {i.given}, looks like {i.suggested} ({i.suggested_probability:.0%})",
                           "relabel", given=i.given, label=i.suggested,
                           typical={c: typical[c] for c in (i.given, i.suggested) if c in typical}))
    for n, d in enumerate(dupes, 1):
        first, second = sorted([(d.first, d.first_split), (d.second, d.second_split)],
                               key=lambda x: (SPLIT_ORDER.index(x[1]), x[0]))
        kind = "leakage" if d.leakage else "near_duplicate"
        where = f"in {first[1]} and {second[1]}: scores would be inflated" if d.leakage else f"both in {first[1]}"
        bits = "" if d.phash_distance is None else f", pHash {d.phash_distance}/64 bits apart"
        out.append(Finding(f"dup-{n}", kind, rel(second[0]), second[1], d.similarity,
                           f"near copy {where} (similarity {d.similarity:.3f}{bits})", "exclude",
                           other=rel(first[0])))
    for n, (kept, leaked) in enumerate(exact, 1):
        out.append(Finding(f"exact-{n}", "leakage", rel(leaked[0]), leaked[1], 1.0,
                           f"exact copy in {kept[1]} and {leaked[1]}: scores would be inflated", "exclude",
                           other=rel(kept[0])))
    for n, o in enumerate(far, 1):
        out.append(Finding(f"outlier-{n}", "outlier", rel(o.path), o.split, o.z,
                           f"far from every class (nearest: {o.nearest_class}, robust z {o.z:.1f})",
                           "exclude" if o.split == "train" else "keep", given=o.label,
                           typical={c: typical[c] for c in (o.label, o.nearest_class) if c in typical}))
    return out


def _fix(finding: Finding | dict, action: str, label: str | None = None) -> dict | None:
    f = finding if isinstance(finding, dict) else asdict(finding)
    if action == "relabel":
        return {"path": f["path"], "action": "relabel", "label": label or f["label"], "reason": f["kind"],
                "given": f["given"]}
    if action == "exclude":
        fix = {"path": f["path"], "action": "exclude", "reason": f["kind"]}
        return {**fix, "duplicate_of": f["other"]} if f.get("other") and f["kind"] != "outlier" else fix
    return None


def write_audit(report: AuditReport, out_dir: str | Path, *, accept_suggested: bool = False) -> dict[str, Path]:
    """audit.json and audit.html (and fixes.json with the suggested fixes) in out_dir, never inside DATA."""
    from headstart.audit.fixes import write_fixes
    from headstart.audit.page import render_page

    out = Path(out_dir).expanduser().resolve()
    root = Path(report.check.root)
    if out == root or root in out.parents:
        raise DataError(f"--out {out} is inside the data folder {root}: check never writes into DATA")
    out.mkdir(parents=True, exist_ok=True)
    paths = {"json": out / "audit.json", "html": out / "audit.html"}
    atomic_write_json(paths["json"], report.to_dict())
    atomic_write_text(paths["html"], render_page(report))
    if accept_suggested:
        paths["fixes"] = write_fixes(out / "fixes.json", report.check.root, report.suggested_fixes())
    return paths


def audit_lines(report: AuditReport, written: dict[str, Path] | None = None) -> list[str]:
    """The deep audit's part of the summary, ending with what to do next."""
    counts = {kind: [f for f in report.findings if f.kind == kind]
              for kind in ("label_issue", "leakage", "near_duplicate", "outlier")}
    acc = report.health.get("accuracy")
    lines = [f"deep audit: {report.images} images, features {report.computed} computed now "
             f"(the rest cached); out-of-fold accuracy {'–' if acc is None else f'{acc:.1%}'}"]
    for f in counts["label_issue"][:5]:
        lines.append(f"  label suspect {f.path}: {f.message}")
    if len(counts["label_issue"]) > 5:
        lines.append(f"  ... {len(counts['label_issue']) - 5} more label suspects")
    lines.append(f"label issues {len(counts['label_issue'])}, leaked copies {len(counts['leakage'])}, "
                 f"near-duplicates within a split {len(counts['near_duplicate'])}, outliers {len(counts['outlier'])}")
    weakest = sorted(((h["accuracy"], name) for name, h in report.health.get("per_class", {}).items()
                      if h["accuracy"] is not None))[:3]
    if weakest:
        lines.append("weakest classes (out-of-fold accuracy): "
                     + ", ".join(f"{name} {a:.0%}" for a, name in weakest))
    if report.health.get("confused"):
        lines.append("most confused: " + ", ".join(f"{c['given']}->{c['predicted']} {c['images']}"
                                                   for c in report.health["confused"][:3]))
    if written:
        lines.append(f"review page: {written['html']}")
        if "fixes" in written:
            lines.append(f"suggested fixes written to {written['fixes']}; train with "
                         f"`headstart train {report.check.root} --fixes {written['fixes']}`")
        else:
            lines.append(f"next: open the page, choose, save fixes.json, then `headstart train {report.check.root} "
                         "--fixes fixes.json`")
    return lines
