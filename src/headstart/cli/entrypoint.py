"""The `headstart` command: the typer app assembled from the command modules, and its process's entry point."""

from __future__ import annotations

import gc
import logging
import os
import sys
import time

import typer

from headstart.cli import startup
from headstart.cli.backbones import backbones_command, inspect_command
from headstart.cli.data import cache_command, check_command, datasets_app
from headstart.cli.models import (
    evaluate_command,
    explain_command,
    export_command,
    predict_command,
    report_command,
    serve_command,
)
from headstart.cli.train import compare_command, demo_command, train_command

__all__ = ["app", "command", "main"]

app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
                  help="Transfer learning on images: train, evaluate and predict with pretrained backbones.")
for name, function in [("train", train_command), ("demo", demo_command), ("evaluate", evaluate_command),
                       ("predict", predict_command), ("explain", explain_command), ("report", report_command),
                       ("compare", compare_command), ("export", export_command), ("serve", serve_command),
                       ("backbones", backbones_command), ("inspect", inspect_command), ("check", check_command),
                       ("cache", cache_command)]:
    app.command(name)(function)
app.add_typer(datasets_app, name="datasets")


def main() -> None:
    """The CLI; like any typer app it ends by raising SystemExit."""
    started = time.perf_counter()
    try:
        app()
    finally:
        logging.getLogger("headstart").debug("command took %.2fs", time.perf_counter() - started)
        # The interpreter's shutdown runs full collections over what torch, timm and matplotlib created at
        # import; frozen objects are skipped (docs/benchmarks.md, "Start-up"). Nothing is left to free.
        gc.freeze()


def command() -> None:
    """The `headstart` command: main() with the start-up hooks (cli/startup.py), and after a command that
    succeeded, an exit without the interpreter's teardown, which frees torch's and timm's objects and unloads
    their libraries one by one where the OS does it at once. Nothing is lost: every file a command writes is
    complete when it returns (temp-and-rename), its logs are closed and its worker processes have ended.
    A failed command exits the normal way."""
    startup.install()
    try:
        main()
    except SystemExit as exc:
        if exc.code not in (None, 0):
            raise
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)
