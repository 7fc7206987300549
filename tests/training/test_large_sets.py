"""Sets too large to keep decoded: fine-tuning decodes each image again in the DataLoader's workers."""

from __future__ import annotations

import pytest

import headstart
from headstart.training import run as run_module
from headstart.training.modes import finetune as modes

SETTINGS = dict(mode="finetune", epochs=2, image_size=64, batch_size=8, seed=3, report=False)


def test_finetune_on_images_decoded_per_item_matches_kept_images(synthetic_data, tmp_path, monkeypatch):
    kept = headstart.train(synthetic_data, out=str(tmp_path / "kept"), views=0, num_workers=0, **SETTINGS)

    seen = []
    original = modes._ImageDataset.__getitem__

    def spy(self, i):
        seen.append(self.decoded.images is None)
        return original(self, i)

    monkeypatch.setattr(run_module, "KEEP_DECODED_IMAGES", 0)
    monkeypatch.setattr(modes._ImageDataset, "__getitem__", spy)
    # views=4 (the default) would cache the frozen prefix; a large set trains on images instead
    streamed = headstart.train(synthetic_data, out=str(tmp_path / "streamed"), num_workers=0, **SETTINGS)
    assert seen and all(seen), "every item was decoded again, none held in memory"
    for split in ("val", "test"):
        assert streamed.metrics[split]["loss"] == pytest.approx(kept.metrics[split]["loss"], abs=1e-5)


def test_finetune_on_a_large_set_decodes_in_dataloader_workers(synthetic_data, tmp_path, monkeypatch):
    monkeypatch.setattr(run_module, "KEEP_DECODED_IMAGES", 0)
    result = headstart.train(synthetic_data, out=str(tmp_path / "workers"), num_workers=2, **SETTINGS)
    assert len(result.history) == 2
    assert result.metrics["val"]["accuracy"] >= 0.6
