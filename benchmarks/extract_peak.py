"""Extraction against the hardware (issue 21): images/s of the extraction engine, the network's FLOP count, and
the share of this CPU's measured matrix-multiply peak that the engine reaches, per precision this CPU runs.

    python benchmarks/extract_peak.py [--backbone efficientnet_lite0] [--batch 64] [--quick]

FLOPs: torch's FlopCounterMode on one image (2 per multiply-add: convolutions and the matmuls; the depthwise
convolutions count as convolutions). Peak: the best of a few 2048 x 2048 matrix products on OpenVINO itself,
with the same threads and precision hint as the engine (a dense product is the best case for any kernel; numpy's
is printed beside it). Precisions: fp32, and bf16 where the CPU has native bf16 (AVX512-BF16 or AMX flags).
Engine: the same frozen_forward that training uses (OpenVINO, THROUGHPUT hint, chunks of 4), fed decoded
batches: steady state, without decoding.
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def _best_gflops(run, size: int, repeats: int = 5) -> float:
    run()
    best = 0.0
    for _ in range(repeats):
        started = time.perf_counter()
        run()
        best = max(best, 2 * size ** 3 / (time.perf_counter() - started) / 1e9)
    return best


def openvino_matmul_peak(hint: str, threads: int, size: int = 2048) -> float:
    """Best GFLOP/s of a size x size matrix product on OpenVINO's CPU plugin (2 * size^3 FLOPs each)."""
    import numpy as np
    import openvino as ov
    import openvino.opset13 as ops

    x = ops.parameter([size, size], np.float32)
    weights = ops.constant(np.random.default_rng(0).random((size, size), dtype=np.float32))
    model = ov.Model([ops.matmul(x, weights, False, False)], [x])
    compiled = ov.Core().compile_model(model, "CPU", {"INFERENCE_PRECISION_HINT": hint,
                                                      "INFERENCE_NUM_THREADS": threads})
    a = np.random.default_rng(1).random((size, size), dtype=np.float32)
    return _best_gflops(lambda: compiled(a), size)


def numpy_matmul_peak(size: int = 2048) -> float:
    import numpy as np

    a = np.random.default_rng(0).random((size, size), dtype=np.float32)
    return _best_gflops(lambda: a @ a, size)


def cpuinfo() -> tuple[str, set[str]]:
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return platform.processor() or platform.machine(), set()
    model = next((line.split(":", 1)[1].strip() for line in text.splitlines() if line.startswith("model name")),
                 platform.machine())
    return model, set(text.split())


def native_bf16() -> bool:
    return bool({"avx512_bf16", "amx_bf16"} & cpuinfo()[1])


def flops_per_image(module, crop: int) -> float:
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    counter = FlopCounterMode(display=False)
    with torch.inference_mode(), counter:
        module(torch.randn(1, 3, crop, crop))
    return float(counter.get_total_flops())


def engine_images_per_second(module, batch, precision: str, repeats: int = 5) -> tuple[float, str]:
    from headstart.extract.engines import frozen_forward

    forward, name = frozen_forward(module, batch, engine="auto", accelerator="cpu", precision=precision)
    if forward is None:
        return 0.0, name
    forward(batch)
    started = time.perf_counter()
    for _ in range(repeats):
        forward(batch)
    return repeats * len(batch) / (time.perf_counter() - started), name


def main() -> None:
    import torch

    from headstart.backbones.model import build_network
    from headstart.backbones.registry import get_spec

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backbone", default="efficientnet_lite0")
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--quick", action="store_true", help="8-image batches and a 512 x 512 product (tests)")
    parser.add_argument("--json", type=Path, default=REPO / "benchmarks" / "results" / "extract_peak.json")
    args = parser.parse_args()
    size = 512 if args.quick else 2048
    if args.quick:
        args.batch = 8
    spec = get_spec(args.backbone)
    crop = spec.preprocessing.crop_size
    backbone = build_network(spec, 2).backbone.eval()
    flops = flops_per_image(backbone, crop)
    torch.manual_seed(0)
    batch = torch.randn(args.batch, 3, crop, crop)
    precisions = [("fp32", "32-true", "f32")] + ([("bf16", "bf16-mixed", "bf16")] if native_bf16() else [])
    rows = []
    for label, precision, hint in precisions:
        peak = openvino_matmul_peak(hint, torch.get_num_threads(), size)
        ips, engine = engine_images_per_second(backbone, batch, precision)
        achieved = ips * flops / 1e9
        rows.append({"precision": label, "engine": engine, "images_per_second": ips,
                     "gflops_per_image": flops / 1e9, "achieved_gflops": achieved, "matmul_peak_gflops": peak,
                     "share_of_peak": achieved / peak})
        print(json.dumps(rows[-1]), flush=True)
    cpu = {"model": cpuinfo()[0], "threads": torch.get_num_threads(), "avx512f": "avx512f" in cpuinfo()[1],
           "native_bf16": native_bf16(), "numpy_fp32_matmul_gflops": numpy_matmul_peak(size)}
    print(f"\n{args.backbone} at {crop} px, batch {args.batch}; CPU {cpu}")
    print("\n| precision | engine | images/s | GFLOP per image | achieved GFLOP/s | OpenVINO matmul GFLOP/s | share |"
          "\n|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['precision']} | {r['engine']} | {r['images_per_second']:.0f} | {r['gflops_per_image']:.2f} | "
              f"{r['achieved_gflops']:.0f} | {r['matmul_peak_gflops']:.0f} | {100 * r['share_of_peak']:.0f}% |")
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps({"backbone": args.backbone, "cpu": cpu, "rows": rows}, indent=2) + "\n")


if __name__ == "__main__":
    main()
