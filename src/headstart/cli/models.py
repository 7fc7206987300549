"""The commands for a trained run: `evaluate`, `predict`, `explain`, `report`, `export` and `serve`."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.markup import escape
from rich.table import Table

from headstart.cli.support import console, friendly_errors, out, setup_logging

__all__ = ["evaluate_command", "explain_command", "export_command", "predict_command", "report_command",
           "serve_command"]


def evaluate_command(
    run: Annotated[Path, typer.Argument(help="run directory")],
    data: Annotated[Path, typer.Argument(help="data folder")],
    split: Annotated[Optional[str], typer.Option(
        help="test | val (default: test if present; a folder of class folders is scored whole)")] = None,
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
    scored = f"all images of {escape(m['data'])}" if m["split"] == "all" else m["split"]
    table = Table(title=f"{scored}: accuracy {m['accuracy']:.4f} on {m['n']} images")
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
    for text in m.get("notes", []):
        out.print(f"[yellow]note:[/] {text}", highlight=False)
    for s in m["skipped"]:
        out.print(f"[yellow]skipped[/] {s['path']}: {s['reason']}", highlight=False)
    out.print("plots: " + ", ".join(m["plots"].values()), highlight=False)


def predict_command(
    run: Annotated[Path, typer.Argument(help="run directory")],
    paths: Annotated[list[Path], typer.Argument(help="image files or folders (recursive)")],
    threshold: Annotated[Optional[float], typer.Option(help="below this confidence: 'unsure'")] = None,
    top_k: int = 3,
    tta: Annotated[str, typer.Option(help="test-time augmentation: none | flip | five-crop (torch engine)")
                   ] = "none",
    engine: Annotated[str, typer.Option(
        help="torch | onnx | onnx-int8 | openvino | openvino-int8 (the exports of `headstart export --format`)")
    ] = "torch",
    as_json: Annotated[bool, typer.Option("--json", help="one JSON object per line")] = False,
) -> None:
    """Predict labels with confidence and top-k for new images."""
    setup_logging(False)
    with friendly_errors():
        from headstart.inference.classifier import expand_paths, load

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
        from headstart.inference.classifier import expand_paths
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


def export_command(
    run: Annotated[Path, typer.Argument(help="run directory")],
    format: Annotated[str, typer.Option(
        "--format", help="onnx | onnx-int8 | openvino | openvino-int8 | web | tflite")] = "onnx",
    out_dir: Annotated[Optional[Path], typer.Option("--out", help="output folder (default: the run directory)")
                       ] = None,
    calibration: Annotated[Optional[Path], typer.Option(
        help="int8 formats: a folder of calibration images (default: the run's train split)")] = None,
    quantize: Annotated[Optional[str], typer.Option(help="int8: the same as --format onnx-int8")] = None,
    floor: Annotated[Optional[float], typer.Option(
        help="minimum top-1 agreement with PyTorch (default 1.0 for fp32 formats, 0.99 for int8)")] = None,
    opset: int = 18,
    exporter: Annotated[str, typer.Option(help="dynamo | torchscript")] = "dynamo",
    as_json: Annotated[bool, typer.Option("--json")] = False,
) -> None:
    """Export for deployment, scored on the run's test split with the format's own runtime (export.json).

    A format below its floor of top-1 agreement with PyTorch (100% fp32, 99% int8) exits 1 and writes nothing.
    """
    setup_logging(False)
    if quantize is not None:
        if quantize != "int8" or format != "onnx":
            console.print(f"[bold red]error:[/] --quantize {quantize!r}: only int8, with --format onnx "
                          f"(the same as --format onnx-int8)", highlight=False)
            raise typer.Exit(2)
        format = "onnx-int8"
    with friendly_errors():
        from headstart.inference.deploy import EXPORT_RECORD, FLOORS, ExportRefused, export, read_export_record

        try:
            report = export(run, format, out_dir, calibration=calibration, exporter=exporter, opset=opset,
                            floor=floor)
        except ExportRefused as exc:
            console.print(f"[bold red]refused:[/] {exc}", highlight=False, soft_wrap=True)
            raise typer.Exit(1) from None
    if as_json:
        sys.stdout.write(json.dumps(report.to_dict()) + "\n")
        return
    out.print(f"wrote [bold]{escape(str(report.path))}[/] ({report.bytes / 1e6:.1f} MB, {report.seconds:.1f}s)",
              highlight=False)
    record = read_export_record(report.path.parent)["exports"]
    scored = report.scores
    table = Table(title=f"exports scored on {scored['n']} {scored['source']} images against PyTorch "
                        f"({escape(str(report.path.parent / EXPORT_RECORD))})")
    for column in ("format", "MB", "top-1 agree", "floor", "acc change", "ECE change", "max |logit diff|",
                   "p50 ms (1 img)", "img/s (batch 32)"):
        table.add_column(column, justify="left" if column == "format" else "right")

    def signed(row: dict, key: str, scale: float = 100.0, unit: str = " pt") -> str:
        return f"{row[key] * scale:+.2f}{unit}" if key in row else "n/a"

    for name, row in record.items():
        table.add_row(f"[bold]{name}[/]" if name == report.format else name, f"{row['bytes'] / 1e6:.1f}",
                      f"{row['top1_agreement']:.2%}", f"{row.get('floor', FLOORS['fp32']):.0%}",
                      signed(row, "accuracy_change"), signed(row, "ece_change", 1.0, ""),
                      f"{row['max_abs_logit_diff']:.2e}",
                      f"{row['latency_p50_ms']:.1f}" if "latency_p50_ms" in row else "n/a",
                      f"{row['throughput_ips']:.0f}" if "throughput_ips" in row else "n/a")
    out.print(table)


def serve_command(
    run: Annotated[Path, typer.Argument(help="run directory")],
    host: Annotated[str, typer.Option(help="bind address (loopback by default: there is no authentication)")
                    ] = "127.0.0.1",
    port: int = 8000,
    engine: Annotated[str, typer.Option(
        help="auto | torch | onnx | onnx-int8 | openvino | openvino-int8 (auto: onnx when RUN/model.onnx exists)")
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
