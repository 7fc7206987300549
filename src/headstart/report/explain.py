"""Grad-CAM explanations (the `grad-cam` package), overlays, and the images a classifier gets most wrong.

Grad-CAM needs a spatial layer near the output. For CNNs that is the module producing the final feature
map (found by one probing forward pass); for ViTs it is the first LayerNorm of the last transformer block
(the final norm only feeds the class token, so its patch tokens get no gradient), with the patch tokens
reshaped into a grid. Both are found from the network itself, so `timm:NAME` backbones work too.
"""

from __future__ import annotations

import functools
import logging
import math
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from PIL import Image

from headstart.runtime.images import ImageLoadError, open_image

if TYPE_CHECKING:
    import torch
    from torch import nn

    from headstart.backbones.spec import BackboneSpec
    from headstart.runtime.classifier import Classifier

__all__ = [
    "TopLosses",
    "cam_panels",
    "display_crop",
    "explain_images",
    "first_conv_weights",
    "gradcam",
    "overlay",
    "target_layer",
    "top_loss_captions",
    "top_losses",
]

log = logging.getLogger(__name__)

TargetClass = int | str | None


def display_crop(classifier: Classifier, image: Image.Image) -> Image.Image:
    """The pixels the network sees (resize + center crop, not normalized): what a CAM map lines up with."""
    from torchvision import transforms as T

    pre = classifier.manifest["preprocessing"]
    interpolation = T.InterpolationMode(pre.get("interpolation", "bilinear"))
    return T.Compose([T.Resize(pre["resize_size"], interpolation=interpolation),
                      T.CenterCrop(pre["crop_size"])])(image.convert("RGB"))


def _vit_tokens_to_grid(tokens: torch.Tensor) -> torch.Tensor:
    """[B, prefix + h*w, C] -> [B, C, h, w]: drop the class (and register) tokens, patches laid out square."""
    n = tokens.shape[1]
    side = math.isqrt(n)
    grid = tokens[:, n - side * side:, :]
    return grid.reshape(tokens.shape[0], side, side, tokens.shape[2]).permute(0, 3, 1, 2)


def target_layer(net: nn.Module, spec: BackboneSpec, probe: torch.Tensor):
    """(layer, reshape_transform or None) for Grad-CAM on `net` (a HeadstartNet); `probe`: one input batch."""
    import torch
    from torch import nn

    backbone = net.backbone
    if spec.is_vit:
        # the last module holding an attention layer is the last transformer block
        blocks = [m for m in backbone.modules()
                  if any("Attention" in type(c).__name__ for c in m.children())]
        norms = [c for c in blocks[-1].children() if isinstance(c, nn.LayerNorm)] if blocks else []
        if not norms:
            raise ValueError(f"{spec.name}: found no transformer block with a LayerNorm for Grad-CAM")
        return norms[0], _vit_tokens_to_grid

    # Run the probe once and keep the module that outputs the final spatial map, i.e. the last to finish
    # with a 4-D output larger than 1x1 (the container of the last stage: layer4, features, bn2...). Modules
    # called more than once (torchvision's shared ReLUs) are skipped: Grad-CAM's hooks would fire twice.
    fired: list[nn.Module] = []
    calls: dict[int, int] = {}

    def record(module, _inputs, output):
        calls[id(module)] = calls.get(id(module), 0) + 1
        if isinstance(output, torch.Tensor) and output.dim() == 4 and min(output.shape[-2:]) > 1:
            fired.append(module)

    handles = [m.register_forward_hook(record) for m in backbone.modules() if m is not backbone]
    try:
        with torch.no_grad():
            backbone(probe)
    finally:
        for h in handles:
            h.remove()
    fired = [m for m in fired if calls[id(m)] == 1]
    if not fired:
        raise ValueError(f"{spec.name}: no layer outputs a spatial map at {tuple(probe.shape[-2:])} px input")
    return fired[-1], None


def _class_indices(classifier: Classifier, target_class, n: int) -> list[int | None]:
    per_image = list(target_class) if isinstance(target_class, (list, tuple)) else [target_class] * n
    if len(per_image) != n:
        raise ValueError(f"target_class has {len(per_image)} entries for {n} images")
    out = []
    for t in per_image:
        if isinstance(t, str):
            if t not in classifier.classes:
                raise ValueError(f"unknown class {t!r}; the model knows: {', '.join(classifier.classes)}")
            t = classifier.classes.index(t)
        elif t is not None and not 0 <= int(t) < len(classifier.classes):
            raise ValueError(f"class index {t} out of range for {len(classifier.classes)} classes")
        out.append(None if t is None else int(t))
    return out


@functools.cache
def _grad_cam_package():
    """(GradCAM, ClassifierOutputTarget), imported on first use."""
    from pytorch_grad_cam import GradCAM
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

    return GradCAM, ClassifierOutputTarget


def gradcam(classifier: Classifier, images: Sequence[Image.Image],
            target_class: TargetClass | Sequence[TargetClass] = None, *,
            batch_size: int = 8) -> list[np.ndarray]:
    """One Grad-CAM map per image, HxW at the network's input (crop) size, in [0, 1].

    target_class: None explains the predicted class; a class name or index (or one per image) explains that.
    Runs in fp32 with gradients on, whatever the classifier's inference settings.
    """
    import torch

    from headstart.backbones.registry import get_spec
    from headstart.data.transforms import eval_transform
    from headstart.runtime.preprocess import Preprocessing

    GradCAM, ClassifierOutputTarget = _grad_cam_package()

    if not images:
        return []
    targets = _class_indices(classifier, target_class, len(images))
    spec = get_spec(classifier.manifest["backbone"])
    net = classifier.net
    transform = eval_transform(Preprocessing.from_dict(classifier.manifest["preprocessing"]))
    x = torch.stack([transform(img.convert("RGB")) for img in images]).to(classifier.device)
    if not spec.is_vit:
        x = x.contiguous(memory_format=torch.channels_last)
    layer, reshape = target_layer(net, spec, x[:1])
    # Grad-CAM needs d(class score)/d(target layer output) only. With every parameter frozen for the call
    # and the layer's output cut into a leaf that needs a gradient, autograd records and runs backward
    # through the layers above the target alone: not the body below it, nor a ViT's residual stream around
    # it. The cut is registered before GradCAM's own hooks, which then see the leaf.
    trainable = [p for p in net.parameters() if p.requires_grad]
    for p in trainable:
        p.requires_grad_(False)
    cut = layer.register_forward_hook(lambda _m, _i, out: out.detach().requires_grad_(True))
    cam = GradCAM(model=net, target_layers=[layer], reshape_transform=reshape)
    maps = []
    try:
        with torch.enable_grad():
            for start in range(0, len(x), batch_size):
                chunk = targets[start:start + batch_size]
                batch = x[start:start + batch_size]
                if all(t is None for t in chunk):
                    chosen = None  # GradCAM explains each image's top logit
                else:
                    if any(t is None for t in chunk):
                        with torch.no_grad():
                            predicted = net(batch).argmax(dim=1).tolist()
                        chunk = [p if t is None else t for t, p in zip(chunk, predicted)]
                    chosen = [ClassifierOutputTarget(t) for t in chunk]
                maps.extend(cam(input_tensor=batch, targets=chosen))
    finally:
        cam.activations_and_grads.release()
        cut.remove()
        for p in trainable:
            p.requires_grad_(True)
    return [_unit_range(np.asarray(m, dtype=np.float32)) for m in maps]


def _unit_range(cam: np.ndarray) -> np.ndarray:
    # grad-cam divides by (max + 1e-7), so a map of tiny magnitude never reaches 1; stretch it to [0, 1]
    cam = cam - cam.min()
    top = float(cam.max())
    return cam / top if top > 0 else cam


def overlay(image: Image.Image, cam: np.ndarray, *, image_weight: float = 0.55) -> Image.Image:
    """The CAM as a jet heatmap blended onto the image. The map is resized to the image when they differ,
    so pass the display crop (`display_crop`) for the heat to sit on the right pixels."""
    from pytorch_grad_cam.utils.image import show_cam_on_image

    rgb = np.asarray(image.convert("RGB"), dtype=np.float32) / 255.0
    if cam.shape != rgb.shape[:2]:
        resized = Image.fromarray(cam.astype(np.float32)).resize(image.size, Image.Resampling.BILINEAR)
        cam = np.asarray(resized)
    heat = show_cam_on_image(rgb, np.clip(cam, 0, 1), use_rgb=True, image_weight=image_weight)
    return Image.fromarray(heat)


def first_conv_weights(net: nn.Module) -> np.ndarray | None:
    """The weights [N, 3, k, k] of the first Conv2d that reads the RGB input, or None (e.g. no conv stem)."""
    from torch import nn

    for module in net.modules():
        if isinstance(module, nn.Conv2d) and module.in_channels == 3 and module.groups == 1:
            return module.weight.detach().float().cpu().numpy()
    return None


def _unique_name(out_dir: Path, stem: str, used: set[str]) -> Path:
    name, n = f"{stem}_gradcam.png", 1
    while name in used:
        n += 1
        name = f"{stem}_{n}_gradcam.png"
    used.add(name)
    return out_dir / name


def explain_images(run_dir: str | os.PathLike, image_paths: Sequence[str | os.PathLike],
                   out_dir: str | os.PathLike, class_name: str | None = None, *,
                   classifier: Classifier | None = None) -> list[dict]:
    """Write one Grad-CAM overlay PNG per image into out_dir, for the predicted class or `class_name`.

    Returns, in input order, {"path", "label" (the class explained), "confidence" (its calibrated
    probability), "predicted" (the model's answer, "unsure" below the threshold), "overlay"} or
    {"path", "error"} for a file that cannot be read.
    """
    from headstart.inference.classifier import load
    from headstart.runtime.metrics import softmax

    clf = classifier or load(run_dir)
    if class_name is not None and class_name not in clf.classes:
        raise ValueError(f"unknown class {class_name!r}; the model knows: {', '.join(clf.classes)}")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    results: list[dict] = []
    images, where = [], []
    for path in image_paths:
        try:
            images.append(open_image(path, reduce_to=clf.preprocessing.reduce_to))  # decoded as predict decodes
            where.append(len(results))
            results.append({"path": str(path)})
        except ImageLoadError as exc:
            results.append({"path": str(path), "error": exc.reason})
    if not images:
        return results
    probs = softmax(clf.logits(images), clf.temperature)
    cams = gradcam(clf, images, class_name)
    used: set[str] = set()
    for i, image, cam, row in zip(where, images, cams, probs):
        explained = clf.classes.index(class_name) if class_name is not None else int(row.argmax())
        target = _unique_name(out, Path(results[i]["path"]).stem, used)
        overlay(display_crop(clf, image), cam).save(target)
        top = int(row.argmax())
        results[i].update({
            "label": clf.classes[explained],
            "confidence": float(row[explained]),
            "predicted": clf.classes[top] if row[top] >= clf.threshold else "unsure",
            "overlay": str(target),
        })
    log.info("wrote %d Grad-CAM overlay(s) to %s", len(images), out)
    return results


@dataclass
class TopLosses:
    """The highest-loss images, worst first: {"path", "true", "pred", "confidence", "loss", "correct"}."""

    rows: list[dict] = field(default_factory=list)
    plot: Path | None = None
    wrong: int = 0  # how many of all the scored images were misclassified
    images: list = field(default_factory=list, repr=False)  # the rows' images, as opened
    scored: int = 0  # how many images were ranked

    @property
    def title(self) -> str:
        """The top-losses grid's title."""
        return f"Top {len(self.rows)} losses ({self.wrong} of {self.scored} misclassified)"


def cam_panels(classifier: Classifier, images: Sequence[Image.Image], targets: Sequence[TargetClass]
               ) -> tuple[list[Image.Image], list[Image.Image]]:
    """The two panels of each case in a top-losses grid: the image as the network sees it (its display crop)
    and the Grad-CAM overlay for its target class."""
    crops = [display_crop(classifier, image) for image in images]
    return crops, [overlay(c, m) for c, m in zip(crops, gradcam(classifier, list(images), list(targets)))]


def top_loss_captions(rows: Sequence[dict]) -> tuple[list[str], list[str], list[float], list[float]]:
    """plot_top_losses's true, pred, confidence and loss arguments for TopLosses rows."""
    return ([r["true"] for r in rows], [r["pred"] for r in rows], [r["confidence"] for r in rows],
            [r["loss"] for r in rows])


def top_losses(classifier: Classifier, items: Sequence[tuple[str | os.PathLike, int | str]], n: int = 8, *,
               out: str | os.PathLike | None = None, logits: np.ndarray | None = None) -> TopLosses:
    """The n images with the highest loss (the most confidently wrong first) and, with `out`, a grid PNG of
    each image beside its Grad-CAM for the predicted class.

    items: (path, label) with label a class name or index into classifier.classes. `logits`, when the
    caller already has them (aligned with items), saves a second pass; then only the n shown are decoded.
    """
    from headstart.report.image_plots import plot_top_losses
    from headstart.runtime.metrics import softmax

    labels = [classifier.classes.index(y) if isinstance(y, str) else int(y) for _, y in items]
    paths = [str(p) for p, _ in items]
    if logits is None:
        kept, images = [], []
        for i, p in enumerate(paths):
            try:
                images.append(open_image(p, reduce_to=classifier.preprocessing.reduce_to))
                kept.append(i)
            except ImageLoadError as exc:
                log.warning("top losses: skipping %s: %s", p, exc.reason)
        paths, labels = [paths[i] for i in kept], [labels[i] for i in kept]
        logits = classifier.logits(images)
    if len(logits) != len(paths):
        raise ValueError(f"{len(logits)} logits for {len(paths)} items")
    if not paths:
        return TopLosses()
    y = np.asarray(labels)
    raw = softmax(logits)
    calibrated = softmax(logits, classifier.temperature)
    loss = -np.log(np.clip(raw[np.arange(len(y)), y], 1e-12, None))
    pred = calibrated.argmax(axis=1)
    order = np.argsort(-loss, kind="stable")[:n]
    result = TopLosses(wrong=int((pred != y).sum()), scored=len(y))
    shown = []
    for i in order:
        try:
            shown.append((i, open_image(paths[i], reduce_to=classifier.preprocessing.reduce_to)))
        except ImageLoadError as exc:  # removed or changed since the logits were computed
            log.warning("top losses: skipping %s: %s", paths[i], exc.reason)
    for i, image in shown:
        result.rows.append({"path": paths[i], "true": classifier.classes[y[i]],
                            "pred": classifier.classes[pred[i]], "confidence": float(calibrated[i, pred[i]]),
                            "loss": float(loss[i]), "correct": bool(pred[i] == y[i])})
        result.images.append(image)
    if out is not None and shown:
        panels = cam_panels(classifier, result.images, [int(pred[i]) for i, _ in shown])
        result.plot = plot_top_losses(*panels, *top_loss_captions(result.rows), out, title=result.title)
    return result
