"""What each of the `headstart` command's start-up hooks (src/headstart/cli/startup.py) saves on a whole
features run: `headstart train DATA --mode features`, timed as a process, with every hook, with none, and with
each one left out (HEADSTART_STARTUP_HOOKS). A library call (`headstart.train()` in a user's script) runs
without them: the "none" row is what it pays.

    python benchmarks/startup_hooks.py [--data ../shared/datasets/pizza_steak_sushi] [--rounds 3] [--cold]

The configurations alternate within each round, so a slow spell of the shared machine hits all of them.
Without --cold, one warm-up run fills the feature and engine caches first, so the runs differ only in start-up.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
CONFIGS = {"all hooks": "dynamo,defer,gc", "none (a library call)": "0", "without dynamo": "defer,gc",
           "without defer": "dynamo,gc", "without gc": "dynamo,defer"}


def run_once(data: Path, out: Path, cache: Path, hooks: str) -> float:
    env = {**os.environ, "HEADSTART_STARTUP_HOOKS": hooks, "HEADSTART_CACHE": str(cache)}
    command = [sys.executable, "-m", "headstart.cli", "train", str(data), "--mode", "features", "--out", str(out),
               "--overwrite", "--no-progress"]
    started = time.perf_counter()
    subprocess.run(command, check=True, env=env, capture_output=True, text=True)
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=REPO.parent / "shared" / "datasets" / "pizza_steak_sushi")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--cold", action="store_true", help="an empty feature and engine cache for every run")
    parser.add_argument("--json", type=Path, default=REPO / "benchmarks" / "results" / "startup_hooks.json")
    args = parser.parse_args()
    times: dict[str, list[float]] = {name: [] for name in CONFIGS}
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        if not args.cold:
            run_once(args.data, tmp / "warm-up", tmp / "cache", CONFIGS["all hooks"])
        for round_ in range(args.rounds):
            for name, hooks in CONFIGS.items():
                cache = tmp / f"cache-{round_}-{len(times[name])}-{hooks}" if args.cold else tmp / "cache"
                times[name].append(run_once(args.data, tmp / "run", cache, hooks))
                print(f"round {round_ + 1}: {name}: {times[name][-1]:.2f} s", flush=True)
    base = statistics.median(times["all hooks"])
    rows = [{"config": name, "median_s": statistics.median(t), "runs_s": [round(v, 2) for v in t],
             "cost_vs_all_hooks_s": statistics.median(t) - base} for name, t in times.items()]
    print("\n| configuration | median wall (s) | runs (s) | vs all hooks (s) |\n| --- | --- | --- | --- |")
    for row in rows:
        print(f"| {row['config']} | {row['median_s']:.2f} | {', '.join(f'{v:.2f}' for v in row['runs_s'])} | "
              f"{row['cost_vs_all_hooks_s']:+.2f} |")
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps({"data": str(args.data), "cold": args.cold, "rounds": args.rounds,
                                     "cpu": _cpu(), "rows": rows}, indent=2) + "\n")


def _cpu() -> str:
    try:
        return next(line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                    if line.startswith("model name"))
    except (OSError, StopIteration):
        return "unknown"


if __name__ == "__main__":
    main()
