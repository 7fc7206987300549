"""Accuracy on real data with real pretrained weights (efficientnet_lite0, CPU), thresholds from measured runs.

Measured on the project's 2-core machines (see docs/benchmarks.md): pizza_steak_sushi features 0.96 test,
hymenoptera features 0.948 val, hymenoptera finetune >= 0.93 val.
"""

import json
import subprocess
import sys
import time

import pytest

import headstart
from headstart import device
from headstart.device import cpu_has_int8_dot

pytestmark = pytest.mark.integration


def test_pizza_steak_sushi_features_cli_under_a_minute(shared, tmp_path):
    run_dir = tmp_path / "pss"
    started = time.perf_counter()
    subprocess.run([sys.executable, "-m", "headstart.cli", "train", str(shared / "datasets" / "pizza_steak_sushi"),
                    "--mode", "features", "--out", str(run_dir), "--no-progress"], check=True, capture_output=True,
                   timeout=600)
    wall = time.perf_counter() - started
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert metrics["test"]["accuracy"] >= 0.90
    # The target is 60 s on an idle 2-core machine (measured there: see docs/benchmarks.md). Under
    # `make test` this process gets one thread beside another xdist worker, so only a sanity bound holds here.
    assert wall < 300, f"{wall:.0f}s"


def test_pizza_steak_sushi_int8_features(shared, tmp_path, caplog):
    """--int8-features: the backbone quantized by NNCF extracts on OpenVINO, the head trains in fp32. Measured
    0.947 test (fp32 and bf16 features: 0.947-0.960; docs/benchmarks.md), and the cache keeps int8 rows apart.
    On a CPU without VNNI or AMX the run extracts in fp32 instead, and says so."""
    device._warn_no_int8_dot.cache_clear()  # said once per process: perhaps already, by another test
    with caplog.at_level("WARNING", logger="headstart.device"):
        result = headstart.train(shared / "datasets" / "pizza_steak_sushi", mode="features", int8_features=True,
                                 out=str(tmp_path / "int8"), report=False)
    extraction = json.loads((result.run_dir / "summary.json").read_text())["extraction"]
    if cpu_has_int8_dot():
        assert (extraction["engine"], extraction["precision"], extraction["computed"]) == ("openvino", "int8", 300)
    else:  # fp32 features, as any fp32 run's: from the cache where another test extracted them first
        assert extraction["precision"] == "32-true" and "no int8 dot-product instructions" in caplog.text
    assert result.metrics["test"]["accuracy"] >= 0.92


@pytest.fixture(scope="module")
def hymenoptera(shared):
    return shared / "datasets" / "hymenoptera_data"


def test_hymenoptera_features(hymenoptera, tmp_path):
    # fp32 extraction: on a CPU with native bf16, "auto" extracts in bf16, and one of these val images has a top-2
    # margin of 0.01, which bf16's rounding can flip against the fp32 reload below.
    result = headstart.train(hymenoptera, mode="features", out=str(tmp_path / "fe"), report=False, precision="32")
    assert result.metrics["val"]["accuracy"] >= 0.93
    assert result.metrics["val"]["n"] == 153
    # The reloaded classifier scores the val split exactly as training did: the same decoding (JPEGs at a reduced
    # DCT scale) and preprocessing.
    clf = result.load()
    val = json.loads((result.run_dir / "split.json").read_text())["files"]["val"]
    predictions = clf.predict([str(hymenoptera / rel) for rel in val])
    correct = sum(p["top_k"][0][0] == rel.split("/")[1] for p, rel in zip(predictions, val))
    assert correct / len(val) == pytest.approx(result.metrics["val"]["accuracy"])


def test_hymenoptera_finetune(hymenoptera, tmp_path):
    # The last stage fine-tunes on cached prefix activations (one view: no augmentation keeps this test short;
    # the default, 4 augmented views, measured 0.948 too, see docs/benchmarks.md).
    result = headstart.train(hymenoptera, mode="finetune", epochs=4, augment="none", views=1, report=False,
                             out=str(tmp_path / "ft"))
    assert json.loads((result.run_dir / "summary.json").read_text())["extraction"]["prefix_cached"]
    assert result.metrics["val"]["accuracy"] >= 0.93
