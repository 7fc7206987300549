"""Resolving a backbone's name is cheap, and the torchvision specs' preprocessing is their Weights enum's."""

import subprocess
import sys

import pytest

from headstart.backbones.registry import get_spec, list_specs

TORCHVISION_SPECS = [s for s in list_specs() if s.family == "torchvision"]


def test_get_spec_imports_no_torch_torchvision_or_timm():
    # torchvision.models alone costs ~2 s of start-up (torchvision.ops imports torch._dynamo).
    code = ("import sys; from headstart.backbones.registry import get_spec, list_specs; "
            "get_spec('efficientnet_lite0'); get_spec('resnet18'); list_specs(); "
            "print(sorted(m for m in ('torch', 'torchvision', 'torchvision.models', 'timm') if m in sys.modules))")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert proc.stdout.strip() == "[]"


@pytest.mark.parametrize("spec", TORCHVISION_SPECS, ids=[s.name for s in TORCHVISION_SPECS])
def test_torchvision_preprocessing_is_the_weights_enums(spec):
    import torchvision.models as tvm

    weights = tvm.get_weight(spec.weights.ref)
    tf = weights.transforms()
    pre = spec.preprocessing
    assert (pre.crop_size, pre.resize_size, pre.interpolation) == (tf.crop_size[0], tf.resize_size[0],
                                                                   tf.interpolation.value)
    assert pre.mean == tuple(tf.mean) and pre.std == tuple(tf.std)
    assert spec.imagenet_classes() == list(weights.meta["categories"])


def test_timm_names_resolve_on_demand():
    spec = get_spec("timm:resnet18")
    assert spec.family == "timm" and spec.in_features == 512 and spec.preprocessing.crop_size == 224


def test_every_family_names_imagenet_classes_alike():
    """One list for all: `inspect` says "African elephant" whichever backbone answers."""
    names = get_spec("resnet18").imagenet_classes()
    assert len(names) == 1000 and names[0] == "tench" and names[386] == "African elephant"
    for name in ("efficientnet_lite0", "efficientnet_lite2", "vit_b_16", "timm:resnet18"):
        assert get_spec(name).imagenet_classes() == names, name
