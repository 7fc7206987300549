"""Tests for the dataset doctor (headstart.data.check) on synthetic folders, the corpus and real data."""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from headstart.data.check import CheckReport, check_dataset, class_weights, summary_lines
from headstart.data.dataset import DataError
from headstart.data.exclusions import FIX_SPLIT_FILE, fix_split, load_exclusions
from headstart.data.folders import discover
from image_corpus import make_corpus

DEMO = Path(__file__).resolve().parents[2] / "src" / "headstart" / "demo_data"
HYMENOPTERA = Path(__file__).resolve().parents[3] / "shared" / "datasets" / "hymenoptera_data"

_seed = iter(range(10**6))


def _image(path: Path, size: int = 48, fmt: str | None = None) -> Path:
    """A distinct random RGB image (never a duplicate of another one)."""
    rng = np.random.default_rng(next(_seed))
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(rng.integers(0, 256, (size, size, 3), np.uint8)).save(path, fmt)
    return path


def _dataset(root: Path, layout: dict[str, dict[str, int]], size: int = 48) -> Path:
    for split, classes in layout.items():
        for name, n in classes.items():
            (root / split / name).mkdir(parents=True, exist_ok=True)
            for i in range(n):
                _image(root / split / name / f"{name}_{i}.jpg", size)
    return root


def _by_code(report: CheckReport) -> dict[str, tuple[str, list[str]]]:
    codes = [p.code for p in report.problems]
    assert len(codes) == len(set(codes)), f"one problem per code: {codes}"
    return {p.code: (p.severity, p.paths) for p in report.problems}


def _names(paths: list[str]) -> set[str]:
    return {Path(p).name for p in paths}


def test_clean_dataset_has_no_warnings(tmp_path):
    data = _dataset(tmp_path, {"train": {"cat": 6, "dog": 6}, "val": {"cat": 2, "dog": 2}})
    report = check_dataset(data)
    assert not report.fatal
    assert [p for p in report.problems if p.severity != "info"] == []
    assert report.counts == {"train": {"cat": 6, "dog": 6}, "val": {"cat": 2, "dog": 2}}
    assert report.split_origin == "folders" and report.classes == ["cat", "dog"]
    assert report.class_weights is None and report.imbalance_ratio == 1.0
    json.dumps(report.to_dict())  # the CLI's --json
    lines = summary_lines(report)
    assert len(lines) <= 25 and lines[-1].startswith("next: all clear")


def test_broken_and_odd_files_are_reported_with_their_severity(tmp_path):
    data = _dataset(tmp_path, {"train": {"cat": 6, "dog": 6}, "val": {"cat": 2, "dog": 2}})
    make_corpus(data / "train" / "cat")
    png = Image.new("RGB", (40, 40), (1, 2, 3))
    png.save(data / "train" / "dog" / "really_a_png.jpg", "PNG")
    report = check_dataset(data)
    found = _by_code(report)
    expect = {
        "corrupt_image": ("warning", {"truncated.jpg"}),
        "empty_file": ("warning", {"empty.jpg"}),
        "not_an_image": ("warning", {"text.jpg"}),
        "decompression_bomb": ("warning", {"bomb.png"}),
        # every corpus image under 32 px on a side, and nothing else
        "too_small": ("warning", {"tiny.png", "bilevel.png", "gray16.png", "float.tiff", "animated.gif",
                                  "exif_rotated.jpg"}),
        "exif_rotated": ("info", {"exif_rotated.jpg"}),
        "format_mismatch": ("info", {"really_a_png.jpg"}),
        "animated": ("info", {"animated.gif"}),
    }
    for code, (severity, names) in expect.items():
        assert found[code][0] == severity, code
        assert _names(found[code][1]) == names, code
    assert found["mixed_modes"][0] == "info"
    assert {"RGB", "L", "RGBA", "P", "CMYK", "1", "I;16", "F"} <= set(report.modes)
    assert not report.fatal  # training skips unusable files: nothing here stops it
    assert report.counts["train"]["cat"] == 6 + 14  # the 14 decodable corpus images count, the 4 broken not
    # min_side is a parameter: at 16 px only the images below 16 px on a side remain too small
    assert _names(_by_code(check_dataset(data, min_side=16))["too_small"][1]) == {"tiny.png", "gray16.png"}


def test_unreadable_file_is_its_own_problem(tmp_path, monkeypatch):
    data = _dataset(tmp_path, {"train": {"cat": 5, "dog": 5}})
    locked = data / "train" / "cat" / "cat_3.jpg"
    read_bytes = Path.read_bytes

    def refuse(self):  # chmod 000 does not stop root, so refuse this one file at the read
        if self == locked:
            raise PermissionError(13, "Permission denied", str(self))
        return read_bytes(self)

    monkeypatch.setattr(Path, "read_bytes", refuse)
    found = _by_code(check_dataset(data))
    assert found["unreadable"] == ("warning", [str(locked)])


def test_fast_mode_reads_headers_only(tmp_path):
    data = _dataset(tmp_path, {"train": {"cat": 3, "dog": 3}})
    make_corpus(data / "train" / "cat")
    shutil.copy(data / "train" / "dog" / "dog_0.jpg", data / "val_copy.jpg")  # loose, ignored
    found = _by_code(check_dataset(data, fast=True))
    for code in ("empty_file", "not_an_image", "decompression_bomb", "too_small"):
        assert code in found
    assert "corrupt_image" not in found  # a truncated JPEG has an intact header: only the full check sees it
    assert "corrupt_image" in _by_code(check_dataset(data))


def test_duplicates_within_a_split_and_leakage_across_splits(tmp_path):
    data = _dataset(tmp_path, {"train": {"cat": 5, "dog": 5}, "val": {"cat": 2, "dog": 2},
                               "test": {"cat": 2, "dog": 2}})
    train_cat = data / "train" / "cat"
    shutil.copy(train_cat / "cat_0.jpg", train_cat / "cat_0_copy.jpg")  # within train, same class
    shutil.copy(train_cat / "cat_1.jpg", data / "train" / "dog" / "cat_1_as_dog.jpg")  # two classes
    shutil.copy(train_cat / "cat_2.jpg", data / "val" / "cat" / "leak_val.jpg")  # train -> val
    shutil.copy(train_cat / "cat_2.jpg", data / "test" / "cat" / "leak_test.jpg")  # train -> test
    shutil.copy(train_cat / "cat_2.jpg", train_cat / "cat_2_copy.jpg")  # and once more within train
    shutil.copy(data / "val" / "dog" / "dog_0.jpg", data / "test" / "dog" / "leak_val_test.jpg")
    report = check_dataset(data)
    found = _by_code(report)
    assert found["leakage"][0] == "fatal" and report.fatal
    assert _names(found["leakage"][1]) == {"cat_2.jpg", "cat_2_copy.jpg", "leak_val.jpg", "leak_test.jpg",
                                           "dog_0.jpg", "leak_val_test.jpg"}
    assert found["duplicates"][0] == "warning"
    assert _names(found["duplicates"][1]) == {"cat_0.jpg", "cat_0_copy.jpg", "cat_1.jpg", "cat_1_as_dog.jpg"}
    assert found["conflicting_labels"][0] == "warning"
    assert _names(found["conflicting_labels"][1]) == {"cat_1.jpg", "cat_1_as_dog.jpg"}
    assert "leaves the leaked val/test copies out" in summary_lines(report)[-1]
    assert "leakage" not in _by_code(check_dataset(data, fast=True))  # fast mode does not hash

    out = fix_split(data, report, out_dir=tmp_path / "fix")
    assert out == tmp_path / "fix" / FIX_SPLIT_FILE
    record = json.loads(out.read_text())
    # the train copy is kept; val beats test when train has no copy
    assert record["exclude"] == ["test/cat/leak_test.jpg", "test/dog/leak_val_test.jpg",
                                 "val/cat/leak_val.jpg"]
    assert record["duplicate_of"]["val/cat/leak_val.jpg"] == "train/cat/cat_2.jpg"
    fixed = check_dataset(data, exclude=load_exclusions(out, data))
    assert not fixed.fatal and fixed.counts["val"]["cat"] == 2


def test_generated_split_matches_discover_and_catches_leakage_it_creates(tmp_path):
    data = _dataset(tmp_path / "flat", {".": {"cat": 10, "dog": 4}})
    for i in range(4):  # copies within one folder: the generated val split can put them on both sides
        shutil.copy(data / "cat" / f"cat_{i}.jpg", data / "cat" / f"copy_{i}.jpg")
    report = check_dataset(data, val_fraction=0.5, seed=3)
    assert report.split_origin == "generated"
    assert report.counts == discover(data, val_fraction=0.5, seed=3).counts()  # the same split training draws
    leak = _by_code(report)["leakage"]
    assert leak[0] == "fatal"
    record = json.loads(fix_split(data, report, out_dir=tmp_path).read_text())
    assert len(record["exclude"]) == 4  # one copy of every duplicate pair goes, leaked or not yet
    excluded = load_exclusions(tmp_path / FIX_SPLIT_FILE, data)
    assert not check_dataset(data, val_fraction=0.5, seed=3, exclude=excluded).fatal


def test_broken_layouts_are_reported_not_raised(tmp_path):
    data = _dataset(tmp_path, {"train": {"cat": 4, "dog": 4}, "val": {"cat": 2, "dog": 2, "bird": 1}})
    (data / "train" / "fish").mkdir()
    (data / "test" / "cat").mkdir(parents=True)
    _image(data / "test" / "cat" / "t.jpg")
    _image(data / "train" / "loose.jpg")
    (data / "train" / "cat" / "notes.txt").write_text("hi")
    with pytest.raises(DataError):
        discover(data)
    report = check_dataset(data)
    found = _by_code(report)
    assert found["class_mismatch"][0] == "fatal" and _names(found["class_mismatch"][1]) == {"bird"}
    assert found["empty_class"][0] == "fatal"  # an empty train class: discover refuses it
    assert _names(found["empty_class"][1]) == {"fish"}
    assert found["class_missing_from_split"][0] == "warning"
    assert found["loose_images"] == ("warning", [str(data / "train" / "loose.jpg")])
    assert found["non_image_files"][0] == "info"
    assert found["few_images"][0] == "warning"  # fish has 0 usable images, cat and dog 4
    assert report.fatal and len(summary_lines(report)) <= 25


def test_empty_class_outside_train_is_a_warning(tmp_path):
    data = _dataset(tmp_path, {"train": {"cat": 5, "dog": 5}, "val": {"cat": 2}})
    (data / "val" / "dog").mkdir()
    report = check_dataset(data)
    assert _by_code(report)["empty_eval_class"] == ("warning", [str(data / "val" / "dog")])
    assert not report.fatal


@pytest.mark.parametrize("make", ["nothing", "only_loose_images", "missing"])
def test_no_classes_is_fatal(tmp_path, make):
    data = tmp_path / "data"
    if make != "missing":
        data.mkdir()
    if make == "only_loose_images":
        _image(data / "a.jpg")
    report = check_dataset(data)
    assert report.fatal and report.problems[0].code in ("no_classes", "not_found")
    assert summary_lines(report)[-1].startswith("next: fix the FATAL")


def test_class_weights_rule(tmp_path):
    data = _dataset(tmp_path, {"train": {"a": 12, "b": 4, "c": 8}, "val": {"a": 1, "b": 1, "c": 1}})
    report = check_dataset(data)
    assert report.imbalance_ratio == 3.0
    assert report.class_weights == pytest.approx({"a": 24 / 36, "b": 24 / 12, "c": 24 / 24})
    assert _by_code(report)["imbalance"][0] == "info"
    assert class_weights([12, 4, 8]) == pytest.approx([24 / 36, 24 / 12, 24 / 24])
    assert class_weights([10, 7]) is None  # at or below 1.5x: no weights
    assert class_weights([4, 2]) is not None
    assert class_weights([5, 0]) is None and class_weights([1]) is None
    assert class_weights([12, 4, 8], mode="none") is None


def test_speed_full_and_fast_on_500_images(tmp_path):
    rng = np.random.default_rng(0)
    base = rng.integers(0, 256, (120, 160, 3), np.uint8)
    for i in range(500):
        arr = base.copy()
        arr[:8, :8], arr[8:16, :8] = i % 256, i // 256  # whole 8x8 JPEG blocks, so the files differ too
        d = tmp_path / "train" / f"c{i % 5}"
        d.mkdir(parents=True, exist_ok=True)
        Image.fromarray(arr).save(d / f"{i}.jpg", quality=85)
    check_dataset(tmp_path, fast=True)  # warm the file cache and imports
    start = time.perf_counter()
    fast = check_dataset(tmp_path, fast=True)
    fast_s = time.perf_counter() - start
    start = time.perf_counter()
    full = check_dataset(tmp_path)
    full_s = time.perf_counter() - start
    assert fast.files == full.files == 500
    assert fast_s < 1.0, fast_s
    assert full_s < 10.0, full_s
    assert not full.fatal and "duplicates" not in _by_code(full)


def test_bundled_demo_set_is_clean():
    report = check_dataset(DEMO)
    assert not report.fatal
    assert [p.code for p in report.problems if p.severity != "info"] == []
    assert set(report.counts) == {"train", "val", "test"}


@pytest.mark.integration
@pytest.mark.skipif(not HYMENOPTERA.is_dir(), reason="shared hymenoptera_data not available")
def test_hymenoptera_runs_without_fatal_problems():
    start = time.perf_counter()
    report = check_dataset(HYMENOPTERA)
    assert time.perf_counter() - start < 20
    assert not report.fatal, summary_lines(report)
    assert report.files == 398
