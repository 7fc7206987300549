"""What a backbone is and what its pretrained weights already know: `headstart backbones` and `inspect`."""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path

from headstart.backbones.registry import get_spec, list_specs
from headstart.backbones.spec import BackboneSpec, in_stage

__all__ = ["describe_backbones", "inspect_backbone", "weights_available_offline"]


def weights_available_offline(spec: BackboneSpec) -> bool:
    """True when building with pretrained weights needs no network: a package, or a filled hub cache."""
    if spec.weights.kind == "package":
        return importlib.util.find_spec(spec.weights.ref) is not None
    if spec.weights.kind == "torchvision":
        import torch.hub
        import torchvision.models as tvm

        url = tvm.get_weight(spec.weights.ref).url
        return os.path.isfile(Path(torch.hub.get_dir()) / "checkpoints" / os.path.basename(url))
    return False


def describe_backbones() -> list[dict]:
    return [
        {"name": s.name, "family": s.family, "in_features": s.in_features, "input": s.preprocessing.crop_size,
         "weights": s.weights.description, "offline": weights_available_offline(s)}
        for s in list_specs()
    ]


def inspect_backbone(name: str, *, weights: str | None = None, images: list[str] = (), top_k: int = 5,
                     pretrained: bool = True) -> dict:
    """Head, width, stages, parameter counts, preprocessing, and the ImageNet top-k for each image."""
    import torch

    from headstart.backbones.model import build_imagenet_model
    from headstart.data.transforms import eval_transform
    from headstart.runtime.images import ImageLoadError, open_image

    spec = get_spec(name)
    model = build_imagenet_model(spec, weights=weights, pretrained=pretrained).eval()
    named = dict(model.named_parameters())
    stages = []
    for prefixes in spec.stages:
        count = sum(p.numel() for n, p in named.items() if in_stage(n, prefixes))
        stages.append({"modules": list(prefixes), "parameters": count})
    total = sum(p.numel() for p in named.values())
    result = {
        "name": spec.name, "family": spec.family, "head": spec.head, "in_features": spec.in_features,
        "stages": stages, "parameters": {"total": total, "trainable": sum(
            p.numel() for p in named.values() if p.requires_grad)},
        "preprocessing": spec.preprocessing.to_dict(),
        "weights": str(weights) if weights else spec.weights.description, "predictions": [],
    }
    categories = spec.imagenet_classes()
    transform = eval_transform(spec.preprocessing)
    for path in images:
        try:
            x = transform(open_image(path)).unsqueeze(0)
        except ImageLoadError as exc:
            result["predictions"].append({"path": str(path), "error": exc.reason})
            continue
        with torch.inference_mode():
            probs = model(x).softmax(-1)[0]
        values, indices = probs.topk(min(top_k, probs.numel()))
        result["predictions"].append({"path": str(path), "top_k": [
            [categories[i] if i < len(categories) else str(i), float(v)] for v, i in zip(values.tolist(),
                                                                                        indices.tolist())]})
    return result
