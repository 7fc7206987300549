"""The feature cache on disk: fp16 shards, memory-mapped reads, and an interrupted extraction that resumes."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

import headstart
from headstart.extract import feature_cache
from headstart.extract.feature_cache import FeatureCache
from headstart.extract.frozen import FrozenBackbone


def _table(rows) -> torch.Tensor:
    """Every row of a FeatureRows as float32 [N, D], read through its Dataset interface."""
    return torch.stack([rows[i][0] for i in range(len(rows))])


def _hashes(n: int, prefix: str = "h") -> list[str]:
    return [f"{prefix}{i:04d}" for i in range(n)]


def test_rows_round_trip_through_fp16_memory_mapped_shards(tmp_path):
    cache = FeatureCache(tmp_path)
    key = FeatureCache.key("model", "eval", 0, None, "32-true")
    hashes = _hashes(10)
    values = torch.randn(10, 6)
    assert cache.missing(key, hashes) == list(range(10))
    cache.write(key, hashes[:4], values[:4])
    cache.write(key, hashes[4:], values[4:])
    cache.write(key, hashes[:4], values[:4])  # the same rows again: same shard name, nothing added

    shards = sorted((tmp_path / "features" / key).glob("*.npy"))
    assert len(shards) == 2 and all(np.load(p).dtype == np.float16 for p in shards)
    fresh = FeatureCache(tmp_path)  # another process, or the next run
    assert fresh.missing(key, hashes + ["new", "new"]) == [10], "a repeated missing hash is computed once"
    order = [3, 9, 0, 5]
    rows = fresh.rows(key, [hashes[i] for i in order], labels=[1, 0, 1, 0])
    assert all(isinstance(a, np.memmap) for a in rows.arrays)
    torch.testing.assert_close(_table(rows), values[order], atol=2e-3, rtol=2e-3)
    x, y = rows[1]
    assert x.dtype == torch.float32 and int(y) == 0


def test_batches_read_whole_match_rows_read_one_by_one_across_shards_and_views(tmp_path):
    from torch.utils.data import DataLoader

    cache = FeatureCache(tmp_path)
    hashes, values = _hashes(10), torch.randn(10, 6)
    for start in range(0, 10, 3):  # four shards
        cache.write("k", hashes[start:start + 3], values[start:start + 3])
    view = cache.rows("k", hashes[::-1], labels=list(range(10)))
    other = cache.rows("k", hashes[2:7], labels=[7] * 5)
    joined = feature_cache.FeatureRows.concat([view, other])
    assert len(joined) == 15
    torch.testing.assert_close(_table(joined), torch.cat([_table(view), _table(other)]))

    class OneByOne(torch.utils.data.Dataset):
        __len__, __getitem__ = joined.__len__, joined.__getitem__

    def batches(dataset, **collate):
        return list(DataLoader(dataset, batch_size=4, shuffle=True, generator=torch.Generator().manual_seed(0),
                               **collate))

    whole, single = batches(joined, collate_fn=feature_cache.FeatureRows.collate), batches(OneByOne())
    assert [len(y) for _, y in whole] == [4, 4, 4, 3]
    for (x, y), (x1, y1) in zip(whole, single, strict=True):
        assert torch.equal(x, x1) and torch.equal(y, y1)


def test_values_beyond_fp16_stay_finite(tmp_path):
    cache = FeatureCache(tmp_path)
    cache.write("k", ["a"], torch.tensor([[1e6, -3.0]]))
    assert torch.equal(_table(cache.rows("k", ["a"])), torch.tensor([[1e6, -3.0]]))


def test_a_damaged_shard_is_ignored_and_recomputed(tmp_path, caplog):
    cache = FeatureCache(tmp_path)
    cache.write("k", ["a", "b"], torch.ones(2, 3))
    meta = next((tmp_path / "features" / "k").glob("*.json"))
    meta.write_text("{not json")
    assert FeatureCache(tmp_path).missing("k", ["a", "b"]) == [0, 1]
    assert "ignoring unreadable feature shard" in caplog.text


def test_an_interrupted_extraction_resumes_from_its_written_shards(synthetic_data, tmp_path, monkeypatch):
    monkeypatch.setenv("HEADSTART_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(feature_cache, "SHARD_ROWS", 8)
    original = FrozenBackbone.__call__
    calls = {"n": 0}

    def crash_on_third_batch(self, batch):
        calls["n"] += 1
        if calls["n"] == 3:
            raise RuntimeError("power cut")
        return original(self, batch)

    settings = dict(image_size=64, epochs=2, report=False)
    with monkeypatch.context() as patch:
        patch.setattr(FrozenBackbone, "__call__", crash_on_third_batch)
        with pytest.raises(RuntimeError, match="power cut"):
            headstart.train(synthetic_data, out=str(tmp_path / "cut"), **settings)
    run = headstart.train(synthetic_data, out=str(tmp_path / "again"), **settings)
    extraction = json.loads((run.run_dir / "summary.json").read_text())["extraction"]
    assert extraction["total"] == 72
    assert extraction["computed"] == 72 - 2 * 8, "the two shards finished before the crash are not recomputed"


def test_a_large_set_is_decoded_again_in_chunks_with_the_same_result(synthetic_data, tmp_path, monkeypatch):
    from headstart.data.background import DecodeJob
    from headstart.training import run as run_module

    settings = dict(image_size=64, epochs=2, report=False)
    monkeypatch.setenv("HEADSTART_CACHE", str(tmp_path / "cache-kept"))
    kept = headstart.train(synthetic_data, out=str(tmp_path / "kept"), **settings)

    decoded_without_images = []
    original = DecodeJob.result

    def spy(self):
        out = original(self)
        decoded_without_images.extend(d.images is None for d in out.values())
        return out

    monkeypatch.setenv("HEADSTART_CACHE", str(tmp_path / "cache-streamed"))
    monkeypatch.setattr(run_module, "KEEP_DECODED_IMAGES", 0)
    monkeypatch.setattr(feature_cache, "SHARD_ROWS", 8)
    monkeypatch.setattr(DecodeJob, "result", spy)

    streamed = headstart.train(synthetic_data, out=str(tmp_path / "streamed"), **settings)
    assert decoded_without_images and all(decoded_without_images)
    for split in ("val", "test"):
        assert streamed.metrics[split]["loss"] == pytest.approx(kept.metrics[split]["loss"], abs=1e-6)
