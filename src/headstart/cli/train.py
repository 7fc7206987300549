"""`headstart train`, `demo` and `compare`: the commands that train. They parse, call the library, print."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.table import Table

from headstart.cli.support import STARTED, Progress, console, friendly_errors, out, setup_logging
from headstart.config import AUTO_BUDGET, TrainConfig

__all__ = ["compare_command", "demo_command", "train_command"]

DEMO_DATA = Path(__file__).parent.parent / "demo_data"
# The defaults `headstart train` shows and uses: TrainConfig's own, in one place.
DEFAULTS = TrainConfig("")
SUGGEST_AUTO_BELOW = 0.99  # features mode: below this val accuracy, suggest auto mode
_EPOCHS = {mode: TrainConfig("", mode=mode).resolved().epochs for mode in ("features", "finetune")}


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


def _search_table(search: dict) -> Table:
    from headstart.report.sections import score_name

    table = Table(title=f"auto: what was tried, scored by {search['selection']}")
    for column in ("", "candidate", score_name(search), "± spread", "seconds"):
        table.add_column(column, justify="left" if column in ("", "candidate") else "right")
    for c in sorted(search["candidates"], key=lambda c: (not c["winner"], -c["cv_mean"], c["cv_loss"])):
        table.add_row("★" if c["winner"] else "", c["name"], f"{c['cv_mean']:.4f}", f"{c['cv_std']:.4f}",
                      f"{c['seconds']:.1f}")
    for c in search["skipped"]:
        table.add_row("", f"[dim]{c['name']}[/]", "[dim]skipped[/]", "", f"[dim]{c['reason']}[/]")
    return table


def _print_fit(result) -> None:
    """How the kept model was chosen: the search's leaderboard in auto mode, the best epoch otherwise."""
    temperature = next(iter(result.metrics.values()))["temperature"]
    if result.search is not None:
        out.print(_search_table(result.search))
        out.print(f"winner: {result.search['winner']} (refitted on train+val; "
                  f"search {result.search['seconds']:.0f} s of {result.search['budget_seconds']:.0f} s); "
                  f"temperature {temperature:.3f}")
        return
    best = result.best
    out.print(f"best epoch {best['epoch']} of {len(result.history)} (val accuracy {best['val_accuracy']:.4f}); "
              f"temperature {temperature:.3f}")
    if result.config.mode == "features" and best["val_accuracy"] < SUGGEST_AUTO_BELOW:
        out.print(f"val accuracy is below {SUGGEST_AUTO_BELOW}: `headstart train {result.config.data} --mode auto "
                  f"--budget {AUTO_BUDGET}` searches other backbones, views and heads by cross-validation",
                  highlight=False)


def _print_run(result, title: str) -> None:
    if not result.is_main:
        return  # with several processes, rank 0 speaks for the run
    out.print(_metrics_table(result.metrics, title))
    _print_fit(result)
    if result.relabeled:
        out.print(f"fixes: {len(result.relabeled)} image(s) relabelled (listed in summary.json)")
    if result.left_out:
        out.print(f"[yellow]left {len(result.left_out)} copies of other splits' images out of val/test[/] "
                  "(listed in summary.json; --strict refuses them instead)")
    if result.skipped:
        out.print(f"[yellow]skipped {len(result.skipped)} unreadable file(s):[/]")
        for path, reason in result.skipped:
            out.print(f"  {path}: {reason}", highlight=False, soft_wrap=True)  # a path must stay greppable
    total = time.perf_counter() - STARTED
    report = result.run_dir / "report.html"
    if report.is_file():
        out.print(f"report: {report}")
    out.print(f"wall time {total:.1f}s for the whole command (training {result.seconds:.1f}s); "
              f"outputs in [bold]{result.run_dir}[/]")


def train_command(
    data: Annotated[Optional[Path], typer.Argument(help="DATA/{train,val,test}/<class>/* or DATA/<class>/*")
                    ] = None,
    resume: Annotated[Optional[Path], typer.Option(
        help="continue an interrupted run directory (with its settings; --devices/--accelerator may change)")
                      ] = None,
    backbone: Annotated[str, typer.Option(help="a registered backbone or timm:NAME")] = DEFAULTS.backbone,
    mode: Annotated[str, typer.Option(help="features | finetune | auto")] = DEFAULTS.mode,
    budget: Annotated[Optional[str], typer.Option(
        help=f"auto: the search's time limit, e.g. 90s, 10m, 1h  [default: {AUTO_BUDGET}]")] = None,
    epochs: Annotated[Optional[int], typer.Option(
        help=f"default: {_EPOCHS['features']} features, {_EPOCHS['finetune']} finetune")] = None,
    out_dir: Annotated[Optional[Path], typer.Option("--out", help="run directory")] = None,
    weights: Annotated[Optional[Path], typer.Option(help="local state_dict (.pth/.safetensors) to load")] = None,
    seed: int = DEFAULTS.seed,
    batch_size: int = DEFAULTS.batch_size,
    lr: Annotated[Optional[float], typer.Option(help="head learning rate")] = None,
    optimizer: Annotated[str, typer.Option(help="sgd | adam | adamw")] = DEFAULTS.optimizer,
    schedule: Annotated[str, typer.Option(help="none | step | cosine | onecycle")] = DEFAULTS.schedule,
    warmup_epochs: int = DEFAULTS.warmup_epochs,
    label_smoothing: float = DEFAULTS.label_smoothing,
    class_weights: Annotated[str, typer.Option(help="auto | none")] = DEFAULTS.class_weights,
    early_stop: Annotated[int, typer.Option(help="patience in epochs; 0 = off")] = DEFAULTS.early_stop,
    augment: Annotated[Optional[str], typer.Option(help="none | light | standard")] = None,
    views: Annotated[Optional[int], typer.Option(
        help="augmented views cached per image (features; finetune: of the frozen prefix, 0 = off)")] = None,
    unfreeze: Annotated[str, typer.Option(help="last | N | all (finetune)")] = DEFAULTS.unfreeze,
    stage_lr_mult: Annotated[float, typer.Option(help="lr multiplier per stage below the head")
                             ] = DEFAULTS.stage_lr_mult,
    gradual_unfreeze: Annotated[int, typer.Option(help="unfreeze one more stage every N epochs")
                                ] = DEFAULTS.gradual_unfreeze,
    freeze_bn: Annotated[str, typer.Option(help="auto | on | off")] = DEFAULTS.freeze_bn,
    image_size: Optional[int] = None,
    precision: Annotated[str, typer.Option(help="auto | 32 | bf16-mixed | 16-mixed")] = DEFAULTS.precision,
    # Machine settings default to None ("the run's own", on --resume; TrainConfig's default otherwise), so a
    # resumed run changes only what this command names.
    accelerator: Annotated[Optional[str], typer.Option(
        help=f"auto | cpu | cuda  [default: {DEFAULTS.accelerator}]")] = None,
    extract_engine: Annotated[Optional[str], typer.Option(
        help="auto | torch | openvino | onnxruntime: the frozen forward pass of feature extraction  "
             f"[default: {DEFAULTS.extract_engine}]")] = None,
    int8_features: Annotated[bool, typer.Option(
        help="extract features with the backbone quantized to int8 (OpenVINO + NNCF), on CPUs with VNNI or "
             "AMX int8 instructions (elsewhere fp32, with a warning); features and auto modes"
    )] = DEFAULTS.int8_features,
    devices: Annotated[Optional[int], typer.Option(
        help=f"processes per machine (CPU) or GPUs per machine  [default: {DEFAULTS.devices}]")] = None,
    num_nodes: Annotated[Optional[int], typer.Option(
        help=f"machines (launch each with torchrun or `fabric run`)  [default: {DEFAULTS.num_nodes}]")] = None,
    strategy: Annotated[Optional[str], typer.Option(
        help=f"auto | ddp (several processes)  [default: {DEFAULTS.strategy}]")] = None,
    accumulate: Annotated[int, typer.Option(help="optimizer step every N batches (finetune)")] = DEFAULTS.accumulate,
    sync_bn: Annotated[bool, typer.Option(help="synchronise BatchNorm statistics across processes (finetune)")
                       ] = DEFAULTS.sync_bn,
    threshold: Annotated[float, typer.Option(help="confidence below which predictions are 'unsure'")
                         ] = DEFAULTS.threshold,
    exclude: Annotated[Optional[Path], typer.Option(help="files to leave out (from `headstart check --fix-split`)")
                       ] = None,
    fixes: Annotated[Optional[Path], typer.Option(
        help="a fixes.json from `headstart check --deep` (or its review page): relabel and exclude as listed; "
             "DATA is not changed")] = None,
    strict: Annotated[bool, typer.Option(
        help="refuse images copied across splits instead of leaving them out of val/test")] = DEFAULTS.strict,
    deep: Annotated[bool, typer.Option(
        help="leave near copies (resized, recompressed...) out of val/test too, not only exact ones")
                    ] = DEFAULTS.deep,
    overwrite: bool = DEFAULTS.overwrite,
    report: Annotated[bool, typer.Option(help="write report.html (plots, calibration, top losses with CAMs)")
                      ] = DEFAULTS.report,
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
            exclude=str(exclude) if exclude else None, fixes=str(fixes) if fixes else None, strict=strict,
            deep=deep, report=report, budget=budget, int8_features=int8_features,
        )
        _print_run(result, f"{backbone} · {mode}")


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


def compare_command(
    data: Annotated[Path, typer.Argument(help="data folder")],
    backbones: Annotated[str, typer.Option(help="comma-separated backbone names")],
    mode: Annotated[str, typer.Option(help="features | finetune")] = "features",
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
