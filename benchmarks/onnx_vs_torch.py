"""ONNX Runtime vs PyTorch on the same runs, side by side in one process (CPU).

    python benchmarks/onnx_vs_torch.py [--lite-run RUN] [--weights mobilenet_v2.pth] [--quick] [--json out.json]

Models: efficientnet_lite0 (a real run: --lite-run, else one trained here on the bundled demo set) and
mobilenet_v2 (ImageNet weights from --weights, else random: speed does not depend on the values). Each engine
gets the same decoded demo images and the same thread count. Measured, end to end from decoded PIL images
(preprocessing included, as `.logits()` does it): single-image latency p50/p95 and batch-32 throughput; and
the network alone on a preprocessed single image.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

from vs_tutorial import REPO, machine_info

DEMO = REPO / "src" / "headstart" / "demo_data"


def lite_run(workdir: Path, quick: bool) -> Path:
    import headstart

    result = headstart.train(DEMO, backbone="efficientnet_lite0", mode="features", epochs=2 if quick else 10,
                             out=str(workdir / "lite0"))
    return result.run_dir


def mobilenet_run(workdir: Path, weights: str | None) -> Path:
    """A run directory around mobilenet_v2 (3 classes), as training would write it."""
    import torch

    from headstart.backbones.model import build_network
    from headstart.backbones.registry import get_spec
    from headstart.training.checkpoint import save_model

    spec = get_spec("mobilenet_v2")
    torch.manual_seed(0)
    net = build_network(spec, 3, weights=weights, pretrained=False)
    run_dir = workdir / "mobilenet_v2"
    run_dir.mkdir(parents=True)
    save_model(run_dir, net, {
        "backbone": spec.name, "classes": ["a", "b", "c"], "preprocessing": spec.preprocessing.to_dict(),
        "head": {"type": "dropout_linear", "in_features": spec.in_features, "num_classes": 3, "dropout": 0.2},
        "temperature": 1.0, "threshold": 0.5, "mode": "features",
    })
    return run_dir


def timings(fn, repeats: int, warmup: int) -> list[float]:
    for _ in range(warmup):
        fn()
    out = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        out.append(time.perf_counter() - start)
    return out


def bench_engine(name: str, clf, images, run_network, quick: bool) -> dict:
    repeats, warmup = (10, 2) if quick else (100, 10)
    single = timings(lambda: clf.logits(images[:1]), repeats, warmup)
    network = timings(run_network, repeats, warmup)
    batch = images[:32]
    batches = timings(lambda: clf.logits(batch, batch_size=32), 2 if quick else 10, 1)
    return {
        "engine": name,
        "single_p50_ms": 1e3 * float(np.percentile(single, 50)),
        "single_p95_ms": 1e3 * float(np.percentile(single, 95)),
        "network_p50_ms": 1e3 * float(np.percentile(network, 50)),
        "batch32_images_per_s": len(batch) / statistics.median(batches),
        "batch": len(batch),
    }


def bench_run(run_dir: Path, images, threads: int, quick: bool) -> list[dict]:
    import torch

    import headstart
    from headstart.inference.export import export_onnx
    from headstart.runtime import load_onnx, preprocess_batch

    exported = export_onnx(run_dir)
    torch_clf = headstart.load(run_dir)
    onnx_clf = load_onnx(run_dir, threads=threads)
    x = preprocess_batch(images[:1], onnx_clf.preprocessing)
    x_torch = torch.from_numpy(x).contiguous(memory_format=torch.channels_last)

    def torch_network():
        with torch.inference_mode():
            torch_clf.net(x_torch)

    rows = [
        bench_engine("pytorch", torch_clf, images, torch_network, quick),
        bench_engine("onnxruntime", onnx_clf, images, lambda: onnx_clf.run(x), quick),
    ]
    for row in rows:
        row.update(model=torch_clf.manifest["backbone"], run=str(run_dir),
                   parity_max_abs_logit_diff=exported.parity["max_abs_logit_diff"],
                   onnx_mb=exported.bytes / 1e6)
    return rows


def markdown(rows: list[dict]) -> str:
    lines = ["| model | engine | 1 image p50 (ms) | 1 image p95 (ms) | network only p50 (ms) | batch 32 (img/s) |",
             "|---|---|---:|---:|---:|---:|"]
    for r in rows:
        lines.append(f"| {r['model']} | {r['engine']} | {r['single_p50_ms']:.1f} | {r['single_p95_ms']:.1f} | "
                     f"{r['network_p50_ms']:.1f} | {r['batch32_images_per_s']:.1f} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--lite-run", help="an efficientnet_lite0 run directory (default: train one on the demo set)")
    parser.add_argument("--weights", help="mobilenet_v2 ImageNet weights (.pth); default: random weights")
    parser.add_argument("--threads", type=int, default=os.cpu_count(), help="threads for both engines")
    parser.add_argument("--quick", action="store_true", help="few repetitions, a 2-epoch lite0 run: a smoke test")
    parser.add_argument("--json", help="write the results here")
    args = parser.parse_args()

    import torch

    from headstart.runtime.images import open_image

    torch.set_num_threads(args.threads)
    images = [open_image(p) for p in sorted((DEMO / "test").rglob("*.jpg"))][:32]
    with tempfile.TemporaryDirectory() as tmp:
        workdir = Path(tmp)
        # A copy of the caller's run: the export must not write into it.
        if args.lite_run:
            lite = Path(shutil.copytree(args.lite_run, workdir / "lite0"))
        else:
            lite = lite_run(workdir, args.quick)
        runs = [lite, mobilenet_run(workdir, args.weights)]
        rows = [row for run in runs for row in bench_run(run, images, args.threads, args.quick)]
    import onnxruntime

    machine = dict(machine_info(), onnxruntime=onnxruntime.__version__, quick=args.quick)
    print(markdown(rows))
    print(f"\n{machine['cpu_model']}, {machine['cores']} cores, {args.threads} threads per engine, load average "
          f"{machine['load_average']} at the end (other users share this CPU); torch {machine['torch']}, "
          f"onnxruntime {machine['onnxruntime']}")
    if args.json:
        Path(args.json).write_text(json.dumps({"rows": rows, "machine": machine}, indent=2) + "\n")


if __name__ == "__main__":
    main()
