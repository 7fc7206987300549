"""The ONNX Runtime extraction engine: equal to torch, chosen only where it should be, never an error."""

from __future__ import annotations

import logging

import pytest
import torch
from PIL import Image
from torch import nn

from headstart.backbones.model import build_network
from headstart.backbones.registry import get_spec
from headstart.data.transforms import eval_transform
from headstart.features import FrozenBackbone, extract_features
from headstart.onnx_forward import frozen_forward

pytest.importorskip("onnxruntime")


def _backbone(name: str = "mobilenet_v2") -> nn.Module:
    torch.manual_seed(0)
    return build_network(get_spec(name), 3, pretrained=False).backbone.eval()


def test_onnxruntime_features_equal_torch():
    backbone = _backbone()
    images = torch.randn(5, 3, 64, 64)
    frozen = FrozenBackbone(backbone)
    got = frozen(images)
    assert frozen.engine == "onnxruntime"
    with torch.inference_mode():
        expected = backbone(images)
    assert got.shape == expected.shape
    assert torch.allclose(got, expected, atol=1e-4, rtol=1e-4)
    # later batches, of another size, reuse the same engine
    assert frozen(images[:3]).shape == (3, expected.shape[1])


@pytest.mark.parametrize(("engine", "accelerator", "precision"), [
    ("torch", "cpu", "32-true"), ("auto", "cpu", "bf16-mixed"), ("auto", "cuda", "32-true")])
def test_torch_where_onnxruntime_is_not_the_faster_engine(engine, accelerator, precision):
    forward, reason = frozen_forward(_backbone(), torch.randn(2, 3, 64, 64), engine=engine,
                                     accelerator=accelerator, precision=precision)
    assert forward is None and reason


class _Unexportable(nn.Module):
    def forward(self, x):
        return torch.from_numpy(x.numpy().mean(axis=(2, 3)))  # leaves the graph: tracing cannot follow it


class _Different(nn.Module):
    """Traces to a constant: the exported graph disagrees with eager on new inputs."""

    def __init__(self):
        super().__init__()
        self.calls = 0

    def forward(self, x):
        self.calls += 1
        return x.mean(dim=(2, 3)) * float(self.calls)


@pytest.mark.parametrize("module", [_Unexportable(), _Different()])
def test_a_failed_or_wrong_export_falls_back_to_torch(module, caplog):
    images = torch.randn(4, 3, 16, 16)
    with caplog.at_level(logging.WARNING, logger="headstart.onnx_forward"):
        frozen = FrozenBackbone(module, channels_last=False)
        frozen(images)
    assert frozen.engine == "torch"
    assert "using torch" in caplog.text


def test_extract_features_reuses_one_engine_across_calls():
    spec = get_spec("mobilenet_v2")
    transform = eval_transform(spec.preprocessing.with_crop(64))
    images = [Image.new("RGB", (80, 72), (i * 40, 90, 200 - i * 30)) for i in range(4)]
    frozen = FrozenBackbone(_backbone())
    first = extract_features(frozen, images, transform, batch_size=3)
    engine_forward = frozen._forward
    second = extract_features(frozen, images[:2], transform)
    assert frozen._forward is engine_forward
    assert torch.allclose(first[:2], second, atol=1e-5)
