"""fixes.json: written from the suggestions, read back against DATA, and refused whole, in one line, when it names
a missing file, an unknown class or an unknown format."""

from __future__ import annotations

import json

import pytest

from headstart.audit.fixes import apply_relabels, load_fixes, write_fixes
from headstart.data.dataset import DataError
from headstart.data.exclusions import fix_split
from headstart.data.folders import discover


def test_suggested_fixes_relabel_the_flipped_image_and_exclude_the_leaked_copy(audited, tmp_path):
    data, report = audited
    fixes = report.suggested_fixes()
    assert {"path": "train/green/red_3.jpg", "action": "relabel", "label": "red", "reason": "label_issue",
            "given": "green"} in fixes
    assert {"path": "test/blue/copy_of_blue_0.jpg", "action": "exclude", "reason": "leakage",
            "duplicate_of": "train/blue/blue_0.jpg"} in fixes
    file = write_fixes(tmp_path / "fixes.json", data, fixes)
    loaded = load_fixes(file, data, ["blue", "green", "red"])
    assert loaded.relabel[str(data / "train" / "green" / "red_3.jpg")] == "red"
    assert str(data / "test" / "blue" / "copy_of_blue_0.jpg") in loaded.exclude
    dataset = discover(data, exclude=loaded.exclude)
    changes = apply_relabels(dataset, loaded)
    assert {"path": "train/green/red_3.jpg", "split": dataset_split(dataset, "red_3.jpg"), "from": "green",
            "to": "red"} in changes
    assert all("copy_of_blue_0" not in p for items in dataset.splits.values() for p, _ in items)


def dataset_split(dataset, name):
    return next(s for s, items in dataset.splits.items() for p, _ in items if p.endswith(name))


def test_the_fix_split_file_is_read_as_exclusions(tmp_path, audited):
    data, report = audited
    written = fix_split(data, report.check, tmp_path)
    loaded = load_fixes(written, data)
    assert loaded.exclude == {str(data / "test" / "blue" / "copy_of_blue_0.jpg")} and not loaded.relabel


@pytest.mark.parametrize(("record", "message"), [
    ({"format": "headstart.fixes/1", "fixes": [{"path": "train/red/nope.jpg", "action": "exclude"}]},
     r"fix 1: train/red/nope\.jpg is not a file in .*photos"),
    ({"format": "headstart.fixes/1", "fixes": [{"path": "train/red/red_0.jpg", "action": "relabel",
                                                "label": "purple"}]},
     r"unknown class 'purple' for train/red/red_0\.jpg; classes are blue, green, red"),
    ({"format": "something/2", "fixes": []}, r"unknown format 'something/2'"),
    ({"format": "headstart.fixes/1", "fixes": [{"path": "train/red/red_0.jpg", "action": "delete"}]},
     r"unknown action 'delete'"),
])
def test_bad_fixes_are_one_line_errors(audited, tmp_path, record, message):
    data, _ = audited
    file = tmp_path / "fixes.json"
    file.write_text(json.dumps(record))
    with pytest.raises(DataError, match=message) as caught:
        load_fixes(file, data, ["blue", "green", "red"])
    assert "\n" not in str(caught.value)


def test_a_missing_or_broken_fixes_file_is_one_line(audited, tmp_path):
    data, _ = audited
    with pytest.raises(DataError, match="fixes file not found"):
        load_fixes(tmp_path / "absent.json", data)
    (tmp_path / "broken.json").write_text("{not json")
    with pytest.raises(DataError, match="not readable JSON"):
        load_fixes(tmp_path / "broken.json", data)
