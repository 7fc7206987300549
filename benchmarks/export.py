"""Every export format on real data: size, top-1 agreement with PyTorch, accuracy and ECE change, latency p50
(1 image) and throughput (batch 32), each with the format's own runtime. Writes docs/export.md and
benchmarks/results/export.json.

    python benchmarks/export.py                      # pizza_steak_sushi and oxford_pets_3class, ~5-10 min
    python benchmarks/export.py --datasets pizza_steak_sushi --formats onnx onnx-int8

Each dataset: efficientnet_lite0 (ImageNet weights) trained in features mode at 224 px, then exported to each
format with headstart.export, which scores it on the run's whole test split. Runs one after another on the
same machine, so the speed columns compare within a table.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared" / "datasets"
DATASETS = ("pizza_steak_sushi", "oxford_pets_3class")
# Every format headstart exports; tflite only where its extra (litert-torch) is installed.
FORMATS = ("onnx", "onnx-int8", "openvino", "openvino-int8", "web",
           *(("tflite",) if importlib.util.find_spec("litert_torch") else ()))
SAME_RUNTIME = {"onnx-int8": "onnx", "openvino-int8": "openvino"}


def cpu_name() -> str:
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True, check=True).stdout
    except (OSError, subprocess.CalledProcessError):
        return platform.processor() or "unknown CPU"
    fields = dict(line.split(":", 1) for line in out.splitlines() if ":" in line)
    flags = fields.get("Flags", "")
    isa = [f for f in ("avx2", "avx512f", "avx512_vnni", "avx_vnni", "avx512_bf16", "amx_int8") if f in flags.split()]
    return (f"{fields.get('Model name', '?').strip()} (family {fields.get('CPU family', '?').strip()}, model "
            f"{fields.get('Model', '?').strip()}), {fields.get('CPU(s)', '?').strip()} CPUs, {', '.join(isa)}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--datasets", nargs="+", default=list(DATASETS))
    parser.add_argument("--formats", nargs="+", default=list(FORMATS))
    parser.add_argument("--epochs", type=int, default=5)
    parser.add_argument("--out", type=Path, default=REPO / "docs" / "export.md")
    parser.add_argument("--json", type=Path, default=REPO / "benchmarks" / "results" / "export.json")
    args = parser.parse_args()

    import headstart
    from headstart.inference.deploy import export
    from headstart.inference.export import ExportError

    results: dict = {"cpu": cpu_name(), "date": time.strftime("%Y-%m-%d"), "commit": _commit(), "datasets": {},
                     "load_average_start": round(os.getloadavg()[0], 1)}
    with tempfile.TemporaryDirectory() as tmp:
        for name in args.datasets:
            started = time.perf_counter()
            run = headstart.train(SHARED / name, backbone="efficientnet_lite0", mode="features",
                                  epochs=args.epochs, out=str(Path(tmp) / name), report=False).run_dir
            rows = {}
            print(f"{name}: trained in {time.perf_counter() - started:.0f}s", flush=True)
            for fmt in args.formats:
                try:
                    # floor 0: measure and report every format, including one that would be refused
                    report = export(run, fmt, floor=0.0)
                    rows[fmt] = {"bytes": report.bytes, "seconds": report.seconds, **report.scores}
                except ExportError as exc:
                    rows[fmt] = {"error": str(exc)}
                print(f"  {fmt}: {json.dumps(rows[fmt])}", flush=True)
            results["datasets"][name] = rows
    results["load_average_end"] = round(os.getloadavg()[0], 1)
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(results, indent=2) + "\n")
    args.out.write_text(render(results))
    print(f"wrote {args.out} and {args.json}")


def _commit() -> str:
    """The short commit, with "+ uncommitted changes" when the source tree differs from it."""
    try:
        commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                                cwd=REPO, check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--", "src", "benchmarks/export.py"],
                               capture_output=True, text=True, cwd=REPO, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    return f"{commit} + uncommitted changes" if dirty else commit


def render(results: dict) -> str:
    from headstart.inference.deploy import FLOORS

    lines = [
        "# Exports: what each format costs",
        "",
        f"`python benchmarks/export.py` at commit {results['commit']}, "
        f"{results['date']}; CPU: {results['cpu']}; 1-minute load average {results.get('load_average_start')} at "
        f"the start and {results.get('load_average_end')} at the end (the benchmark itself keeps 1-2 cores busy).",
        "efficientnet_lite0 (ImageNet weights), features mode, 224 px; each export scored by `headstart export` on "
        "the run's whole test split against the PyTorch model, with the format's own runtime. Speed: the model "
        "call alone (preprocessed input), default threads, latency p50 of one image and throughput of a batch "
        "of 32; compare rows of one table, not across tables or machines. "
        "ECE is after temperature scaling. Floors: "
        f"{FLOORS['fp32']:.0%} top-1 agreement for fp32 formats, {FLOORS['int8']:.0%} for int8.",
        "",
        "The web row is scored with ONNX Runtime in Python on the bundle's own model bytes; in Chromium the page "
        "agrees with it on every test image (tests/inference/test_web_export.py). Its size includes the "
        "runtime (~5.2 MB: ort.js and the gzipped, base64 wasm).",
        "",
    ]
    for name, rows in results["datasets"].items():
        n = next((r["n"] for r in rows.values() if "n" in r), "?")
        lines += [f"## {name} ({n} test images)", "",
                  "| format | size MB | top-1 agreement | accuracy (PyTorch) | accuracy change | ECE change | "
                  "max abs logit diff | p50 ms | images/s (batch 32) | int8 speed-up |",
                  "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]
        for fmt, row in rows.items():
            if "error" in row:
                lines.append(f"| {fmt} | error: {row['error']} |||||||||")
                continue
            base = rows.get(SAME_RUNTIME.get(fmt, ""), {})
            speedup = (f"{row['throughput_ips'] / base['throughput_ips']:.2f}x vs {SAME_RUNTIME[fmt]}"
                       if "throughput_ips" in base else "")
            lines.append(
                f"| {fmt} | {row['bytes'] / 1e6:.1f} | {row['top1_agreement']:.2%} | "
                f"{row['accuracy']:.2%} ({row['accuracy_torch']:.2%}) | {100 * row['accuracy_change']:+.2f} pt | "
                f"{row['ece_change']:+.4f} | {row['max_abs_logit_diff']:.2e} | {row['latency_p50_ms']:.1f} | "
                f"{row['throughput_ips']:.0f} | {speedup} |")
        lines.append("")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    sys.exit(main())
