"""Tapped: a backbone's pooled features joined by three inner stages' pooled outputs (auto mode's multi-stage
candidates). The joined vector ends with the plain features, and the network exports to ONNX as it runs."""

from __future__ import annotations

import numpy as np
import torch

from headstart.backbones.model import Tapped, build_network, tap_names
from headstart.backbones.registry import get_spec
from headstart.onnx_export import to_onnx

SPEC = get_spec("efficientnet_lite0")


def test_the_joined_features_end_with_the_plain_ones_and_export_to_onnx():
    import onnxruntime as ort

    taps = tap_names(SPEC)
    assert taps == ("blocks.4", "blocks.5", "blocks.6")
    torch.manual_seed(0)
    tapped = build_network(SPEC, 3, pretrained=False, taps=taps).eval()
    plain = build_network(SPEC, 3, pretrained=False).eval()
    plain.backbone.load_state_dict(tapped.backbone.body.state_dict())
    assert isinstance(tapped.backbone, Tapped) and tapped.head[-1].in_features == 112 + 192 + 320 + 1280
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        joined = tapped.backbone(x)
        assert torch.allclose(joined[:, -1280:], plain.backbone(x), atol=1e-6)
        assert torch.allclose(tapped.backbone(x), joined)  # nothing is left over from the call before
        expected = tapped(x).numpy()
    session = ort.InferenceSession(to_onnx(tapped, x, output_name="logits"), providers=["CPUExecutionProvider"])
    np.testing.assert_allclose(session.run(None, {"input": x.numpy()})[0], expected, atol=1e-4)


def test_the_taps_are_the_three_stages_below_the_last_and_a_vit_has_none():
    assert tap_names(get_spec("resnet18")) == ("layer1", "layer2", "layer3")
    assert tap_names(get_spec("mobilenet_v2")) == ("features.15", "features.16", "features.17")
    assert tap_names(get_spec("vit_b_16")) == ()  # tokens, not maps
