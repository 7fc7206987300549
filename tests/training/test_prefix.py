"""The frozen prefix: bypassed only when replaying it reproduces the forward pass, and run as a plain module
chain (which a compiled engine can export) only when that chain computes the same activation."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from headstart.backbones.model import build_network
from headstart.backbones.registry import get_spec
from headstart.training.prefix import find_frozen_prefix


class _ReluBetween(nn.Module):
    """a, then a functional ReLU, then b (ending in a ReLU), then the trainable c: replaying on the activation
    works (the extra ReLU is a no-op on non-negative inputs), but a, b chained miss the ReLU between them."""

    def __init__(self):
        super().__init__()
        self.a = nn.Conv2d(3, 4, 3, padding=1)
        self.b = nn.Sequential(nn.Conv2d(4, 4, 3, padding=1), nn.ReLU())
        self.c = nn.Conv2d(4, 4, 3, padding=1)

    def forward(self, x):
        x = self.b(F.relu(self.a(x)))
        return self.c(F.relu(x)).mean(dim=(2, 3))


def test_an_efficientnet_prefix_runs_as_a_plain_chain():
    torch.manual_seed(0)
    body = build_network(get_spec("efficientnet_lite0"), 3, pretrained=False).backbone
    sample = torch.randn(2, 3, 64, 64)
    prefix = find_frozen_prefix(body, ("conv_head", "bn2"), sample)
    assert prefix is not None and prefix.chain is not None
    images = torch.randn(3, 3, 64, 64)
    prefix.chain.eval()  # as its engine runs it (FrozenBackbone): frozen BatchNorm uses its running statistics
    with torch.inference_mode():
        assert torch.allclose(prefix.chain(images), prefix.activations(images), rtol=1e-4, atol=1e-5)
    assert all(a is b for a, b in zip(prefix.chain, (body.get_submodule(n) for n in prefix.bypassed)))  # shared


def test_no_chain_where_the_forward_does_more_than_call_the_modules():
    torch.manual_seed(0)
    body = _ReluBetween()
    prefix = find_frozen_prefix(body, ("c",), torch.randn(2, 3, 8, 8))
    assert prefix is not None and prefix.bypassed == ["a", "b"]  # the bypass itself is exact
    assert prefix.chain is None  # Sequential(a, b) would skip the ReLU between them
