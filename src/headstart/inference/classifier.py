"""`headstart.load(run_dir)` and the torch engine of the Classifier interface. Imports nothing from training."""

from __future__ import annotations

import logging
import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from headstart.artifact import read_manifest, verify_weights
from headstart.runtime.classifier import Classifier
from headstart.runtime.results import UNSURE

__all__ = ["ENGINES", "UNSURE", "Classifier", "TorchClassifier", "expand_paths", "load"]

# The engines `load` (and `headstart predict/serve --engine`) can run: torch, and the torch-free exports.
ENGINES = ("torch", "onnx", "onnx-int8", "openvino", "openvino-int8")

log = logging.getLogger(__name__)


def expand_paths(paths: Iterable[str | os.PathLike]) -> list[str]:
    """Files as given; directories expanded recursively to their image files, sorted."""
    from headstart.data.folders import list_images

    out = []
    for p in paths:
        p = Path(p)
        out.extend(str(f) for f in list_images(p)) if p.is_dir() else out.append(str(p))
    return out


@dataclass
class TorchClassifier(Classifier):
    """The Classifier on the trained torch network (the [train] extra's torch)."""

    net: Any
    manifest: dict
    device: str = "cpu"
    precision: str = "32-true"

    def _views(self, tta: str):
        """One transform per test-time view; their logits are averaged."""
        from headstart.data.transforms import eval_transform, five_crop_transforms
        from headstart.runtime.preprocess import Preprocessing

        pre = Preprocessing.from_dict(self.manifest["preprocessing"])
        if tta == "none":
            return [eval_transform(pre)]
        if tta == "flip":
            import torchvision.transforms.v2.functional as F

            base = eval_transform(pre)
            return [base, lambda img: F.horizontal_flip(base(img))]
        if tta == "five-crop":
            return five_crop_transforms(pre)
        raise ValueError(f"unknown test-time augmentation {tta!r}; choose none, flip or five-crop")

    def logits(self, images: Sequence[Image.Image], batch_size: int = 32, *, tta: str = "none") -> np.ndarray:
        """Logits [N, classes] for decoded RGB images (averaged over the TTA views), before temperature."""
        import torch

        from headstart.device import autocast

        views = self._views(tta)
        out = []
        channels_last = not self.manifest.get("is_vit", False)
        with torch.inference_mode():
            for start in range(0, len(images), batch_size):
                chunk = images[start:start + batch_size]
                total = None
                for view in views:
                    batch = torch.stack([view(img) for img in chunk]).to(self.device)
                    if channels_last:
                        batch = batch.contiguous(memory_format=torch.channels_last)
                    with autocast(self.device, self.precision):
                        logits = self.net(batch).float()
                    total = logits if total is None else total + logits
                out.append((total / len(views)).cpu().numpy())
        return np.concatenate(out) if out else np.zeros((0, len(self.classes)), dtype=np.float32)


def load(run_dir: str | os.PathLike, *, engine: str = "torch", device: str = "cpu",
         precision: str = "32-true") -> Classifier:
    """Rebuild a trained classifier from its run directory alone.

    engine="torch": model.json + model.safetensors (needs the [train] extra's torch).
    engine="onnx" / "onnx-int8": RUN/model.onnx / RUN/model.int8.onnx from `headstart export`, on ONNX Runtime;
    engine="openvino" / "openvino-int8": RUN/openvino/ / RUN/openvino-int8/, on OpenVINO. These import no torch.
    """
    if engine in ("onnx", "onnx-int8"):
        from headstart.artifact import ArtifactError
        from headstart.runtime import load_onnx

        path = Path(run_dir)
        if engine == "onnx-int8" and path.is_dir():
            path = path / "model.int8.onnx"
            if not path.is_file():
                raise ArtifactError(f"{path}: not found; create it with `headstart export {run_dir} --format "
                                    f"onnx-int8`")
        return load_onnx(path, providers=["CUDAExecutionProvider", "CPUExecutionProvider"]
                         if device.startswith("cuda") else None)
    if engine in ("openvino", "openvino-int8"):
        from headstart.runtime.openvino_engine import load_openvino

        return load_openvino(run_dir, engine=engine)
    if engine != "torch":
        from headstart.config import ConfigError

        raise ConfigError(f"unknown engine {engine!r}; choose one of {', '.join(ENGINES)}")
    manifest = read_manifest(run_dir)
    weights = verify_weights(run_dir, manifest)

    from safetensors.torch import load_file

    from headstart.backbones.model import build_network
    from headstart.backbones.registry import get_spec

    spec = get_spec(manifest["backbone"])
    head = manifest["head"]
    net = build_network(spec, head["num_classes"], pretrained=False, dropout=head["dropout"],
                        taps=tuple(head.get("taps", ())))
    net.load_state_dict(load_file(str(weights)), strict=True)
    net.eval().to(device)
    if not spec.is_vit:
        import torch

        net.to(memory_format=torch.channels_last)
    manifest = dict(manifest, is_vit=spec.is_vit)
    return TorchClassifier(net=net, manifest=manifest, device=device, precision=precision)
