"""torchvision backbones, with weights and preprocessing from torchvision's own Weights enums."""

from __future__ import annotations

from typing import TYPE_CHECKING

from headstart.backbones.spec import BackboneSpec, WeightSource, imagenet_classes
from headstart.backbones.weights import offline_error
from headstart.runtime.preprocess import Preprocessing

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
_IMAGENET_MEAN = (0.485, 0.456, 0.406)
_IMAGENET_STD = (0.229, 0.224, 0.225)

# name: (Weights enum member, head attribute, in_features, stages, is_vit, (crop, resize, interpolation)).
# The preprocessing is the one the Weights enum's transforms() give, written out because importing
# torchvision.models to read it costs ~2 s (torchvision.ops pulls in torch._dynamo) in every command that
# only resolves a backbone's name; tests/backbones/test_registry.py checks it against the enums.
_MODELS: dict[str, tuple[str, str, int, tuple[tuple[str, ...], ...], bool, tuple[int, int, str]]] = {
    "resnet18": ("ResNet18_Weights.IMAGENET1K_V1", "fc", 512, _RESNET_STAGES, False, (224, 256, "bilinear")),
    "resnet34": ("ResNet34_Weights.IMAGENET1K_V1", "fc", 512, _RESNET_STAGES, False, (224, 256, "bilinear")),
    "resnet50": ("ResNet50_Weights.IMAGENET1K_V2", "fc", 2048, _RESNET_STAGES, False, (224, 232, "bilinear")),
    "efficientnet_b0": ("EfficientNet_B0_Weights.IMAGENET1K_V1", "classifier.1", 1280, _numbered("features", 9),
                        False, (224, 256, "bicubic")),
    "efficientnet_b2": ("EfficientNet_B2_Weights.IMAGENET1K_V1", "classifier.1", 1408, _numbered("features", 9),
                        False, (288, 288, "bicubic")),
    "mobilenet_v2": ("MobileNet_V2_Weights.IMAGENET1K_V1", "classifier.1", 1280, _numbered("features", 19),
                     False, (224, 256, "bilinear")),
    "mobilenet_v3_small": (
        "MobileNet_V3_Small_Weights.IMAGENET1K_V1",
        "classifier.3",
        1024,
        _numbered("features", 13) + (("classifier.0",),),
        False,
        (224, 256, "bilinear"),
    ),
    "mobilenet_v3_large": (
        "MobileNet_V3_Large_Weights.IMAGENET1K_V1",
        "classifier.3",
        1280,
        _numbered("features", 17) + (("classifier.0",),),
        False,
        (224, 256, "bilinear"),
    ),
    "convnext_tiny": (
        "ConvNeXt_Tiny_Weights.IMAGENET1K_V1",
        "classifier.2",
        768,
        _numbered("features", 8) + (("classifier.0",),),
        False,
        (224, 236, "bilinear"),
    ),
    "vit_b_16": ("ViT_B_16_Weights.IMAGENET1K_V1", "heads.head", 768, _VIT_B_STAGES, True, (224, 256, "bilinear")),
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


SPECS: list[BackboneSpec] = []  # this family's backbones, registered by registry.py

for _name, (_weights, _head, _width, _stages, _vit, (_crop, _resize, _interpolation)) in _MODELS.items():
    SPECS.append(
        BackboneSpec(
            name=_name,
            family="torchvision",
            build=_builder(_name, _weights),
            head=_head,
            in_features=_width,
            stages=_stages,
            preprocessing=Preprocessing(crop_size=_crop, resize_size=_resize, mean=_IMAGENET_MEAN,
                                        std=_IMAGENET_STD, interpolation=_interpolation),
            weights=WeightSource(kind="torchvision", ref=_weights, description=f"torchvision {_weights}"),
            imagenet_classes=imagenet_classes,
            is_vit=_vit,
            description=f"torchvision {_name}",
        )
    )
