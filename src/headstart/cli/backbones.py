"""`headstart backbones` and `headstart inspect`: what a backbone is and what its weights already know."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.table import Table

from headstart.cli.support import friendly_errors, out, setup_logging

__all__ = ["backbones_command", "inspect_command"]


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


def inspect_command(
    name: Annotated[str, typer.Argument(help="backbone name")],
    weights: Annotated[Optional[Path], typer.Option(help="local state_dict")] = None,
    image: Annotated[Optional[list[Path]], typer.Option(
        "--image", help="images to classify (ImageNet): --image a.jpg b.jpg, or --image a.jpg --image b.jpg")] = None,
    # An option takes one value each time, so `--image a.jpg b.jpg` leaves b.jpg here.
    images: Annotated[Optional[list[Path]], typer.Argument(help="images to classify, as with --image",
                                                           show_default=False)] = None,
    as_json: Annotated[bool, typer.Option("--json")] = False,
) -> None:
    """Head, in_features, stages, parameters, preprocessing and ImageNet top-5 of a backbone."""
    setup_logging(False)
    with friendly_errors():
        from headstart.backbones.inspect import inspect_backbone

        info = inspect_backbone(name, weights=str(weights) if weights else None,
                                images=[str(p) for p in [*(image or []), *(images or [])]])
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
