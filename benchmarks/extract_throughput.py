#!/usr/bin/env python
"""Feature-extraction throughput: headstart's path vs a plain fp32 eval loop, on the same decoded images.

headstart's path is `headstart.extract.frozen.extract_features` with channels_last and the precision
`resolve_precision("auto", "cpu")` picks (bf16-mixed only where the CPU has native bf16): since session 12 that is
`--precision bf16-mixed`'s extraction; under `auto`, frozen features are fp32 (`device.features_precision`).
The plain loop is what a tutorial writes: contiguous tensors, fp32, no autocast, `torch.no_grad()`. Both get the
same pre-decoded PIL images and the same eval transform at batch 64, so JPEG decoding is excluded; a second pair of
columns includes it (a DataLoader with 2 workers for the plain loop, `decode_split` + extraction for headstart).
Each side runs `--repeats` times, interleaved, and keeps its best time: the CPU is shared, and the best run is the
least disturbed one.

bf16: where the CPU has fast bf16, headstart's features are bf16 ones, and their cost in accuracy is measured
(cosine similarity to fp32 features, and a linear probe on pizza_steak_sushi train -> test with each). Where it
has not, bf16 is still timed once on a few images to show that it is slower there.

    python benchmarks/extract_throughput.py [--data DIR] [--backbones efficientnet_lite0,mobilenet_v2]
    python benchmarks/extract_throughput.py --quick       # synthetic 64 px images: a smoke test
"""

from __future__ import annotations

import argparse
import copy
import datetime as dt
import json
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from vs_tutorial import QUICK_SIZE, REPO, log, machine_info, make_synthetic, markdown_table

DEFAULT_DATA = REPO.parent / "shared" / "datasets" / "pizza_steak_sushi"
MOBILENET_WEIGHTS = REPO.parent / "shared" / "weights" / "mobilenet_v2_imagenet_from_tflite.pth"
TARGET = 2.5


def list_images(root: Path) -> list[tuple[str, str, int]]:
    """(path, split, label) for DATA/{train,test}/<class>/*, classes in sorted order."""
    from headstart.data.folders import list_images as images_in

    classes = sorted(d.name for d in (root / "train").iterdir() if d.is_dir())
    return [(str(p), split, c) for split in ("train", "test") for c, name in enumerate(classes)
            for p in images_in(root / split / name)]


def plain_features(model, images, transform, batch_size: int):
    """The tutorial's eval loop: fp32, contiguous, no autocast."""
    import torch

    model.eval()
    out = []
    with torch.no_grad():
        for start in range(0, len(images), batch_size):
            out.append(model(torch.stack([transform(img) for img in images[start:start + batch_size]])))
    return torch.cat(out)


class _Files:
    """A tutorial's dataset of files: PIL decodes each image in a DataLoader worker."""

    def __init__(self, paths: list[str], transform):
        self.paths, self.transform = paths, transform

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int):
        from PIL import Image

        return self.transform(Image.open(self.paths[i]).convert("RGB"))


def _timed(fn) -> tuple[float, object]:
    started = time.perf_counter()
    result = fn()
    return time.perf_counter() - started, result


def linear_probe(features, labels, train_mask) -> float:
    """Test accuracy of a logistic-regression head (full-batch L-BFGS, L2) on standardised features."""
    import torch

    x = features.float()
    train_x, test_x = x[train_mask], x[~train_mask]
    mean, std = train_x.mean(0), train_x.std(0) + 1e-6
    train_x, test_x = (train_x - mean) / std, (test_x - mean) / std
    y = labels[train_mask]
    torch.manual_seed(0)
    head = torch.nn.Linear(x.shape[1], int(labels.max()) + 1)
    optimizer = torch.optim.LBFGS(head.parameters(), max_iter=200, line_search_fn="strong_wolfe")

    def closure():
        optimizer.zero_grad()
        loss = torch.nn.functional.cross_entropy(head(train_x), y) + 1e-3 * head.weight.square().sum()
        loss.backward()
        return loss

    optimizer.step(closure)
    with torch.no_grad():
        return float((head(test_x).argmax(1) == labels[~train_mask]).float().mean())


def _cosine(a, b) -> dict:
    import torch

    sims = torch.nn.functional.cosine_similarity(a.float(), b.float(), dim=1)
    return {"mean": float(sims.mean()), "min": float(sims.min())}


def bench_backbone(name: str, items, images, *, batch_size: int, repeats: int, image_size: int | None,
                   bf16_images: int, bf16_probe: bool) -> dict:
    import torch
    from torch.utils.data import DataLoader

    from headstart.backbones.model import build_network
    from headstart.backbones.registry import get_spec
    from headstart.data.loading import decode_split
    from headstart.data.transforms import eval_transform
    from headstart.device import cpu_has_fast_bf16, resolve_precision
    from headstart.extract.frozen import extract_features

    spec = get_spec(name)
    pre = spec.preprocessing if image_size is None else spec.preprocessing.with_crop(image_size)
    transform = eval_transform(pre)
    if spec.weights.kind == "package":
        weights, source = None, spec.weights.ref
    elif name == "mobilenet_v2" and MOBILENET_WEIGHTS.is_file():
        weights, source = str(MOBILENET_WEIGHTS), str(MOBILENET_WEIGHTS)
    else:  # weights do not change the speed; the probe numbers are then meaningless and say so
        weights, source = None, "random (no offline weights)"
    backbone = build_network(spec, 3, weights=weights, pretrained=not source.startswith("random")).backbone
    plain_model, headstart_model = copy.deepcopy(backbone).eval(), copy.deepcopy(backbone)
    precision = resolve_precision("auto", "cpu")

    def plain(imgs):
        return plain_features(plain_model, imgs, transform, batch_size)

    def headstart(imgs, prec=precision):
        return extract_features(headstart_model, imgs, transform, batch_size=batch_size, precision=prec,
                                channels_last=True)

    # Warm-up: the allocator and oneDNN's kernel choices, so that the first timed side is not penalised.
    plain(images[:batch_size])
    headstart(images[:batch_size])
    plain_times, headstart_times = [], []
    for _ in range(repeats):
        seconds, plain_feats = _timed(lambda: plain(images))
        plain_times.append(seconds)
        seconds, headstart_feats = _timed(lambda: headstart(images))
        headstart_times.append(seconds)
    n = len(images)
    result = {
        "weights": source, "precision": precision, "image_size": pre.crop_size, "images": n,
        "plain_images_per_second": n / min(plain_times), "headstart_images_per_second": n / min(headstart_times),
        "plain_seconds": plain_times, "headstart_seconds": headstart_times,
        "cosine_headstart_vs_plain": _cosine(headstart_feats, plain_feats),
    }
    result["speedup"] = result["headstart_images_per_second"] / result["plain_images_per_second"]
    log(f"{name}: plain {result['plain_images_per_second']:.1f} img/s, headstart "
        f"{result['headstart_images_per_second']:.1f} img/s ({precision})")

    # From the files: decoding included.
    paths = [p for p, _, _ in items]
    loader = DataLoader(_Files(paths, transform), batch_size=batch_size, num_workers=2)

    def plain_from_files():
        with torch.no_grad():
            return torch.cat([plain_model(batch) for batch in loader])

    def headstart_from_files():
        decoded = decode_split([(p, 0) for p in paths], short_side=pre.resize_size, interpolation=pre.interpolation)
        return headstart(decoded.images)

    result["plain_with_decode_images_per_second"] = n / _timed(plain_from_files)[0]
    result["headstart_with_decode_images_per_second"] = n / _timed(headstart_from_files)[0]

    labels = torch.tensor([c for _, _, c in items])
    train_mask = torch.tensor([s == "train" for _, s, _ in items])
    result["probe_accuracy_fp32"] = linear_probe(plain_feats, labels, train_mask)
    result["probe_accuracy_headstart"] = linear_probe(headstart_feats, labels, train_mask)

    # bf16: its accuracy cost where it is fast; its speed only, on a few images, where it is emulated.
    fast = cpu_has_fast_bf16()
    subset = images if fast or bf16_probe else images[:bf16_images]
    bf16_seconds, bf16_feats = _timed(lambda: headstart(subset, "bf16-mixed"))
    fp32_seconds, fp32_feats = _timed(lambda: headstart(subset, "32-true"))
    bf16 = {"fast_bf16": fast, "images": len(subset), "bf16_images_per_second": len(subset) / bf16_seconds,
            "fp32_channels_last_images_per_second": len(subset) / fp32_seconds,
            "cosine_bf16_vs_fp32": _cosine(bf16_feats, fp32_feats)}
    bf16["bf16_over_fp32"] = bf16["bf16_images_per_second"] / bf16["fp32_channels_last_images_per_second"]
    if len(subset) == len(images):
        bf16["probe_accuracy_bf16"] = linear_probe(bf16_feats, labels, train_mask)
    result["bf16"] = bf16
    log(f"{name}: bf16 {bf16['bf16_images_per_second']:.2f} img/s vs fp32 "
        f"{bf16['fp32_channels_last_images_per_second']:.2f} img/s on {len(subset)} images (fast bf16: {fast})")
    return result


def tables(results: dict) -> str:
    speed, bf16 = [], []
    for name, r in results["backbones"].items():
        verdict = "**PASS**" if r["speedup"] >= TARGET else f"**MISS** ({r['speedup'] / TARGET:.0%} of target)"
        speed.append([name, r["plain_images_per_second"], r["headstart_images_per_second"],
                      f"{r['speedup']:.2f}x", f"{TARGET:g}x", verdict, r["plain_with_decode_images_per_second"],
                      r["headstart_with_decode_images_per_second"], r["precision"]])
        b = r["bf16"]
        cosine = b["cosine_bf16_vs_fp32"]
        bf16.append([name, b["images"], b["bf16_images_per_second"], b["fp32_channels_last_images_per_second"],
                     f"{b['bf16_over_fp32']:.2f}x", f"{cosine['mean']:.4f} / {cosine['min']:.4f}",
                     r["probe_accuracy_fp32"], b.get("probe_accuracy_bf16"), r["weights"]])
    return "\n\n".join([
        markdown_table(["backbone", "plain fp32 img/s", "headstart img/s", "speedup", "target", "result",
                        "plain + decode img/s", "headstart + decode img/s", "headstart precision"], speed),
        markdown_table(["backbone", "bf16 images", "bf16 img/s", "fp32 channels_last img/s", "bf16 / fp32",
                        "cosine bf16 vs fp32 (mean / min)", "probe acc fp32", "probe acc bf16", "weights"], bf16),
    ])


def main(argv: Sequence[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA, help="DATA/{train,test}/<class>/*")
    parser.add_argument("--backbones", default="efficientnet_lite0,mobilenet_v2")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=2, help="timed runs per side; the best counts")
    parser.add_argument("--bf16-images", type=int, default=4, help="images to time bf16 on without fast bf16")
    parser.add_argument("--bf16-probe", action="store_true", help="bf16 on every image even where it is slow")
    parser.add_argument("--quick", action="store_true", help="synthetic 64 px images, one repeat")
    parser.add_argument("--json", type=Path, default=REPO / "benchmarks" / "results" / "extract_throughput.json")
    args = parser.parse_args(argv)
    from PIL import Image

    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="extract-throughput-") as scratch:
        data = make_synthetic(Path(scratch), ["train", "test"]) if args.quick else args.data
        items = list_images(data)
        decode_seconds, images = _timed(lambda: [Image.open(p).convert("RGB") for p, _, _ in items])
        results = {"benchmark": "extract_throughput", "quick": args.quick, "data": str(data),
                   "started": dt.datetime.now().isoformat(timespec="seconds"), "machine": machine_info(),
                   "batch_size": args.batch_size, "repeats": 1 if args.quick else args.repeats, "target": TARGET,
                   "plain_decode_images_per_second": len(images) / decode_seconds, "backbones": {}}
        for name in [b.strip() for b in args.backbones.split(",") if b.strip()]:
            results["backbones"][name] = bench_backbone(
                name, items, images, batch_size=args.batch_size, repeats=results["repeats"],
                image_size=QUICK_SIZE if args.quick else None, bf16_images=args.bf16_images,
                bf16_probe=args.bf16_probe)
    results["total_seconds"] = time.perf_counter() - started
    results["load_average_end"] = machine_info()["load_average"]
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(results, indent=2) + "\n")
    print(tables(results))
    print(f"\n{len(items)} images, batch {args.batch_size}; total runtime {results['total_seconds']:.0f}s; load "
          f"average at start {results['machine']['load_average']}, at end {results['load_average_end']}; "
          f"JSON: {args.json}")
    return results


if __name__ == "__main__":
    main()
