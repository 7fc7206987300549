import json

import pytest

from headstart.data.dataset import DataError
from headstart.data.folders import discover


def test_train_val_test_layout(synthetic_data):
    ds = discover(synthetic_data)
    assert ds.classes == ["blue", "green", "red"]
    assert ds.split_origin == "folders"
    assert {s: len(v) for s, v in ds.splits.items()} == {"train": 36, "val": 18, "test": 18}


def test_single_folder_gets_seeded_stratified_split(synthetic_data):
    flat = synthetic_data / "train"
    a, b, c = discover(flat, seed=1), discover(flat, seed=1), discover(flat, seed=2)
    assert a.splits == b.splits
    assert a.splits["val"] != c.splits["val"]
    assert a.split_origin == "generated"
    for label in range(3):
        assert sum(1 for _, y in a.splits["val"] if y == label) == 2  # 20% of 12, per class


def test_split_file_rebuilds_the_same_split(synthetic_data, tmp_path):
    flat = synthetic_data / "train"
    ds = discover(flat, seed=7)
    record = tmp_path / "split.json"
    record.write_text(json.dumps(ds.split_record(7, 0.2)))
    again = discover(flat, seed=999, split_file=record)
    assert again.splits == ds.splits


def test_valid_alias_and_class_order_fixed(tmp_path, synthetic_data):
    (synthetic_data / "val").rename(synthetic_data / "valid")
    ds = discover(synthetic_data)
    assert "val" in ds.splits and ds.classes == sorted(ds.classes)


def test_class_only_in_val_is_an_error(synthetic_data):
    (synthetic_data / "val" / "purple").mkdir()
    (synthetic_data / "val" / "red" / "red_0.jpg").rename(synthetic_data / "val" / "purple" / "p.jpg")
    with pytest.raises(DataError, match="purple"):
        discover(synthetic_data)


def test_missing_folder_and_empty_class(tmp_path):
    with pytest.raises(DataError, match="not found"):
        discover(tmp_path / "nope")
    (tmp_path / "d" / "a").mkdir(parents=True)
    with pytest.raises(DataError, match="hold no images"):
        discover(tmp_path / "d")
