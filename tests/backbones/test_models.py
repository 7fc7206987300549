"""Every registered backbone, random weights: head swap, output shape, and gradients reach exactly the
unfrozen parameters (like timm's test_models.py)."""

import pytest
import torch
from torch import nn

from headstart.backbones.model import HeadstartNet, build_network, stage_parameters, unfreeze_last_stages
from headstart.backbones.registry import list_specs

SPECS = list_specs()
NUM_CLASSES = 3


def _input_size(spec) -> int:
    # torchvision's ViT has fixed position embeddings for 224 px; every CNN takes 64 px.
    return spec.preprocessing.crop_size if spec.is_vit else 64


@pytest.mark.parametrize("spec", SPECS, ids=[s.name for s in SPECS])
def test_head_swap_shape_and_gradients(spec):
    torch.manual_seed(0)
    net = build_network(spec, NUM_CLASSES, pretrained=False)
    assert isinstance(net, HeadstartNet)
    assert isinstance(net.backbone.get_submodule(spec.head), nn.Identity)
    assert net.head[-1].in_features == spec.in_features and net.head[-1].out_features == NUM_CLASSES

    stages = stage_parameters(net, spec)
    staged = [id(p) for stage in stages for p in stage]
    assert len(staged) == len(set(staged)) == len(list(net.backbone.parameters())), "stages must partition"
    assert all(stages), "no stage may be empty"

    unfreeze_last_stages(net, spec, 1)
    expected = {id(p) for p in stages[-1]} | {id(p) for p in net.head.parameters()}
    net.train()
    size = _input_size(spec)
    out = net(torch.randn(2, 3, size, size))
    assert out.shape == (2, NUM_CLASSES)
    out.sum().backward()
    with_grad = {id(p) for p in net.parameters() if p.grad is not None and p.grad.abs().sum() > 0}
    frozen_with_grad = {id(p) for p in net.parameters() if p.grad is not None} - expected
    assert not frozen_with_grad, "frozen parameters received gradients"
    assert {id(p) for p in net.head.parameters()} <= with_grad
    assert with_grad & {id(p) for p in stages[-1]}, "the unfrozen stage received no gradient"
