"""The data audit (`headstart check --deep`) against planted noise, on copies of the dev sets (never written to).

    python benchmarks/audit.py [--sets pizza_steak_sushi,oxford_pets_3class,digits] [--seed 0] [--no-train]

Per set: a seeded 5% of the train folder's images move to another class's folder (flipped labels), and 10
altered copies of other train images go into test (resized to 70%, JPEG quality 60, cropped by 10% (5% a side),
brightness +20%, in turn). Reported: precision and recall of the flipped labels among the k most suspect
(k = the number flipped), the same with the set's own label errors (what the audit flags on the unaltered set)
left out of the ranking, recall of the planted copies, leakage found on the unaltered set (false leakage),
the audit's seconds (features computed, then cached), and test accuracy trained on the clean set, the noisy one,
and the noisy one with the audit's suggested fixes to train (test left as planted, so all three share it).
Writes benchmarks/results/audit.json and docs/audit.md's results table.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import random
import shutil
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared" / "datasets"
KINDS = ("resize70", "jpeg60", "crop10", "bright20")


def altered(path: Path, kind: str):
    from PIL import Image, ImageEnhance

    img = Image.open(path).convert("RGB")
    w, h = img.size
    if kind == "resize70":
        return img.resize((max(1, round(w * 0.7)), max(1, round(h * 0.7))), Image.BILINEAR)
    if kind == "jpeg60":
        buffer = io.BytesIO()
        img.save(buffer, "JPEG", quality=60)
        return Image.open(io.BytesIO(buffer.getvalue())).convert("RGB")
    if kind == "crop10":
        dx, dy = round(w * 0.05), round(h * 0.05)
        return img.crop((dx, dy, w - dx, h - dy))
    return ImageEnhance.Brightness(img).enhance(1.2)


def plant(src: Path, dst: Path, seed: int) -> tuple[list[str], list[str]]:
    """Copy src to dst, flip 5% of train labels and plant 10 altered copies into test: (flipped, planted)."""
    shutil.copytree(src, dst)
    rng = random.Random(seed)
    train = dst / "train"
    classes = sorted(p.name for p in train.iterdir() if p.is_dir())
    files = sorted((c, f.name) for c in classes for f in (train / c).iterdir() if f.is_file())
    picks = rng.sample(files, round(0.05 * len(files)))
    flipped = []
    for c, name in picks:
        new = rng.choice([k for k in classes if k != c])
        shutil.move(train / c / name, train / new / name)
        flipped.append(f"train/{new}/{name}")
    planted = []
    for j, (c, name) in enumerate(rng.sample([f for f in files if f not in picks], 10)):
        kind = KINDS[j % 4]
        out = dst / "test" / c / f"planted_{j}_{kind}.{'jpg' if kind == 'jpeg60' else 'png'}"
        out.parent.mkdir(parents=True, exist_ok=True)
        altered(train / c / name, kind).save(out, quality=60)
        planted.append(str(out.relative_to(dst)))
    return flipped, planted


def test_accuracy(data: Path, out: Path, fixes: Path | None = None) -> float:
    import headstart

    run = headstart.train(str(data), out=str(out), report=False, fixes=str(fixes) if fixes else None,
                          overwrite=True)
    return round(run.metrics["test"]["accuracy"], 4)


def one_set(name: str, seed: int, work: Path, train: bool) -> dict:
    from headstart.audit.fixes import write_fixes
    from headstart.audit.report import audit_dataset

    clean = SHARED / name
    noisy = work / name
    flipped, planted = plant(clean, noisy, seed)
    started = time.perf_counter()
    base = audit_dataset(clean)
    clean_seconds = time.perf_counter() - started
    own = {f.path for f in base.findings if f.kind == "label_issue"}
    false_leaks = [f.path for f in base.findings if f.kind == "leakage"]
    started = time.perf_counter()
    report = audit_dataset(noisy)
    first = time.perf_counter() - started
    started = time.perf_counter()
    report = audit_dataset(noisy)  # features cached now: the audit's own work
    cached = time.perf_counter() - started
    k = len(flipped)
    top = report.quality_ranking[:k]
    hits = len(set(top) & set(flipped))
    # The set's own errors are real label errors too: rank without them for the second reading.
    without_own = [p for p in report.quality_ranking if p not in own or p in flipped][:k]
    found_copies = {f.path for f in report.findings if f.kind == "leakage"}
    result = {
        "set": name, "images": report.images, "flipped": k, "planted": len(planted),
        "precision_at_k": round(hits / k, 3), "recall_at_k": round(hits / k, 3),
        "precision_at_k_without_own_errors": round(len(set(without_own) & set(flipped)) / k, 3),
        "own_label_issues": sorted(own), "flagged": sum(f.kind == "label_issue" for f in report.findings),
        "planted_recall": round(len(found_copies & set(planted)) / len(planted), 3),
        "missed_copies": sorted(set(planted) - found_copies),
        "false_leakage_unaltered": false_leaks,
        "extra_leakage_noisy": sorted(found_copies - set(planted)),
        "seconds_clean_first": round(clean_seconds, 2), "seconds_noisy_features_new": round(first, 2),
        "seconds_cached": round(cached, 2), "stage_seconds_cached": report.seconds,
    }
    if name == "pizza_steak_sushi":
        result["tea_cup_rank_clean"] = base.quality_ranking.index("train/pizza/3821701.jpg") + 1
    if train:
        fixes = [f for f in report.suggested_fixes() if f["path"].startswith("train/")]  # the same test set
        fixes_file = write_fixes(work / f"{name}-fixes.json", noisy, fixes)
        result["accuracy"] = {"clean": test_accuracy(clean, work / "runs" / f"{name}-clean"),
                              "noisy": test_accuracy(noisy, work / "runs" / f"{name}-noisy"),
                              "fixed": test_accuracy(noisy, work / "runs" / f"{name}-fixed", fixes_file)}
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sets", default="pizza_steak_sushi,oxford_pets_3class,digits")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--no-train", action="store_true")
    args = parser.parse_args()
    os.environ.setdefault("HEADSTART_CACHE", tempfile.mkdtemp(prefix="audit-cache-"))
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        for name in args.sets.split(","):
            result = one_set(name, args.seed, Path(tmp), not args.no_train)
            print(json.dumps(result), flush=True)
            results.append(result)
    out = REPO / "benchmarks" / "results" / "audit.json"
    out.write_text(json.dumps(results, indent=2) + "\n")
    print("\n".join(table(results)))


def table(results: list[dict]) -> list[str]:
    lines = ["| set | images | flipped | precision = recall at k | same, own errors left out | planted copies found "
             "| false leakage (unaltered) | audit s (new / cached features) | test acc clean / noisy / fixed |",
             "| --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    for r in results:
        acc = r.get("accuracy")
        lines.append(f"| {r['set']} | {r['images']} | {r['flipped']} | {r['precision_at_k']:.2f} | "
                     f"{r['precision_at_k_without_own_errors']:.2f} | {r['planted_recall']:.0%} | "
                     f"{len(r['false_leakage_unaltered'])} | {r['seconds_noisy_features_new']:.1f} / "
                     f"{r['seconds_cached']:.1f} | "
                     + (f"{acc['clean']:.3f} / {acc['noisy']:.3f} / {acc['fixed']:.3f} |" if acc else "– |"))
    return lines


if __name__ == "__main__":
    main()
