"""Does decoding JPEGs at a reduced DCT scale (runtime/images.py, `reduce_to`) change what a model learns? A linear
probe (logistic regression, C chosen by 5-fold CV) on frozen efficientnet_lite0 features of the same images,
decoded at full size or at a reduced scale, both then resized to the backbone's resize size, on each dev set.

    python benchmarks/decode_probe.py [--sets pizza_steak_sushi,oxford_pets_3class,hymenoptera_data,digits]

Trains on train (+ val where the set has one) and scores test (hymenoptera: val, it has no test split).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared" / "datasets"


def features(backbone, spec, paths: list[str], reduce: bool) -> np.ndarray:
    from headstart.data.transforms import pixel_transform
    from headstart.extract.frozen import extract_features
    from headstart.runtime.images import open_image
    from headstart.runtime.preprocess import resize_short_side

    pre = spec.preprocessing
    images = [resize_short_side(open_image(p, reduce_to=pre.resize_size if reduce else None), pre.resize_size,
                                pre.interpolation) for p in paths]
    return extract_features(backbone, images, pixel_transform(pre)).numpy()


def probe_splits(dataset) -> tuple[str, dict]:
    """(the split scored: test, else val; {"fit": train (+ val) items, "test": that split's items})."""
    test_split = "test" if "test" in dataset.splits else "val"
    fit = [s for s in ("train", "val") if s in dataset.splits and s != test_split]
    return test_split, {"fit": [i for s in fit for i in dataset.splits[s]], "test": dataset.splits[test_split]}


def probe(train_x, train_y, test_x, test_y) -> float:
    import warnings

    from sklearn.linear_model import LogisticRegressionCV

    warnings.filterwarnings("ignore", category=FutureWarning)  # scikit-learn's notices of changing defaults
    from sklearn.preprocessing import StandardScaler

    scaler = StandardScaler().fit(train_x)
    model = LogisticRegressionCV(Cs=np.logspace(-3, 2, 6), cv=5, max_iter=2000).fit(scaler.transform(train_x),
                                                                                   train_y)
    return float((model.predict(scaler.transform(test_x)) == test_y).mean())


def main() -> None:
    import torch

    from headstart.backbones.model import build_network
    from headstart.backbones.registry import get_spec
    from headstart.data.folders import discover
    from headstart.extract.frozen import FrozenBackbone

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sets", default="pizza_steak_sushi,oxford_pets_3class,hymenoptera_data,digits")
    parser.add_argument("--json", type=Path, default=REPO / "benchmarks" / "results" / "decode_probe.json")
    args = parser.parse_args()
    spec = get_spec("efficientnet_lite0")
    net = build_network(spec, 2).eval()
    pre = spec.preprocessing
    backbone = FrozenBackbone(net.backbone, pixels=(pre.mean, pre.std))
    rows = []
    for name in args.sets.split(","):
        dataset = discover(SHARED / name)
        test_split, items = probe_splits(dataset)
        from headstart.runtime.images import open_image

        sizes = [min(open_image(p).size) for p, _ in items["test"][:50]]
        row = {"set": name, "test_split": test_split, "images": sum(map(len, items.values())),
               "median_short_side": int(np.median(sizes))}
        for reduce in (False, True):
            started = time.perf_counter()
            torch.manual_seed(0)
            x = {k: features(backbone, spec, [p for p, _ in v], reduce) for k, v in items.items()}
            y = {k: np.array([label for _, label in v]) for k, v in items.items()}
            key = "reduced" if reduce else "full"
            row[f"{key}_accuracy"] = probe(x["fit"], y["fit"], x["test"], y["test"])
            row[f"{key}_seconds"] = time.perf_counter() - started
        row["difference_points"] = 100 * (row["reduced_accuracy"] - row["full_accuracy"])
        rows.append(row)
        print(json.dumps(row), flush=True)
    print("\n| set | images | median short side | probe accuracy, full decode | reduced-scale decode | "
          "difference (points) |\n|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['set']} ({r['test_split']}) | {r['images']} | {r['median_short_side']} | "
              f"{r['full_accuracy']:.4f} | {r['reduced_accuracy']:.4f} | {r['difference_points']:+.2f} |")
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(rows, indent=2) + "\n")


if __name__ == "__main__":
    main()
