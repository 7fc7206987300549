"""WebDataset shards: the same images, labels and splits come back; a bad member is one file's problem."""

from __future__ import annotations

import hashlib
import json
import os
import tarfile
from collections import Counter
from pathlib import Path

import pytest
from typer.testing import CliRunner

from conftest import make_synthetic_dataset
from headstart.artifact import sha256_file
from headstart.data.check import check_dataset
from headstart.data.dataset import DataError
from headstart.data.folders import discover
from headstart.data.loading import decode_split
from headstart.data.shard_writer import parse_size, write_shards
from headstart.data.shards import INDEX_FILE, iter_samples, shard_member


@pytest.fixture
def data(tmp_path) -> Path:
    return make_synthetic_dataset(tmp_path / "data", per_split={"train": 6, "val": 2, "test": 2}, size=24)


def _content(items) -> Counter:
    return Counter((hashlib.sha1(Path(p).read_bytes()).hexdigest(), y) for p, y in items)


def test_round_trip_gives_the_same_bytes_labels_and_splits(data, tmp_path):
    import webdataset

    written = write_shards(data, tmp_path / "shards", shard_size_bytes=10**6)
    folder, shards = discover(data), discover(tmp_path / "shards")
    assert shards.classes == folder.classes and shards.split_origin == "shards"
    assert written.counts == {"train": 18, "val": 6, "test": 6} and not written.skipped
    for split, items in folder.splits.items():
        streamed = Counter((hashlib.sha1(b).hexdigest(), y) for _, b, y in iter_samples(tmp_path / "shards", split))
        assert streamed == _content(items), split
        decoded = decode_split(shards.splits[split], short_side=None)
        assert Counter(zip(decoded.hashes, decoded.labels)) == _content(items) and not decoded.failures
    # plain WebDataset: its own reader sees each image's class, split and original path
    urls = [str(tmp_path / "shards" / f) for files in written.shards.values() for f in files]
    seen = {s["path.txt"].decode(): (int(s["cls"]), s["split.txt"].decode())
            for s in webdataset.WebDataset(urls, shardshuffle=False)}
    assert seen == {os.path.relpath(p, data): (y, split) for split, items in folder.splits.items() for p, y in items}


def test_a_generated_split_is_kept_and_a_small_size_gives_several_shards(data, tmp_path):
    flat = data / "train"
    written = write_shards(flat, tmp_path / "shards", shard_size_bytes=parse_size("2KB"), seed=3)
    assert len(written.shards["train"]) > 3 and len(written.shards["val"]) > 1
    expected = discover(flat, seed=3)
    shards = discover(tmp_path / "shards", seed=999)  # the split lives in the shards, not in the seed
    for split in ("train", "val"):
        assert _content(expected.splits[split]) == Counter(
            (hashlib.sha1(b).hexdigest(), y) for _, b, y in iter_samples(tmp_path / "shards", split))
        assert [y for _, y in shards.splits[split]] == [y for _, y in expected.splits[split]]
    index = json.loads((tmp_path / "shards" / INDEX_FILE).read_text())
    assert index["source"]["split_origin"] == "generated" and index["counts"] == {"train": 15, "val": 3}
    for shard in index["splits"]["train"]:
        path = tmp_path / "shards" / shard["file"]
        assert shard["sha256"] == sha256_file(path) and shard["bytes"] == path.stat().st_size
    with pytest.raises(DataError, match="not empty"):
        write_shards(flat, tmp_path / "shards", shard_size_bytes=10**6)


def test_parse_size():
    assert [parse_size(s) for s in ("500MB", "1GB", "200KB", "512MiB", "1.5gb", 4096)] == [
        500 * 10**6, 10**9, 200 * 10**3, 512 * 2**20, 1_500_000_000, 4096]
    for bad in ("", "0", "12 parsecs", "-1MB"):
        with pytest.raises(ValueError, match="size"):
            parse_size(bad)


def test_a_corrupt_member_is_a_per_file_failure(data, tmp_path, caplog):
    broken = data / "train" / "red" / "red_1.jpg"
    broken.write_bytes(broken.read_bytes()[:300])  # a truncated JPEG travels into its shard unchanged
    write_shards(data, tmp_path / "shards", shard_size_bytes=10**6)
    items = discover(tmp_path / "shards").splits["train"]
    decoded = decode_split(items, short_side=16)
    assert len(decoded.paths) == 17 and len(decoded.failures) == 1
    path, reason = decoded.failures[0]
    assert shard_member(path)[1].endswith(".jpg") and "truncated" in reason
    assert f"skipping {path}: {reason}" in caplog.text
    report = check_dataset(tmp_path / "shards")
    assert [p.paths for p in report.problems if p.code == "corrupt_image"] == [[path]]
    assert report.counts["train"]["red"] == 5 and not report.fatal


def test_a_truncated_shard_fails_member_by_member(data, tmp_path):
    write_shards(data, tmp_path / "shards", shard_size_bytes=10**6)
    shard = tmp_path / "shards" / "train-000000.tar"
    with tarfile.open(shard) as tar:  # cut inside the 10th image's bytes
        cut = next(m for m in tar.getmembers() if m.name.endswith(".jpg") and m.name.startswith("train_00000009"))
    shard.write_bytes(shard.read_bytes()[:cut.offset_data + 100])
    decoded = decode_split(discover(tmp_path / "shards").splits["train"], short_side=16)
    assert len(decoded.paths) == 9 and len(decoded.failures) == 9
    assert all("unreadable shard" in reason for _, reason in decoded.failures)
    fast = check_dataset(tmp_path / "shards", fast=True)
    assert {"shards_changed", "index_only"} <= {p.code for p in fast.problems} and not fast.fatal


def test_cli_shard_command(data, tmp_path):
    from headstart.cli import app

    result = CliRunner().invoke(app, ["datasets", "shard", str(data), "--out", str(tmp_path / "s"),
                                      "--shard-size", "4KB"])
    assert result.exit_code == 0, result.output
    assert "train on it with" in result.stdout and (tmp_path / "s" / INDEX_FILE).is_file()
    bad = CliRunner().invoke(app, ["datasets", "shard", str(data), "--out", str(tmp_path / "t"),
                                   "--shard-size", "lots"])
    assert bad.exit_code == 2 and "not a size" in bad.output and not (tmp_path / "t").exists()


def test_train_reads_shards_and_csv_lists(data, tmp_path):
    import headstart

    write_shards(data, tmp_path / "shards", shard_size_bytes=20_000)
    csv = data / "list.csv"
    csv.write_text("".join(f"{os.path.relpath(p, data)},{discover(data).classes[y]},{split}\n"
                           for split, items in discover(data).splits.items() for p, y in items))
    settings = dict(epochs=2, image_size=64, report=False, seed=1)
    for source in (tmp_path / "shards", csv):
        result = headstart.train(source, out=str(tmp_path / f"run-{source.name}"), **settings)
        assert result.classes == ["blue", "green", "red"] and not result.skipped
        assert set(result.metrics) == {"val", "test"} and result.metrics["test"]["n"] == 6
        summary = json.loads((result.run_dir / "summary.json").read_text())
        assert summary["data"] == str(source) and summary["counts"]["train"] == {"blue": 6, "green": 6, "red": 6}
        assert headstart.load(result.run_dir).classes == ["blue", "green", "red"]


def test_members_read_in_any_order_by_random_access(data, tmp_path):
    from headstart.data.shards import read_member
    from headstart.runtime.images import ImageLoadError

    write_shards(data, tmp_path / "shards", shard_size_bytes=10**6)
    items = discover(tmp_path / "shards").splits["train"]
    streamed = {name: payload for name, payload, _ in iter_samples(tmp_path / "shards", "train")}
    for path, _ in reversed(items):  # the worst order for a stream: each read would rescan the shard
        assert read_member(path) == streamed[shard_member(path)[1]]
    with pytest.raises(ImageLoadError, match="missing from its shard"):
        read_member(items[0][0].split("#")[0] + "#nope.jpg")
