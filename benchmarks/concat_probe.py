"""Would concatenating several backbones' features beat each alone? (issue 18: "features of several offline
backbones, alone or concatenated"; auto searches them alone today.)

The accuracy benchmark's linear probe (logistic regression, C by 5-fold stratified CV on train+val, refitted,
scored on test; hymenoptera: CV) on efficientnet_lite0, lite1 and lite2 center-crop features (the audit's
embed_dataset, each L2-normalised), alone and concatenated.

    python benchmarks/concat_probe.py [--sets pizza_steak_sushi,oxford_pets_3class,hymenoptera_data,digits]
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared" / "datasets"
BACKBONES = ("efficientnet_lite0", "efficientnet_lite1", "efficientnet_lite2")
GRID = [10.0 ** k for k in range(-2, 5)]  # C = 0.01 ... 10000, a decade apart


def probe(x: np.ndarray, y: np.ndarray, test_x: np.ndarray | None, test_y: np.ndarray | None, seed: int) -> dict:
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import StratifiedKFold, cross_val_score

    folds = StratifiedKFold(n_splits=5, shuffle=True, random_state=seed)
    cv = {c: float(np.mean(cross_val_score(LogisticRegression(C=c, max_iter=5000), x, y, cv=folds))) for c in GRID}
    best = max(GRID, key=lambda c: (cv[c], -c))
    row = {"C": best, "cv": cv[best]}
    if test_x is not None and len(test_x):
        row["test"] = float(LogisticRegression(C=best, max_iter=5000).fit(x, y).score(test_x, test_y))
    return row


def main() -> None:
    from headstart.audit.features import embed_dataset
    from headstart.data.folders import discover

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sets", default="pizza_steak_sushi,oxford_pets_3class,hymenoptera_data,digits")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", type=Path, default=REPO / "benchmarks" / "results" / "concat_probe.json")
    args = parser.parse_args()
    rows = []
    for name in args.sets.split(","):
        ds = discover(SHARED / name, val_fraction=0.2, seed=args.seed)
        embedded = {b: embed_dataset(ds, backbone=b) for b in BACKBONES}
        first = embedded[BACKBONES[0]]
        for e in embedded.values():  # the same images in the same order, or the columns would not line up
            assert e.paths == first.paths
        splits = np.asarray(first.splits)
        pool, test = np.isin(splits, ["train", "val"]), splits == "test"
        y = first.labels
        sets = {b: embedded[b].features for b in BACKBONES}
        sets["lite0+lite1+lite2"] = np.concatenate([embedded[b].features for b in BACKBONES], axis=1)
        sets["lite0+lite2"] = np.concatenate([embedded[b].features for b in (BACKBONES[0], BACKBONES[2])], axis=1)
        for label, x in sets.items():
            started = time.perf_counter()
            row = {"set": name, "features": label, "dims": x.shape[1],
                   **probe(x[pool], y[pool], x[test], y[test], args.seed),
                   "seconds": round(time.perf_counter() - started, 1)}
            rows.append(row)
            print(json.dumps(row), flush=True)
    print("\n| set | features | dims | C | CV accuracy | test accuracy |\n|---|---|---|---|---|---|")
    for r in rows:
        test = f"{r['test']:.4f}" if "test" in r else "-"
        print(f"| {r['set']} | {r['features']} | {r['dims']} | {r['C']:g} | {r['cv']:.4f} | {test} |")
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(rows, indent=2) + "\n")


if __name__ == "__main__":
    main()
