#!/usr/bin/env python
"""Prediction latency and throughput of a trained run: `headstart.load(run).predict(...)`.

Latency is one call with one image path, as a service answering one request would make it (the image is read
and decoded inside the call), over `--calls` calls after warm-up: p50 and p95. Throughput is one call with a
list of `--batch-images` paths. Without `--run`, an efficientnet_lite0 run is trained first on the bundled demo
set (features mode) with a throw-away feature cache.

    python benchmarks/predict_latency.py [--run RUN_DIR] [--calls 50] [--batch-images 256]
    python benchmarks/predict_latency.py --quick      # a 64 px run on synthetic images: a smoke test
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from vs_tutorial import QUICK_SIZE, REPO, log, machine_info, make_synthetic, markdown_table

DEMO_DATA = REPO / "src" / "headstart" / "demo_data"
TARGET_P50_MS = 25.0


def train_run(data: Path, out: Path, quick: bool) -> Path:
    import headstart

    os.environ["HEADSTART_CACHE"] = str(out.parent / "cache")  # never read or fill the user's cache
    settings = {"image_size": QUICK_SIZE, "epochs": 2} if quick else {}
    started = time.perf_counter()
    result = headstart.train(data, backbone="efficientnet_lite0", mode="features", out=str(out), **settings)
    log(f"trained {out} in {time.perf_counter() - started:.1f}s (test accuracy "
        f"{result.metrics.get('test', result.metrics['val'])['accuracy']:.3f})")
    return result.run_dir


def percentile(values: Sequence[float], q: float) -> float:
    """Linear-interpolated percentile, as numpy's default."""
    ordered = sorted(values)
    k = (len(ordered) - 1) * q / 100
    lo = int(k)
    hi = min(lo + 1, len(ordered) - 1)
    return ordered[lo] + (ordered[hi] - ordered[lo]) * (k - lo)


def measure(run: Path, images: list[str], *, calls: int, warmup: int, batch_images: int) -> dict:
    import torch

    import headstart

    started = time.perf_counter()
    classifier = headstart.load(run)
    load_seconds = time.perf_counter() - started
    one = [images[0]]
    for _ in range(warmup):
        classifier.predict(one)
    latencies = []
    for i in range(calls):
        path = [images[i % len(images)]]
        started = time.perf_counter()
        out = classifier.predict(path)
        latencies.append(1000 * (time.perf_counter() - started))
        if "error" in out[0]:
            raise RuntimeError(f"predict failed on {path[0]}: {out[0]['error']}")
    batch = [images[i % len(images)] for i in range(batch_images)]
    classifier.predict(batch[:32])  # warm the batch-32 shapes
    started = time.perf_counter()
    predictions = classifier.predict(batch)
    batch_seconds = time.perf_counter() - started
    return {
        "run": str(run), "backbone": classifier.manifest["backbone"],
        "image_size": classifier.manifest["preprocessing"]["crop_size"], "precision": classifier.precision,
        "threads": torch.get_num_threads(), "load_seconds": load_seconds, "calls": calls, "warmup": warmup,
        "latency_ms": {"p50": percentile(latencies, 50), "p95": percentile(latencies, 95),
                       "mean": statistics.fmean(latencies), "min": min(latencies), "max": max(latencies)},
        "batch_images": batch_images, "batch_seconds": batch_seconds,
        "batch_images_per_second": batch_images / batch_seconds,
        "batch_errors": sum("error" in p for p in predictions),
        "target_p50_ms": TARGET_P50_MS,
    }


def table(r: dict) -> str:
    lat = r["latency_ms"]
    result = "**PASS**" if lat["p50"] < TARGET_P50_MS else f"**MISS** (+{lat['p50'] - TARGET_P50_MS:.1f} ms)"
    return markdown_table(
        ["backbone", "input px", "p50 ms", "p95 ms", "mean ms", "target p50", "result",
         f"{r['batch_images']} images: img/s", "load s", "threads"],
        [[r["backbone"], r["image_size"], lat["p50"], lat["p95"], lat["mean"], f"< {TARGET_P50_MS:g} ms", result,
          r["batch_images_per_second"], r["load_seconds"], r["threads"]]])


def main(argv: Sequence[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--run", type=Path, help="a run directory (default: train one on the demo set)")
    parser.add_argument("--calls", type=int, default=50)
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--batch-images", type=int, default=256)
    parser.add_argument("--quick", action="store_true", help="synthetic 64 px run, 10 calls, 32 images")
    parser.add_argument("--json", type=Path, default=REPO / "benchmarks" / "results" / "predict_latency.json")
    args = parser.parse_args(argv)
    from headstart.data.folders import list_images

    started, machine = time.perf_counter(), machine_info()
    with tempfile.TemporaryDirectory(prefix="predict-latency-") as scratch:
        scratch = Path(scratch)
        data = make_synthetic(scratch / "data", ["train", "val", "test"]) if args.quick else DEMO_DATA
        run = args.run or train_run(data, scratch / "run", args.quick)
        images = [str(p) for split in ("test", "train") for p in list_images(data / split)]
        r = measure(run, images, calls=10 if args.quick else args.calls, warmup=2 if args.quick else args.warmup,
                    batch_images=32 if args.quick else args.batch_images)
    results = {"benchmark": "predict_latency", "quick": args.quick, "trained_here": args.run is None,
               "started": dt.datetime.now().isoformat(timespec="seconds"), "machine": machine, **r,
               "total_seconds": time.perf_counter() - started}
    results["load_average_end"] = [round(x, 2) for x in os.getloadavg()]
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(results, indent=2) + "\n")
    print(table(results))
    print(f"\ntotal runtime {results['total_seconds']:.0f}s; load average at start {machine['load_average']}, at end "
          f"{results['load_average_end']}; JSON: {args.json}")
    return results


if __name__ == "__main__":
    main()
