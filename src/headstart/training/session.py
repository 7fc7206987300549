"""A run's session: Fabric (and its other processes), the run directory, train.log and the signal guard."""

from __future__ import annotations

import logging
import os
import re
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from headstart.config import ConfigError, TrainConfig

__all__ = ["Session", "open_session", "prepare_run_dir"]

log = logging.getLogger(__name__)


@dataclass
class Session:
    """What a run holds while it trains: its processes, its folder and whether it should stop."""

    fabric: object
    accelerator: str
    precision: str
    run_dir: Path
    created: bool  # the folder is this run's own (not a resumed one)
    should_stop: object  # InterruptGuard: true once SIGINT/SIGTERM arrived

    @property
    def rank0(self) -> bool:
        return self.fabric.global_rank == 0

    @property
    def world(self) -> int:
        return self.fabric.world_size


def prepare_run_dir(cfg: TrainConfig) -> Path:
    """The run's folder. An existing run is never overwritten unless overwrite=True."""
    if cfg.out:
        run_dir = Path(cfg.out)
    else:
        stem = re.sub(r"[^A-Za-z0-9_.-]+", "_", f"{Path(cfg.data).resolve().name}-{cfg.backbone}-{cfg.mode}")
        run_dir, n = Path("runs") / stem, 1
        while run_dir.exists():
            n += 1
            run_dir = Path("runs") / f"{stem}-{n}"
    if run_dir.exists() and not run_dir.is_dir():
        raise ConfigError(f"{run_dir} is a file, not a folder: choose another --out")
    if run_dir.exists() and any(run_dir.iterdir()):
        if not cfg.overwrite:
            raise ConfigError(f"{run_dir} already exists and is not empty; choose another --out or pass --overwrite")
        shutil.rmtree(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    return run_dir


def _check_engine(cfg: TrainConfig, accelerator: str) -> None:
    world = cfg.devices * cfg.num_nodes
    if cfg.gradual_unfreeze and world > 1:
        raise ConfigError("gradual_unfreeze changes which parameters train mid-run, which DDP cannot follow: "
                          "use one process, or --unfreeze N")
    if cfg.mode != "features" and cfg.batch_size % world:
        raise ConfigError(f"batch_size {cfg.batch_size} is the global batch: it must divide evenly over "
                          f"{world} processes")
    if cfg.sync_bn and accelerator != "cuda":
        raise ConfigError("sync_bn synchronises BatchNorm across GPUs (torch's SyncBatchNorm needs CUDA): "
                          "leave it off on the CPU")


def _run_dir(fabric, cfg: TrainConfig, resume: str | Path | None) -> Path:
    """Rank 0 names and creates the folder (a default name counts up); the others take its choice. They wait in
    the broadcast, so rank 0 sends its error too (an existing --out) for all to raise."""
    if resume is not None:
        return Path(resume)
    try:
        choice = str(prepare_run_dir(cfg)) if fabric.global_rank == 0 else None
    except ConfigError as exc:
        choice = exc
    choice = fabric.broadcast(choice, src=0)
    if isinstance(choice, ConfigError):
        raise choice
    return Path(choice)


@contextmanager
def open_session(cfg: TrainConfig, resume: str | Path | None = None) -> Iterator[Session]:
    """Fabric launched, the run directory made (or the resumed one), train.log open on rank 0 and SIGINT/SIGTERM
    turned into a flag; all undone on the way out, whatever happens inside."""
    from headstart.device import resolve_accelerator, resolve_precision
    from headstart.training.checkpoint import InterruptGuard
    from headstart.training.distributed import make_fabric

    accelerator = resolve_accelerator(cfg.accelerator)
    _check_engine(cfg, accelerator)
    precision = resolve_precision(cfg.precision, accelerator)
    fabric = make_fabric(accelerator=accelerator, precision=precision, devices=cfg.devices,
                         num_nodes=cfg.num_nodes, strategy=cfg.strategy)
    if os.environ.get("LT_CLI_USED") != "1":  # `fabric run` has started every process already
        fabric.launch()  # with several local processes, this starts the others: each runs this same function
    rank0 = fabric.global_rank == 0
    if not rank0:  # one console voice: the other ranks only report errors
        logging.getLogger("headstart").setLevel(logging.ERROR)
    run_dir = _run_dir(fabric, cfg, resume)
    # train.log gets INFO whatever the console shows; console handlers filter by their own level.
    package_logger = logging.getLogger("headstart")
    old_level = package_logger.level
    if rank0 and package_logger.getEffectiveLevel() > logging.INFO:
        package_logger.setLevel(logging.INFO)
    handler = logging.FileHandler(run_dir / "train.log") if rank0 else logging.NullHandler()
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    package_logger.addHandler(handler)
    guard = InterruptGuard()
    try:
        with guard:
            yield Session(fabric, accelerator, precision, run_dir, resume is None, guard)
    finally:
        package_logger.removeHandler(handler)
        package_logger.setLevel(old_level)
        handler.close()
