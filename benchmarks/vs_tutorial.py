#!/usr/bin/env python
"""headstart vs the tutorial loop: wall time and accuracy on one machine, with the same data, backbone and weights.

The reference side is written out plainly, as the transfer-learning tutorials write it (learnpytorch.io
"06 transfer learning" for pizza_steak_sushi, the PyTorch "transfer learning for computer vision" tutorial for
hymenoptera): an fp32 loop over torchvision ImageFolder + DataLoader + transforms that decodes every JPEG every
epoch. From headstart it takes only the pretrained weights (`get_spec(name).build(True)`) and their
preprocessing numbers. headstart runs as `python -m headstart.cli train` in a subprocess with an empty feature
cache, so its wall time includes interpreter start-up and imports; the reference's does not (it is timed from
building its datasets), which only favours the reference. headstart runs 3 times with nothing cached and keeps
the median run (the CPU is shared); in features mode, a 4th run reuses the exported engine (not the features)
that the first one kept, as a user's later runs with the same backbone do; a last run passes --no-report (the
time to a saved, calibrated model). Only the median cold run, with its report, is judged against the target.

    python benchmarks/vs_tutorial.py --data pss=DIR --data hym=DIR --protocol pss-fe,hym-fe,hym-ft
    python benchmarks/vs_tutorial.py --quick       # synthetic 64 px data, 1 epoch each side: a smoke test
"""

from __future__ import annotations

import argparse
import csv
import datetime as dt
import json
import os
import platform
import re
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
DATASETS = REPO.parent / "shared" / "datasets"
DEFAULT_DATA = {"pss": DATASETS / "pizza_steak_sushi", "hym": DATASETS / "hymenoptera_data"}
QUICK_SIZE = 64


@dataclass(frozen=True)
class Protocol:
    name: str
    dataset: str  # key of DEFAULT_DATA
    eval_split: str  # the split both sides report accuracy on
    mode: str  # headstart --mode
    epochs: int  # the tutorial's epochs
    target: float  # wall-time ratio (reference / headstart) to reach


PROTOCOLS = {
    "pss-fe": Protocol("pss-fe", "pss", "test", "features", 5, 8.0),
    "hym-fe": Protocol("hym-fe", "hym", "val", "features", 25, 20.0),
    "hym-ft": Protocol("hym-ft", "hym", "val", "finetune", 25, 3.0),
}


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def machine_info() -> dict:
    """CPU model and bf16-relevant flags, torch build and threads, and the load other users put on the CPU."""
    import torch
    import torchvision

    from headstart.device import cpu_has_fast_bf16

    try:
        cpuinfo = Path("/proc/cpuinfo").read_text()
    except OSError:
        cpuinfo = ""
    model = re.search(r"^model name\s*:\s*(.+)$", cpuinfo, re.MULTILINE)
    flags_line = re.search(r"^flags\s*:\s*(.+)$", cpuinfo, re.MULTILINE)
    flags = set(flags_line.group(1).split()) if flags_line else set()
    return {
        "cpu_model": model.group(1).strip() if model else platform.processor(),
        "cores": os.cpu_count(),
        "avx512f": "avx512f" in flags, "avx512_bf16": "avx512_bf16" in flags, "amx_bf16": "amx_bf16" in flags,
        "fast_bf16": cpu_has_fast_bf16(),
        "torch": torch.__version__, "torchvision": torchvision.__version__, "python": platform.python_version(),
        "threads": torch.get_num_threads(),
        # OpenMP settings change latency a lot on a busy CPU: spinning threads wait for each other's time slice.
        "omp_env": {k: os.environ[k] for k in ("OMP_NUM_THREADS", "OMP_WAIT_POLICY") if k in os.environ},
        "load_average": [round(x, 2) for x in os.getloadavg()],
        "headstart_commit": _git("rev-parse", "--short", "HEAD"),
        "headstart_src_modified": bool(_git("status", "--porcelain", "src")),
    }


def _git(*args: str) -> str:
    proc = subprocess.run(["git", *args], cwd=REPO, capture_output=True, text=True, check=False)
    return proc.stdout.strip() if proc.returncode == 0 else ""


def make_synthetic(root: Path, splits: Sequence[str], per_class: dict[str, int] | None = None,
                   classes: Sequence[str] = ("red", "green", "blue"), size: int = QUICK_SIZE, seed: int = 0) -> Path:
    """Tiny JPEG folders whose class is the dominant colour (separable even at 64 px), every file unique."""
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(seed)
    palette = [(200, 40, 40), (40, 200, 40), (40, 40, 200), (200, 200, 40), (40, 200, 200)]
    for split in splits:
        for c, name in enumerate(classes):
            folder = root / split / name
            folder.mkdir(parents=True, exist_ok=True)
            for i in range((per_class or {}).get(split, 8 if split == "train" else 4)):
                pixels = np.clip(np.array(palette[c % len(palette)], np.float32) + rng.normal(0, 35, (size, size, 3)),
                                 0, 255).astype(np.uint8)
                Image.fromarray(pixels).save(folder / f"{name}_{i}.jpg", quality=90)
    return root


def markdown_table(header: Sequence[str], rows: Sequence[Sequence]) -> str:
    def cell(v) -> str:
        if v is None:
            return "-"
        return f"{v:.3f}" if isinstance(v, float) and abs(v) < 10 else f"{v:.1f}" if isinstance(v, float) else str(v)

    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(cell(v) for v in row) + " |" for row in rows]
    return "\n".join(lines)


# ---------------------------------------------------------------------------------------------------------------
# (a) The reference: the tutorials' loop, written out plainly.


def _epoch(model, loader, loss_fn, optimizer=None) -> dict:
    """One tutorial epoch: train mode (BatchNorm included, frozen or not, as the tutorials leave it) or eval."""
    import torch

    training = optimizer is not None
    model.train(training)
    started = time.perf_counter()
    loss_sum, correct, seen = 0.0, 0, 0
    with torch.set_grad_enabled(training):
        for images, labels in loader:
            logits = model(images)
            loss = loss_fn(logits, labels)
            if training:
                optimizer.zero_grad()
                loss.backward()
                optimizer.step()
            loss_sum += loss.item() * len(labels)
            correct += int((logits.argmax(1) == labels).sum())
            seen += len(labels)
    seconds = time.perf_counter() - started
    return {"loss": loss_sum / seen, "accuracy": correct / seen, "images_per_second": seen / seconds,
            "seconds": seconds}


def run_reference(protocol: Protocol, data: Path, *, backbone: str, epochs: int, image_size: int | None,
                  workers: int, scratch: Path) -> dict:
    import torch
    from torch import nn
    from torch.utils.data import DataLoader
    from torchvision import datasets, transforms
    from torchvision.transforms import InterpolationMode

    from headstart.backbones.registry import get_spec

    started = time.perf_counter()
    torch.manual_seed(42)
    spec = get_spec(backbone)
    pre = spec.preprocessing if image_size is None else spec.preprocessing.with_crop(image_size)
    normalize = transforms.Normalize(pre.mean, pre.std)
    if protocol.dataset == "pss":
        # learnpytorch.io: the weights' own eval transforms for train and test alike.
        batch_size = 32
        train_tf = eval_tf = transforms.Compose([
            transforms.Resize(pre.resize_size, interpolation=InterpolationMode(pre.interpolation)),
            transforms.CenterCrop(pre.crop_size), transforms.ToTensor(), normalize])
    else:
        # The PyTorch tutorial: RandomResizedCrop(224) + flip for training, Resize(256) + CenterCrop(224) for val.
        batch_size = 4
        crop = image_size or 224
        train_tf = transforms.Compose([transforms.RandomResizedCrop(crop), transforms.RandomHorizontalFlip(),
                                       transforms.ToTensor(), normalize])
        eval_tf = transforms.Compose([transforms.Resize(round(crop * 256 / 224)), transforms.CenterCrop(crop),
                                      transforms.ToTensor(), normalize])
    train_set = datasets.ImageFolder(str(data / "train"), train_tf)
    eval_set = datasets.ImageFolder(str(data / protocol.eval_split), eval_tf)
    train_loader = DataLoader(train_set, batch_size=batch_size, shuffle=True, num_workers=workers)
    eval_loader = DataLoader(eval_set, batch_size=batch_size, shuffle=False, num_workers=workers)

    model = spec.build(True)
    if protocol.mode == "features":
        for p in model.parameters():
            p.requires_grad = False
    num_classes = len(train_set.classes)
    if protocol.dataset == "pss":
        head = nn.Sequential(nn.Dropout(p=0.2, inplace=True), nn.Linear(spec.in_features, num_classes))
    else:
        head = nn.Linear(spec.in_features, num_classes)
    model.set_submodule(spec.head, head)
    loss_fn = nn.CrossEntropyLoss()
    scheduler = None
    if protocol.dataset == "pss":
        optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    else:
        params = head.parameters() if protocol.mode == "features" else model.parameters()
        optimizer = torch.optim.SGD(params, lr=1e-3, momentum=0.9)
        scheduler = torch.optim.lr_scheduler.StepLR(optimizer, step_size=7, gamma=0.1)

    history, best_accuracy = [], 0.0
    for epoch in range(1, epochs + 1):
        train = _epoch(model, train_loader, loss_fn, optimizer)
        if scheduler is not None:
            scheduler.step()
        evaluation = _epoch(model, eval_loader, loss_fn)
        if evaluation["accuracy"] > best_accuracy:
            best_accuracy = evaluation["accuracy"]
            if protocol.dataset == "hym":  # the PyTorch tutorial keeps the best weights on disk
                torch.save(model.state_dict(), scratch / "best_model_params.pt")
        history.append({"epoch": epoch, "train_loss": train["loss"], "train_accuracy": train["accuracy"],
                        "eval_accuracy": evaluation["accuracy"], "train_seconds": train["seconds"],
                        "eval_seconds": evaluation["seconds"],
                        "train_images_per_second": train["images_per_second"],
                        "eval_images_per_second": evaluation["images_per_second"]})
        log(f"reference {protocol.name} epoch {epoch}/{epochs}: train acc {train['accuracy']:.3f} "
            f"({train['images_per_second']:.1f} img/s), {protocol.eval_split} acc {evaluation['accuracy']:.3f} "
            f"({evaluation['images_per_second']:.1f} img/s)")
    return {
        "wall_seconds": time.perf_counter() - started, "epochs": epochs, "batch_size": batch_size,
        "workers": workers, "image_size": pre.crop_size if protocol.dataset == "pss" else image_size or 224,
        "precision": "32-true", "bf16": False, "threads": torch.get_num_threads(),
        "final_accuracy": history[-1]["eval_accuracy"], "best_accuracy": best_accuracy,
        "train_images_per_second": _mean(h["train_images_per_second"] for h in history),
        "eval_images_per_second": _mean(h["eval_images_per_second"] for h in history),
        "history": history,
    }


def _mean(values) -> float | None:
    values = list(values)
    return sum(values) / len(values) if values else None


# ---------------------------------------------------------------------------------------------------------------
# (b) headstart, as a user runs it: a fresh process and an empty feature cache.

_RECORD = re.compile(r"^(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3}) \w+ [\w.]+: (.*)$")
_EXTRACTED = re.compile(r"extracted (\d+) feature vectors in ([\d.]+)s")
_EPOCH = re.compile(r"epoch \d+: ")
_ENGINE_GRAPH = re.compile(r"runs the (cached|exported) graph")
PHASES = ("startup", "decode", "features", "training", "save", "report", "exit")


def _log_records(path: Path) -> list[tuple[float, str]]:
    """(unix time, message) of each train.log record."""
    records = []
    for line in path.read_text().splitlines() if path.is_file() else []:
        match = _RECORD.match(line)
        if match:
            records.append((dt.datetime.strptime(match[1], "%Y-%m-%d %H:%M:%S,%f").timestamp(), match[2]))
    return records


def _phases(run_dir: Path, records, launched: float, wall: float, history: list[dict]) -> dict:
    """Where headstart's wall time went: consecutive phases that add up to the wall time.

    From train.log's timestamps and summary.json's mtime: startup = interpreter, imports, data check and
    network build (until the weights are loaded); decode = until the first extraction starts (features) or
    fine-tuning is set up (finetune); features = extraction, or the frozen-prefix activations; training = the
    epochs with their validation; save = final logits, calibration, metrics and model files; report =
    report.html; exit = the CLI's output and interpreter shutdown.
    """
    epochs = [t - launched for t, m in records if _EPOCH.match(m)]
    extracted = [(t - launched, float(m2[2])) for t, m in records if (m2 := _EXTRACTED.search(m))]
    setup = [t - launched for t, m in records if m.startswith("fine-tuning")]
    written = [t - launched for t, m in records if m.startswith("run written")]
    if not records or not epochs or not written or not (extracted or setup):
        return {}
    startup = records[0][0] - launched
    decode_end = extracted[0][0] - extracted[0][1] if extracted else setup[0]
    first_epoch_train = float(history[0]["seconds"]) if history else 0.0
    features_end = extracted[-1][0] if extracted else epochs[0] - first_epoch_train
    saved = (run_dir / "summary.json").stat().st_mtime - launched  # written just before the report starts
    return {"startup": startup, "decode": decode_end - startup, "features": features_end - decode_end,
            "training": epochs[-1] - features_end, "save": saved - epochs[-1], "report": written[-1] - saved,
            "exit": wall - written[-1]}


def run_headstart(protocol: Protocol, data: Path, *, backbone: str, runs: Path, quick: bool,
                  extra: Sequence[str] = (), cache: Path | None = None, label: str = "") -> dict:
    """One `headstart train` process, into RUNS/headstart-PROTOCOL[-label]. cache None: an empty cache, removed
    after. cache DIR: DIR is kept, and only its features are removed before the run: a later run of the
    user's, on new data, with the same backbone."""
    run_dir = runs / f"headstart-{protocol.name}{'-' + label if label else ''}"
    keep = cache is not None
    if keep:
        shutil.rmtree(cache / "features", ignore_errors=True)
    else:
        cache = Path(tempfile.mkdtemp(prefix="headstart-cache-"))
    command = [sys.executable, "-m", "headstart.cli", "train", str(data), "--backbone", backbone,
               "--mode", protocol.mode, "--out", str(run_dir), "--overwrite", "--no-progress"]
    if quick:
        command += ["--epochs", "1", "--image-size", str(QUICK_SIZE)]
    command += list(extra)
    launched = time.time()
    started = time.perf_counter()
    try:
        proc = subprocess.run(command, env=dict(os.environ, HEADSTART_CACHE=str(cache)), capture_output=True,
                              text=True, check=False)
    finally:
        if not keep:
            shutil.rmtree(cache, ignore_errors=True)
    wall = time.perf_counter() - started
    if proc.returncode != 0:
        raise RuntimeError(f"headstart train failed (exit {proc.returncode}):\n{proc.stdout[-2000:]}\n"
                           f"{proc.stderr[-4000:]}")
    metrics = json.loads((run_dir / "metrics.json").read_text())
    summary = json.loads((run_dir / "summary.json").read_text())
    with open(run_dir / "history.csv", newline="") as f:
        history = list(csv.DictReader(f))
    records = _log_records(run_dir / "train.log")
    extracted = [(int(m[1]), float(m[2])) for _, text in records if (m := _EXTRACTED.search(text))]
    extract_seconds = sum(s for _, s in extracted)
    val = [float(row["val_accuracy"]) for row in history]
    compared = metrics[protocol.eval_split]["accuracy"]
    log(f"headstart {protocol.name}: {wall:.1f}s, {protocol.eval_split} accuracy {compared:.3f}")
    return {
        "wall_seconds": wall, "run_seconds": summary["seconds"], "command": command,
        "epochs": len(history), "precision": summary["precision"], "bf16": summary["precision"].startswith("bf16"),
        "threads": summary["threads"], "extraction": summary["extraction"],
        "extract_images": sum(n for n, _ in extracted) or None,
        "extract_images_per_second": sum(n for n, _ in extracted) / extract_seconds if extract_seconds else None,
        "train_images_per_second": _mean(float(row["images_per_second"]) for row in history),
        "train_seconds": sum(float(row["seconds"]) for row in history),
        "accuracy": compared, "accuracy_split": protocol.eval_split,
        "final_val_accuracy": val[-1], "best_val_accuracy": max(val),
        "report": (run_dir / "report.html").is_file(),
        "engine_graph": next((m[1] for _, text in records if (m := _ENGINE_GRAPH.search(text))), None),
        "phases": _phases(run_dir, records, launched, wall, history),
    }


def run_headstart_repeated(protocol: Protocol, data: Path, *, repeats: int, scratch: Path, **kwargs) -> dict:
    """`repeats` cold runs (nothing cached), the median one kept: this CPU is shared, and one 15 s run can meet
    a busy minute. Then, in features mode, one warm-engine run: the exported graph and compiled engine that the
    first run kept are reused, the features are not (they are computed again)."""
    engines = scratch / f"cache-{protocol.name}"
    cold = [_with_load(run_headstart, protocol, data, cache=engines if i == 0 else None,
                       label=f"cold{i + 1}" if repeats > 1 else "", **kwargs) for i in range(repeats)]
    # The median; with an even count the slower of the two middle runs, which never flatters headstart.
    chosen = dict(sorted(cold, key=lambda r: r["wall_seconds"])[len(cold) // 2])
    chosen["repeats"] = repeats
    chosen["wall_seconds_runs"] = [r["wall_seconds"] for r in cold]
    if protocol.mode == "features":
        warm = _with_load(run_headstart, protocol, data, cache=engines, label="engine-cached", **kwargs)
        chosen["warm_engine"] = _variant(warm)
        log(f"headstart {protocol.name}, engine cached: {warm['wall_seconds']:.1f}s")
    shutil.rmtree(engines, ignore_errors=True)
    extra = list(kwargs.pop("extra", ()))
    if "--no-report" not in extra:  # the time to a saved, calibrated model: report.html is headstart's extra
        bare = _with_load(run_headstart, protocol, data, extra=[*extra, "--no-report"], label="no-report", **kwargs)
        chosen["no_report"] = _variant(bare)
        log(f"headstart {protocol.name}, --no-report: {bare['wall_seconds']:.1f}s")
    return chosen


def _variant(run: dict) -> dict:
    return {k: run[k] for k in ("wall_seconds", "accuracy", "extraction", "engine_graph", "phases",
                                "load_average_before", "load_average_after")}


# ---------------------------------------------------------------------------------------------------------------


VARIANTS = {"warm_engine": "engine cached", "no_report": "--no-report"}  # extra headstart runs, not the verdict's


def verdict(protocol: Protocol, reference: dict, headstart: dict) -> dict:
    """PASS when headstart is `target` times faster and at least as accurate as the tutorial loop."""
    # pizza_steak_sushi: test accuracy vs the tutorial's final epoch; hymenoptera: val vs the tutorial's best.
    ref_accuracy = reference["final_accuracy"] if protocol.dataset == "pss" else reference["best_accuracy"]
    speedup = reference["wall_seconds"] / headstart["wall_seconds"]
    speed_ok = speedup >= protocol.target
    accuracy_ok = headstart["accuracy"] >= ref_accuracy - 1e-9
    missed = []
    if not speed_ok:
        needed = reference["wall_seconds"] / protocol.target
        missed.append(f"speed {speedup:.1f}x < {protocol.target:g}x: headstart needs <= {needed:.0f}s "
                      f"(took {headstart['wall_seconds']:.0f}s, {headstart['wall_seconds'] / needed:.1f}x too long)")
    if not accuracy_ok:
        missed.append(f"accuracy {headstart['accuracy']:.3f} < {ref_accuracy:.3f} "
                      f"({100 * (headstart['accuracy'] - ref_accuracy):+.1f} points)")
    cpu = (reference.get("cpu_seconds"), headstart.get("cpu_seconds"))
    return {"speedup": speedup, "cpu_time_ratio": cpu[0] / cpu[1] if all(cpu) else None,
            "target_speedup": protocol.target, "speed_ok": speed_ok,
            "reference_accuracy": ref_accuracy, "headstart_accuracy": headstart["accuracy"],
            "accuracy_ok": accuracy_ok, "result": "PASS" if speed_ok and accuracy_ok else "MISS",
            "missed_by": "; ".join(missed)}


def tables(results: dict) -> str:
    sides, verdicts, phases = [], [], []
    for name, r in results["protocols"].items():
        ref, hs, v = r["reference"], r["headstart"], r["verdict"]
        split = hs["accuracy_split"]
        sides.append([name, "tutorial loop", ref["wall_seconds"], ref["epochs"], "-", ref["train_images_per_second"],
                      ref["eval_images_per_second"], split, ref["final_accuracy"], ref["best_accuracy"],
                      ref["precision"], _load(ref)])
        # headstart keeps the weights of its best val epoch: "final" is that model on the split.
        repeats = f" (median of {hs['repeats']})" if hs.get("repeats", 1) > 1 else ""
        sides.append([name, "headstart" + repeats, hs["wall_seconds"], hs["epochs"], hs["extract_images_per_second"],
                      hs["train_images_per_second"], "-", split, hs["accuracy"],
                      hs["best_val_accuracy"] if split == "val" else "-", hs["precision"], _load(hs)])
        for key, label in VARIANTS.items():
            if key in hs:
                run = hs[key]
                sides.append([name, f"headstart, {label}", run["wall_seconds"], hs["epochs"], "-", "-", "-", split,
                              run["accuracy"], "-", hs["precision"], _load(run)])
        cpu_ratio = f"{v['cpu_time_ratio']:.1f}x" if v.get("cpu_time_ratio") else "-"
        verdicts.append([name, f"{v['speedup']:.1f}x", cpu_ratio, f"{v['target_speedup']:g}x",
                         f"{v['headstart_accuracy']:.3f} / {v['reference_accuracy']:.3f}", f"**{v['result']}**",
                         v["missed_by"] or "-"])
        p = hs["phases"]
        phases.append([name] + [p.get(k) for k in PHASES] + [hs["wall_seconds"]])
        for key, label in VARIANTS.items():
            if key in hs:
                p = hs[key]["phases"]
                phases.append([f"{name}, {label}"] + [p.get(k) for k in PHASES] + [hs[key]["wall_seconds"]])
    return "\n\n".join([
        markdown_table(["protocol", "side", "wall s", "epochs", "extract img/s", "train img/s", "eval img/s",
                        "split", "final acc", "best acc", "precision", "load before → after"], sides),
        markdown_table(["protocol", "speedup (wall)", "CPU-time ratio", "target", "accuracy headstart / tutorial",
                        "result", "missed by"],
                       verdicts),
        "headstart's wall time by phase (seconds, from train.log timestamps):",
        markdown_table(["protocol", *PHASES, "wall"], phases),
    ])


def _load(side: dict) -> str:
    if "load_average_before" not in side:
        return "-"
    return f"{side['load_average_before'][0]:.1f} → {side['load_average_after'][0]:.1f}"


def _data_dirs(values: Sequence[str], datasets: set[str]) -> dict[str, Path]:
    dirs = dict(DEFAULT_DATA)
    for value in values:
        key, sep, path = value.partition("=")
        if sep and key in dirs:
            dirs[key] = Path(path)
        elif len(datasets) == 1:
            dirs[next(iter(datasets))] = Path(value)
        else:
            raise SystemExit(f"--data {value}: with protocols on several datasets write --data pss=DIR --data hym=DIR")
    return dirs


def main(argv: Sequence[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", action="append", default=[], help="DIR, or pss=DIR / hym=DIR (repeatable)")
    parser.add_argument("--protocol", default="pss-fe,hym-fe,hym-ft", help="comma-separated: " + ", ".join(PROTOCOLS))
    parser.add_argument("--backbone", default="efficientnet_lite0")
    parser.add_argument("--quick", action="store_true", help="synthetic 64 px data, 1 epoch each side")
    parser.add_argument("--ref-epochs", type=int, help="shorten the reference side (smoke runs only)")
    parser.add_argument("--workers", type=int, help="DataLoader workers of the reference side (default 2; 0 quick)")
    parser.add_argument("--json", type=Path, default=REPO / "benchmarks" / "results" / "vs_tutorial.json")
    parser.add_argument("--hs-arg", action="append", default=[],
                        help="extra argument for `headstart train`, e.g. --hs-arg=--no-report (not the benchmark's)")
    parser.add_argument("--runs", type=Path, help="keep headstart's run directories here (default: a temp dir)")
    parser.add_argument("--repeats", type=int, help="cold headstart runs per protocol, the median kept "
                        "(default 3; 1 with --quick)")
    parser.add_argument("--update", action="store_true",
                        help="keep the other protocols' results already in --json (re-run some protocols only)")
    args = parser.parse_args(argv)
    names = [p.strip() for p in args.protocol.split(",") if p.strip()]
    unknown = [n for n in names if n not in PROTOCOLS]
    if unknown or not names:
        parser.error(f"unknown protocol(s) {unknown}; choose from {', '.join(PROTOCOLS)}")
    protocols = [PROTOCOLS[n] for n in names]
    # Quick runs are a few dozen 64 px images: forking DataLoader workers would cost more than decoding them.
    workers = args.workers if args.workers is not None else 0 if args.quick else 2
    repeats = args.repeats or (1 if args.quick else 3)

    started = time.perf_counter()
    scratch = Path(tempfile.mkdtemp(prefix="vs-tutorial-"))
    runs = args.runs or scratch / "runs"
    if args.quick:
        dirs = {"pss": make_synthetic(scratch / "pss", ["train", "test"]),
                "hym": make_synthetic(scratch / "hym", ["train", "val"])}
    else:
        dirs = _data_dirs(args.data, {p.dataset for p in protocols})
    for p in protocols:
        for split in ("train", p.eval_split):
            if not (dirs[p.dataset] / split).is_dir():
                parser.error(f"{p.name} needs {dirs[p.dataset] / split}")
    results = {"benchmark": "vs_tutorial", "quick": args.quick, "backbone": args.backbone,
               "started": dt.datetime.now().isoformat(timespec="seconds"), "machine": machine_info(),
               "ref_epochs_override": args.ref_epochs, "headstart_extra_args": args.hs_arg,
               "protocols": _kept_protocols(args.json, names) if args.update else {}}
    log(f"machine: {results['machine']}")
    try:
        for p in protocols:
            protocol_started, load_start = time.perf_counter(), [round(x, 2) for x in os.getloadavg()]
            when = dt.datetime.now().isoformat(timespec="seconds")
            epochs = 1 if args.quick else args.ref_epochs or p.epochs
            log(f"{p.name}: headstart train --mode {p.mode} on {dirs[p.dataset]}")
            hs = run_headstart_repeated(p, dirs[p.dataset], repeats=repeats, scratch=scratch, backbone=args.backbone,
                                        runs=runs, quick=args.quick, extra=args.hs_arg)
            log(f"{p.name}: the tutorial loop, {epochs} epochs")
            ref = _with_load(run_reference, p, dirs[p.dataset], backbone=args.backbone, epochs=epochs,
                             image_size=QUICK_SIZE if args.quick else None, workers=workers, scratch=scratch)
            results["protocols"][p.name] = {
                "data": str(dirs[p.dataset]), "protocol_epochs": p.epochs, "started": when,
                "seconds": time.perf_counter() - protocol_started, "load_average_start": load_start,
                "load_average_end": [round(x, 2) for x in os.getloadavg()],
                "headstart_commit": results["machine"]["headstart_commit"],
                "reference": ref, "headstart": hs, "verdict": verdict(p, ref, hs)}
            _write(args.json, results, started)  # after every protocol: a long run keeps what it has measured
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    _write(args.json, results, started)
    if args.quick or args.ref_epochs or args.hs_arg:
        print("NOTE: --quick, --ref-epochs and --hs-arg change the protocols: the verdicts are not the benchmark's.\n")
    print(tables(results))
    print(f"\ntotal runtime {results['total_seconds']:.0f}s; load average at start {results['machine']['load_average']}"
          f", at end {results['load_average_end']}; JSON: {args.json}")
    return results


def _cpu_seconds() -> float:
    """CPU time of this process and of its finished children (DataLoader workers, the headstart process)."""
    own, children = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


def _with_load(side, *args, **kwargs) -> dict:
    """Run one side, noting the load average around it and the CPU time it used.

    Other users of the CPU slow either side's wall time down; its CPU time depends much less on them.
    """
    before, cpu = [round(x, 2) for x in os.getloadavg()], _cpu_seconds()
    result = side(*args, **kwargs)
    return dict(result, load_average_before=before, load_average_after=[round(x, 2) for x in os.getloadavg()],
                cpu_seconds=_cpu_seconds() - cpu)


def _kept_protocols(path: Path, rerun: Sequence[str]) -> dict:
    """The protocols of an earlier run in `path` that this run does not repeat, each with when and how it ran."""
    if not path.is_file():
        return {}
    old = json.loads(path.read_text())
    kept = {name: r for name, r in old.get("protocols", {}).items() if name not in rerun}
    for r in kept.values():  # results written before protocols carried their own run details
        r.setdefault("started", old["started"])
        r.setdefault("seconds", r["reference"]["wall_seconds"] + r["headstart"]["wall_seconds"])
        r.setdefault("load_average_start", old["machine"]["load_average"])
        r.setdefault("load_average_end", old.get("load_average_end"))
        r.setdefault("headstart_commit", old["machine"].get("headstart_commit"))
    return kept


def _write(path: Path, results: dict, started: float) -> None:
    results["total_seconds"] = time.perf_counter() - started
    results["load_average_end"] = [round(x, 2) for x in os.getloadavg()]
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
