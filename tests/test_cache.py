"""headstart's cache folder: its parts' sizes, clearing them, and `headstart cache`, which imports no torch."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
import torch

from headstart.cache import cache_usage, clear_cache
from headstart.extract.feature_cache import FeatureCache


def _fill(root):
    cache = FeatureCache(root)
    cache.write("k", ["a", "b"], torch.ones(2, 4))
    (root / "engines" / "onnx").mkdir(parents=True)
    (root / "engines" / "onnx" / "g.onnx").write_bytes(b"x" * 1000)
    (root / "bf16-speed.json").write_text("{}")  # a file of the cache's own: never counted or cleared


def test_usage_counts_each_part_and_clearing_one_keeps_the_others(tmp_path):
    _fill(tmp_path)
    usage = cache_usage(tmp_path)
    assert usage["features"]["files"] == 2 and usage["features"]["bytes"] > 0  # the .npy and its hash list
    assert usage["engines"] == {"path": str(tmp_path / "engines"), "files": 1, "bytes": 1000}
    assert clear_cache(["engines"], tmp_path) == 1000
    assert not (tmp_path / "engines").exists() and cache_usage(tmp_path)["features"] == usage["features"]
    assert clear_cache(["all"], tmp_path) == usage["features"]["bytes"]
    assert cache_usage(tmp_path)["features"]["files"] == 0 and (tmp_path / "bf16-speed.json").is_file()
    assert clear_cache(["all"], tmp_path) == 0  # clearing an empty cache is fine


def test_an_unknown_part_is_refused_before_anything_is_removed(tmp_path):
    _fill(tmp_path)
    with pytest.raises(ValueError, match="unknown cache part"):
        clear_cache(["engines", "models"], tmp_path)
    assert (tmp_path / "engines").is_dir()


def test_cli_lists_and_clears_without_importing_torch(tmp_path):
    _fill(tmp_path)
    code = ("import sys\nfrom headstart.cli import main\nsys.argv = ['headstart', 'cache', *sys.argv[1:]]\n"
            "try:\n    main()\nexcept SystemExit as exc:\n    assert not exc.code, exc.code\n"
            "print('torch imported:', 'torch' in sys.modules)\n")
    env = dict(os.environ, HEADSTART_CACHE=str(tmp_path), COLUMNS="200")
    listed = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    assert listed.returncode == 0, listed.stderr
    assert "features" in listed.stdout and "engines" in listed.stdout and "torch imported: False" in listed.stdout
    cleared = subprocess.run([sys.executable, "-c", code, "--clear", "features"], env=env, capture_output=True,
                             text=True, timeout=120)
    assert cleared.returncode == 0, cleared.stderr
    assert "freed" in cleared.stdout and not (tmp_path / "features").exists() and (tmp_path / "engines").is_dir()
