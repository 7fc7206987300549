"""Load test of `headstart serve` on loopback: concurrent clients, micro-batching on and off, each engine.

    python benchmarks/serve_load.py [--run RUN] [--clients 8] [--requests 200] [--quick] [--json out.json]

The server runs in its own process (uvicorn, as `headstart serve` starts it); the clients are threads of this
one, each with a keep-alive connection, each request one JPEG from the bundled demo test set as a multipart
upload. Per engine (torch always, onnx when onnxruntime and `headstart.load(..., engine="onnx")` work) and per
batching setting: errors, latency p50/p95, images/s, images per model call (from /health), the latency of
one client alone (end to end through HTTP: upload, decode, preprocess, model, JSON), and for comparison the
engine alone on one decoded image in this process.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

from vs_tutorial import REPO, machine_info

DEMO = REPO / "src" / "headstart" / "demo_data"
BATCHING = {"on (5 ms)": 5.0, "off": 0.0}
SERVER = "import json, sys; from headstart.serve import serve; serve(**json.loads(sys.argv[1]))"


def train_run(workdir: Path, quick: bool) -> Path:
    import headstart

    settings = {"image_size": 64, "epochs": 1} if quick else {"epochs": 10}
    return headstart.train(DEMO, report=False, out=str(workdir / "run"), **settings).run_dir


def onnx_ready(run_dir: Path, quick: bool) -> str | None:
    """None when the onnx engine can serve run_dir (exporting RUN/model.onnx if needed), else why not."""
    try:
        import onnxruntime  # noqa: F401

        from headstart.inference.export import export_onnx
    except ImportError as exc:
        return f"not installed ({exc})"
    if not (run_dir / "model.onnx").is_file():
        # --quick: the fast TorchScript exporter; a full run uses the default one, as `headstart export` does
        export_onnx(run_dir, **({"exporter": "torchscript"} if quick else {}))
    import headstart

    try:
        headstart.load(run_dir, engine="onnx")
    except ValueError as exc:
        return f"headstart.load cannot load it: {exc}"
    return None


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(run_dir: Path, engine: str, window_ms: float, port: int) -> subprocess.Popen:
    args = {"run_dir": str(run_dir), "port": port, "engine": engine, "batch_window_ms": window_ms,
            "log_level": "warning"}
    proc = subprocess.Popen([sys.executable, "-c", SERVER, json.dumps(args)], cwd=REPO)
    import httpx

    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"the server exited with {proc.returncode}")
        try:
            if httpx.get(f"http://127.0.0.1:{port}/health", timeout=1).status_code == 200:
                return proc
        except httpx.HTTPError:
            time.sleep(0.2)
    proc.kill()
    raise RuntimeError("the server did not answer /health within 120 s")


def post(client, url: str, image: Path, data: bytes) -> tuple[float, bool]:
    started = time.perf_counter()
    try:
        response = client.post(url, files={"files": (image.name, data, "image/jpeg")})
        ok = response.status_code == 200 and "label" in response.json()["predictions"][0]
    except Exception:  # a failed request is counted, not raised: errors are a result here
        ok = False
    return time.perf_counter() - started, ok


def load_test(url: str, images: list[tuple[Path, bytes]], clients: int, requests: int) -> dict:
    """`requests` uploads spread over `clients` threads, as fast as the server answers."""
    import httpx

    latencies, failures, lock = [], [0], threading.Lock()
    counter = iter(range(requests))

    def client_loop() -> None:
        with httpx.Client(timeout=60) as client:
            while True:
                with lock:
                    i = next(counter, None)
                if i is None:
                    return
                elapsed, ok = post(client, url, *images[i % len(images)])
                with lock:
                    latencies.append(elapsed)
                    failures[0] += not ok

    started = time.perf_counter()
    threads = [threading.Thread(target=client_loop) for _ in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - started
    return {"requests": requests, "clients": clients, "errors": failures[0],
            "p50_ms": 1e3 * float(np.percentile(latencies, 50)), "p95_ms": 1e3 * float(np.percentile(latencies, 95)),
            "images_per_s": requests / wall, "seconds": wall}


def single_latency(urls: list[str], images: list[tuple[Path, bytes]], n: int) -> list[dict]:
    """One client alone, taking turns between the servers so that they share the same moments of a busy CPU."""
    import httpx

    with httpx.Client(timeout=60) as client:
        for url in urls:
            for image in images[:3]:  # warm-up
                post(client, url, *image)
        runs = [[post(client, url, *images[i % len(images)]) for url in urls] for i in range(n)]
    out = []
    for column in zip(*runs):
        times = [t for t, _ in column]
        out.append({"single_p50_ms": 1e3 * float(np.percentile(times, 50)),
                    "single_p95_ms": 1e3 * float(np.percentile(times, 95)),
                    "single_errors": sum(not ok for _, ok in column)})
    return out


def model_latency(run_dir: Path, engine: str, image: bytes, n: int) -> float:
    """p50 ms of the engine alone on one decoded image, in this process: what HTTP adds is the rest."""
    import headstart
    from headstart.runtime.images import open_image

    clf = headstart.load(run_dir, engine=engine)
    decoded = open_image(image)
    times: list[float] = []

    def measure() -> None:
        clf.logits([decoded])
        for _ in range(n):
            started = time.perf_counter()
            clf.logits([decoded])
            times.append(time.perf_counter() - started)

    # On a thread, as the server's batcher calls the model: on a busy 2-core box, torch called from the main
    # thread was up to 10x slower than from another thread of the same process.
    thread = threading.Thread(target=measure)
    thread.start()
    thread.join()
    return 1e3 * float(np.percentile(times, 50))


def bench(run_dir: Path, engine: str, images, args) -> list[dict]:
    """One server per batching setting, all up at once: each gets the load test alone, then the one-client
    latency takes turns between them."""
    import httpx

    bases, procs = {}, []
    try:
        for label, window in BATCHING.items():
            port = free_port()
            procs.append(start_server(run_dir, engine, window, port))
            bases[label] = f"http://127.0.0.1:{port}"
        rows = []
        for label, base in bases.items():
            load_test(base + "/predict", images, args.clients, max(args.clients, 16))  # warm-up
            before = httpx.get(base + "/health").json()
            row = load_test(base + "/predict", images, args.clients, args.requests)
            after = httpx.get(base + "/health").json()
            calls = after["batches"] - before["batches"]
            rows.append(dict(row, engine=engine, batching=label, window_ms=BATCHING[label],
                             images_per_call=(after["images"] - before["images"]) / calls if calls else float("nan")))
        for row, single in zip(rows, single_latency([b + "/predict" for b in bases.values()], images, args.single)):
            row.update(single)
        return rows
    finally:
        for proc in procs:
            proc.terminate()
            proc.wait(30)


def markdown(rows: list[dict]) -> str:
    lines = ["| engine | batching | clients | requests | errors | p50 (ms) | p95 (ms) | images/s "
             "| images per model call | 1 client p50 (ms) | 1 client p95 (ms) | model alone p50 (ms) |",
             "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        lines.append(f"| {r['engine']} | {r['batching']} | {r['clients']} | {r['requests']} | {r['errors']} | "
                     f"{r['p50_ms']:.1f} | {r['p95_ms']:.1f} | {r['images_per_s']:.1f} | {r['images_per_call']:.2f} | "
                     f"{r['single_p50_ms']:.1f} | {r['single_p95_ms']:.1f} | {r['model_p50_ms']:.1f} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run", help="a run directory (default: train one on the demo set); it is copied")
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--requests", type=int, default=200)
    parser.add_argument("--single", type=int, default=50, help="requests of the one-client latency test")
    parser.add_argument("--engines", default="torch,onnx", help="comma-separated: torch, onnx")
    parser.add_argument("--quick", action="store_true", help="a 64 px 1-epoch run and few requests: a smoke test")
    parser.add_argument("--json", help="write the results here")
    args = parser.parse_args()
    if args.quick:
        args.requests, args.single, args.clients = min(args.requests, 24), min(args.single, 5), min(args.clients, 4)

    images = [(p, p.read_bytes()) for p in sorted((DEMO / "test").rglob("*.jpg"))]
    load_before = [round(x, 2) for x in os.getloadavg()]
    rows, skipped = [], {}
    with tempfile.TemporaryDirectory() as tmp:
        workdir = Path(tmp)
        # a copy: exporting writes RUN/model.onnx, which must not land in the caller's run
        run_dir = Path(shutil.copytree(args.run, workdir / "run")) if args.run else train_run(workdir, args.quick)
        for engine in args.engines.split(","):
            if engine == "onnx" and (why := onnx_ready(run_dir, args.quick)):
                skipped[engine] = why
                continue
            model_ms = model_latency(run_dir, engine, images[0][1], args.single)
            rows.extend(dict(row, model_p50_ms=model_ms) for row in bench(run_dir, engine, images, args))
    machine = dict(machine_info(), load_average_before=load_before, quick=args.quick)
    print(markdown(rows))
    for engine, why in skipped.items():
        print(f"\n{engine} engine skipped: {why}")
    print(f"\n{machine['cpu_model']}, {machine['cores']} cores; load average {load_before} before and "
          f"{machine['load_average']} after (other users share this CPU); torch {machine['torch']}")
    if args.json:
        Path(args.json).write_text(json.dumps({"rows": rows, "skipped": skipped, "machine": machine}, indent=2) + "\n")


if __name__ == "__main__":
    main()
