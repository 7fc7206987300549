"""headstart.runtime predicts in a process where torch cannot be imported, with the torch engine's labels."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

import headstart

BLOCKED = ("torch", "torchvision", "timm", "lightning_fabric", "lightning")

# Runs before anything else in the child: any import of a blocked package, direct or indirect, fails.
PRELUDE = textwrap.dedent(f"""
    import importlib.abc, sys

    class NoTorch(importlib.abc.MetaPathFinder):
        def find_spec(self, name, path=None, target=None):
            if name.split(".")[0] in {BLOCKED!r}:
                # What a real install without the [train] extra raises.
                raise ModuleNotFoundError(f"{{name}} is blocked: the runtime must not import it", name=name)
            return None

    sys.meta_path.insert(0, NoTorch())
""")

CHILD = PRELUDE + textwrap.dedent("""
    import json

    try:
        import torch  # noqa: F401
    except ImportError:
        pass
    else:
        raise SystemExit("the blocker does not work")

    from headstart.runtime import load_onnx

    clf = load_onnx(sys.argv[1])
    results = clf.predict(json.loads(sys.argv[2]), top_k=2)
    loaded = sorted(m for m in sys.modules if m.split(".")[0] in {blocked!r})
    print(json.dumps({"results": results, "loaded": loaded, "classes": clf.classes}))
""").replace("{blocked!r}", repr(BLOCKED))


def run_child(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", CHILD, *args], check=False, capture_output=True, text=True,
                          timeout=120, env=os.environ.copy())


@pytest.fixture(scope="module")
def run(tmp_path_factory) -> Path:
    from conftest import make_synthetic_dataset
    from headstart.inference.export import export_onnx

    root = tmp_path_factory.mktemp("notorch")
    data = make_synthetic_dataset(root / "data", per_split={"train": 8, "val": 3, "test": 2})
    result = headstart.train(data, mode="features", epochs=3, image_size=64, out=str(root / "run"))
    export_onnx(result.run_dir)
    return result.run_dir


def test_prediction_without_torch_matches_the_torch_engine(run, tmp_path):
    split = json.loads((run / "split.json").read_text())
    paths = [str(Path(split["root"]) / f) for f in split["files"]["test"]] + [str(tmp_path / "missing.jpg")]
    proc = run_child(str(run), json.dumps(paths))
    assert proc.returncode == 0, proc.stderr
    child = json.loads(proc.stdout)
    assert child["loaded"] == []
    expected = headstart.load(run).predict(paths, top_k=2)
    assert [r.get("label") for r in child["results"]] == [r.get("label") for r in expected]
    assert child["results"][-1] == expected[-1] == {"path": paths[-1], "error": "file not found"}
    assert child["classes"] == ["blue", "green", "red"]


def test_the_blocker_really_blocks():
    """The test above can fail: a module that imports torch is stopped in the child."""
    proc = subprocess.run([sys.executable, "-c", PRELUDE + "import headstart.backbones.model"],
                          check=False, capture_output=True, text=True, timeout=120)
    assert proc.returncode != 0 and "torch is blocked" in proc.stderr


def test_cli_predict_with_the_onnx_engine_without_torch(run):
    """`headstart predict RUN --engine onnx` in a process where torch cannot be imported."""
    split = json.loads((run / "split.json").read_text())
    folder = Path(split["root"]) / "test"
    code = PRELUDE + textwrap.dedent("""
        from headstart.cli import main
        sys.argv = ["headstart", "predict", *sys.argv[1:]]
        main()
    """)
    proc = subprocess.run([sys.executable, "-c", code, str(run), str(folder), "--engine", "onnx", "--json"],
                          capture_output=True, text=True, timeout=120, env=os.environ.copy())
    assert proc.returncode == 0, proc.stderr
    rows = [json.loads(line) for line in proc.stdout.splitlines()]
    from headstart.inference.classifier import expand_paths

    expected = headstart.load(run).predict(expand_paths([folder]))
    assert [r["label"] for r in rows] == [r["label"] for r in expected]
    train = subprocess.run([sys.executable, "-c", code.replace('"predict"', '"train"'), str(folder)],
                           capture_output=True, text=True, timeout=120, env=os.environ.copy())
    assert train.returncode == 2 and "pip install 'headstart[train]'" in train.stderr
    assert "Traceback" not in train.stderr
