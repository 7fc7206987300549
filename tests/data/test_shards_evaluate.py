"""`evaluate` reads every source `train` reads: shard members and CSV-listed files, with per-item failures."""

from __future__ import annotations

import json
import os
import tarfile

from conftest import make_synthetic_dataset
from headstart.data.folders import discover
from headstart.data.shard_writer import write_shards
from headstart.data.shards import shard_member
from headstart.evaluate import evaluate_run


def test_evaluate_a_shards_run_on_shards_and_on_a_csv_list(tmp_path):
    import headstart

    data = make_synthetic_dataset(tmp_path / "data", per_split={"train": 6, "val": 2, "test": 2}, size=24)
    folder = discover(data)
    shards = tmp_path / "shards"
    write_shards(data, shards, shard_size_bytes=20_000)
    csv = data / "list.csv"
    csv.write_text("".join(f"{os.path.relpath(p, data)},{folder.classes[y]},{split}\n"
                           for split, items in folder.splits.items() for p, y in items))
    run = headstart.train(shards, backbone="efficientnet_lite0", out=str(tmp_path / "run"), epochs=2,
                          image_size=64, report=False, seed=1)

    for source, split in ((shards, None), (csv, "val")):  # None: test, as for a folder
        m = evaluate_run(run.run_dir, source, split=split, out_dir=tmp_path / f"eval-{source.name}")
        assert m["split"] == (split or "test") and m["data"] == str(source.resolve())
        assert m["n"] == len(discover(source).splits[m["split"]]) == 6, source  # every item read, none skipped
        assert m["skipped"] == [] and sum(map(sum, m["confusion_matrix"])) == 6
        saved = json.loads((tmp_path / f"eval-{source.name}" / f"evaluation_{m['split']}.json").read_text())
        assert saved["n"] == 6

    # a corrupt member is one skipped item named by its pseudo-path, not six "file not found"s
    broken = data / "test" / "red" / "red_1.jpg"
    broken.write_bytes(broken.read_bytes()[:300])
    write_shards(data, tmp_path / "shards-broken", shard_size_bytes=20_000)
    m = evaluate_run(run.run_dir, tmp_path / "shards-broken", out_dir=tmp_path / "eval-broken")
    assert m["n"] == 5 and len(m["skipped"]) == 1
    path, reason = m["skipped"][0]["path"], m["skipped"][0]["reason"]
    assert shard_member(path) is not None and "truncated" in reason
    with tarfile.open(shard_member(path)[0]) as tar:
        assert shard_member(path)[1] in tar.getnames()
