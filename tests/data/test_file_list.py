"""A CSV file list (path,label[,split]) is a dataset like a folder tree: same split rules, one-line errors."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from conftest import make_synthetic_dataset
from headstart.data.check import check_dataset, summary_lines
from headstart.data.dataset import DataError
from headstart.data.exclusions import fix_split, load_exclusions
from headstart.data.folders import discover


def _write_list(csv: Path, dataset, *, header: str | None = None, with_split: bool = True) -> Path:
    """The dataset's files as CSV rows (relative to the CSV's folder), in the order discover lists them."""
    lines = [header] if header else []
    for split, items in dataset.splits.items():
        for path, y in items:
            row = [os.path.relpath(path, csv.parent), dataset.classes[y]] + ([split] if with_split else [])
            lines.append(",".join(row))
    csv.parent.mkdir(parents=True, exist_ok=True)
    csv.write_text("\n".join(lines) + "\n")
    return csv


@pytest.fixture
def data(tmp_path) -> Path:
    return make_synthetic_dataset(tmp_path / "data", per_split={"train": 6, "val": 2, "test": 2}, size=24)


def test_split_column_gives_the_folder_split(data, tmp_path):
    folder = discover(data)
    csv = _write_list(tmp_path / "lists" / "all.csv", folder, header="path,label,split")  # paths start with ../
    listed = discover(csv)
    assert listed.root == str(csv) and listed.split_origin == "file_list"
    assert listed.classes == folder.classes == ["blue", "green", "red"]
    assert listed.splits == folder.splits


def test_without_split_column_val_is_held_out_as_for_folders(data, tmp_path):
    flat = discover(data / "train", seed=5)  # a DATA/<class> folder: val generated from it
    only_train = type(flat)(flat.root, flat.classes, {"train": sorted(flat.splits["train"] + flat.splits["val"])},
                            "folders")
    csv = _write_list(data / "train.csv", only_train, with_split=False)  # no header row
    listed = discover(csv, seed=5)
    assert listed.split_origin == "generated"
    assert listed.splits == flat.splits
    assert discover(csv, seed=6).splits["val"] != listed.splits["val"]

    record = tmp_path / "split.json"  # a run's split.json rebuilds the same split (paths relative to the CSV)
    record.write_text(json.dumps(listed.split_record(5, 0.2)))
    assert json.loads(record.read_text())["files"]["val"][0].startswith("train/")
    assert discover(csv, seed=99, split_file=record).splits == listed.splits


@pytest.mark.parametrize(("rows", "message"), [
    ("train/red/red_0.jpg,red\ntrain/red/nope.jpg,red", "line 2: file not found: train/red/nope.jpg"),
    ("path,label,split\ntrain/red/red_0.jpg,red,train\ntrain/red/red_1.jpg,red,holdout",
     "line 3: unknown split 'holdout'"),
    ("train/red/red_0.jpg,red\n\ntrain/red/red_1.jpg,", "line 3: empty label"),
    ("train/red/red_0.jpg,red\ntrain/red/../red/red_0.jpg,red", "line 2: .* is listed twice \\(first on line 1\\)"),
    ("train/red/red_0.jpg,red,train\ntrain/red/red_1.jpg,red", "line 2: expected 3 columns"),
    ("train/red/red_0.jpg,red,val\n", "no train rows"),
    ("train/red/red_0.jpg,red,train\ntrain/blue/blue_0.jpg,blue,val", "\\['blue'\\] are in val rows"),
    ("path,label\n", "lists no images"),
])
def test_errors_are_one_line_and_name_the_line(data, rows, message):
    csv = data / "list.csv"
    csv.write_text(rows)
    with pytest.raises(DataError, match=message) as caught:
        discover(csv)
    assert "\n" not in str(caught.value) and "list.csv" in str(caught.value)


def test_the_doctor_checks_a_list_file_by_file(data, tmp_path):
    csv = _write_list(data / "list.csv", discover(data))
    (data / "train" / "red" / "red_1.jpg").write_bytes((data / "train" / "red" / "red_1.jpg").read_bytes()[:300])
    (data / "test" / "blue" / "blue_0.jpg").write_bytes((data / "train" / "blue" / "blue_0.jpg").read_bytes())

    report = check_dataset(csv)
    codes = {p.code: p for p in report.problems}
    assert codes["corrupt_image"].paths == [str(data / "train" / "red" / "red_1.jpg")]
    assert codes["leakage"].severity == "fatal" and len(codes["leakage"].paths) == 2
    assert report.counts["train"]["red"] == 5 and report.split_origin == "file_list"
    assert "split by the list's split column" in "\n".join(summary_lines(report))

    fixed = fix_split(csv, report, tmp_path)
    assert json.loads(fixed.read_text())["exclude"] == ["test/blue/blue_0.jpg"]  # the train copy is kept
    assert not check_dataset(csv, exclude=load_exclusions(fixed, csv)).fatal
    bad = data / "bad.csv"
    bad.write_text("train/red/red_0.jpg,red,later\n")
    report = check_dataset(bad, fast=True)
    assert report.fatal and "bad.csv line 1: unknown split" in report.problems[0].message
