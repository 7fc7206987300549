"""The `headstart` command: parses arguments, calls the library, draws progress and tables. Nothing else."""

from __future__ import annotations

import gc
import json
import logging
import os
import sys
import time
from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.table import Table

from headstart.cli_data import cache_command, check_command, datasets_app
from headstart.cli_support import Progress, console, friendly_errors, out, setup_logging
from headstart.startup import compile_free_process, freeze_imports

__all__ = ["app", "command", "main"]

app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
                  help="Transfer learning on images: train, evaluate and predict with pretrained backbones.")
DEMO_DATA = Path(__file__).parent / "demo_data"
_STARTED = time.perf_counter()  # the CLI reports whole-command wall time, imports included
def _metrics_table(metrics: dict, title: str) -> Table:
    table = Table(title=title)
    for column in ("split", "images", "accuracy", "loss", "ECE", "ECE calibrated"):
        table.add_column(column, justify="right" if column != "split" else "left")
    for split, m in metrics.items():
        table.add_row(split, str(m["n"]), f"{m['accuracy']:.4f}", f"{m['loss']:.4f}", f"{m['ece']:.4f}",
                      f"{m['ece_calibrated']:.4f}")
    return table


def _run_training(progress_enabled: bool, **settings):
    from headstart.training import train

    history_rows: list[dict] = []

    with Progress(progress_enabled) as progress:
        def on_epoch(row: dict) -> None:
            history_rows.append(row)
            progress("epochs", row["epoch"], max(settings.get("epochs") or 0, row["epoch"]))

        return train(progress=progress, on_epoch=on_epoch, **settings)


def _print_run(result, title: str) -> None:
    if not result.is_main:
        return  # with several processes, rank 0 speaks for the run
    out.print(_metrics_table(result.metrics, title))
    best = max(result.history, key=lambda r: (r["val_accuracy"], -r["val_loss"]))
    out.print(f"best epoch {best['epoch']} of {len(result.history)} (val accuracy {best['val_accuracy']:.4f}); "
              f"temperature {next(iter(result.metrics.values()))['temperature']:.3f}")
    if result.skipped:
        out.print(f"[yellow]skipped {len(result.skipped)} unreadable file(s):[/]")
        for path, reason in result.skipped:
            out.print(f"  {path}: {reason}", highlight=False, soft_wrap=True)  # a path must stay greppable
    total = time.perf_counter() - _STARTED
    report = result.run_dir / "report.html"
    if report.is_file():
        out.print(f"report: {report}")
    out.print(f"wall time {total:.1f}s for the whole command (training {result.seconds:.1f}s); "
              f"outputs in [bold]{result.run_dir}[/]")


@app.command("train")
def train_command(
    data: Annotated[Optional[Path], typer.Argument(help="DATA/{train,val,test}/<class>/* or DATA/<class>/*")
                    ] = None,
    resume: Annotated[Optional[Path], typer.Option(
        help="continue an interrupted run directory (with its settings; --devices/--accelerator may change)")
                      ] = None,
    backbone: Annotated[str, typer.Option(help="a registered backbone or timm:NAME")] = "efficientnet_lite0",
    mode: Annotated[str, typer.Option(help="features | finetune | auto")] = "features",
    epochs: Annotated[Optional[int], typer.Option(help="default: 30 features, 8 finetune")] = None,
    out_dir: Annotated[Optional[Path], typer.Option("--out", help="run directory")] = None,
    weights: Annotated[Optional[Path], typer.Option(help="local state_dict (.pth/.safetensors) to load")] = None,
    seed: int = 42,
    batch_size: int = 32,
    lr: Annotated[Optional[float], typer.Option(help="head learning rate")] = None,
    optimizer: Annotated[str, typer.Option(help="sgd | adam | adamw")] = "adamw",
    schedule: Annotated[str, typer.Option(help="none | step | cosine | onecycle")] = "cosine",
    warmup_epochs: int = 0,
    label_smoothing: float = 0.1,
    class_weights: Annotated[str, typer.Option(help="auto | none")] = "auto",
    early_stop: Annotated[int, typer.Option(help="patience in epochs; 0 = off")] = 0,
    augment: Annotated[Optional[str], typer.Option(help="none | light | standard")] = None,
    views: Annotated[Optional[int], typer.Option(
        help="augmented views cached per image (features; finetune: of the frozen prefix, 0 = off)")] = None,
    unfreeze: Annotated[str, typer.Option(help="last | N | all (finetune)")] = "last",
    stage_lr_mult: Annotated[float, typer.Option(help="lr multiplier per stage below the head")] = 0.5,
    gradual_unfreeze: Annotated[int, typer.Option(help="unfreeze one more stage every N epochs")] = 0,
    freeze_bn: Annotated[str, typer.Option(help="auto | on | off")] = "auto",
    image_size: Optional[int] = None,
    precision: Annotated[str, typer.Option(help="auto | 32 | bf16-mixed | 16-mixed")] = "auto",
    # Engine settings default to None ("the run's own", on --resume; TrainConfig's default otherwise), so a
    # resumed run changes only what this command names.
    accelerator: Annotated[Optional[str], typer.Option(help="auto | cpu | cuda  [default: auto]")] = None,
    extract_engine: Annotated[Optional[str], typer.Option(
        help="auto | torch | openvino | onnxruntime: the frozen forward pass of feature extraction  "
             "[default: auto]")] = None,
    devices: Annotated[Optional[int], typer.Option(
        help="processes per machine (CPU) or GPUs per machine  [default: 1]")] = None,
    num_nodes: Annotated[Optional[int], typer.Option(
        help="machines (launch each with torchrun or `fabric run`)  [default: 1]")] = None,
    strategy: Annotated[Optional[str], typer.Option(help="auto | ddp (several processes)  [default: auto]")] = None,
    accumulate: Annotated[int, typer.Option(help="optimizer step every N batches (finetune)")] = 1,
    sync_bn: Annotated[bool, typer.Option(help="synchronise BatchNorm statistics across processes (finetune)")
                       ] = False,
    threshold: Annotated[float, typer.Option(help="confidence below which predictions are 'unsure'")] = 0.5,
    exclude: Annotated[Optional[Path], typer.Option(help="files to leave out (from `headstart check --fix-split`)")
                       ] = None,
    overwrite: bool = False,
    report: Annotated[bool, typer.Option(help="write report.html (plots, calibration, top losses with CAMs)")
                      ] = True,
    verbose: Annotated[bool, typer.Option("--verbose", "-v")] = False,
    progress: Annotated[bool, typer.Option(help="progress bars")] = True,
) -> None:
    """Train a classifier on a folder of labelled images (Ctrl-C saves a resumable checkpoint)."""
    setup_logging(verbose)
    engine = {name: value for name, value in (("accelerator", accelerator), ("extract_engine", extract_engine),
                                              ("devices", devices), ("num_nodes", num_nodes), ("strategy", strategy))
              if value is not None}
    with friendly_errors():
        if resume is not None:
            result = _run_training(progress, resume=str(resume), **engine)
            _print_run(result, f"resumed {resume}")
            return
        if data is None:
            console.print("[bold red]error:[/] give a DATA folder, or --resume RUN")
            raise typer.Exit(2)
        result = _run_training(
            progress, data=str(data), backbone=backbone, mode=mode, epochs=epochs,
            out=str(out_dir) if out_dir else None, weights=str(weights) if weights else None, seed=seed,
            batch_size=batch_size, lr=lr, optimizer=optimizer, schedule=schedule, warmup_epochs=warmup_epochs,
            label_smoothing=label_smoothing, class_weights=class_weights, early_stop=early_stop,
            augment=augment, views=views, unfreeze=unfreeze, stage_lr_mult=stage_lr_mult,
            gradual_unfreeze=gradual_unfreeze, freeze_bn=freeze_bn, image_size=image_size, precision=precision,
            accumulate=accumulate, sync_bn=sync_bn, threshold=threshold, overwrite=overwrite, **engine,
            exclude=str(exclude) if exclude else None, report=report,
        )
        _print_run(result, f"{backbone} · {mode}")


@app.command("demo")
def demo_command(
    out_dir: Annotated[Path, typer.Option("--out", help="run directory")] = Path("runs/demo"),
    progress: bool = True,
) -> None:
    """Train the default backbone on the bundled pet photos (offline) and report test accuracy."""
    setup_logging(False)
    with friendly_errors():
        result = _run_training(progress, data=str(DEMO_DATA), out=str(out_dir), overwrite=True)
        _print_run(result, "demo: efficientnet_lite0 · features · 3 pet breeds")
        out.print(f"try: headstart predict {result.run_dir} {DEMO_DATA / 'test'} --json")


@app.command("evaluate")
def evaluate_command(
    run: Annotated[Path, typer.Argument(help="run directory")],
    data: Annotated[Path, typer.Argument(help="data folder")],
    split: Annotated[Optional[str], typer.Option(help="test | val (default: test if present)")] = None,
    threshold: Annotated[Optional[float], typer.Option(help="report rejection below this confidence")] = None,
    target_accuracy: Annotated[Optional[float], typer.Option(
        help="suggest the threshold whose accepted predictions reach this accuracy")] = None,
    tta: Annotated[str, typer.Option(help="test-time augmentation: none | flip | five-crop")] = "none",
    as_json: Annotated[bool, typer.Option("--json")] = False,
) -> None:
    """Accuracy, per-class precision/recall/F1, confusion matrix, calibration and rejection (text, JSON, PNG)."""
    setup_logging(False)
    with friendly_errors():
        from headstart.evaluate import evaluate_run

        m = evaluate_run(run, data, split=split, threshold=threshold, target_accuracy=target_accuracy, tta=tta)
    if as_json:
        out.print_json(json.dumps(m))
        return
    table = Table(title=f"{m['split']}: accuracy {m['accuracy']:.4f} on {m['n']} images")
    for column in ("class", "precision", "recall", "f1", "support"):
        table.add_column(column, justify="left" if column == "class" else "right")
    for name, row in m["per_class"].items():
        table.add_row(name, f"{row['precision']:.3f}", f"{row['recall']:.3f}", f"{row['f1']:.3f}",
                      str(row["support"]))
    out.print(table)
    matrix = Table(title="confusion matrix (rows: true, columns: predicted)")
    matrix.add_column("")
    for name in m["classes"]:
        matrix.add_column(name, justify="right")
    for name, row in zip(m["classes"], m["confusion_matrix"]):
        matrix.add_row(name, *[str(v) for v in row])
    out.print(matrix)
    if "rejection" in m:
        r = m["rejection"]
        acc = "n/a" if r["accepted_accuracy"] is None else f"{r['accepted_accuracy']:.4f}"
        out.print(f"threshold {r['threshold']}: {r['rejected_rate']:.1%} rejected as unsure, accuracy on the "
                  f"rest {acc}")
    out.print(f"calibration: ECE {m['ece']:.4f} before, {m['ece_calibrated']:.4f} after temperature scaling "
              f"(T = {m['temperature']:.3f}); NLL {m['loss']:.4f} -> {m['nll_calibrated']:.4f}")
    if "target" in m:
        row = m["target"]["suggested"]
        if row is None:
            out.print(f"no threshold reaches accuracy {m['target']['accuracy']} on {m['split']}")
        else:
            out.print(f"threshold {row['threshold']:.3f} reaches accuracy {row['accuracy']:.4f} on the accepted "
                      f"predictions, keeping {row['coverage']:.1%} of them (costs {1 - row['coverage']:.1%} coverage)")
    for s in m["skipped"]:
        out.print(f"[yellow]skipped[/] {s['path']}: {s['reason']}", highlight=False)
    out.print("plots: " + ", ".join(m["plots"].values()), highlight=False)


@app.command("predict")
def predict_command(
    run: Annotated[Path, typer.Argument(help="run directory")],
    paths: Annotated[list[Path], typer.Argument(help="image files or folders (recursive)")],
    threshold: Annotated[Optional[float], typer.Option(help="below this confidence: 'unsure'")] = None,
    top_k: int = 3,
    tta: Annotated[str, typer.Option(help="test-time augmentation: none | flip | five-crop (torch engine)")
                   ] = "none",
    engine: Annotated[str, typer.Option(help="torch | onnx (RUN/model.onnx from `headstart export`)")] = "torch",
    as_json: Annotated[bool, typer.Option("--json", help="one JSON object per line")] = False,
) -> None:
    """Predict labels with confidence and top-k for new images."""
    setup_logging(False)
    with friendly_errors():
        from headstart.predict import expand_paths, load

        clf = load(run, engine=engine)
        options = {"tta": tta} if tta != "none" else {}
        try:
            results = clf.predict(expand_paths(paths), top_k=top_k, threshold=threshold, **options)
        except ValueError as exc:
            console.print(f"[bold red]error:[/] {exc}", highlight=False)
            raise typer.Exit(2) from None
    if as_json:
        for r in results:
            sys.stdout.write(json.dumps(r) + "\n")
        return
    table = Table()
    for column in ("path", "label", "confidence", f"top {top_k}"):
        table.add_column(column)
    for r in results:
        if "error" in r:
            table.add_row(r["path"], "[red]error[/]", "", r["error"])
        else:
            top = ", ".join(f"{name} {p:.2f}" for name, p in r["top_k"])
            label = f"[yellow]{r['label']}[/]" if r["label"] == "unsure" else r["label"]
            table.add_row(r["path"], label, f"{r['confidence']:.3f}", top)
    out.print(table)


@app.command("explain")
def explain_command(
    run: Annotated[Path, typer.Argument(help="run directory")],
    images: Annotated[list[Path], typer.Argument(help="image files or folders")],
    out_dir: Annotated[Optional[Path], typer.Option("--out", help="folder for the overlays")] = None,
    class_name: Annotated[Optional[str], typer.Option("--class", help="explain this class, not the prediction")
                          ] = None,
    as_json: Annotated[bool, typer.Option("--json")] = False,
) -> None:
    """Grad-CAM overlays: where the model looked for its prediction (or for --class)."""
    setup_logging(False)
    with friendly_errors():
        from headstart.predict import expand_paths
        from headstart.report.explain import explain_images

        try:
            rows = explain_images(run, expand_paths(images), out_dir or run / "explanations", class_name)
        except ValueError as exc:  # an unknown --class
            console.print(f"[bold red]error:[/] {exc}", highlight=False)
            raise typer.Exit(2) from None
    for row in rows:
        if as_json:
            sys.stdout.write(json.dumps(row) + "\n")
        elif "error" in row:
            out.print(f"{row['path']}: [red]{row['error']}[/]", highlight=False)
        else:
            out.print(f"{row['path']}: {row['label']} ({row['confidence']:.2f}) -> {row['overlay']}", highlight=False)
    raise typer.Exit(1 if any("error" in r for r in rows) else 0)


@app.command("report")
def report_command(
    run: Annotated[Path, typer.Argument(help="run directory")],
    data: Annotated[Optional[Path], typer.Option(help="data folder (default: the one the run used)")] = None,
    split: Annotated[str, typer.Option(help="val | test: the split shown for calibration and top losses")] = "val",
) -> None:
    """(Re)generate the run's self-contained report.html."""
    setup_logging(False)
    with friendly_errors():
        from headstart.report.build import build_report

        path = build_report(run, data, split=split)
    out.print(f"report written to [bold]{path}[/]")


@app.command("compare")
def compare_command(
    data: Annotated[Path, typer.Argument(help="data folder")],
    backbones: Annotated[str, typer.Option(help="comma-separated backbone names")],
    mode: Annotated[str, typer.Option(help="features | finetune | auto")] = "features",
    weights: Annotated[Optional[list[str]], typer.Option(help="NAME=FILE: local weights for one backbone")] = None,
    out_dir: Annotated[Optional[Path], typer.Option("--out", help="folder for the runs and the leaderboard")] = None,
    epochs: Optional[int] = None,
    seed: int = 42,
    image_size: Optional[int] = None,
    latency_runs: int = 30,
    report: Annotated[bool, typer.Option(help="write report.html in each run")] = True,
    overwrite: bool = False,
) -> None:
    """Train several backbones with the same settings; leaderboard of accuracy, ECE, time, size and latency."""
    setup_logging(False)
    pairs = [w.split("=", 1) for w in weights or []]
    if any(len(p) != 2 for p in pairs):
        console.print("[bold red]error:[/] --weights takes NAME=FILE")
        raise typer.Exit(2)
    with friendly_errors(), Progress(True) as progress:
        from headstart.compare import compare

        result = compare(data, [b.strip() for b in backbones.split(",") if b.strip()], weights=dict(pairs),
                         out=out_dir, overwrite=overwrite, latency_runs=latency_runs, progress=progress, mode=mode,
                         epochs=epochs, seed=seed, image_size=image_size, report=report)
    out.print(result.paths["markdown"].read_text(), highlight=False)
    out.print(result.verdict, highlight=False)
    raise typer.Exit(1 if result.winner is None else 0)


@app.command("export")
def export_command(
    run: Annotated[Path, typer.Argument(help="run directory")],
    format: Annotated[str, typer.Option("--format", help="onnx")] = "onnx",
    opset: int = 18,
    out_file: Annotated[Optional[Path], typer.Option("--out", help="output file (default RUN/model.onnx)")] = None,
    quantize: Annotated[Optional[str], typer.Option(help="int8: static quantization, accuracy checked")] = None,
    exporter: Annotated[str, typer.Option(help="dynamo | torchscript")] = "dynamo",
    as_json: Annotated[bool, typer.Option("--json")] = False,
) -> None:
    """Export to ONNX (dynamic batch, metadata for any client), checked for parity with PyTorch."""
    setup_logging(False)
    if format != "onnx":
        console.print(f"[bold red]error:[/] unknown format {format!r}; only onnx is supported")
        raise typer.Exit(2)
    with friendly_errors():
        from headstart.export import export_onnx

        result = export_onnx(run, out_file, opset=opset, exporter=exporter, quantize=quantize)
    if as_json:
        sys.stdout.write(json.dumps({"path": str(result.path), "bytes": result.bytes, "seconds": result.seconds,
                                     "parity": result.parity}) + "\n")
        return
    parity = result.parity
    out.print(f"wrote [bold]{result.path}[/] ({result.bytes / 1e6:.1f} MB, {result.seconds:.1f}s, opset {opset})")
    out.print(f"parity on {parity.get('n')} images: top-1 agreement {parity.get('top1_agreement'):.2%}, "
              f"max |logit diff| {parity.get('max_abs_logit_diff'):.2e}", highlight=False)


@app.command("serve")
def serve_command(
    run: Annotated[Path, typer.Argument(help="run directory")],
    host: Annotated[str, typer.Option(help="bind address (loopback by default: there is no authentication)")
                    ] = "127.0.0.1",
    port: int = 8000,
    engine: Annotated[str, typer.Option(help="auto | onnx | torch (auto: onnx when RUN/model.onnx exists)")
                      ] = "auto",
    max_body_mb: Annotated[float, typer.Option(help="largest request body accepted")] = 10.0,
    max_images: Annotated[int, typer.Option(help="most images in one request")] = 32,
    batch_window_ms: Annotated[float, typer.Option(help="micro-batching wait; 0 turns batching off")] = 5.0,
) -> None:
    """Serve predictions over HTTP (FastAPI): POST /predict, GET /health, GET /model, and a page at /."""
    setup_logging(False)
    with friendly_errors():
        from headstart.serve.app import serve

        out.print(f"serving {run} on http://{host}:{port}/ (Ctrl-C stops)")
        serve(run, host=host, port=port, engine=engine, max_body_bytes=int(max_body_mb * 1_000_000),
              max_images=max_images, batch_window_ms=batch_window_ms)


@app.command("backbones")
def backbones_command(as_json: Annotated[bool, typer.Option("--json")] = False) -> None:
    """List the registered backbones and whether their weights are available offline."""
    from headstart.backbones.inspect import describe_backbones

    rows = describe_backbones()
    if as_json:
        out.print_json(json.dumps(rows))
        return
    table = Table(title="backbones (any timm model also works as timm:NAME)")
    for column in ("name", "family", "features", "input", "weights", "offline"):
        table.add_column(column)
    for r in rows:
        table.add_row(r["name"], r["family"], str(r["in_features"]), str(r["input"]), r["weights"],
                      "[green]yes[/]" if r["offline"] else "no (download, or --weights FILE)")
    out.print(table)


@app.command("inspect")
def inspect_command(
    name: Annotated[str, typer.Argument(help="backbone name")],
    weights: Annotated[Optional[Path], typer.Option(help="local state_dict")] = None,
    image: Annotated[Optional[list[Path]], typer.Option("--image", help="images to classify (ImageNet)")] = None,
    as_json: Annotated[bool, typer.Option("--json")] = False,
) -> None:
    """Head, in_features, stages, parameters, preprocessing and ImageNet top-5 of a backbone."""
    setup_logging(False)
    with friendly_errors():
        from headstart.backbones.inspect import inspect_backbone

        info = inspect_backbone(name, weights=str(weights) if weights else None,
                                images=[str(p) for p in image or []])
    if as_json:
        out.print_json(json.dumps(info))
        return
    out.print(f"[bold]{info['name']}[/] ({info['family']}), weights: {info['weights']}")
    out.print(f"head: {info['head']}, in_features {info['in_features']}; parameters "
              f"{info['parameters']['total']:,} total, {info['parameters']['trainable']:,} trainable")
    out.print(f"preprocessing: {info['preprocessing']}")
    table = Table(title=f"{len(info['stages'])} stages (unfreezing order is bottom-up from the head)")
    table.add_column("#")
    table.add_column("modules")
    table.add_column("parameters", justify="right")
    for i, stage in enumerate(info["stages"]):
        table.add_row(str(i), ", ".join(stage["modules"]), f"{stage['parameters']:,}")
    out.print(table)
    for p in info["predictions"]:
        if "error" in p:
            out.print(f"{p['path']}: [red]{p['error']}[/]")
        else:
            out.print(f"{p['path']}: " + "; ".join(f"{label} {prob:.2f}" for label, prob in p["top_k"]),
                      highlight=False)


app.command("check")(check_command)
app.command("cache")(cache_command)
app.add_typer(datasets_app, name="datasets")


def main() -> None:
    """The CLI; like any typer app it ends by raising SystemExit."""
    started = time.perf_counter()
    try:
        app()
    finally:
        logging.getLogger("headstart").debug("command took %.2fs", time.perf_counter() - started)
        # The interpreter's shutdown runs full collections over the ~500k objects that torch, timm and
        # matplotlib create at import (1.1 s measured); frozen objects are skipped. Nothing is left to free.
        gc.freeze()


def command() -> None:
    """The `headstart` command: main(), and after a command that succeeded, an exit without the
    interpreter's teardown. Teardown frees torch's and timm's objects and unloads their libraries one by
    one (0.3-0.4 s measured after a training run), which the OS does at once. Nothing is lost: every file a
    command writes is complete when it returns (written to a temporary name, then renamed), its log files
    are closed and its worker processes have ended. A failed command exits the normal way.
    The objects that the heavy imports create are frozen out of the garbage collector's reach, and
    torch._dynamo is never imported unless something asks for more of it than torch.optim does (see
    headstart.startup): this process ends with the command, and compiles nothing."""
    freeze_imports()
    compile_free_process()
    try:
        main()
    except SystemExit as exc:
        if exc.code not in (None, 0):
            raise
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)


if __name__ == "__main__":
    command()
