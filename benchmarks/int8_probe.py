"""Would int8 extraction cost accuracy? (issue 21: offer it only if a linear probe stays within 0.5 point.)

efficientnet_lite0's backbone exported to ONNX (dynamo) and run by OpenVINO, in fp32 and quantized to int8 by
NNCF's post-training quantization (300 evenly spaced training images for calibration, as `export --format
openvino-int8` does); the same linear probe as benchmarks/decode_probe.py (logistic regression, C by 5-fold CV)
on each set's features, trained on train (+ val) and scored on test (hymenoptera: val). Images decoded as
training decodes them (reduced-scale JPEG decode, resized to the resize size). Also the steady-state speed of
each engine on decoded 64-image batches, on this machine.

    python benchmarks/int8_probe.py [--sets pizza_steak_sushi,oxford_pets_3class,hymenoptera_data,digits]
                                    [--narrow-weights]

--narrow-weights quantizes with NNCF's overflow fix on every layer (7-bit weights), which CPUs without int8 dot
products (VNNI or AMX) need; without it, NNCF's default (the first layer only).
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from pathlib import Path

import numpy as np
from decode_probe import SHARED, probe, probe_splits

REPO = Path(__file__).resolve().parents[1]
BATCH = 64


def decoded(paths: list[str], pre) -> np.ndarray:
    """Normalized NCHW float32 inputs, decoded and preprocessed as training does."""
    from headstart.runtime.images import open_image
    from headstart.runtime.preprocess import preprocess_batch

    return preprocess_batch([open_image(p, reduce_to=pre.reduce_to) for p in paths], pre)


def run_all(compiled, x: np.ndarray) -> np.ndarray:
    return np.concatenate([compiled(x[i:i + BATCH])[0] for i in range(0, len(x), BATCH)])


def images_per_second(compiled, x: np.ndarray, repeats: int = 5) -> float:
    batch = x[:BATCH]
    compiled(batch)
    started = time.perf_counter()
    for _ in range(repeats):
        compiled(batch)
    return repeats * len(batch) / (time.perf_counter() - started)


def main() -> None:
    import nncf
    import openvino as ov
    import torch

    from headstart import onnx_export
    from headstart.backbones.model import build_network
    from headstart.backbones.registry import get_spec
    from headstart.data.folders import discover
    from headstart.device import cpu_has_int8_dot

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sets", default="pizza_steak_sushi,oxford_pets_3class,hymenoptera_data,digits")
    parser.add_argument("--json", type=Path, default=REPO / "benchmarks" / "results" / "int8_probe.json")
    parser.add_argument("--narrow-weights", action="store_true", help="NNCF's overflow fix on every layer")
    args = parser.parse_args()
    from nncf.quantization.advanced_parameters import AdvancedQuantizationParameters, OverflowFix

    overflow_fix = AdvancedQuantizationParameters(
        overflow_fix=OverflowFix.ENABLE if args.narrow_weights else OverflowFix.FIRST_LAYER)
    spec = get_spec("efficientnet_lite0")
    pre = spec.preprocessing
    net = build_network(spec, 2).eval()
    graph = onnx_export.to_onnx(net.backbone, torch.randn(2, 3, pre.crop_size, pre.crop_size),
                                output_name="features", exporter="dynamo")
    core = ov.Core()
    f32 = {"INFERENCE_PRECISION_HINT": "f32"}
    fp32 = core.compile_model(core.read_model(graph, b""), "CPU", f32)
    rows = []
    for name in args.sets.split(","):
        dataset = discover(SHARED / name)
        test_split, items = probe_splits(dataset)
        x = {k: decoded([p for p, _ in v], pre) for k, v in items.items()}
        y = {k: np.array([label for _, label in v]) for k, v in items.items()}
        train = dataset.splits["train"]
        calibration = [train[i][0] for i in np.unique(np.linspace(0, len(train) - 1, 300).round().astype(int))]
        started = time.perf_counter()
        quantized = nncf.quantize(core.read_model(graph, b""),
                                  nncf.Dataset(list(decoded(calibration, pre)), lambda a: a[None]),
                                  subset_size=len(calibration), fast_bias_correction=True,
                                  advanced_parameters=overflow_fix)
        quantize_seconds = time.perf_counter() - started
        int8 = core.compile_model(quantized, "CPU", f32)
        row = {"set": name, "test_split": test_split, "images": sum(map(len, items.values())),
               "quantize_seconds": quantize_seconds, "narrow_weights": args.narrow_weights}
        for key, engine in (("fp32", fp32), ("int8", int8)):
            feats = {k: run_all(engine, v) for k, v in x.items()}
            row[f"{key}_accuracy"] = probe(feats["fit"], y["fit"], feats["test"], y["test"])
            row[f"{key}_images_per_second"] = images_per_second(engine, x["fit"])
            if key == "int8":
                ref = run_all(fp32, x["test"])
                cos = (ref * feats["test"]).sum(1) / (np.linalg.norm(ref, axis=1) *
                                                     np.linalg.norm(feats["test"], axis=1))
                row["feature_cosine_mean"], row["feature_cosine_min"] = float(cos.mean()), float(cos.min())
        row["difference_points"] = 100 * (row["int8_accuracy"] - row["fp32_accuracy"])
        rows.append(row)
        print(json.dumps(row), flush=True)
    print(f"\nCPU: {platform.processor() or platform.machine()}, int8 dot products (VNNI/AMX): "
          f"{cpu_has_int8_dot()}; OpenVINO {ov.get_version()}, NNCF {nncf.__version__}; narrow weights: "
          f"{args.narrow_weights}")
    print("\n| set | images | probe fp32 | probe int8 | difference (points) | feature cosine mean / min | "
          "img/s fp32 | img/s int8 | quantize s |\n|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['set']} ({r['test_split']}) | {r['images']} | {r['fp32_accuracy']:.4f} | "
              f"{r['int8_accuracy']:.4f} | {r['difference_points']:+.2f} | {r['feature_cosine_mean']:.4f} / "
              f"{r['feature_cosine_min']:.4f} | {r['fp32_images_per_second']:.0f} | "
              f"{r['int8_images_per_second']:.0f} | {r['quantize_seconds']:.1f} |")
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(rows, indent=2) + "\n")


if __name__ == "__main__":
    main()
