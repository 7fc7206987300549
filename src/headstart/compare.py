"""`headstart.compare()`: train several backbones with the same settings and report on the winner.

    import headstart.compare
    result = headstart.compare.compare("photos/", ["efficientnet_lite0", "efficientnet_lite2"], mode="features")
    print(result.verdict)

Each backbone gets its own run directory under OUT; OUT also gets leaderboard.csv, leaderboard.md and
leaderboard.png. The winner is chosen on the val split only (accuracy, then NLL after temperature scaling, then
latency): the test split is reported, never used to choose, so its score stays an honest estimate.
"""

from __future__ import annotations

import csv
import io
import json
import logging
import re
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from headstart.artifact import atomic_write_json, atomic_write_text, read_manifest
from headstart.config import ConfigError, TrainConfig
from headstart.runtime.metrics import PRIOR_OBSERVATIONS

__all__ = ["COLUMNS", "CompareResult", "compare", "leaderboard_markdown", "rank_rows", "verdict",
           "write_leaderboard"]

log = logging.getLogger(__name__)

ProgressFn = Callable[[str, int, int], None]

COLUMNS = [
    "rank", "backbone", "status", "val_accuracy", "test_accuracy", "val_loss", "val_nll_calibrated", "ece",
    "ece_calibrated", "ece_split", "train_seconds", "epoch_seconds", "epochs", "size_bytes", "parameters",
    "trainable_parameters", "latency_p50_ms", "latency_p95_ms", "run_dir", "error",
]
WARMUP_CALLS = 3
# Set per backbone by compare itself, so they cannot come in through **settings.
_PER_BACKBONE = ("backbone", "weights", "out", "overwrite")


@dataclass
class CompareResult:
    """Rows best first (failed backbones last, with their error), the winner's name, and the files written."""

    rows: list[dict]
    winner: str | None
    verdict: str
    paths: dict[str, Path] = field(default_factory=dict)


def compare(data: str | Path, backbones: list[str], *, weights: dict[str, str | Path] | None = None,
            out: str | Path | None = None, overwrite: bool = False, latency_runs: int = 30,
            latency_threads: int | None = 1, progress: ProgressFn | None = None, **settings) -> CompareResult:
    """Train each backbone on `data` with the same settings (fields of TrainConfig), then rank them.

    `weights` maps a backbone name to a local state_dict file (for backbones whose weights are not offline).
    A backbone that fails to train gets a row with its error; the others continue. Latency is timed with
    `latency_threads` torch threads (None: torch's default): one thread is the default because on a loaded
    machine multi-threaded timings mostly measure the other processes (docs/benchmarks.md, "compare: latency
    threads and ties").
    """
    from headstart.backbones.registry import get_spec
    from headstart.data.dataset import DataError
    from headstart.training import train
    from headstart.training.loop import TrainingInterrupted

    weights = {name: str(path) for name, path in (weights or {}).items()}
    backbones = list(dict.fromkeys(backbones))
    if not backbones:
        raise ConfigError("compare needs at least one backbone")
    if stray := sorted(set(weights) - set(backbones)):
        raise ConfigError(f"weights given for backbone(s) not compared: {', '.join(stray)}")
    if taken := [k for k in _PER_BACKBONE if k in settings]:
        raise ConfigError(f"compare sets {', '.join(taken)} per backbone: pass weights= / out= / overwrite= instead")
    if settings.get("mode") == "auto":  # its search tries other backbones: the leaderboard would mislabel them
        raise ConfigError("compare trains each named backbone as it is; auto mode's search already compares the "
                          "offline backbones: run `headstart train DATA --mode auto` instead")
    if latency_runs < 1:
        raise ConfigError(f"latency_runs must be at least 1 (got {latency_runs})")
    if latency_threads is not None and latency_threads < 1:
        raise ConfigError(f"latency_threads must be at least 1 (got {latency_threads})")
    # Fail before hours of training, not after: bad settings and unknown names are the same for every backbone.
    try:
        TrainConfig(data=str(data), **settings)
    except TypeError as exc:
        raise ConfigError(str(exc).replace("TrainConfig.__init__()", "compare()")) from exc
    for name in backbones:
        get_spec(name)
    out = Path(out) if out is not None else Path("runs") / re.sub(
        r"[^A-Za-z0-9_.-]+", "_", f"compare-{Path(data).resolve().name}")
    if out.exists() and any(out.iterdir()) and not overwrite:
        raise ConfigError(f"{out} already exists and is not empty; choose another --out or pass --overwrite")
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_json(out / "compare.json", {"data": str(data), "backbones": backbones, "weights": weights,
                                             "settings": settings, "latency_runs": latency_runs,
                                             "latency_threads": latency_threads})

    rows = []
    for i, name in enumerate(backbones, 1):
        log.info("compare: training %s (%d/%d)", name, i, len(backbones))
        run_dir = out / name
        tick = (lambda stage, d, t, n=name: progress(f"{n}: {stage}", d, t)) if progress else None
        try:
            result = train(data, backbone=name, weights=weights.get(name), out=str(run_dir), overwrite=overwrite,
                           progress=tick, **settings)
        except (TrainingInterrupted, DataError):
            raise  # the user stopped, or the data is bad for every backbone: nothing to compare
        except Exception as exc:  # any one backbone may fail (offline weights, memory): keep the others
            message = f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else 'no detail'}"
            log.warning("compare: %s failed: %s", name, message, exc_info=log.isEnabledFor(logging.DEBUG))
            rows.append({"backbone": name, "status": "failed", "error": message,
                         "run_dir": str(run_dir) if run_dir.exists() else ""})
            continue
        rows.append(_collect(result.run_dir))
    ok_rows = [r for r in rows if r["status"] == "ok"]
    threads = _torch_threads(latency_threads)
    for row, timing in zip(ok_rows, _latency([Path(r["run_dir"]) for r in ok_rows], latency_runs, threads,
                                             progress)):
        row.update(timing)
    return write_leaderboard(rows, out, title=Path(data).resolve().name, latency_runs=latency_runs,
                             latency_threads=threads)


def write_leaderboard(rows: list[dict], out: str | Path, *, title: str, latency_runs: int,
                      latency_threads: int) -> CompareResult:
    """Rank the rows, pick the winner, and write leaderboard.csv, .md and .png into `out`."""
    out = Path(out)
    rows = rank_rows(rows)
    winner, text = verdict(rows)
    paths = {"out": out, "compare_json": out / "compare.json", "csv": out / "leaderboard.csv",
             "markdown": out / "leaderboard.md", "plot": out / "leaderboard.png"}
    atomic_write_text(paths["csv"], _csv(rows))
    atomic_write_text(paths["markdown"], leaderboard_markdown(rows, text, latency_runs, latency_threads))
    _plot(rows, winner, paths["plot"], title)
    log.info("compare: %s", text)
    return CompareResult(rows, winner, text, paths)


def _collect(run_dir: Path) -> dict:
    """What a finished run says about itself, read from its files (the same numbers a reader would find)."""
    manifest = read_manifest(run_dir)
    metrics = json.loads((run_dir / "metrics.json").read_text())
    summary = json.loads((run_dir / "summary.json").read_text())
    with open(run_dir / "history.csv", newline="") as f:
        epoch_seconds = [float(r["seconds"]) for r in csv.DictReader(f) if r.get("seconds")]
    ece_split = "test" if "test" in metrics else "val"
    return {
        "backbone": manifest["backbone"], "status": "ok",
        "val_accuracy": metrics["val"]["accuracy"], "val_loss": metrics["val"]["loss"],
        "val_nll_calibrated": metrics["val"].get("nll_calibrated", metrics["val"]["loss"]),
        "test_accuracy": metrics["test"]["accuracy"] if "test" in metrics else None,
        "ece": metrics[ece_split]["ece"], "ece_calibrated": metrics[ece_split]["ece_calibrated"],
        "ece_split": ece_split,
        "train_seconds": summary["seconds"],
        "epoch_seconds": statistics.fmean(epoch_seconds) if epoch_seconds else None,
        "epochs": len(epoch_seconds),
        "size_bytes": (run_dir / "model.safetensors").stat().st_size,
        "parameters": manifest["parameters"]["total"],
        "trainable_parameters": manifest["parameters"]["trainable"],
        "run_dir": str(run_dir), "error": "",
    }


def _latency_image(run_dir: Path) -> Path:
    """The first test image (else val) of the run's own split: every backbone of a compare times the same one."""
    split = json.loads((run_dir / "split.json").read_text())
    for name in ("test", "val"):
        if split["files"].get(name):
            return Path(split["root"]) / split["files"][name][0]
    raise ConfigError(f"{run_dir}: no test or val image to time predictions on")


def _latency(run_dirs: list[Path], runs: int, threads: int, progress: ProgressFn | None = None) -> list[dict]:
    """p50/p95 of one-image `predict()` calls, as a user would call it: decode, preprocess, forward, softmax.

    The runs take turns, one call each per round, so a burst of load from other processes on the machine
    slows every backbone alike instead of whichever happened to be measured at that moment."""
    import torch

    from headstart.inference.classifier import load

    if not run_dirs:
        return []
    classifiers = [load(d) for d in run_dirs]
    images = [str(_latency_image(d)) for d in run_dirs]
    times: list[list[float]] = [[] for _ in run_dirs]
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        for classifier, image in zip(classifiers, images):
            for _ in range(WARMUP_CALLS):  # first calls pay for allocation and kernel selection
                classifier.predict([image])
        for i in range(runs):
            for classifier, image, own in zip(classifiers, images, times):
                started = time.perf_counter()
                classifier.predict([image])
                own.append((time.perf_counter() - started) * 1000)
            if progress:
                progress("latency", i + 1, runs)
    finally:
        torch.set_num_threads(before)
    return [{"latency_p50_ms": statistics.median(t),
             "latency_p95_ms": statistics.quantiles(t, n=20, method="inclusive")[18] if runs > 1 else t[0]}
            for t in times]


def _torch_threads(requested: int | None) -> int:
    import torch

    return requested if requested is not None else torch.get_num_threads()


def rank_rows(rows: list[dict]) -> list[dict]:
    """Best first: higher val accuracy, then lower val NLL after temperature scaling, then lower latency; failed
    rows last, unranked.

    On a small val split accuracies often tie (docs/benchmarks.md, "compare: latency threads and ties"). The
    tie-break is the NLL of the probabilities the model will actually serve, i.e. after its temperature: a
    proper score that uses every val image's confidence, not one count. The raw val loss would mostly rank how
    under-confident each head came out of label smoothing, which temperature scaling removes anyway.
    """
    ok = sorted((r for r in rows if r["status"] == "ok"),
                key=lambda r: (-r["val_accuracy"], _val_nll(r), r["latency_p50_ms"]))
    failed = [r for r in rows if r["status"] != "ok"]
    return ([{**r, "rank": i} for i, r in enumerate(ok, 1)]
            + [{**{c: None for c in COLUMNS}, **r, "rank": None} for r in failed])


def _val_nll(row: dict) -> float:
    """Val NLL after temperature scaling; the raw val loss for rows written before it was collected."""
    value = row.get("val_nll_calibrated")
    return row["val_loss"] if value is None else value


def _times(a: float, b: float) -> float:
    return a / b if b > 0 else float("inf")


def _size_ratio(win: dict, other: dict) -> str:
    """The winner's size against the other's, as "1.6x larger" or "1.3x smaller"; "" within 10%."""
    ratio = _times(win["size_bytes"], other["size_bytes"])
    if ratio >= 1.1:
        return f"{ratio:.1f}x larger"
    if ratio <= 1 / 1.1:
        return f"{1 / ratio:.1f}x smaller"
    return ""


def _accuracy_phrase(win: dict, other: dict) -> str:
    if win["val_accuracy"] == other["val_accuracy"]:
        text = (f"val {win['val_accuracy']:.3f}, tied, lower val NLL after scaling {_val_nll(win):.3f} vs "
                f"{_val_nll(other):.3f}")
    else:
        text = f"val {win['val_accuracy']:.3f} vs {other['val_accuracy']:.3f}"
    if win["test_accuracy"] is not None and other["test_accuracy"] is not None:
        text += f"; test {win['test_accuracy']:.3f} vs {other['test_accuracy']:.3f}"
    return text


def verdict(rows: list[dict]) -> tuple[str | None, str]:
    """The winner (rows ranked by `rank_rows`) and one or two sentences on it and the trade-off it carries."""
    ok = [r for r in rows if r["status"] == "ok"]
    failed = [r["backbone"] for r in rows if r["status"] != "ok"]
    failed_note = f" ({', '.join(failed)} failed: see the leaderboard)" if failed else ""
    if not ok:
        return None, f"No backbone trained{failed_note}."
    win = ok[0]
    name = win["backbone"]
    if len(ok) == 1:
        test = f", test {win['test_accuracy']:.3f}" if win["test_accuracy"] is not None else ""
        return name, f"{name} is the only backbone that trained (val {win['val_accuracy']:.3f}{test}){failed_note}."
    # The trade-off worth naming: the best-ranked backbone that is clearly faster than the winner.
    alternative = next((r for r in ok[1:] if _times(win["latency_p50_ms"], r["latency_p50_ms"]) >= 1.1), None)
    if alternative is None:
        other = ok[1]
        faster = _times(other["latency_p50_ms"], win["latency_p50_ms"])
        speed = f"{faster:.1f}x faster per image" if faster >= 1.1 else "about as fast per image"
        size = _size_ratio(win, other)
        size = (", though " + size if "larger" in size else " and " + size) if size else " and about the same size"
        return name, (f"{name} beats {other['backbone']} ({_accuracy_phrase(win, other)}) and is also {speed}"
                      f"{size}: no speed trade-off to weigh{failed_note}.")
    other = alternative["backbone"]
    slower = _times(win["latency_p50_ms"], alternative["latency_p50_ms"])
    size = _size_ratio(win, alternative)
    cost = (f"{slower:.1f}x slower per image and {size} than {other}" if "larger" in size
            else f"{slower:.1f}x slower per image than {other} ({f'though {size}' if size else 'about the same size'})")
    text = (f"{name} wins ({_accuracy_phrase(win, alternative)}) but is {cost}; {other} is the better choice "
            f"when latency matters{failed_note}.")
    fastest = min(ok, key=lambda r: r["latency_p50_ms"])
    if fastest is not alternative and _times(alternative["latency_p50_ms"], fastest["latency_p50_ms"]) >= 1.1:
        test = f", test {fastest['test_accuracy']:.3f}" if fastest["test_accuracy"] is not None else ""
        speedup = _times(win["latency_p50_ms"], fastest["latency_p50_ms"])
        text += (f" {fastest['backbone']} is the fastest ({speedup:.1f}x faster than {name}) at val "
                 f"{fastest['val_accuracy']:.3f}{test}.")
    return name, text


def _csv(rows: list[dict]) -> str:
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=COLUMNS, lineterminator="\n", extrasaction="ignore")
    writer.writeheader()
    writer.writerows(rows)
    return buffer.getvalue()


def _cell(value, fmt: str) -> str:
    return "–" if value is None else fmt.format(value)


def leaderboard_markdown(rows: list[dict], verdict_text: str, latency_runs: int, torch_threads: int) -> str:
    """A markdown table, one row per backbone, best first, followed by the verdict and how it was measured."""
    splits = {r["ece_split"] for r in rows if r["status"] == "ok"}
    ece_split = splits.pop() if len(splits) == 1 else "test/val"
    header = ["#", "backbone", "val acc", "val NLL scaled", "test acc", f"ECE {ece_split} (raw → scaled)",
              "train s", "s/epoch", "size MB", "params M", "p50 ms", "p95 ms"]
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" if i < 2 else "---:" for i in
                                                                range(len(header))) + "|"]
    for r in rows:
        if r["status"] != "ok":
            error = r["error"].replace("|", "\\|")
            lines.append(f"| – | {r['backbone']} | failed: {error} |" + " |" * (len(header) - 3))
            continue
        cells = [str(r["rank"]), r["backbone"], f"{r['val_accuracy']:.3f}", f"{_val_nll(r):.3f}",
                 _cell(r["test_accuracy"], "{:.3f}"),
                 f"{r['ece']:.3f} → {r['ece_calibrated']:.3f}", f"{r['train_seconds']:.0f}",
                 _cell(r["epoch_seconds"], "{:.2f}"), f"{r['size_bytes'] / 1e6:.1f}",
                 f"{r['parameters'] / 1e6:.2f}", f"{r['latency_p50_ms']:.1f}", f"{r['latency_p95_ms']:.1f}"]
        lines.append("| " + " | ".join(cells) + " |")
    notes = (f"Ranked by val accuracy, then val NLL after temperature scaling, then latency (test accuracy is "
             f"reported, not used to choose). Temperature fitted on val (NLL with a prior worth "
             f"{PRIOR_OBSERVATIONS:g} images at T = 1); ECE with 15 bins. Latency: one image through `predict()` "
             f"(decode, preprocess, forward), {latency_runs} calls after {WARMUP_CALLS} warm-up calls, taking turns "
             f"across backbones, CPU with {torch_threads} torch thread{'s' if torch_threads != 1 else ''}.")
    return "\n".join(lines) + f"\n\n{verdict_text}\n\n{notes}\n"


def _plot(rows: list[dict], winner: str | None, path: Path, title: str) -> Path:
    from headstart.report.plots import plot_leaderboard

    ok = [r for r in rows if r["status"] == "ok"]
    return plot_leaderboard(
        [r["backbone"] for r in ok], [r["latency_p50_ms"] for r in ok], [r["val_accuracy"] for r in ok],
        [r["size_bytes"] / 1e6 for r in ok], path,
        test_accuracy=[r["test_accuracy"] for r in ok], latency_p95_ms=[r["latency_p95_ms"] for r in ok],
        winner=winner, failed=[r["backbone"] for r in rows if r["status"] != "ok"],
        title=f"Backbones compared on {title}",
    )
