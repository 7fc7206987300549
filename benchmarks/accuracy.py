"""Accuracy of auto mode against a plain linear probe and features mode, on the dev sets, over several seeds.

    python benchmarks/accuracy.py                                   # all four sets, seeds 0,1,2, auto at 10m: hours
    python benchmarks/accuracy.py --sets digits --seeds 0 --budgets 90s,10m
    python benchmarks/accuracy.py --resume                          # go on from benchmarks/results/accuracy.json

Per set and seed, three methods:
  probe     scikit-learn LogisticRegression on efficientnet_lite0 center-crop features (the audit's embed_dataset,
            L2-normalised, cached), C chosen by 5-fold stratified CV on train+val from a fixed log grid, refitted
            on train+val, scored on test;
  features  headstart.train(mode="features", seed=S), default settings: test accuracy;
  auto@B    headstart.train(mode="auto", budget=B, seed=S) for each budget B: test accuracy, winner recipe.
A set without a test split (hymenoptera_data) is scored by cross-validation instead: the probe's CV accuracy at its
chosen C, auto's winner cv_mean from summary.json (both selection scores: the best of what was tried), and
features mode's val accuracy. Its table says so.

Each result is written to the JSON (benchmarks/results/accuracy.json) as soon as it is done, so an interrupted
run keeps what it finished; --resume keeps that file and skips each (set, seed, method) already in it (failed ones
are retried); without --resume the file is started afresh. The markdown (docs/accuracy.md) is rendered from every
result in the JSON, after each set. Runs one method after another on this machine; the feature cache is shared,
so only the first method on a set pays for extracting its efficientnet_lite0 features.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import subprocess
import sys
import tempfile
import time
import traceback
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared" / "datasets"
SETS = ("digits", "pizza_steak_sushi", "hymenoptera_data", "oxford_pets_3class")
PROBE_BACKBONE = "efficientnet_lite0"
PROBE_GRID = [round(10.0 ** (k / 2), 4) for k in range(-4, 9)]  # C = 0.01 ... 10000, half a decade apart
PROBE_FOLDS = 5
# The targets, checked on each auto budget's scores (test accuracy; hymenoptera: CV accuracy).
TARGETS = {
    "digits": {"at_least": 0.985, "text": "≥ 0.985 test"},
    "pizza_steak_sushi": {"at_least": 0.97, "text": "≥ 0.97 test"},
    "hymenoptera_data": {"at_least": 0.965, "text": "≥ 0.965 CV"},
    "oxford_pets_3class": {"at_least": 0.99, "over_features": 0.01, "text": "≥ features + 1 point, or ≥ 0.99 test"},
}


# --------------------------------------------------------------------------------------------------- machine


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.lower().startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    import platform

    return platform.processor() or "unknown CPU"


def machine() -> dict:
    try:
        usable = len(os.sched_getaffinity(0))
    except AttributeError:
        usable = os.cpu_count()
    info = {"cpu": cpu_model(), "cores": os.cpu_count(), "usable_cores": usable, "python": sys.version.split()[0]}
    try:
        import torch

        info["torch"] = torch.__version__
        info["gpu"] = torch.cuda.get_device_name(0) if torch.cuda.is_available() else None
    except ImportError:
        pass
    return info


def commit() -> str:
    try:
        return subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                              cwd=REPO, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


# --------------------------------------------------------------------------------------------------- methods


def has_test(name: str) -> bool:
    return (SHARED / name / "test").is_dir()


def probe(name: str, seed: int) -> dict:
    """LogisticRegression on efficientnet_lite0 features; C by stratified CV on train+val; scored on test."""
    import numpy as np
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import StratifiedKFold, cross_val_score

    from headstart.audit.features import embed_dataset
    from headstart.data.folders import discover

    started = time.perf_counter()
    ds = discover(SHARED / name, val_fraction=0.2, seed=seed)
    e = embed_dataset(ds, backbone=PROBE_BACKBONE)
    embed_seconds = time.perf_counter() - started
    splits = np.asarray(e.splits)
    pool = np.flatnonzero(np.isin(splits, ["train", "val"]))
    test = np.flatnonzero(splits == "test")
    x, y = e.features[pool], e.labels[pool]
    folds = StratifiedKFold(n_splits=PROBE_FOLDS, shuffle=True, random_state=seed)
    cv = {}
    for c in PROBE_GRID:
        model = LogisticRegression(C=c, max_iter=5000)
        cv[c] = float(np.mean(cross_val_score(model, x, y, cv=folds, scoring="accuracy")))
    best_c = max(PROBE_GRID, key=lambda c: (cv[c], -c))  # ties: the stronger regularisation
    model = LogisticRegression(C=best_c, max_iter=5000).fit(x, y)
    test_accuracy = float(model.score(e.features[test], e.labels[test])) if len(test) else None
    result = {"cv_accuracy": cv[best_c], "test_accuracy": test_accuracy, "C": best_c,
              "C_at_grid_edge": best_c in (PROBE_GRID[0], PROBE_GRID[-1]),
              "cv_by_C": {str(c): s for c, s in cv.items()},
              "images": {"pool": len(pool), "test": len(test)}, "features_computed": int(e.computed),
              "embed_seconds": round(embed_seconds, 2)}
    if len(test):
        result.update(score=test_accuracy, scored_on="test")
    else:
        result.update(score=cv[best_c], scored_on=f"{PROBE_FOLDS}-fold CV on train+val")
    return result


def split_accuracy(metrics: dict, split: str) -> float | None:
    value = (metrics.get(split) or {}).get("accuracy")
    return None if value is None else float(value)


def features_mode(name: str, seed: int, out: Path) -> dict:
    import headstart

    run = headstart.train(str(SHARED / name), mode="features", seed=seed, out=str(out), overwrite=True, report=False)
    result = {"test_accuracy": split_accuracy(run.metrics, "test"), "val_accuracy": split_accuracy(run.metrics, "val"),
              "run_dir": str(run.run_dir), "run_seconds": round(run.seconds, 2)}
    if has_test(name):
        result.update(score=result["test_accuracy"], scored_on="test")
    else:
        result.update(score=result["val_accuracy"], scored_on="val split")
    return result


def auto_mode(name: str, seed: int, budget: str, out: Path) -> dict:
    import headstart

    run = headstart.train(str(SHARED / name), mode="auto", budget=budget, seed=seed, out=str(out), overwrite=True,
                          report=False)
    summary_file = Path(run.run_dir) / "summary.json"
    search = json.loads(summary_file.read_text()).get("search") if summary_file.exists() else None
    search = search or run.search or {}
    winner = next((c for c in search.get("candidates", []) if c.get("winner") or c["name"] == search.get("winner")),
                  {})
    result = {"test_accuracy": split_accuracy(run.metrics, "test"), "val_accuracy": split_accuracy(run.metrics, "val"),
              "cv_accuracy": winner.get("cv_mean"), "cv_std": winner.get("cv_std"), "winner": search.get("winner"),
              "recipe": winner.get("recipe"), "selection": search.get("selection"),
              "search_seconds": search.get("seconds"), "budget_seconds": search.get("budget_seconds"),
              "candidates": [{k: c.get(k) for k in ("name", "cv_mean", "cv_std", "recipe", "seconds", "trials")}
                             for c in search.get("candidates", [])],
              "skipped": search.get("skipped", []), "run_dir": str(run.run_dir), "run_seconds": round(run.seconds, 2)}
    if has_test(name):
        result.update(score=result["test_accuracy"], scored_on="test")
    else:
        result.update(score=result["cv_accuracy"], scored_on="CV on train+val (winner's cv_mean)")
    return result


# --------------------------------------------------------------------------------------------------- results file


def load(path: Path) -> dict:
    return json.loads(path.read_text()) if path.exists() else {"results": [], "invocations": []}


def save(path: Path, data: dict) -> None:
    """Written whole to a temporary file, then moved over the old one: an interruption never leaves half a file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(data, indent=2) + "\n")
    os.replace(tmp, path)


def key(entry: dict) -> tuple:
    return entry["set"], entry["seed"], entry["method"]


def record(path: Path, data: dict, entry: dict) -> None:
    data["results"] = [r for r in data["results"] if key(r) != key(entry)] + [entry]
    save(path, data)


# --------------------------------------------------------------------------------------------------- main


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sets", default=",".join(SETS), help=f"comma-separated dev sets (default {','.join(SETS)})")
    parser.add_argument("--seeds", default="0,1,2", help="comma-separated seeds (default 0,1,2)")
    parser.add_argument("--budgets", default="10m", help="comma-separated auto budgets, e.g. 90s,10m (default 10m)")
    parser.add_argument("--methods", default="probe,features,auto",
                        help="comma-separated subset of probe,features,auto (default all three)")
    parser.add_argument("--out", type=Path, default=REPO / "docs" / "accuracy.md", help="the markdown written")
    parser.add_argument("--json", type=Path, default=REPO / "benchmarks" / "results" / "accuracy.json",
                        help="the raw results, written after each method")
    parser.add_argument("--runs", type=Path, default=None,
                        help="folder for the run directories (default a new temp dir under "
                             "~/.cache/headstart-bench/accuracy)")
    parser.add_argument("--resume", action="store_true",
                        help="keep the JSON's results and skip each (set, seed, method) already there")
    args = parser.parse_args()

    sets = [s.strip() for s in args.sets.split(",") if s.strip()]
    seeds = [int(s) for s in args.seeds.split(",") if s.strip()]
    budgets = [b.strip() for b in args.budgets.split(",") if b.strip()]
    methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    for name in sets:
        if not (SHARED / name / "train").is_dir():
            parser.error(f"no dataset {name} in {SHARED}")
    if unknown := set(methods) - {"probe", "features", "auto"}:
        parser.error(f"unknown methods: {', '.join(sorted(unknown))}")
    from headstart.config import budget_seconds

    for b in budgets:
        budget_seconds(b)  # a malformed budget fails now, not hours in
    if args.runs is None:
        base = Path.home() / ".cache" / "headstart-bench" / "accuracy"
        base.mkdir(parents=True, exist_ok=True)
        args.runs = Path(tempfile.mkdtemp(prefix="runs-", dir=base))
    args.runs.mkdir(parents=True, exist_ok=True)

    data = load(args.json) if args.resume else {"results": [], "invocations": []}
    done = {key(r) for r in data["results"] if "error" not in r}
    data["machine"] = machine()
    data["invocations"].append({"command": shlex.join(["python", "benchmarks/accuracy.py", *sys.argv[1:]]),
                                "date": time.strftime("%Y-%m-%d %H:%M"), "commit": commit(), "runs": str(args.runs),
                                "load_average_start": round(os.getloadavg()[0], 1)})
    save(args.json, data)
    print(f"results: {args.json}; runs: {args.runs}", flush=True)

    plan = [m for m in methods if m != "auto"] + ([f"auto@{b}" for b in budgets] if "auto" in methods else [])
    for name in sets:
        for seed in seeds:
            for method in plan:
                if (name, seed, method) in done:
                    print(f"{name} seed {seed} {method}: already in {args.json.name}, skipped", flush=True)
                    continue
                out = args.runs / name / f"seed{seed}" / method.replace("@", "-")
                entry = {"set": name, "seed": seed, "method": method, "date": time.strftime("%Y-%m-%d %H:%M"),
                         "commit": commit(), "load_average": round(os.getloadavg()[0], 1)}
                started = time.perf_counter()
                try:
                    if method == "probe":
                        entry.update(probe(name, seed))
                    elif method == "features":
                        entry.update(features_mode(name, seed, out))
                    else:
                        entry.update(auto_mode(name, seed, method.split("@", 1)[1], out))
                except KeyboardInterrupt:
                    raise
                except Exception as exc:  # one failure must not lose hours of the others
                    entry["error"] = f"{type(exc).__name__}: {exc}"
                    traceback.print_exc()
                entry["seconds"] = round(time.perf_counter() - started, 2)
                record(args.json, data, entry)
                shown = entry.get("error") or f"{entry['score']:.4f} ({entry['scored_on']})"
                print(f"{name} seed {seed} {method}: {shown} in {entry['seconds']:.0f}s", flush=True)
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(render(data))
    data["invocations"][-1]["load_average_end"] = round(os.getloadavg()[0], 1)
    save(args.json, data)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(render(data))
    print(f"wrote {args.out} and {args.json}")


# --------------------------------------------------------------------------------------------------- markdown


def order(method: str) -> tuple:
    from headstart.config import budget_seconds

    if method == "probe":
        return (0, 0.0)
    if method == "features":
        return (1, 0.0)
    return (2, budget_seconds(method.split("@", 1)[1]))


def fmt(value: float | None, digits: int = 4) -> str:
    return "–" if value is None else f"{value:.{digits}f}"


def summarise(rows: list[dict]) -> dict:
    ok = [r for r in rows if "error" not in r and r.get("score") is not None]
    scores = [r["score"] for r in ok]
    return {"n": len(ok), "failed": len(rows) - len(ok), "mean": sum(scores) / len(scores) if scores else None,
            "min": min(scores) if scores else None,
            "seconds": sum(r["seconds"] for r in ok) / len(ok) if ok else None,
            "by_seed": {r["seed"]: r["score"] for r in ok}, "rows": ok}


def winners(rows: list[dict]) -> str:
    counts: dict[str, list] = {}
    for r in rows:
        if r.get("winner"):
            counts.setdefault(r["winner"], []).append(r)
    parts = []
    for name, picked in sorted(counts.items(), key=lambda kv: -len(kv[1])):
        l2 = [p["recipe"]["l2"] for p in picked if isinstance(p.get("recipe"), dict) and "l2" in p["recipe"]]
        l2_text = f", l2 {min(l2):.2g}" + (f"–{max(l2):.2g}" if max(l2) != min(l2) else "") if l2 else ""
        parts.append(f"{name} ({len(picked)}×{l2_text})")
    return "; ".join(parts) or "–"


def beats(auto: dict, base: dict) -> str:
    seeds = sorted(set(auto["by_seed"]) & set(base["by_seed"]))
    if not seeds:
        return "–"
    won = sum(auto["by_seed"][s] > base["by_seed"][s] for s in seeds)
    return f"{'yes' if won == len(seeds) else 'no'} ({won}/{len(seeds)})"


def render(data: dict) -> str:
    m = data.get("machine", {})
    cores = f"{m.get('cores', '?')} cores" + (f" ({m['usable_cores']} usable by the run)"
                                              if m.get("usable_cores") not in (None, m.get("cores")) else "")
    gpu = f", GPU: {m['gpu']}" if m.get("gpu") else ", no GPU"
    lines = [
        "# Accuracy: auto mode against a linear probe and features mode",
        "",
        f"Machine: {m.get('cpu', '?')}, {cores}{gpu}; Python {m.get('python', '?')}, torch {m.get('torch', '?')}.",
        "",
        "Command(s), in order (results of an interrupted run are kept and `--resume` goes on from them):",
        "",
    ]
    for inv in data.get("invocations", []):
        load = f"load average {inv.get('load_average_start')}"
        if "load_average_end" in inv:
            load += f" → {inv['load_average_end']}"
        lines.append(f"- `{inv['command']}` — {inv['date']}, commit {inv['commit']}, {load}")
    lines += [
        "",
        f"- **probe**: scikit-learn `LogisticRegression` on {PROBE_BACKBONE} center-crop features "
        f"(`embed_dataset`, L2-normalised), C chosen by {PROBE_FOLDS}-fold stratified CV on train+val from "
        f"{len(PROBE_GRID)} values, {PROBE_GRID[0]:g} to {PROBE_GRID[-1]:g} half a decade apart, refitted on "
        "train+val, scored on test.",
        "- **features**: `headstart.train(data, mode=\"features\", seed=S)`, default settings.",
        "- **auto@B**: `headstart.train(data, mode=\"auto\", budget=B, seed=S)`; winner recipe from "
        "summary.json's `search` (l2 is the head's L2 strength).",
        "",
        "Score: test accuracy, mean and min over the seeds; seconds: mean wall-clock per run, feature cache shared "
        "(the first method on a set extracts its features, later ones read them). \"Beats probe\": auto's score "
        "above the probe's on every seed (strictly), with the count of seeds it did.",
        "",
    ]
    results = data.get("results", [])
    sets = [s for s in SETS if any(r["set"] == s for r in results)]
    sets += sorted({r["set"] for r in results} - set(sets))
    for name in (s for s in sets if not has_test(s)):
        lines += [
            f"**{name} has no test split**: its score column is **CV / val accuracy, not test** — probe: its "
            f"{PROBE_FOLDS}-fold CV accuracy at the chosen C; auto: the winner's `cv_mean` from summary.json; "
            "features: val accuracy (its val split). The probe's and auto's are selection scores (the best of what "
            "each tried, judged on the same folds), so they read slightly high.",
            "",
        ]
    verdicts = []
    for name in sets:
        mine = [r for r in results if r["set"] == name]
        methods = sorted({r["method"] for r in mine}, key=order)
        stats = {method: summarise([r for r in mine if r["method"] == method]) for method in methods}
        test = has_test(name)
        score = "test accuracy" if test else "CV / val accuracy (no test split)"
        seeds = sorted({r["seed"] for r in mine})
        lines += [f"## {name}" + ("" if test else " — scored by CV / val, not test"), "",
                  f"Seeds {', '.join(map(str, seeds))}.", "",
                  f"| method | scored on | {score}, mean | min | seeds | seconds (mean) | winner recipe(s) "
                  "| beats probe on every seed |",
                  "| --- | --- | ---: | ---: | ---: | ---: | --- | --- |"]
        for method, s in stats.items():
            scored_on = sorted({r["scored_on"] for r in s["rows"]}) or ["–"]
            n = f"{s['n']}" + (f" (+{s['failed']} failed)" if s["failed"] else "")
            is_auto = method.startswith("auto@")
            lines.append(f"| {method} | {' / '.join(scored_on)} | {fmt(s['mean'])} | {fmt(s['min'])} | {n} | "
                         f"{fmt(s['seconds'], 0)} | {winners(s['rows']) if is_auto else ''} | "
                         f"{beats(s, stats['probe']) if is_auto and 'probe' in stats else ''} |")
        edge = [r for r in stats.get("probe", {"rows": []})["rows"] if r.get("C_at_grid_edge")]
        if edge:
            lines += ["", f"The probe's C was at the edge of the grid on {len(edge)} seed(s): the grid may be short."]
        errors = [r for r in mine if "error" in r]
        for r in errors:
            lines += ["", f"Failed: {r['method']} seed {r['seed']}: {r['error']}"]
        lines.append("")
        target = TARGETS.get(name)
        if target:
            for method in (m for m in methods if m.startswith("auto@")):
                verdicts.append(verdict(name, target, method, stats))
    if verdicts:
        lines += ["## Targets", "",
                  "Checked on auto's scores; \"met\" on the mean over seeds, and on every seed (the min).", "",
                  "| set | target | method | mean | min | met (mean) | met (every seed) |",
                  "| --- | --- | --- | ---: | ---: | --- | --- |", *verdicts, ""]
    return "\n".join(lines) + "\n"


def verdict(name: str, target: dict, method: str, stats: dict) -> str:
    s = stats[method]
    text = target["text"]
    if s["mean"] is None:
        return f"| {name} | {text} | {method} | – | – | – | – |"
    bar_mean = bar_min = target["at_least"]
    if "over_features" in target:
        f = stats.get("features")
        if f and f["mean"] is not None:
            # ≥ features + 1 point, or ≥ 0.99: the lower of the two bars decides
            bar_mean = min(bar_mean, f["mean"] + target["over_features"])
            per_seed = [min(target["at_least"], f["by_seed"][seed] + target["over_features"]) <= score
                        for seed, score in s["by_seed"].items() if seed in f["by_seed"]]
            every = all(per_seed) and len(per_seed) == s["n"]
            text += f" (features mean {f['mean']:.4f})"
            return (f"| {name} | {text} | {method} | {s['mean']:.4f} | {s['min']:.4f} | "
                    f"{'yes' if s['mean'] >= bar_mean else 'no'} | {'yes' if every else 'no'} |")
    return (f"| {name} | {text} | {method} | {s['mean']:.4f} | {s['min']:.4f} | "
            f"{'yes' if s['mean'] >= bar_mean else 'no'} | {'yes' if s['min'] >= bar_min else 'no'} |")


if __name__ == "__main__":
    main()
