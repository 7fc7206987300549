"""compare(): several backbones trained alike, a leaderboard, a plot, and a verdict; a failing backbone is a row."""

from __future__ import annotations

import csv

import pytest
from PIL import Image

from conftest import make_synthetic_dataset
from headstart.backbones.spec import UnknownBackboneError
from headstart.compare import COLUMNS, compare, rank_rows, verdict
from headstart.config import ConfigError

FAST = {"image_size": 64, "epochs": 2, "report": False}


@pytest.fixture(scope="module")
def compared(tmp_path_factory):
    """One compare of three backbones: resnet18 has no offline weights, the other two train."""
    import torch
    import torchvision

    tmp = tmp_path_factory.mktemp("compare")
    data = make_synthetic_dataset(tmp / "data")
    random_weights = tmp / "mobilenet_v3_small_random.pth"
    torch.save(torchvision.models.mobilenet_v3_small(weights=None).state_dict(), random_weights)
    downloads, events = [], []

    def unreachable(url, *args, **kwargs):
        downloads.append(url)
        raise OSError("network is unreachable (test)")

    threads = torch.get_num_threads()
    with pytest.MonkeyPatch.context() as mp:
        # The hub is unreachable here anyway; this makes the failure immediate and independent of the network.
        mp.setattr(torch.hub, "download_url_to_file", unreachable)
        mp.setenv("TORCH_HOME", str(tmp / "torch-home"))
        result = compare(data, ["resnet18", "efficientnet_lite0", "mobilenet_v3_small"],
                         weights={"mobilenet_v3_small": str(random_weights)}, out=tmp / "out", latency_runs=5,
                         progress=lambda stage, done, total: events.append((stage, done, total)), **FAST)
    return {"result": result, "out": tmp / "out", "downloads": downloads, "events": events,
            "threads": (threads, torch.get_num_threads())}


def test_leaderboard_files_have_one_row_per_backbone(compared):
    out = compared["out"]
    with open(out / "leaderboard.csv", newline="") as f:
        reader = csv.DictReader(f)
        rows = list(reader)
    assert reader.fieldnames == COLUMNS
    assert [r["backbone"] for r in rows][-1] == "resnet18"  # failed rows go last
    assert {r["backbone"] for r in rows} == {"resnet18", "efficientnet_lite0", "mobilenet_v3_small"}
    ok = [r for r in rows if r["status"] == "ok"]
    assert [r["rank"] for r in ok] == ["1", "2"]
    assert float(ok[0]["val_accuracy"]) >= float(ok[1]["val_accuracy"])
    for r in ok:
        assert 0 <= float(r["test_accuracy"]) <= 1 and r["ece_split"] == "test"
        assert 0 <= float(r["ece_calibrated"]) <= 1
        assert 0 < float(r["latency_p50_ms"]) <= float(r["latency_p95_ms"])
        assert int(r["size_bytes"]) == (out / r["backbone"] / "model.safetensors").stat().st_size
        assert int(r["parameters"]) > int(r["trainable_parameters"]) > 0  # features mode: backbone frozen
        assert int(r["epochs"]) == 2 and float(r["epoch_seconds"]) > 0
        assert float(r["train_seconds"]) > float(r["epoch_seconds"])

    table = [line for line in (out / "leaderboard.md").read_text().splitlines() if line.startswith("|")]
    assert len(table) == 2 + 3  # header, separator, one row per backbone
    assert len({line.count("|") for line in table}) == 1  # every row has the header's number of cells
    assert table[2].startswith(f"| 1 | {ok[0]['backbone']} |")
    assert "failed: WeightsError" in table[-1]


def test_progress_names_the_backbone(compared):
    stages = {stage for stage, _, _ in compared["events"]}
    assert any(s.startswith("efficientnet_lite0: ") for s in stages)
    assert any(s.startswith("mobilenet_v3_small: ") for s in stages)
    assert ("latency", 5, 5) in compared["events"]


def test_latency_threads_are_restored(compared):
    before, after = compared["threads"]
    assert before == after  # timed on one thread, then torch's own setting is back for the caller
    assert "1 torch thread." in (compared["out"] / "leaderboard.md").read_text()


def test_plot_is_a_png(compared):
    path = compared["result"].paths["plot"]
    assert path.stat().st_size > 10_000
    with Image.open(path) as image:
        assert image.format == "PNG" and image.width >= 600


def test_winner_and_verdict(compared):
    result = compared["result"]
    assert result.winner in ("efficientnet_lite0", "mobilenet_v3_small")
    assert result.rows[0]["backbone"] == result.winner
    assert result.verdict.startswith(f"{result.winner} ")
    assert "resnet18 failed" in result.verdict
    assert result.verdict in (compared["out"] / "leaderboard.md").read_text()


def test_backbone_without_offline_weights_is_an_error_row(compared):
    row = next(r for r in compared["result"].rows if r["backbone"] == "resnet18")
    assert row["status"] == "failed" and row["rank"] is None and row["val_accuracy"] is None
    assert row["error"].startswith("WeightsError: could not download the pretrained weights of 'resnet18'")
    assert "--weights" in row["error"]
    assert compared["downloads"], "the hub download should have been tried (and refused) once"
    # the other two trained after it: their run directories are complete
    for name in ("efficientnet_lite0", "mobilenet_v3_small"):
        assert (compared["out"] / name / "model.safetensors").is_file()


def _row(name, val, nll=0.5, latency=10.0, size=1e6, test=None, raw_loss=0.6):
    return {"backbone": name, "status": "ok", "val_accuracy": val, "val_loss": raw_loss, "val_nll_calibrated": nll,
            "latency_p50_ms": latency, "size_bytes": size, "test_accuracy": test}


def test_rank_breaks_ties_by_scaled_val_nll_then_latency():
    rows = rank_rows([_row("slow", 0.9, 0.3, 20), _row("fast", 0.9, 0.3, 10), _row("sure", 0.9, 0.2, 30),
                      _row("best", 0.95, 0.9, 40), {"backbone": "broken", "status": "failed", "error": "x"}])
    assert [r["backbone"] for r in rows] == ["best", "sure", "fast", "slow", "broken"]
    assert [r["rank"] for r in rows] == [1, 2, 3, 4, None]
    # the raw val loss is not the tie-break: it mostly says how under-confident a head is before its temperature
    rows = rank_rows([_row("timid", 0.978, nll=0.13, raw_loss=0.16), _row("sharp", 0.978, nll=0.10, raw_loss=0.18)])
    assert [r["backbone"] for r in rows] == ["sharp", "timid"]
    # a row collected before the scaled NLL existed falls back to its raw val loss
    old = {k: v for k, v in _row("old", 0.9, raw_loss=0.25).items() if k != "val_nll_calibrated"}
    assert [r["backbone"] for r in rank_rows([_row("new", 0.9, nll=0.3), old])] == ["old", "new"]


def test_verdict_names_the_trade_off():
    rows = rank_rows([_row("small", 0.960, latency=10, size=5e6, test=0.95),
                      _row("big", 0.973, latency=19, size=8e6, test=0.97)])
    winner, text = verdict(rows)
    assert winner == "big"
    assert text == ("big wins (val 0.973 vs 0.960; test 0.970 vs 0.950) but is 1.9x slower per image and 1.6x "
                    "larger than small; small is the better choice when latency matters.")
    # the trade-off named is with the best-ranked clearly faster one; the fastest gets its own sentence
    rows = rank_rows([_row("lean", 0.8, nll=0.4, latency=5, test=0.75),
                      _row("mid", 0.9, nll=0.3, latency=8, size=9e6),
                      _row("top", 0.9, nll=0.2, latency=20, size=3e6), _row("same", 0.85, latency=19)])
    assert verdict(rows) == ("top", (
        "top wins (val 0.900, tied, lower val NLL after scaling 0.200 vs 0.300) but is 2.5x slower per image than "
        "mid (though 3.0x smaller); mid is the better choice when latency matters. lean is the fastest (4.0x "
        "faster than top) at val 0.800, test 0.750."))


def test_verdict_without_trade_off_and_with_failures():
    rows = rank_rows([_row("a", 0.99, latency=5, size=4e6), _row("b", 0.90, latency=10, size=4e6),
                      {"backbone": "c", "status": "failed", "error": "boom"}])
    winner, text = verdict(rows)
    assert winner == "a"
    assert text == ("a beats b (val 0.990 vs 0.900) and is also 2.0x faster per image and about the same size: "
                    "no speed trade-off to weigh (c failed: see the leaderboard).")
    assert verdict(rank_rows([{"backbone": "c", "status": "failed", "error": "boom"}])) == (
        None, "No backbone trained (c failed: see the leaderboard).")


def test_bad_requests_fail_before_training(tmp_path):
    data = make_synthetic_dataset(tmp_path / "data", per_split={"train": 2, "val": 1})
    with pytest.raises(ConfigError, match="weights given for backbone"):
        compare(data, ["efficientnet_lite0"], weights={"resnet18": "w.pth"}, out=tmp_path / "a")
    with pytest.raises(ConfigError, match="not_a_setting"):
        compare(data, ["efficientnet_lite0"], out=tmp_path / "b", not_a_setting=1)
    with pytest.raises(ConfigError, match="per backbone"):
        compare(data, ["efficientnet_lite0"], out=tmp_path / "c", backbone="resnet18")
    with pytest.raises(ConfigError, match="--mode auto"):
        compare(data, ["efficientnet_lite0"], out=tmp_path / "f", mode="auto")
    with pytest.raises(UnknownBackboneError, match="no_such_net"):
        compare(data, ["efficientnet_lite0", "no_such_net"], out=tmp_path / "d")
    (tmp_path / "e").mkdir()
    (tmp_path / "e" / "keep.txt").write_text("mine")
    with pytest.raises(ConfigError, match="already exists"):
        compare(data, ["efficientnet_lite0"], out=tmp_path / "e")
    assert not any((tmp_path / p).exists() for p in "abcd")  # nothing trained, nothing written
