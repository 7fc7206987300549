"""The backbone registry: one spec per backbone, found by name. Adding a backbone is adding one BackboneSpec to
a family module's SPECS (a new family: a module named in _FAMILIES); `register()` adds one at run time."""

from __future__ import annotations

from headstart.backbones import efficientnet_lite, torchvision_models
from headstart.backbones.spec import BackboneSpec, UnknownBackboneError

__all__ = ["get_spec", "list_specs", "register"]

# The family modules import no torch, torchvision or timm themselves (builders do, when called): resolving a
# name stays cheap.
_FAMILIES = (efficientnet_lite, torchvision_models)
_REGISTRY: dict[str, BackboneSpec] = {}
def register(spec: BackboneSpec) -> BackboneSpec:
    if spec.name in _REGISTRY:
        raise ValueError(f"backbone {spec.name!r} is already registered")
    _REGISTRY[spec.name] = spec
    return spec


for _family in _FAMILIES:
    for _spec in _family.SPECS:
        register(_spec)


def list_specs() -> list[BackboneSpec]:
    return list(_REGISTRY.values())


def get_spec(name: str) -> BackboneSpec:
    """The spec for `name`; `timm:NAME` builds a spec for any timm model on the fly."""
    if name in _REGISTRY:
        return _REGISTRY[name]
    if name.startswith("timm:"):
        from headstart.backbones.timm_models import timm_spec

        return timm_spec(name.removeprefix("timm:"))
    known = ", ".join(sorted(_REGISTRY))
    raise UnknownBackboneError(f"unknown backbone {name!r}; known: {known}, or timm:NAME for any timm model")
