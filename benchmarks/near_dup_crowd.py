"""The near-duplicate crowd rule's ratio, measured (docs/audit.md, "The crowd rule").

For each pair: its embedding distance (1 - cosine) over the distance to the CROWD_K-th nearest neighbour of either
image (the nearer one). Two populations:
- copies: 60 altered copies (15 each of resized to 70%, JPEG quality 60, cropped by 10%, brightness +20%) of
  hymenoptera_data's train images, planted into its val split (the calibration set of the other thresholds);
- look-alikes: the distinct pairs that pass the cosine and pHash thresholds on digits upscaled to 64 px (the one
  homogeneous set here: 8x8 content, as alike as scans).

    python benchmarks/near_dup_crowd.py [--workdir DIR]
"""

from __future__ import annotations

import argparse
import json
import random
import shutil
from pathlib import Path

import numpy as np

from audit import KINDS, SHARED, altered


def ratios(emb, pairs: list[tuple[str, str]], k: int) -> np.ndarray:
    sims = emb.features @ emb.features.T
    np.fill_diagonal(sims, -np.inf)
    kth = -np.partition(-sims, k - 1, axis=1)[:, k - 1]
    index = {p: i for i, p in enumerate(emb.paths)}
    out = []
    for a, b in pairs:
        i, j = index[a], index[b]
        out.append((1 - sims[i, j]) / max(1 - max(kth[i], kth[j]), 1e-9))
    return np.array(out)


def main() -> None:
    from PIL import Image

    import headstart.audit.duplicates as duplicates
    from headstart.audit.features import embed_dataset
    from headstart.data.folders import discover

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workdir", type=Path, default=Path.home() / ".cache" / "headstart-bench" / "near-dup-crowd")
    args = parser.parse_args()
    planted, digits64 = args.workdir / "hymenoptera_planted", args.workdir / "digits64"
    if not planted.exists():
        shutil.copytree(SHARED / "hymenoptera_data", planted)
        rng, pairs = random.Random(1), []
        for j, path in enumerate(rng.sample(sorted((planted / "train").rglob("*.jpg")), 60)):
            kind = KINDS[j % 4]
            out = planted / "val" / path.parent.name / f"planted_{j}_{kind}.{'jpg' if kind == 'jpeg60' else 'png'}"
            altered(path, kind).save(out, quality=60)
            pairs.append((str(path), str(out)))
        (args.workdir / "planted_pairs.json").write_text(json.dumps(pairs))
    if not digits64.exists():
        for path in sorted((SHARED / "digits").rglob("*.png")):
            out = digits64 / path.relative_to(SHARED / "digits")
            out.parent.mkdir(parents=True, exist_ok=True)
            Image.open(path).convert("L").resize((64, 64), Image.BICUBIC).save(out)
    copies = [tuple(p) for p in json.loads((args.workdir / "planted_pairs.json").read_text())]
    emb_copies = embed_dataset(discover(planted))
    emb_alike = embed_dataset(discover(digits64))
    ratio = duplicates.CROWD_RATIO
    duplicates.CROWD_RATIO = float("inf")  # every pair the other two thresholds pass
    alike = [(d.first, d.second) for d in duplicates.near_duplicates(emb_alike)]
    duplicates.CROWD_RATIO = ratio
    print(f"look-alike pairs on digits at 64 px passing cosine {duplicates.COSINE} and pHash "
          f"{duplicates.PHASH_BITS}: {len(alike)}")
    print("| k | planted copies: max ratio | look-alikes: min ratio |\n|---|---|---|")
    for k in (2, 3, 5, 10):
        print(f"| {k} | {ratios(emb_copies, copies, k).max():.3f} | {ratios(emb_alike, alike, k).min():.3f} |")
    print(f"in use: k = {duplicates.CROWD_K}, ratio {ratio}; pairs left on digits at 64 px: "
          f"{len(duplicates.near_duplicates(emb_alike))}")


if __name__ == "__main__":
    main()
