#!/usr/bin/env python
"""Feature extraction on 1 and on N processes: `headstart train DATA --mode features --devices N`.

Each run starts from an empty feature cache, so every image is extracted once, split over the processes
(strided shares). Throughput = images extracted / wall time of the extraction phase, read from rank 0's
train.log (from the engine choice to the "features: N computed" record, which follows the last barrier: it
includes waiting for the slowest process). The head trains for 1 epoch and no report is written: only
extraction is measured here.

    python benchmarks/scale_extract.py --data ../shared/datasets/pizza_steak_sushi --processes 1,2
    python benchmarks/scale_extract.py --quick      # synthetic 64 px images: a smoke test
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from vs_tutorial import machine_info, make_synthetic  # a sibling script, not a package

REPO = Path(__file__).resolve().parents[1]


def _stamp(line: str) -> float:
    return dt.datetime.strptime(line[:23], "%Y-%m-%d %H:%M:%S,%f").timestamp()


def extraction_window(log_text: str) -> float:
    lines = log_text.splitlines()
    start = next(_stamp(x) for x in lines if "extraction engine:" in x)
    end = next(_stamp(x) for x in lines if "features:" in x and "computed" in x)
    return end - start


def run(data: Path, processes: int, work: Path, backbone: str, extra: list[str]) -> dict:
    out, cache = work / f"run-{processes}", work / f"cache-{processes}"
    command = [sys.executable, "-m", "headstart.cli", "train", str(data), "--mode", "features", "--epochs", "1",
               "--backbone", backbone, "--accelerator", "cpu", "--devices", str(processes), "--out", str(out),
               "--overwrite", "--no-report", "--no-progress", *extra]
    started = time.perf_counter()
    proc = subprocess.run(command, env=dict(os.environ, HEADSTART_CACHE=str(cache)), capture_output=True,
                          text=True, check=False)
    wall = time.perf_counter() - started
    if proc.returncode:
        raise SystemExit(f"{' '.join(command)} failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
    summary = json.loads((out / "summary.json").read_text())
    seconds = extraction_window((out / "train.log").read_text())
    images = summary["extraction"]["computed"]
    return {"processes": processes, "images": images, "extract_seconds": seconds,
            "images_per_second": images / seconds, "computed_by_rank": summary["extraction"]["computed_by_rank"],
            "engine": summary["extraction"].get("engine"), "threads_rank0": summary["threads"],
            "wall_seconds": wall, "command": command}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, default=REPO.parent / "shared" / "datasets" / "pizza_steak_sushi")
    parser.add_argument("--processes", default="1,2")
    parser.add_argument("--backbone", default="efficientnet_lite0")
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--json", type=Path, default=REPO / "benchmarks" / "results" / "scale_extract.json")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="scale-extract-") as tmp:
        work = Path(tmp)
        if args.quick:
            data, extra = make_synthetic(work / "data", ["train", "val"]), ["--image-size", "64"]
        else:
            data, extra = args.data, []
        result = {"benchmark": "scale_extract", "quick": args.quick, "data": str(data), "backbone": args.backbone,
                  "machine": machine_info(), "runs": []}
        for n in (int(x) for x in args.processes.split(",")):
            row = run(data, n, work, args.backbone, extra)
            result["runs"].append(row)
            print(f"{n} process(es): {row['images']} images in {row['extract_seconds']:.1f}s = "
                  f"{row['images_per_second']:.1f} images/s ({row['engine']}, per rank {row['computed_by_rank']})")
        result["load_average_end"] = [round(x, 2) for x in os.getloadavg()]
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
