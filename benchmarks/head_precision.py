"""Features mode's test accuracy on three dev sets and three seeds: an fp32 run, a bf16 run (extraction on
OpenVINO bf16, training under bf16 autocast) with the head in fp32 (Float32Linear, the default), and the same
with the head computed under bf16 autocast as before (nn.Linear's forward, swapped in for the measurement).

    python benchmarks/head_precision.py    # writes benchmarks/results/head_precision.json
"""
import json
import tempfile
import time
from pathlib import Path

import torch

import headstart
from headstart.backbones import model as bm

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared" / "datasets"
OUT = Path(tempfile.mkdtemp(prefix="head-precision-"))

SETS = ["digits", "pizza_steak_sushi", "oxford_pets_3class"]


def main() -> None:
    rows = []
    fp32_forward = bm.Float32Linear.forward
    for name in SETS:
        for seed in (0, 1, 2):
            variants = (("fp32", "32", fp32_forward), ("bf16, head fp32", "bf16-mixed", fp32_forward),
                        ("bf16, head bf16", "bf16-mixed", torch.nn.Linear.forward))
            for label, precision, head in variants:
                bm.Float32Linear.forward = head
                t = time.time()
                run = headstart.train(str(SHARED / name), mode="features", seed=seed, precision=precision,
                                      out=str(OUT / f"{name}-{seed}-{precision}"), overwrite=True, report=False)
                rows.append({"set": name, "seed": seed, "variant": label, "test": run.metrics["test"]["accuracy"],
                             "val": run.metrics["val"]["accuracy"], "seconds": round(time.time() - t, 1)})
                print(rows[-1], flush=True)
    bm.Float32Linear.forward = fp32_forward
    (REPO / "benchmarks" / "results" / "head_precision.json").write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
