"""torchvision backbones, with weights and preprocessing from torchvision's own Weights enums."""

from __future__ import annotations

from typing import TYPE_CHECKING

from headstart.backbones.registry import BackboneSpec, Preprocessing, WeightSource, register
from headstart.backbones.weights import offline_error

if TYPE_CHECKING:
    from torch import nn

__all__: list[str] = []


def _numbered(prefix: str, count: int) -> tuple[tuple[str, ...], ...]:
    return tuple((f"{prefix}.{i}",) for i in range(count))


_RESNET_STAGES = (("conv1", "bn1"), ("layer1",), ("layer2",), ("layer3",), ("layer4",))
_VIT_B_STAGES = (
    (("conv_proj", "class_token", "encoder.pos_embedding"),)
    + tuple((f"encoder.layers.encoder_layer_{i}",) for i in range(12))
    + (("encoder.ln",),)
)

# name: (Weights enum member, head attribute, in_features, stages, is_vit)
_MODELS: dict[str, tuple[str, str, int, tuple[tuple[str, ...], ...], bool]] = {
    "resnet18": ("ResNet18_Weights.IMAGENET1K_V1", "fc", 512, _RESNET_STAGES, False),
    "resnet34": ("ResNet34_Weights.IMAGENET1K_V1", "fc", 512, _RESNET_STAGES, False),
    "resnet50": ("ResNet50_Weights.IMAGENET1K_V2", "fc", 2048, _RESNET_STAGES, False),
    "efficientnet_b0": ("EfficientNet_B0_Weights.IMAGENET1K_V1", "classifier.1", 1280, _numbered("features", 9), False),
    "efficientnet_b2": ("EfficientNet_B2_Weights.IMAGENET1K_V1", "classifier.1", 1408, _numbered("features", 9), False),
    "mobilenet_v2": ("MobileNet_V2_Weights.IMAGENET1K_V1", "classifier.1", 1280, _numbered("features", 19), False),
    "mobilenet_v3_small": (
        "MobileNet_V3_Small_Weights.IMAGENET1K_V1",
        "classifier.3",
        1024,
        _numbered("features", 13) + (("classifier.0",),),
        False,
    ),
    "mobilenet_v3_large": (
        "MobileNet_V3_Large_Weights.IMAGENET1K_V1",
        "classifier.3",
        1280,
        _numbered("features", 17) + (("classifier.0",),),
        False,
    ),
    "convnext_tiny": (
        "ConvNeXt_Tiny_Weights.IMAGENET1K_V1",
        "classifier.2",
        768,
        _numbered("features", 8) + (("classifier.0",),),
        False,
    ),
    "vit_b_16": ("ViT_B_16_Weights.IMAGENET1K_V1", "heads.head", 768, _VIT_B_STAGES, True),
}


def _builder(name: str, weights_name: str):
    def build(pretrained: bool) -> nn.Module:
        import torchvision.models as tvm

        model = getattr(tvm, name)(weights=None)
        if pretrained:
            weights = tvm.get_weight(weights_name)
            try:
                state = weights.get_state_dict(progress=True, check_hash=True)
            except Exception as exc:  # URLError, HTTPError, RuntimeError from the hub: all mean "not reachable"
                raise offline_error(name, f"torchvision {weights_name}", exc) from exc
            model.load_state_dict(state, strict=True)
        return model

    return build


def _preprocessing(weights_name: str) -> tuple[Preprocessing, list[str]]:
    import torchvision.models as tvm

    weights = tvm.get_weight(weights_name)
    tf = weights.transforms()
    preprocessing = Preprocessing(
        crop_size=int(tf.crop_size[0]),
        resize_size=int(tf.resize_size[0]),
        mean=tuple(tf.mean),
        std=tuple(tf.std),
        interpolation=tf.interpolation.value,
    )
    return preprocessing, list(weights.meta["categories"])


for _name, (_weights, _head, _width, _stages, _vit) in _MODELS.items():
    _pre, _categories = _preprocessing(_weights)
    register(
        BackboneSpec(
            name=_name,
            family="torchvision",
            build=_builder(_name, _weights),
            head=_head,
            in_features=_width,
            stages=_stages,
            preprocessing=_pre,
            weights=WeightSource(kind="torchvision", ref=_weights, description=f"torchvision {_weights}"),
            imagenet_classes=lambda categories=_categories: categories,
            is_vit=_vit,
            description=f"torchvision {_name}",
        )
    )
