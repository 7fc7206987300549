"""Turn a spec into headstart's network: the pretrained body with its head replaced, plus a new head."""

from __future__ import annotations

import logging

import torch
from torch import nn

from headstart.backbones.spec import BackboneSpec, in_stage
from headstart.backbones.weights import WeightsError, load_state_dict_file, load_strict

__all__ = [
    "Float32Linear",
    "HeadstartNet",
    "Tapped",
    "build_imagenet_model",
    "build_network",
    "count_parameters",
    "freeze_backbone",
    "stage_parameters",
    "tap_names",
    "unfreeze_last_stages",
]

log = logging.getLogger(__name__)


class Float32Linear(nn.Linear):
    """A Linear layer that computes in fp32 under autocast. A classifier head gains no speed from bf16, and
    rounding its inputs and logits to bf16 cost features mode accuracy (docs/benchmarks.md, "The head in fp32
    under bf16 autocast")."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not torch.is_autocast_enabled(x.device.type):  # exports and fp32 runs see a plain Linear
            return super().forward(x)
        with torch.autocast(x.device.type, enabled=False):
            return super().forward(x.float())


class HeadstartNet(nn.Module):
    """backbone (pooled features, shape [N, in_features]) -> head (Dropout + Linear to the classes)."""

    def __init__(self, backbone: nn.Module, in_features: int, num_classes: int, dropout: float = 0.2):
        super().__init__()
        self.backbone = backbone
        self.head = nn.Sequential(nn.Dropout(dropout), Float32Linear(in_features, num_classes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.backbone(x))


class Tapped(nn.Module):
    """A backbone whose pooled features are joined by the globally average-pooled outputs of some inner stages.

    Far from ImageNet (digits, scans), mid-level features keep what the last stage has specialised away; auto
    mode keeps this network only when cross-validation prefers it. Forward hooks, registered once, collect the
    stage outputs, so the body runs unchanged (and traces into ONNX as it is).
    """

    def __init__(self, body: nn.Module, taps: tuple[str, ...]):
        super().__init__()
        self.body, self.taps = body, tuple(taps)
        self._pooled: list[torch.Tensor] = []
        for name in self.taps:
            body.get_submodule(name).register_forward_hook(self._collect)

    def _collect(self, _module, _inputs, output: torch.Tensor) -> None:
        self._pooled.append(output.mean((2, 3)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self._pooled = []
        final = self.body(x)
        pooled, self._pooled = self._pooled, []
        return torch.cat([*pooled, final], 1)


def tap_names(spec: BackboneSpec) -> tuple[str, ...]:
    """The modules Tapped pools for a backbone: the three stages below its last one (none for a ViT, whose
    tokens are not maps)."""
    if spec.is_vit or len(spec.stages) < 5:
        return ()
    return tuple(stage[-1] for stage in spec.stages[-4:-1])


def build_imagenet_model(spec: BackboneSpec, weights: str | None = None, pretrained: bool = True) -> nn.Module:
    """The backbone as published, with its ImageNet head: from a local file, the weight source, or random."""
    model = spec.build(pretrained and weights is None)
    if weights is not None:
        load_strict(model, load_state_dict_file(weights), source=str(weights))
    return model


def build_network(spec: BackboneSpec, num_classes: int, *, weights: str | None = None, pretrained: bool = True,
                  dropout: float = 0.2, taps: tuple[str, ...] = ()) -> HeadstartNet:
    """taps: inner modules whose pooled outputs join the features (Tapped); () for the plain backbone."""
    body = build_imagenet_model(spec, weights=weights, pretrained=pretrained)
    old_head = body.get_submodule(spec.head)
    if not isinstance(old_head, nn.Linear) or old_head.in_features != spec.in_features:
        raise WeightsError(
            f"backbone {spec.name!r}: expected a Linear({spec.in_features}, ...) at {spec.head!r}, found {old_head}"
        )
    body.set_submodule(spec.head, nn.Identity())
    if not taps:
        return HeadstartNet(body, spec.in_features, num_classes, dropout)
    tapped = Tapped(body, taps)
    size = spec.preprocessing.crop_size
    with torch.no_grad():  # the joined width, from one small forward pass in eval mode
        was_training = body.training
        width = tapped.eval()(torch.zeros(1, 3, size, size)).shape[1]
        body.train(was_training)
    return HeadstartNet(tapped, width, num_classes, dropout)


def stage_parameters(net: HeadstartNet, spec: BackboneSpec) -> list[list[nn.Parameter]]:
    """The backbone's parameters grouped by the spec's stages, input side first."""
    named = list(net.backbone.named_parameters())
    return [[p for n, p in named if in_stage(n, prefixes)] for prefixes in spec.stages]


def freeze_backbone(net: HeadstartNet) -> None:
    for p in net.backbone.parameters():
        p.requires_grad_(False)


def unfreeze_last_stages(net: HeadstartNet, spec: BackboneSpec, count: int) -> list[list[nn.Parameter]]:
    """Freeze the backbone, then unfreeze its last `count` stages; returns those stages, last first."""
    freeze_backbone(net)
    stages = stage_parameters(net, spec)
    chosen = stages[::-1][:count]
    for params in chosen:
        for p in params:
            p.requires_grad_(True)
    return chosen


def count_parameters(module: nn.Module) -> dict[str, int]:
    params = list(module.parameters())
    return {"total": sum(p.numel() for p in params), "trainable": sum(p.numel() for p in params if p.requires_grad)}
