"""`headstart.train()`: resolve the settings, settle the data, open the run's session, run the mode, write the run."""

from __future__ import annotations

import dataclasses
import logging
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from headstart.artifact import atomic_write_json, sha256_file
from headstart.config import MACHINE_SETTINGS, ConfigError, TrainConfig

__all__ = ["DataPlan", "RunResult", "plan_data", "resolve_config", "train"]

log = logging.getLogger(__name__)

ProgressFn = Callable[[str, int, int], None]

KEEP_DECODED_IMAGES = 10_000  # up to this many images (~2.6 GB at 256 px) stay decoded in memory


@dataclass
class RunResult:
    """What a finished run returns; every field is also on disk in run_dir."""

    run_dir: Path
    metrics: dict
    history: list[dict]
    classes: list[str]
    skipped: list[tuple[str, str]]
    seconds: float
    config: TrainConfig
    is_main: bool = True  # False in the other processes of a multi-process run: rank 0 wrote the run

    @property
    def best(self) -> dict:
        """The history row of the epoch whose weights were kept."""
        from headstart.training.callbacks import best_row

        return best_row(self.history)

    def load(self, **kwargs):
        from headstart.inference.classifier import load

        return load(self.run_dir, **kwargs)


@dataclass
class DataPlan:
    """What to train on, settled before torch is imported: the backbone's spec and preprocessing, the splits,
    the files left out and the doctor's warnings."""

    spec: object
    preprocessing: object
    dataset: object
    excluded: set
    warnings: list


def resolve_config(data, config: TrainConfig | None, resume, settings: dict) -> TrainConfig:
    """The run's settings with every mode default filled in: from keywords, a TrainConfig, or a resumed run's
    config.json (where only machine settings may change)."""
    if resume is not None:
        if data is not None or set(settings) - set(MACHINE_SETTINGS) or config is not None:
            raise ConfigError("resume takes the run directory, whose config.json holds the settings, and only "
                              f"these machine settings: {', '.join(MACHINE_SETTINGS)}")
        config = dataclasses.replace(TrainConfig.from_json(Path(resume) / "config.json"), **settings)
    if config is None:
        try:
            config = TrainConfig(data=str(data), **settings)
        except TypeError as exc:  # an unknown keyword
            raise ConfigError(str(exc).replace("TrainConfig.__init__()", "train()")) from exc
    return config.resolved()


def plan_data(cfg: TrainConfig, resume=None) -> DataPlan:
    """The backbone's spec, the doctor's fast check (fatal problems raise) and the splits. No torch."""
    from headstart.backbones.registry import get_spec
    from headstart.data.check import check_dataset
    from headstart.data.dataset import DataError
    from headstart.data.exclusions import load_exclusions
    from headstart.data.folders import discover

    spec = get_spec(cfg.backbone)
    preprocessing = spec.preprocessing if cfg.image_size is None else spec.preprocessing.with_crop(cfg.image_size)
    excluded = load_exclusions(cfg.exclude, cfg.data) if cfg.exclude else set()
    doctor = check_dataset(cfg.data, fast=True, val_fraction=cfg.val_fraction, seed=cfg.seed, exclude=excluded)
    if doctor.fatal:
        raise DataError(" ".join(p.message for p in doctor.problems if p.severity == "fatal")
                        + f" Run `headstart check {cfg.data}` for the full report.")
    warnings = [p for p in doctor.problems if p.severity == "warning"]
    for problem in warnings:
        log.warning("%s", problem.message)
    dataset = discover(cfg.data, val_fraction=cfg.val_fraction, seed=cfg.seed, exclude=excluded,
                       split_file=Path(resume) / "split.json" if resume is not None else None)
    return DataPlan(spec, preprocessing, dataset, excluded, warnings)


def train(data: str | Path | None = None, *, config: TrainConfig | None = None, progress: ProgressFn | None = None,
          on_epoch: Callable[[dict], None] | None = None, resume: str | Path | None = None,
          **settings) -> RunResult:
    """Train a classifier on a folder of labelled images and write a run directory.

    `headstart.train("photos/", backbone="efficientnet_lite0", mode="features")`. Settings are the fields of
    TrainConfig; unknown ones are rejected. `resume=RUN` continues an interrupted run from its last completed
    epoch, with its own saved settings and split.

    SIGINT/SIGTERM during training save the state of the last completed epoch and raise TrainingInterrupted.
    """
    from headstart.data.background import DecodeJob

    started = time.perf_counter()
    cfg = resolve_config(data, config, resume, settings)
    plan = plan_data(cfg, resume)
    # Decoding starts (in a helper process) before torch, timm and Fabric are imported, on the core that the
    # imports leave idle. A large set is checked and hashed now, then decoded again where it is used: memory
    # stays flat.
    keep_images = sum(map(len, plan.dataset.splits.values())) <= KEEP_DECODED_IMAGES
    decoding = DecodeJob.start(plan.dataset.splits, short_side=plan.preprocessing.resize_size,
                               interpolation=plan.preprocessing.interpolation, keep_images=keep_images,
                               progress=progress)
    figures = None
    try:
        # The report's figure workers start now too (their matplotlib import overlaps ours), in a features run
        # on one process; fine-tuning and several processes start them with the report instead.
        if cfg.report and cfg.mode != "finetune" and cfg.devices * cfg.num_nodes == 1:
            from headstart.report.figures import FigureWorker

            figures = FigureWorker.start()
        return _train_in_session(cfg, plan, decoding, figures, resume=resume, progress=progress,
                                 on_epoch=on_epoch, started=started)
    finally:
        decoding.close()
        if figures is not None:
            figures.close()


def _train_in_session(cfg: TrainConfig, plan: DataPlan, decoding, figures, *, resume, progress, on_epoch,
                      started: float) -> RunResult:
    from headstart.training.errors import TrainingInterrupted
    from headstart.training.session import open_session

    with open_session(cfg, resume) as session:
        try:
            return _fit_and_write(session, cfg, plan, decoding, figures, resume=resume, progress=progress,
                                  on_epoch=on_epoch, started=started)
        except TrainingInterrupted as exc:
            if not (session.run_dir / "resume.pt").is_file():  # stopped before an epoch ended: nothing to resume
                raise
            log.warning("%s; the last completed epoch is saved: resume with `headstart train --resume %s`", exc,
                        session.run_dir)
            raise TrainingInterrupted(f"{exc}; resume with `headstart train --resume {session.run_dir}`") from None


def _fit_and_write(session, cfg: TrainConfig, plan: DataPlan, decoding, figures, *, resume, progress, on_epoch,
                   started: float) -> RunResult:
    """Inside the session: the network, the mode's fit, calibration and metrics, then the run directory."""
    import torch

    from headstart.backbones.model import build_network
    from headstart.extract.feature_cache import FeatureCache
    from headstart.runtime.metrics import classification_metrics, fit_temperature
    from headstart.training.checkpoint import load_resume, save_checkpoint, save_resume
    from headstart.training.distributed import any_rank
    from headstart.training.modes import MODES, RunContext
    from headstart.training.write import write_run

    run_dir, rank0 = session.run_dir, session.rank0
    if rank0:
        atomic_write_json(run_dir / "config.json", cfg.to_dict())  # on resume: the machine settings used now
        if resume is None:
            atomic_write_json(run_dir / "split.json", plan.dataset.split_record(cfg.seed, cfg.val_fraction))
    torch.manual_seed(cfg.seed)
    net = build_network(plan.spec, len(plan.dataset.classes), weights=cfg.weights, dropout=cfg.dropout)
    decoded = decoding.result()
    _refuse_leakage(decoded, cfg.data, run_dir if session.created and rank0 else None)
    skipped = [f for d in decoded.values() for f in d.failures]
    if not decoded["train"].labels or not decoded["val"].labels:
        raise ConfigError("no readable images left in train or val after skipping unreadable files")
    ctx = RunContext(
        cfg=cfg, spec=plan.spec, preprocessing=plan.preprocessing, net=net, decoded=decoded,
        class_weights=_class_weights(decoded["train"].labels, len(plan.dataset.classes), cfg.class_weights),
        fabric=session.fabric, accelerator=session.accelerator, precision=session.precision,
        model_id=_model_id(cfg, plan.spec), cache=FeatureCache(), progress=progress if rank0 else None,
        on_epoch=on_epoch,
        save_checkpoint=(lambda state, row: save_checkpoint(run_dir, state, row)) if rank0 else None,
        save_resume=(lambda state: save_resume(run_dir, state)) if rank0 else None,
        resume_state=load_resume(run_dir) if resume is not None else None, should_stop=session.should_stop,
    )
    result = MODES[cfg.mode](ctx)
    temperature = fit_temperature(result.logits["val"].numpy(), result.labels["val"].numpy())
    metrics = {split: classification_metrics(result.logits[split].numpy(), result.labels[split].numpy(),
                                             plan.dataset.classes, temperature=temperature, threshold=cfg.threshold)
               for split in result.logits if split != "train"}
    seconds = time.perf_counter() - started
    failure: Exception | None = None
    if rank0:  # one writer: every rank holds the same model and metrics
        try:
            write_run(session, ctx, plan, result, temperature=temperature, metrics=metrics, skipped=skipped,
                      seconds=seconds, figures=figures)
        except Exception as exc:  # re-raised below, after the other ranks have heard of it
            failure = exc
    # A collective in place of a barrier: the other ranks return once the run directory is complete, or raise
    # with rank 0 instead of waiting for it forever.
    if any_rank(session.fabric, failure is not None):
        raise failure or RuntimeError("rank 0 could not write the run directory: see its error")
    log.info("run written to %s in %.1fs", run_dir, seconds)
    return RunResult(run_dir, metrics, result.history, plan.dataset.classes, skipped, seconds, cfg, rank0)


def _class_weights(train_labels: list[int], num_classes: int, mode: str):
    """The doctor's rule (one definition, in data/check.py) as a tensor for the loss, or None."""
    import torch

    from headstart.data.check import class_weights

    counts = [train_labels.count(i) for i in range(num_classes)]
    weights = class_weights(counts, mode)
    return None if weights is None else torch.tensor(weights, dtype=torch.float32)


def _refuse_leakage(decoded: dict, data: str, fresh_run_dir: Path | None) -> None:
    """The same image in two splits inflates every score: refuse, as `headstart check` does (the hashes come
    free with decoding). A run directory created for this run is removed: it holds nothing yet."""
    from headstart.data.dataset import DataError

    seen: dict[str, str] = {}
    leaked = []
    for split, d in decoded.items():
        for path, digest in zip(d.paths, d.hashes):
            if digest in seen and seen[digest].split(":", 1)[0] != split:
                leaked.append((seen[digest].split(":", 1)[1], path))
            seen.setdefault(digest, f"{split}:{path}")
    if leaked:
        if fresh_run_dir is not None:
            shutil.rmtree(fresh_run_dir, ignore_errors=True)
        first, second = leaked[0]
        raise DataError(f"{len(leaked)} image(s) appear in more than one split (e.g. {first} and {second}): scores "
                        f"would be inflated. Run `headstart check {data} --fix-split`, then train with --exclude")


def _model_id(cfg: TrainConfig, spec) -> str:
    if cfg.weights:
        return f"{spec.name}|file:{sha256_file(cfg.weights)}"
    return f"{spec.name}|{spec.weights.kind}:{spec.weights.ref}"
