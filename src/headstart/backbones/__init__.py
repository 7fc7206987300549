"""Backbones: the registry of specs, their weights, and the network built from a spec."""

from headstart.backbones.registry import get_spec, list_specs, register
from headstart.backbones.spec import BackboneSpec, UnknownBackboneError, WeightSource

__all__ = ["BackboneSpec", "UnknownBackboneError", "WeightSource", "get_spec", "list_specs", "register"]
