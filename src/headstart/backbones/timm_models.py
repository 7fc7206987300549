"""Any timm model by name (`timm:NAME`): head, width, stages and preprocessing come from timm itself."""

from __future__ import annotations

import functools
import re

from headstart.backbones.spec import BackboneSpec, WeightSource, imagenet_classes
from headstart.backbones.weights import offline_error
from headstart.runtime.preprocess import Preprocessing

__all__ = ["timm_spec"]


def _stages_from_group_matcher(model) -> tuple[tuple[str, ...], ...]:
    """Ordered parameter groups from timm's own group_matcher (the one its layer-wise lr decay uses)."""
    from timm.models import group_parameters

    head = model.pretrained_cfg.get("classifier", "head")
    groups = group_parameters(model, model.group_matcher(coarse=False), reverse=False)
    stages = []
    for names in groups.values():
        prefixes = tuple(sorted({n.rsplit(".", 1)[0] if "." in n else n for n in names}))
        prefixes = tuple(p for p in prefixes if not re.match(rf"^{re.escape(head)}(\.|$)", p))
        if prefixes:
            stages.append(prefixes)
    return tuple(stages)


@functools.cache
def timm_spec(model_name: str) -> BackboneSpec:
    import timm
    from timm.data import resolve_data_config

    try:
        probe = timm.create_model(model_name, pretrained=False)
    except RuntimeError as exc:  # timm: "Unknown model (...)"
        raise KeyError(f"timm has no model {model_name!r}: {exc}") from exc
    cfg = probe.pretrained_cfg
    data = resolve_data_config({}, model=probe)
    crop = int(data["input_size"][-1])
    head = cfg.get("classifier", "head")
    if isinstance(head, (list, tuple)):  # distilled models have two heads; the first is the class head
        head = head[0]

    def build(pretrained: bool):
        try:
            return timm.create_model(model_name, pretrained=pretrained)
        except Exception as exc:  # the HF hub raises many types when offline
            if not pretrained:
                raise
            raise offline_error(f"timm:{model_name}", f"hub {cfg.get('hf_hub_id', model_name)}", exc) from exc

    return BackboneSpec(
        name=f"timm:{model_name}",
        family="timm",
        build=build,
        head=head,
        in_features=int(probe.num_features if not hasattr(probe, "head_hidden_size") else probe.head_hidden_size),
        stages=_stages_from_group_matcher(probe),
        preprocessing=Preprocessing(
            crop_size=crop,
            resize_size=int(crop / data.get("crop_pct", 0.875)),
            mean=tuple(float(v) for v in data["mean"]),
            std=tuple(float(v) for v in data["std"]),
            interpolation=data.get("interpolation", "bicubic"),
        ),
        weights=WeightSource(kind="timm", ref=model_name, description=f"timm {cfg.get('hf_hub_id', model_name)}"),
        imagenet_classes=imagenet_classes if probe.num_classes == 1000 else lambda: [],  # else not ImageNet-1k
        is_vit="vit" in model_name or "deit" in model_name,
        description=f"timm {model_name}",
    )
