"""A run's settings: one dataclass, validated once, saved as config.json beside the model."""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

__all__ = ["AUTO_BUDGET", "MACHINE_SETTINGS", "ConfigError", "TrainConfig", "budget_seconds"]

MODES = ("features", "finetune", "auto")
OPTIMIZERS = ("sgd", "adam", "adamw")
SCHEDULES = ("none", "step", "cosine", "onecycle")
AUGMENTS = ("none", "light", "standard")
TRI_STATE = ("auto", "on", "off")
PRECISIONS = ("auto", "32", "bf16-mixed", "16-mixed")
ACCELERATORS = ("auto", "cpu", "cuda")
STRATEGIES = ("auto", "ddp", "fsdp")
# Settings of the machine, not of the model: a resumed run may change them (another world size, a GPU).
MACHINE_SETTINGS = ("accelerator", "devices", "num_nodes", "strategy", "num_workers", "extract_engine")
AUTO_BUDGET = "10m"  # auto mode's search budget when none is given
# headstart.extract.engines.ENGINES (what runs the frozen forward pass), without importing torch
EXTRACT_ENGINES = ("auto", "torch", "openvino", "onnxruntime")


class ConfigError(ValueError):
    """A setting is unknown, out of range, or contradicts another one. The message is one line."""


_UNITS = {"s": 1, "m": 60, "h": 3600}


def budget_seconds(budget: str | float) -> float:
    """"90s", "10m", "1.5h" or a plain number of seconds, as seconds."""
    text = str(budget).strip().lower()
    unit = _UNITS.get(text[-1:])
    try:
        seconds = float(text[:-1] if unit else text) * (unit or 1)
    except ValueError:
        seconds = -1.0
    if not seconds > 0:
        raise ConfigError(f"budget must be a positive time such as 90s, 10m or 1h (got {budget!r})")
    return seconds


def _one_of(name: str, value: str, allowed: tuple[str, ...]) -> None:
    if value not in allowed:
        raise ConfigError(f"{name} must be one of {', '.join(allowed)} (got {value!r})")


@dataclass
class TrainConfig:
    """Every setting of `headstart train`. None means "the mode's default", resolved by `resolved()`."""

    data: str
    backbone: str = "efficientnet_lite0"
    weights: str | None = None
    mode: str = "features"
    epochs: int | None = None
    batch_size: int = 32
    optimizer: str = "adamw"
    lr: float | None = None
    weight_decay: float = 1e-4
    momentum: float = 0.9
    schedule: str = "cosine"
    warmup_epochs: int = 0
    step_size: int = 7
    gamma: float = 0.1
    label_smoothing: float = 0.1
    class_weights: str = "auto"
    early_stop: int = 0
    augment: str | None = None
    views: int | None = None
    unfreeze: str = "last"
    stage_lr_mult: float = 0.5
    gradual_unfreeze: int = 0
    freeze_bn: str = "auto"
    dropout: float = 0.2
    val_fraction: float = 0.2
    exclude: str | None = None
    fixes: str | None = None  # a fixes.json from `headstart check --deep` (relabel / exclude), applied, never written
    strict: bool = False  # refuse leaked copies instead of leaving them out of val/test
    deep: bool = False  # leave near copies (not only exact ones) out of val/test, found as `check --deep` finds them
    image_size: int | None = None
    seed: int = 42
    precision: str = "auto"
    accelerator: str = "auto"
    devices: int = 1
    num_nodes: int = 1
    strategy: str = "auto"
    accumulate: int = 1
    sync_bn: bool = False
    extract_engine: str = "auto"
    # features and auto modes: the frozen backbone quantized to int8 for extraction (OpenVINO + NNCF), head
    # training stays fp32; measured within 0.5 point of fp32's linear probe on every dev set on a CPU with VNNI,
    # so honoured only on such CPUs (device.features_precision; docs/benchmarks.md)
    int8_features: bool = False
    num_workers: int | None = None
    threshold: float = 0.5
    budget: str | None = None  # auto mode: the search's time limit ("10m", "90s", "1h"); default AUTO_BUDGET
    out: str | None = None
    overwrite: bool = False
    report: bool = True

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:
        _one_of("mode", self.mode, MODES)
        _one_of("optimizer", self.optimizer, OPTIMIZERS)
        _one_of("schedule", self.schedule, SCHEDULES)
        _one_of("freeze_bn", self.freeze_bn, TRI_STATE)
        _one_of("class_weights", self.class_weights, ("auto", "none"))
        _one_of("precision", self.precision, PRECISIONS)
        _one_of("accelerator", self.accelerator, ACCELERATORS)
        _one_of("extract_engine", self.extract_engine, EXTRACT_ENGINES)
        _one_of("strategy", self.strategy, STRATEGIES)
        if self.augment is not None:
            _one_of("augment", self.augment, AUGMENTS)
        if self.unfreeze not in ("last", "all") and not (self.unfreeze.isdigit() and int(self.unfreeze) > 0):
            raise ConfigError(f"unfreeze must be last, all or a positive number of stages (got {self.unfreeze!r})")
        positive = {"batch_size": self.batch_size, "devices": self.devices, "num_nodes": self.num_nodes,
                    "accumulate": self.accumulate}
        if self.epochs is not None:
            positive["epochs"] = self.epochs
        if self.views is not None and self.mode == "features":
            positive["views"] = self.views
        if self.views is not None and self.views < 0:
            raise ConfigError(f"views must be >= 0 (got {self.views})")
        if self.image_size is not None:
            positive["image_size"] = self.image_size
        for name, value in positive.items():
            if value < 1:
                raise ConfigError(f"{name} must be at least 1 (got {value})")
        if self.lr is not None and not self.lr > 0:
            raise ConfigError(f"lr must be positive (got {self.lr})")
        for name in ("warmup_epochs", "early_stop", "gradual_unfreeze", "step_size"):
            if getattr(self, name) < 0:
                raise ConfigError(f"{name} must be >= 0 (got {getattr(self, name)})")
        for name in ("label_smoothing", "dropout"):
            if not 0 <= getattr(self, name) < 1:
                raise ConfigError(f"{name} must be in [0, 1) (got {getattr(self, name)})")
        if not 0 < self.val_fraction < 1:
            raise ConfigError(f"val_fraction must be in (0, 1) (got {self.val_fraction})")
        if not 0 <= self.threshold <= 1:
            raise ConfigError(f"threshold must be in [0, 1] (got {self.threshold})")
        if not 0 < self.stage_lr_mult <= 1:
            raise ConfigError(f"stage_lr_mult must be in (0, 1] (got {self.stage_lr_mult})")
        if self.int8_features and self.mode == "finetune":
            raise ConfigError("int8_features quantizes the frozen backbone for feature extraction: --mode features "
                              "or auto, not finetune (whose trained layers stay fp32)")
        if self.mode == "features" and self.gradual_unfreeze:
            raise ConfigError("gradual_unfreeze needs --mode finetune or auto: features mode keeps the backbone frozen")
        if self.mode != "features" and self.unfreeze == "all" and self.views:
            raise ConfigError("views (cached augmented copies) needs a frozen part: not with --unfreeze all")
        if self.strategy == "fsdp":
            # Its sharded weights must be gathered before checkpoints and the model are saved, which is not
            # built: refused rather than saving partial tensors.
            raise ConfigError("strategy fsdp is not supported yet (the backbones here fit one GPU): use ddp")
        if self.mode == "features" and (self.accumulate > 1 or self.sync_bn):
            raise ConfigError("accumulate and sync_bn apply to fine-tuning: features mode trains only the head")
        if self.mode == "auto" and self.devices * self.num_nodes > 1:
            raise ConfigError("auto mode's search runs in one process: train the recipe it picks with --devices")
        if self.budget is not None:
            if self.mode != "auto":
                raise ConfigError("budget is auto mode's time limit: use it with --mode auto")
            budget_seconds(self.budget)  # a malformed budget is refused here
        if self.epochs is not None and self.warmup_epochs >= self.epochs:
            raise ConfigError(f"warmup_epochs ({self.warmup_epochs}) must be fewer than epochs ({self.epochs})")

    def resolved(self) -> TrainConfig:
        """A copy with every mode-dependent default filled in: what the run really used."""
        features = self.mode == "features"
        return dataclasses.replace(
            self,
            epochs=self.epochs if self.epochs is not None else (30 if features else 8),
            lr=self.lr if self.lr is not None else (3e-3 if features else 1e-3),
            augment=self.augment if self.augment is not None else ("none" if features else "light"),
            views=self.views if self.views is not None else (1 if features else 0 if self.unfreeze == "all" else 4),
            budget=self.budget if self.budget is not None or self.mode != "auto" else AUTO_BUDGET,
        )

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TrainConfig:
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ConfigError(f"unknown setting(s): {', '.join(unknown)}")
        return cls(**data)

    @classmethod
    def from_json(cls, path: str | Path) -> TrainConfig:
        return cls.from_dict(json.loads(Path(path).read_text()))
