"""How a features run grows with the data: `headstart train SET --mode features`, cold (empty feature and engine
caches), timed as a whole process at several set sizes, with per-phase seconds and the peak memory of the
process tree (the command and its helper processes, summed, sampled every 0.1 s).

    python benchmarks/scaling.py [--sizes 300,1000,3000,8000] [--workdir DIR] [--json FILE]

The sets are built once into WORKDIR (default ~/.cache/headstart-bench/scaling) from the dev sets in ../shared:
pizza_steak_sushi, oxford_pets_3class and hymenoptera_data, 8 classes. Their source images are split first
(1/8 train, 1/8 val, 3/4 test, like Flowers-102's official split), then each is repeated with distinct
augmentations (random resized crop, flip, colour jitter) and saved as a JPEG with a short side of 500 px
(quality 90), as Flowers-102's are, so no image
content repeats across splits. A size N takes the first N images of the 8,000, in the same proportions.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import random
import shutil
import subprocess
import sys
import tempfile
import threading
import time
import zlib
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared" / "datasets"
SOURCES = {"pss": "pizza_steak_sushi", "pets": "oxford_pets_3class", "hym": "hymenoptera_data"}
SPLITS = {"train": 1 / 8, "val": 1 / 8, "test": 3 / 4}
FULL = 8000
SHORT_SIDE = 500  # Flowers-102's images have a short side of 500 px

sys.path.insert(0, str(Path(__file__).parent))
from vs_tutorial import _log_records, _phases  # noqa: E402  (the same phase split as the tutorial benchmark)


def _sources() -> dict[str, list[tuple[Path, str]]]:
    """Every source image with its class (the set's name prefixed), split by source image."""
    rng = random.Random(0)
    items = []
    for prefix, name in SOURCES.items():
        for path in sorted((SHARED / name).rglob("*")):
            if path.suffix.lower() in (".jpg", ".jpeg", ".png") and path.is_file():
                items.append((path, f"{prefix}_{path.parent.name}"))
    rng.shuffle(items)
    cut1, cut2 = round(len(items) * SPLITS["train"]), round(len(items) * (SPLITS["train"] + SPLITS["val"]))
    return {"train": items[:cut1], "val": items[cut1:cut2], "test": items[cut2:]}


def _augmented(job: tuple[str, str, int, str]) -> None:
    from PIL import Image, ImageEnhance, ImageOps

    source, target, seed, _ = job
    rng = random.Random(seed)
    img = ImageOps.exif_transpose(Image.open(source)).convert("RGB")
    w, h = img.size
    scale = rng.uniform(0.6, 1.0)
    cw, ch = int(w * scale), int(h * scale)
    left, top = rng.randint(0, w - cw), rng.randint(0, h - ch)
    img = img.crop((left, top, left + cw, top + ch))
    if rng.random() < 0.5:
        img = ImageOps.mirror(img)
    img = ImageEnhance.Brightness(img).enhance(rng.uniform(0.8, 1.2))
    img = ImageEnhance.Color(img).enhance(rng.uniform(0.8, 1.2))
    ratio = SHORT_SIDE / min(img.size)
    img = img.resize((max(1, round(img.width * ratio)), max(1, round(img.height * ratio))), Image.Resampling.BICUBIC)
    img.save(target, quality=90)


def build_full_set(workdir: Path) -> list[tuple[str, str, str]]:
    """WORKDIR/full/{split}/{class}/{n}.jpg, FULL images; returns (split, class, relative path) in build order."""
    full = workdir / "full"
    manifest = workdir / "manifest.json"
    if manifest.is_file():
        return [tuple(row) for row in json.loads(manifest.read_text())]
    shutil.rmtree(full, ignore_errors=True)
    sources, jobs, rows = _sources(), [], []
    for split, share in SPLITS.items():
        count = round(FULL * share)
        for n in range(count):
            path, label = sources[split][n % len(sources[split])]
            rel = f"{split}/{label}/{n:05d}.jpg"
            (full / rel).parent.mkdir(parents=True, exist_ok=True)
            jobs.append((str(path), str(full / rel), zlib.crc32(f"{split}:{n}".encode()), split))
            rows.append((split, label, rel))
    started = time.perf_counter()
    with ProcessPoolExecutor(max_workers=os.cpu_count() or 2) as pool:
        list(pool.map(_augmented, jobs, chunksize=32))
    print(f"built {len(jobs)} images in {time.perf_counter() - started:.0f}s into {full}", flush=True)
    manifest.write_text(json.dumps(rows))
    return rows


def subset(workdir: Path, rows: list[tuple[str, str, str]], size: int) -> Path:
    """A set of `size` images: the first of each split in the same proportions, as symbolic links."""
    folder = workdir / f"n{size}"
    if folder.is_dir():
        return folder
    taken = {split: round(size * share) for split, share in SPLITS.items()}
    for split, _label, rel in rows:
        if taken[split] > 0:
            taken[split] -= 1
            (folder / rel).parent.mkdir(parents=True, exist_ok=True)
            os.symlink(workdir / "full" / rel, folder / rel)
    return folder


def _rss(pid: int) -> tuple[int, int]:
    """(the command's own RSS, the sum over it and its helper processes)."""
    import psutil

    try:
        root = psutil.Process(pid)
        own = root.memory_info().rss
        return own, own + sum(p.memory_info().rss for p in root.children(recursive=True))
    except psutil.Error:
        return 0, 0


def run(data: Path, out: Path, extra: list[str]) -> dict:
    cache = Path(tempfile.mkdtemp(prefix="headstart-cache-"))
    command = [sys.executable, "-m", "headstart.cli", "train", str(data), "--mode", "features", "--out", str(out),
               "--overwrite", "--no-progress", *extra]
    peak, done = [0, 0], threading.Event()
    launched, started = time.time(), time.perf_counter()
    proc = subprocess.Popen(command, env=dict(os.environ, HEADSTART_CACHE=str(cache)), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)

    def sample() -> None:
        while not done.is_set():
            own, tree = _rss(proc.pid)
            peak[:] = max(peak[0], own), max(peak[1], tree)
            done.wait(0.1)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    stdout, stderr = proc.communicate()
    wall = time.perf_counter() - started
    done.set()
    sampler.join()
    shutil.rmtree(cache, ignore_errors=True)
    if proc.returncode != 0:
        raise RuntimeError(f"headstart train failed ({proc.returncode}):\n{stdout[-2000:]}\n{stderr[-3000:]}")
    metrics = json.loads((out / "metrics.json").read_text())
    with open(out / "history.csv", newline="") as f:
        history = list(csv.DictReader(f))
    phases = _phases(out, _log_records(out / "train.log"), launched, wall, history)
    summary = json.loads((out / "summary.json").read_text())
    images = sum(sum(c.values()) for c in summary["counts"].values())
    return {"images": images, "wall_seconds": wall, "seconds_per_1000": 1000 * wall / images,
            "peak_rss_mb": peak[0] / 1e6, "peak_tree_rss_mb": peak[1] / 1e6, "phases": phases,
            "test_accuracy": metrics.get("test", {}).get("accuracy"),
            "val_accuracy": metrics["val"]["accuracy"], "extraction": summary["extraction"]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="300,1000,3000,8000")
    parser.add_argument("--workdir", type=Path, default=Path.home() / ".cache" / "headstart-bench" / "scaling")
    parser.add_argument("--json", type=Path, default=REPO / "benchmarks" / "results" / "scaling.json")
    parser.add_argument("--hs-arg", action="append", default=[], help="extra argument for `headstart train`")
    args = parser.parse_args()
    rows = build_full_set(args.workdir)
    results = []
    with tempfile.TemporaryDirectory() as runs:
        for size in [int(s) for s in args.sizes.split(",")]:
            result = {"size": size, **run(subset(args.workdir, rows, size), Path(runs) / f"n{size}", args.hs_arg)}
            results.append(result)
            p = result["phases"]
            print(f"{size}: {result['wall_seconds']:.1f}s ({result['seconds_per_1000']:.1f} s/1000), peak "
                  f"{result['peak_rss_mb']:.0f} MB ({result['peak_tree_rss_mb']:.0f} with helpers), "
                  f"test {result['test_accuracy']:.3f}; "
                  + ", ".join(f"{k} {v:.1f}" for k, v in p.items()), flush=True)
    print("\n| images | wall (s) | s per 1,000 | peak RSS (MB) | with helpers (MB) | startup | decode | features | "
          "training | save | "
          "report | exit | test acc |\n|---|---|---|---|---|---|---|---|---|---|---|---|---|")
    for r in results:
        p = r["phases"]
        print(f"| {r['images']} | {r['wall_seconds']:.1f} | {r['seconds_per_1000']:.1f} | {r['peak_rss_mb']:.0f} | "
              f"{r['peak_tree_rss_mb']:.0f} | "
              + " | ".join(f"{p.get(k, float('nan')):.1f}" for k in ("startup", "decode", "features", "training",
                                                                      "save", "report", "exit"))
              + f" | {r['test_accuracy']:.3f} |")
    args.json.parent.mkdir(parents=True, exist_ok=True)
    cpu = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                if line.startswith("model name")), "unknown")
    args.json.write_text(json.dumps({"cpu": cpu, "load_at_end": os.getloadavg(), "results": results}, indent=2)
                         + "\n")


if __name__ == "__main__":
    main()
