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


def test_the_head_computes_in_fp32_under_bf16_autocast():
    """bf16 autocast speeds up the backbone, but the head's matmul stays fp32: rounding a head's inputs and
    logits to bf16 cost accuracy (docs/benchmarks.md, "The head in fp32 under bf16 autocast")."""
    from headstart.backbones.model import Float32Linear

    torch.manual_seed(0)
    head = Float32Linear(64, 10)
    x = torch.randn(8, 64).to(torch.bfloat16).float().requires_grad_()  # exactly representable in bf16 too
    expected = head(x)  # no autocast: the plain fp32 Linear
    with torch.autocast("cpu", dtype=torch.bfloat16):
        got = head(x)
        plain = torch.nn.functional.linear(x, head.weight, head.bias)  # what nn.Linear computes here
    assert got.dtype == torch.float32 and plain.dtype == torch.bfloat16
    assert torch.equal(got, expected) and not torch.equal(plain.float(), expected)
    got.sum().backward()
    assert x.grad is not None and torch.isfinite(x.grad).all()
