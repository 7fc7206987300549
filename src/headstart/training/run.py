"""`headstart.train()`: settings -> data -> network -> mode -> evaluation -> a self-describing run directory."""

from __future__ import annotations

import csv
import dataclasses
import io
import logging
import os
import re
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from headstart.artifact import atomic_write_bytes, atomic_write_json, atomic_write_text, sha256_file
from headstart.config import ENGINE_SETTINGS, ConfigError, TrainConfig

__all__ = ["RunResult", "prepare_run_dir", "train"]

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

    def load(self, **kwargs):
        from headstart.predict import load

        return load(self.run_dir, **kwargs)


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
    if run_dir.exists() and any(run_dir.iterdir()):
        if not cfg.overwrite:
            raise ConfigError(f"{run_dir} already exists and is not empty; choose another --out or pass --overwrite")
        shutil.rmtree(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    return run_dir


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
    from headstart.data.folders import DataError

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


def _save_logits(run_dir: Path, decoded: dict, logits: dict) -> None:
    """The best model's logits per split, with their files: the report reuses them instead of rescoring."""
    import numpy as np

    arrays = {}
    for split, values in logits.items():
        arrays[f"logits_{split}"] = values.numpy()
        arrays[f"paths_{split}"] = np.array(decoded[split].paths, dtype=str)
    buffer = io.BytesIO()
    np.savez(buffer, **arrays)
    atomic_write_bytes(run_dir / "logits.npz", buffer.getvalue())


def _write_report(run_dir: Path, data: str, figures) -> None:
    """report.html for every run; a failed report is logged, never a failed run (the model is already saved).
    figures: the FigureWorker started with the run, or None."""
    try:
        from headstart.predict import load
        from headstart.report.build import build_report

        build_report(run_dir, data=data, classifier=load(run_dir), figures=figures)
    except Exception as exc:  # the report is a by-product: keep the trained model whatever goes wrong here
        log.warning("could not write report.html: %s: %s (run `headstart report %s` to retry)",
                    type(exc).__name__, exc, run_dir)


def _history_csv(history: list[dict]) -> str:
    if not history:
        return ""
    fields = list(dict.fromkeys(k for row in history for k in row))
    out = io.StringIO()
    writer = csv.DictWriter(out, fieldnames=fields, lineterminator="\n")
    writer.writeheader()
    writer.writerows(history)
    return out.getvalue()


def _model_id(cfg: TrainConfig, spec) -> str:
    if cfg.weights:
        return f"{spec.name}|file:{sha256_file(cfg.weights)}"
    return f"{spec.name}|{spec.weights.kind}:{spec.weights.ref}"


def train(data: str | Path | None = None, *, config: TrainConfig | None = None, progress: ProgressFn | None = None,
          on_epoch: Callable[[dict], None] | None = None, resume: str | Path | None = None,
          **settings) -> RunResult:
    """Train a classifier on a folder of labelled images and write a run directory.

    `headstart.train("photos/", backbone="efficientnet_lite0", mode="features")`. Settings are the fields of
    TrainConfig; unknown ones are rejected. `resume=RUN` continues an interrupted run from its last completed
    epoch, with its own saved settings and split.

    SIGINT/SIGTERM during training save the state of the last completed epoch and raise TrainingInterrupted.
    """
    started = time.perf_counter()
    if resume is not None:
        if data is not None or set(settings) - set(ENGINE_SETTINGS) or config is not None:
            raise ConfigError("resume takes the run directory, whose config.json holds the settings, and only "
                              f"these engine settings: {', '.join(ENGINE_SETTINGS)}")
        config = dataclasses.replace(TrainConfig.from_json(Path(resume) / "config.json"), **settings)
    if config is None:
        try:
            config = TrainConfig(data=str(data), **settings)
        except TypeError as exc:  # an unknown keyword
            raise ConfigError(str(exc).replace("TrainConfig.__init__()", "train()")) from exc
    cfg = config.resolved()

    from headstart.backbones.registry import get_spec
    from headstart.data.background import DecodeJob
    from headstart.data.check import check_dataset
    from headstart.data.exclusions import load_exclusions
    from headstart.data.folders import DataError, discover

    # What to train on needs no torch: settle it first, and start decoding (in a helper process) before torch,
    # timm and Fabric are imported, on the core that the imports (one thread, ~3 s) leave idle.
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
    # A large set is checked and hashed now, then decoded again where it is used: chunk by chunk during
    # extraction (features), by the DataLoader's workers every epoch (finetune). Memory stays flat.
    keep_images = sum(map(len, dataset.splits.values())) <= KEEP_DECODED_IMAGES
    decoding = DecodeJob.start(dataset.splits, short_side=preprocessing.resize_size,
                               interpolation=preprocessing.interpolation, keep_images=keep_images, progress=progress)
    figures = None
    try:
        # The report's figure workers start now too, for the same reason (their matplotlib import, ~0.5 s), in
        # a features run on one process, where half a second counts. Fine-tuning (long enough not to notice)
        # and several processes (rank 0) start them with the report instead of holding them idle during the fit.
        if cfg.report and cfg.mode != "finetune" and cfg.devices * cfg.num_nodes == 1:
            from headstart.report.figures import FigureWorker

            figures = FigureWorker.start()
        return _fit_and_write(cfg, spec, preprocessing, dataset, excluded, warnings, decoding, figures,
                              resume=resume, progress=progress, on_epoch=on_epoch, started=started)
    finally:
        decoding.close()
        if figures is not None:
            figures.close()


def _fit_and_write(cfg: TrainConfig, spec, preprocessing, dataset, excluded: set, warnings: list, decoding,
                   figures, *, resume, progress: ProgressFn | None, on_epoch, started: float) -> RunResult:
    """train() once the data is settled and decoding: the network, the mode's fit, metrics, the run directory."""
    from headstart.startup import import_without_dynamo, paused_gc

    # torch's, Lightning's (make_fabric's) and timm's (build_network's) imports, torch._dynamo left for later:
    # in the `headstart` command, for good (startup.compile_free_process).
    import_without_dynamo("lightning_fabric", "timm", "torchvision")
    with paused_gc():
        import torch

        from headstart.backbones.model import build_network, count_parameters
        from headstart.device import resolve_accelerator, resolve_precision
        from headstart.evaluate import classification_metrics, fit_temperature
        from headstart.features import FeatureCache
        from headstart.training.checkpoint import InterruptGuard, load_resume, save_checkpoint, save_model, save_resume
        from headstart.training.distributed import any_rank, make_fabric
        from headstart.training.errors import TrainingInterrupted
        from headstart.training.modes import SATURATED_ACCURACY, RunContext, fit_features, fit_finetune

    if cfg.gradual_unfreeze and cfg.devices * cfg.num_nodes > 1:
        raise ConfigError("gradual_unfreeze changes which parameters train mid-run, which DDP cannot follow: "
                          "use one process, or --unfreeze N")
    world = cfg.devices * cfg.num_nodes
    if cfg.mode != "features" and cfg.batch_size % world:
        raise ConfigError(f"batch_size {cfg.batch_size} is the global batch: it must divide evenly over "
                          f"{world} processes")
    accelerator = resolve_accelerator(cfg.accelerator)
    if cfg.sync_bn and accelerator != "cuda":
        raise ConfigError("sync_bn synchronises BatchNorm across GPUs (torch's SyncBatchNorm needs CUDA): "
                          "leave it off on the CPU")
    precision = resolve_precision(cfg.precision, accelerator)
    with paused_gc():
        fabric = make_fabric(accelerator=accelerator, precision=precision, devices=cfg.devices,
                             num_nodes=cfg.num_nodes, strategy=cfg.strategy)
    if os.environ.get("LT_CLI_USED") != "1":  # `fabric run` has started every process already
        fabric.launch()  # with several local processes, this starts the others: each runs this same function
    rank0 = fabric.global_rank == 0
    if not rank0:  # one console voice: the other ranks only report errors
        logging.getLogger("headstart").setLevel(logging.ERROR)
    if resume is not None:
        run_dir = Path(resume)
        resume_state = load_resume(run_dir)
    else:
        resume_state = None
        # Rank 0 names and creates the folder (a default name counts up), the others take its choice.
        # The other ranks wait in this broadcast, so rank 0 sends its error too (an existing --out) for all to raise.
        try:
            choice = str(prepare_run_dir(cfg)) if rank0 else None
        except ConfigError as exc:
            choice = exc
        choice = fabric.broadcast(choice, src=0)
        if isinstance(choice, ConfigError):
            raise choice
        run_dir = Path(choice)
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
        guard.__enter__()
        if rank0:
            atomic_write_json(run_dir / "config.json", cfg.to_dict())  # on resume: the engine settings used now
            if resume is None:
                atomic_write_json(run_dir / "split.json", dataset.split_record(cfg.seed, cfg.val_fraction))
        torch.manual_seed(cfg.seed)
        with paused_gc():
            net = build_network(spec, len(dataset.classes), weights=cfg.weights, dropout=cfg.dropout)
        decoded = decoding.result()
        _refuse_leakage(decoded, cfg.data, run_dir if resume is None and rank0 else None)
        skipped = [f for d in decoded.values() for f in d.failures]
        if not decoded["train"].labels or not decoded["val"].labels:
            raise ConfigError("no readable images left in train or val after skipping unreadable files")

        ctx = RunContext(
            cfg=cfg, spec=spec, preprocessing=preprocessing, net=net, decoded=decoded,
            class_weights=_class_weights(decoded["train"].labels, len(dataset.classes), cfg.class_weights),
            fabric=fabric, accelerator=accelerator, precision=precision, model_id=_model_id(cfg, spec),
            cache=FeatureCache(), progress=progress if rank0 else None, on_epoch=on_epoch,
            save_checkpoint=(lambda state, row: save_checkpoint(run_dir, state, row)) if rank0 else None,
            save_resume=(lambda state: save_resume(run_dir, state)) if rank0 else None,
            resume_state=resume_state, should_stop=guard,
        )
        if cfg.mode == "finetune":
            result = fit_finetune(ctx, epochs=cfg.epochs)
        else:
            defaults = TrainConfig(data=cfg.data, mode="features").resolved()
            features_mode = cfg.mode == "features"
            result = fit_features(
                ctx,
                epochs=cfg.epochs if features_mode else defaults.epochs,
                lr=cfg.lr if features_mode else defaults.lr,
                augment=cfg.augment if features_mode else defaults.augment,
                views=cfg.views if features_mode else defaults.views,
            )
            best_val = max(row["val_accuracy"] for row in result.history)
            if cfg.mode == "auto" and best_val < SATURATED_ACCURACY:
                log.info("auto: val accuracy %.3f is not saturated; fine-tuning", best_val)
                features_history = result.history
                result = fit_finetune(ctx, epochs=cfg.epochs)
                result.history = [dict(r, phase="features") for r in features_history] + [
                    dict(r, phase="finetune", epoch=r["epoch"] + len(features_history)) for r in result.history
                ]

        temperature = fit_temperature(result.logits["val"].numpy(), result.labels["val"].numpy())
        metrics = {
            split: classification_metrics(result.logits[split].numpy(), result.labels[split].numpy(),
                                          dataset.classes, temperature=temperature, threshold=cfg.threshold)
            for split in result.logits
        }
        metrics.pop("train", None)
        seconds = time.perf_counter() - started
        failure: Exception | None = None
        if rank0:  # one writer: every rank holds the same model and metrics
            try:
                manifest = save_model(run_dir, net, {
                    "backbone": spec.name,
                    "weight_source": {"kind": "file", "path": str(cfg.weights)} if cfg.weights
                    else dataclasses.asdict(spec.weights),
                    "classes": dataset.classes,
                    "preprocessing": preprocessing.to_dict(),
                    "head": {"type": "dropout_linear", "in_features": spec.in_features,
                             "num_classes": len(dataset.classes), "dropout": cfg.dropout},
                    "temperature": temperature,
                    "threshold": cfg.threshold,
                    "mode": cfg.mode,
                    "parameters": count_parameters(net),
                    "metrics": {s: {"accuracy": m["accuracy"], "loss": m["loss"]} for s, m in metrics.items()},
                })
                atomic_write_json(run_dir / "metrics.json", metrics)
                _save_logits(run_dir, decoded, result.logits)
                atomic_write_text(run_dir / "history.csv", _history_csv(result.history))
                summary = {
                    "data": dataset.root, "classes": dataset.classes,
                    "counts": {split: {name: d.labels.count(i) for i, name in enumerate(dataset.classes)}
                               for split, d in decoded.items()},
                    "split_origin": dataset.split_origin, "notes": dataset.notes,
                    "warnings": [{"code": p.code, "message": p.message, "paths": p.paths} for p in warnings],
                    "excluded": sorted(excluded),
                    "skipped": [{"path": p, "reason": r} for p, r in skipped],
                    "backbone": spec.name, "mode": cfg.mode, "accelerator": accelerator, "precision": precision,
                    "torch": torch.__version__, "threads": torch.get_num_threads(), "world_size": fabric.world_size,
                    "strategy": type(fabric.strategy).__name__,
                    "extraction": result.extraction, "seconds": seconds,
                    "epochs_run": len(result.history), "weights_bytes": manifest["weights_bytes"],
                }
                atomic_write_json(run_dir / "summary.json", summary)
                if cfg.report:
                    _write_report(run_dir, cfg.data, figures)
                for leftover in ("checkpoint.safetensors", "resume.pt"):
                    (run_dir / leftover).unlink(missing_ok=True)
            except Exception as exc:  # re-raised below, after the other ranks have heard of it
                failure = exc
        # A collective in place of a barrier: the other ranks return once the run directory is complete,
        # or raise with rank 0 instead of waiting for it forever.
        if any_rank(fabric, failure is not None):
            raise failure or RuntimeError("rank 0 could not write the run directory: see its error")
        log.info("run written to %s in %.1fs", run_dir, seconds)
        return RunResult(run_dir, metrics, result.history, dataset.classes, skipped, seconds, cfg, rank0)
    except TrainingInterrupted as exc:
        if not (run_dir / "resume.pt").is_file():  # stopped before the first epoch ended: nothing to resume
            raise
        log.warning("%s; the last completed epoch is saved: resume with `headstart train --resume %s`", exc, run_dir)
        raise TrainingInterrupted(f"{exc}; resume with `headstart train --resume {run_dir}`") from None
    finally:
        guard.__exit__(None, None, None)
        package_logger.removeHandler(handler)
        package_logger.setLevel(old_level)
        handler.close()
