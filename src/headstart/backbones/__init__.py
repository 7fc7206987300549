"""Backbones: the registry of specs, their weights, and the network built from a spec."""

from headstart.backbones.registry import (
    BackboneSpec,
    Preprocessing,
    UnknownBackboneError,
    WeightSource,
    get_spec,
    list_specs,
    register,
)

__all__ = [
    "BackboneSpec",
    "Preprocessing",
    "UnknownBackboneError",
    "WeightSource",
    "get_spec",
    "list_specs",
    "register",
]
