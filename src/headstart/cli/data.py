"""`headstart check`, `headstart datasets …` and `headstart cache`: the data commands. They parse and call the
library."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.markup import escape
from rich.table import Table

from headstart.cli.support import Progress, friendly_errors, out, setup_logging

__all__ = ["cache_command", "check_command", "datasets_app"]


def check_command(
    data: Annotated[Path, typer.Argument(help="data folder")],
    as_json: Annotated[bool, typer.Option("--json")] = False,
    fix_split: Annotated[bool, typer.Option("--fix-split", help="write the list of leaked duplicates to drop")
                         ] = False,
    fast: Annotated[bool, typer.Option(help="headers only (what train runs at start-up)")] = False,
    deep: Annotated[bool, typer.Option(
        help="also label issues, near-duplicates, outliers and class health from the backbone's cached features; "
             "writes audit.html")] = False,
    out_dir: Annotated[Optional[Path], typer.Option(
        "--out", help="folder for what check writes  [default: ./<data name>-check]")] = None,
    accept_suggested: Annotated[bool, typer.Option(
        "--accept-suggested", help="with --deep: write fixes.json with every suggested fix")] = False,
    backbone: Annotated[str, typer.Option(help="with --deep: the backbone whose features are used")
                        ] = "efficientnet_lite0",
    image_size: Annotated[Optional[int], typer.Option(help="with --deep: as train's --image-size")] = None,
    val_fraction: float = 0.2,
    seed: int = 42,
) -> None:
    """The dataset doctor: unusable files, modes, duplicates and leakage, class balance (--deep: label issues,
    near-duplicates, outliers, a review page). Exit 1 if fatal. Nothing in DATA is ever changed."""
    from headstart.data.check import check_dataset, summary_lines
    from headstart.data.exclusions import fix_split as write_fix

    if accept_suggested and not deep:
        raise typer.BadParameter("needs --deep", param_hint="--accept-suggested")
    if deep and fast:
        raise typer.BadParameter("--deep reads every image; leave out --fast", param_hint="--deep")
    target = out_dir
    if deep:
        from headstart.audit.report import audit_dataset, audit_lines, default_out_dir, write_audit

        setup_logging(False)
        target = out_dir or default_out_dir(data)
        with friendly_errors(), Progress(not as_json) as progress:
            audit = audit_dataset(data, backbone=backbone, image_size=image_size, val_fraction=val_fraction,
                                  seed=seed, progress=progress)
            written = write_audit(audit, target, accept_suggested=accept_suggested)
        report = audit.check
    else:
        with Progress(not as_json) as progress:
            report = check_dataset(data, fast=fast, val_fraction=val_fraction, seed=seed, progress=progress)
    if as_json:
        sys.stdout.write(json.dumps(audit.to_dict() if deep else report.to_dict()) + "\n")
    else:
        for line in summary_lines(report) + (audit_lines(audit, written) if deep else []):
            out.print(escape(line), highlight=False, soft_wrap=True)
    if fix_split:
        from headstart.audit.report import default_out_dir

        target = target or default_out_dir(data)
        with friendly_errors():
            _outside_data(target, report.root)
            target.mkdir(parents=True, exist_ok=True)
            out.print(f"files to leave out written to {write_fix(data, report, target)}")
    raise typer.Exit(1 if report.fatal or (deep and any(f.kind == "leakage" for f in audit.findings)) else 0)


def _outside_data(target: Path, root: str) -> None:
    from headstart.data.dataset import DataError

    resolved, data_root = target.expanduser().resolve(), Path(root)
    if resolved == data_root or data_root in resolved.parents:
        raise DataError(f"--out {resolved} is inside the data folder {data_root}: check never writes into DATA")


datasets_app = typer.Typer(no_args_is_help=True, help="Datasets by name, downloaded with checksums.")


@datasets_app.command("list")
def datasets_list_command(to: Annotated[Optional[Path], typer.Option(help="download folder")] = None) -> None:
    """The datasets headstart can download, and whether each is already here."""
    from headstart.data.download import list_datasets

    table = Table()
    for column in ("name", "classes", "images", "downloaded", "description"):
        table.add_column(column)
    for row in list_datasets(to):
        images = ", ".join(f"{split} {n}" for split, n in row["images"].items())
        table.add_row(row["name"], str(row["classes"]), images, "yes" if row["downloaded"] else "no",
                      row["description"])
    out.print(table)


@datasets_app.command("download")
def datasets_download_command(
    name: Annotated[str, typer.Argument(help="dataset name (see `headstart datasets list`)")],
    to: Annotated[Optional[Path], typer.Option(help="download folder")] = None,
) -> None:
    """Download, verify and safely extract a dataset (HEADSTART_DATASETS_MIRROR supplies archives offline)."""
    setup_logging(False)
    from headstart.data.download import download

    with friendly_errors(), Progress(True) as progress:
        path = download(name, to, progress=progress)
    out.print(f"{name} is ready in [bold]{path}[/]")


@datasets_app.command("shard")
def datasets_shard_command(
    data: Annotated[Path, typer.Argument(help="a data folder, a CSV file list (path,label[,split]) or shards")],
    out_dir: Annotated[Path, typer.Option("--out", help="a new or empty folder for the shards")],
    shard_size: Annotated[str, typer.Option(help="bytes per shard: 500MB, 1GB, 200KB, 512MiB or a number")
                          ] = "500MB",
    val_fraction: Annotated[float, typer.Option(help="share of train held out as val when DATA has no val")
                            ] = 0.2,
    seed: int = 42,
) -> None:
    """Write DATA as WebDataset tar shards (images, class indices, split) for `headstart train SHARDS`."""
    setup_logging(False)
    from headstart.data.shard_writer import parse_size, write_shards

    try:
        size = parse_size(shard_size)
    except ValueError as exc:
        raise typer.BadParameter(str(exc), param_hint="--shard-size") from None
    with friendly_errors(), Progress(True) as progress:
        written = write_shards(data, out_dir, shard_size_bytes=size, val_fraction=val_fraction, seed=seed,
                               progress=progress)
    table = Table()
    for column in ("split", "images", "shards"):
        table.add_column(column, justify="left" if column == "split" else "right")
    for split, count in written.counts.items():
        table.add_row(split, str(count), str(len(written.shards[split])))
    out.print(table)
    for path, reason in written.skipped:
        out.print(f"[yellow]skipped[/] {escape(path)}: {escape(reason)}", highlight=False, soft_wrap=True)
    out.print(f"{len(written.classes)} classes, {written.bytes / 1e6:.1f} MB in [bold]{escape(written.out)}[/]; "
              f"train on it with `headstart train {escape(written.out)}`", highlight=False, soft_wrap=True)


def cache_command(
    clear: Annotated[Optional[list[str]], typer.Option(
        help="remove a part: features | engines | all (repeatable); run it while no training is using the cache")
                     ] = None,
) -> None:
    """What headstart's cache ($HEADSTART_CACHE) holds, per part; --clear removes parts (all can be recomputed)."""
    from headstart.cache import cache_root, cache_usage, clear_cache

    if clear:
        try:
            freed = clear_cache(clear)
        except ValueError as exc:
            raise typer.BadParameter(str(exc), param_hint="--clear") from None
        out.print(f"freed {freed / 1e6:.1f} MB from {escape(str(cache_root()))}", highlight=False)
    table = Table(title=f"headstart cache: {escape(str(cache_root()))}")
    for column in ("part", "files", "MB", "what"):
        table.add_column(column, justify="right" if column in ("files", "MB") else "left")
    what = {"features": "pooled features per backbone, transform and image", "engines": "exported backbone graphs"}
    for part, used in cache_usage().items():
        table.add_row(part, str(used["files"]), f"{used['bytes'] / 1e6:.1f}", what[part])
    out.print(table)
