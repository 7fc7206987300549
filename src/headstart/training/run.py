"""`headstart.train()`: resolve the settings, settle the data, open the run's session, run the mode, write the run."""

from __future__ import annotations

import dataclasses
import logging
import os
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from headstart.artifact import atomic_write_json
from headstart.config import MACHINE_SETTINGS, ConfigError, TrainConfig, budget_seconds

__all__ = ["DataPlan", "RunResult", "plan_data", "resolve_config", "train"]

log = logging.getLogger(__name__)

ProgressFn = Callable[[str, int, int], None]

# Up to this many decoded images (~0.6 GB at 256 px) stay in memory; a larger set's stay in a file on disk that
# the decoding helper writes (or are decoded again where no helper can run): memory stays flat.
KEEP_DECODED_IMAGES = 2_000


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
    left_out: list[dict] = field(default_factory=list)  # leaked val/test copies left out (summary.json lists them)
    relabeled: list[dict] = field(default_factory=list)  # the --fixes relabels applied
    search: dict | None = None  # auto mode: what was tried (summary.json's "search")

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
    the files left out, the fixes applied and the doctor's warnings."""

    spec: object
    preprocessing: object
    dataset: object
    excluded: set
    warnings: list
    relabeled: list = field(default_factory=list)  # {"path", "split", "from", "to"} per --fixes relabel
    left_out: list = field(default_factory=list)  # leaked val/test copies left out, filled once decoded


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
    fixes = None
    if cfg.fixes:
        from headstart.audit.fixes import load_fixes

        fixes = load_fixes(cfg.fixes, cfg.data)  # a bad file is refused here, before anything runs
        excluded |= fixes.exclude
    doctor = check_dataset(cfg.data, fast=True, val_fraction=cfg.val_fraction, seed=cfg.seed, exclude=excluded)
    if doctor.fatal:
        raise DataError(" ".join(p.message for p in doctor.problems if p.severity == "fatal")
                        + f" Run `headstart check {cfg.data}` for the full report.")
    warnings = [p for p in doctor.problems if p.severity == "warning"]
    for problem in warnings:
        log.warning("%s", problem.message)
    dataset = discover(cfg.data, val_fraction=cfg.val_fraction, seed=cfg.seed, exclude=excluded,
                       split_file=Path(resume) / "split.json" if resume is not None else None)
    relabeled = []
    if fixes is not None:
        from headstart.audit.fixes import apply_relabels

        relabeled = apply_relabels(dataset, fixes)
        log.info("fixes from %s: %d relabelled, %d excluded", cfg.fixes, len(relabeled), len(fixes.exclude))
    return DataPlan(spec, preprocessing, dataset, excluded, warnings, relabeled)


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
    # imports leave idle.
    in_memory = sum(map(len, plan.dataset.splits.values())) <= KEEP_DECODED_IMAGES
    short_side = plan.preprocessing.resize_size
    if cfg.mode == "auto":  # decoded once, for the largest backbone the search may try
        from headstart.training.search.plan import search_backbones

        short_side = max(b.preprocessing.resize_size for b in search_backbones(cfg, plan.spec, plan.preprocessing))
    decoding = DecodeJob.start(plan.dataset.splits, short_side=short_side,
                               interpolation=plan.preprocessing.interpolation, in_memory=in_memory,
                               progress=progress, reduce_to=short_side if plan.preprocessing.reduce_to else None)
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
    torch.manual_seed(cfg.seed)
    net = build_network(plan.spec, len(plan.dataset.classes), weights=cfg.weights, dropout=cfg.dropout)
    decoded = decoding.result()
    plan.left_out = _leave_out_leakage(decoded, cfg, plan, run_dir if session.created and rank0 else None)
    if rank0 and resume is None:  # the split as trained: without the copies left out
        atomic_write_json(run_dir / "split.json", plan.dataset.split_record(cfg.seed, cfg.val_fraction))
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
        deadline=started + budget_seconds(cfg.budget) if cfg.mode == "auto" else None,
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
    return RunResult(run_dir, metrics, result.history, plan.dataset.classes, skipped, seconds, cfg, rank0,
                     plan.left_out, plan.relabeled, result.search)


def _class_weights(train_labels: list[int], num_classes: int, mode: str):
    """The doctor's rule (one definition, in data/check.py) as a tensor for the loss, or None."""
    import torch

    from headstart.data.check import class_weights

    counts = [train_labels.count(i) for i in range(num_classes)]
    weights = class_weights(counts, mode)
    return None if weights is None else torch.tensor(weights, dtype=torch.float32)


def _leaked(decoded: dict) -> list[tuple[str, str, str]]:
    """(split, path, copy_of) of every val/test image whose content an earlier split holds (the hashes come free
    with decoding)."""
    from headstart.data.dataset import SPLIT_ORDER

    seen: dict[str, str] = {}
    leaked = []
    for split in sorted(decoded, key=SPLIT_ORDER.index):
        d = decoded[split]
        for path, digest in zip(d.paths, d.hashes):
            if digest in seen and seen[digest].split(":", 1)[0] != split:
                leaked.append((split, path, seen[digest].split(":", 1)[1]))
            seen.setdefault(digest, f"{split}:{path}")
    return leaked


def _near_leaked(decoded: dict, cfg: TrainConfig, plan: DataPlan) -> list[tuple[str, str, str, float]]:
    """(split, path, copy_of, similarity) of near copies across splits, found as `check --deep` finds them; their
    features land in the cache the features mode reads next."""
    from headstart.audit.duplicates import near_duplicates
    from headstart.audit.features import embed_dataset
    from headstart.data.dataset import SPLIT_ORDER, Dataset

    splits = {s: list(zip(d.paths, d.labels)) for s, d in decoded.items()}
    dataset = Dataset(plan.dataset.root, plan.dataset.classes, splits, plan.dataset.split_origin)
    emb = embed_dataset(dataset, backbone=cfg.backbone, weights=cfg.weights, image_size=cfg.image_size,
                        precision=cfg.precision, accelerator=cfg.accelerator, engine=cfg.extract_engine)
    tiny = {p for w in plan.warnings if w.code == "too_small" for p in w.paths}
    out = []
    for d in near_duplicates(emb, tiny):
        if d.leakage:
            (kept, _), (copy, split) = sorted([(d.first, d.first_split), (d.second, d.second_split)],
                                              key=lambda x: SPLIT_ORDER.index(x[1]))
            out.append((split, copy, kept, d.similarity))
    return out


def _leave_out_leakage(decoded: dict, cfg: TrainConfig, plan: DataPlan, fresh_run_dir: Path | None) -> list[dict]:
    """Copies of training images in val/test inflate every score: leave them out of those splits (exact copies;
    near ones too with cfg.deep) and return what was left out. With cfg.strict, refuse instead, as `headstart
    check` does; a run directory created for this run is then removed (it holds nothing yet)."""
    from headstart.data.dataset import DataError, data_base
    from headstart.data.loading import DecodedSplit

    found = [{"path": p, "split": s, "copy_of": c, "kind": "exact"} for s, p, c in _leaked(decoded)]
    if cfg.deep:
        exact = {f["path"] for f in found}
        found += [{"path": p, "split": s, "copy_of": c, "kind": "near", "similarity": sim}
                  for s, p, c, sim in _near_leaked(decoded, cfg, plan) if p not in exact]
    if not found:
        return []
    if cfg.strict:
        if fresh_run_dir is not None:
            shutil.rmtree(fresh_run_dir, ignore_errors=True)
        first = found[0]
        raise DataError(f"{len(found)} image(s) appear in more than one split (e.g. {first['copy_of']} and "
                        f"{first['path']}): scores would be inflated. Without --strict, train leaves them out of "
                        f"val/test; or run `headstart check {cfg.data} --deep` and train with --fixes")
    gone = {f["path"] for f in found}
    for split, d in decoded.items():
        keep = [i for i, p in enumerate(d.paths) if p not in gone]
        if len(keep) < len(d.paths):
            decoded[split] = DecodedSplit([d.paths[i] for i in keep], [d.labels[i] for i in keep],
                                          None if d.images is None else [d.images[i] for i in keep],
                                          [d.hashes[i] for i in keep], d.failures, d.short_side, d.interpolation)
    for split, items in plan.dataset.splits.items():
        plan.dataset.splits[split] = [(p, y) for p, y in items if p not in gone]
    log.warning("left %d copies of other splits' images out of val/test (%d exact, %d near; listed in summary.json)"
                "; --strict refuses them instead", len(found), sum(f["kind"] == "exact" for f in found),
                sum(f["kind"] == "near" for f in found))
    base = data_base(plan.dataset.root)
    return [{**f, "path": os.path.relpath(f["path"], base), "copy_of": os.path.relpath(f["copy_of"], base)}
            for f in found]


def _model_id(cfg: TrainConfig, spec) -> str:
    from headstart.extract.feature_cache import model_id

    return model_id(spec.name, spec.weights.kind, spec.weights.ref, cfg.weights)
