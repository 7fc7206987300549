"""Writing a finished run: model.safetensors + model.json, metrics, logits, history, summary and the report."""

from __future__ import annotations

import csv
import dataclasses
import io
import logging
from pathlib import Path

from headstart.artifact import atomic_write_bytes, atomic_write_json, atomic_write_text
from headstart.config import TrainConfig

__all__ = ["write_run"]

log = logging.getLogger(__name__)


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
        from headstart.inference.classifier import load
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


def _manifest(cfg: TrainConfig, spec, preprocessing, classes: list[str], net, temperature: float,
              metrics: dict) -> dict:
    from headstart.backbones.model import count_parameters

    taps = getattr(net.backbone, "taps", ())  # a Tapped backbone's inner stages (auto mode)

    return {
        "backbone": spec.name,
        "weight_source": {"kind": "file", "path": str(cfg.weights)} if cfg.weights
        else dataclasses.asdict(spec.weights),
        "classes": classes,
        "preprocessing": preprocessing.to_dict(),
        "head": {"type": "dropout_linear", "in_features": net.head[-1].in_features, "num_classes": len(classes),
                 "dropout": cfg.dropout, **({"taps": list(taps)} if taps else {})},
        "temperature": temperature,
        "threshold": cfg.threshold,
        "mode": cfg.mode,
        "parameters": count_parameters(net),
        "metrics": {s: {"accuracy": m["accuracy"], "loss": m["loss"]} for s, m in metrics.items()},
    }


def write_run(session, ctx, plan, result, *, temperature: float, metrics: dict, skipped: list, seconds: float,
              figures) -> None:
    """Every file of the run directory, the weights first. Called on rank 0 only."""
    import torch

    from headstart.training.checkpoint import save_model

    cfg, run_dir, decoded, classes = ctx.cfg, session.run_dir, ctx.decoded, plan.dataset.classes
    manifest = save_model(run_dir, ctx.net, _manifest(cfg, ctx.spec, ctx.preprocessing, classes, ctx.net,
                                                      temperature, metrics))
    atomic_write_json(run_dir / "metrics.json", metrics)
    _save_logits(run_dir, decoded, result.logits)
    atomic_write_text(run_dir / "history.csv", _history_csv(result.history))
    summary = {
        "data": plan.dataset.root, "classes": classes,
        "counts": {split: {name: d.labels.count(i) for i, name in enumerate(classes)} for split, d in decoded.items()},
        "split_origin": plan.dataset.split_origin, "notes": plan.dataset.notes,
        "warnings": [{"code": p.code, "message": p.message, "paths": p.paths} for p in plan.warnings],
        "excluded": sorted(plan.excluded),
        "fixes": {"file": cfg.fixes, "relabeled": plan.relabeled} if cfg.fixes else None,
        "leakage_left_out": plan.left_out,
        "skipped": [{"path": p, "reason": r} for p, r in skipped],
        "backbone": ctx.spec.name, "mode": cfg.mode, "accelerator": session.accelerator,
        "precision": session.precision, "torch": torch.__version__, "threads": torch.get_num_threads(),
        "world_size": session.world, "strategy": type(session.fabric.strategy).__name__,
        "extraction": result.extraction, "seconds": seconds,
        "epochs_run": len(result.history), "weights_bytes": manifest["weights_bytes"],
    }
    if result.search is not None:
        summary["search"] = result.search
    atomic_write_json(run_dir / "summary.json", summary)
    if cfg.report:
        _write_report(run_dir, cfg.data, figures)
    for leftover in ("checkpoint.safetensors", "resume.pt"):
        (run_dir / leftover).unlink(missing_ok=True)
