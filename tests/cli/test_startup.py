"""The `headstart` command's start-up hooks (headstart.cli.startup) change its own process only: a library call
leaves a user's process as it found it, and torch.compile works there as in plain torch."""

import json
import os
import subprocess
import sys

import pytest


def _python(code: str, *args: str, timeout: int = 300) -> dict:
    done = subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True, timeout=timeout)
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


def _command(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    """`python -m headstart.cli ARGS`, which is what the installed `headstart` script runs (cli.command)."""
    return subprocess.run([sys.executable, "-m", "headstart.cli", *args], capture_output=True, text=True,
                          timeout=120, env=env)


def test_a_successful_command_flushes_its_output_before_the_fast_exit():
    """stdout is a pipe here, so it is block-buffered: what a command wrote last, without a flush of its own
    (rich flushes its prints), would be lost by os._exit."""
    code = ("import sys\nimport headstart.cli.entrypoint as cli\n"
            "cli.main = lambda: sys.stdout.write('the last line, unflushed')\ncli.command()\n")
    buffered = {k: v for k, v in os.environ.items() if k != "PYTHONUNBUFFERED"}
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, env=buffered)
    assert done.returncode == 0, done.stderr
    assert done.stdout == "the last line, unflushed"


def test_a_failed_command_keeps_its_exit_code(tmp_path):
    failed = _command("train", str(tmp_path / "missing"))
    assert failed.returncode == 2
    assert "data folder not found" in failed.stderr + failed.stdout


def test_the_installed_script_runs_the_fast_exit():
    from importlib.metadata import entry_points

    (script,) = [e for e in entry_points(group="console_scripts") if e.name == "headstart"]
    assert script.value == "headstart.cli:command"


_USER_PROCESS = r"""
import gc, json, sys
finders = [type(f).__name__ for f in sys.meta_path]
import headstart
import torch

run = headstart.train(sys.argv[1], out=sys.argv[2], mode="finetune", epochs=2, image_size=64, batch_size=8,
                      precision="32")  # the report too: Grad-CAM's backward pass
clf = headstart.load(run.run_dir)
clf.predict([str(p) for p in sorted(__import__("pathlib").Path(sys.argv[1]).rglob("*.png"))[:2]])
state = {"finders": [type(f).__name__ for f in sys.meta_path] == finders, "gc": gc.isenabled(),
         "frozen": gc.get_freeze_count(),
         "dynamo": type(sys.modules.get("torch._dynamo", torch)).__name__,
         "stand-ins": sorted(n for n, m in sys.modules.items() if type(m).__module__.startswith("headstart"))}
model = clf.net.eval()
x = torch.randn(2, 3, 64, 64)
compiled = torch.compile(model, backend="eager")  # torch's own tracer, without a C compiler
with torch.no_grad():
    state["compiled equals eager"] = bool(torch.allclose(compiled(x), model(x), atol=1e-5))
state["optimized module"] = isinstance(compiled, torch._dynamo.OptimizedModule)
state["losses"] = [row["train_loss"] for row in run.history]
print(json.dumps(state))
"""

_COMMAND_PROCESS = r"""
import gc, json, sys
from headstart.cli import startup
startup.install()
import headstart
import torch

run = headstart.train(sys.argv[1], out=sys.argv[2], mode="finetune", epochs=2, image_size=64, batch_size=8,
                      precision="32")
state = {"dynamo": type(sys.modules.get("torch._dynamo")).__name__, "frozen": gc.get_freeze_count() > 0,
         "gc": gc.isenabled(), "sklearn": "sklearn" in sys.modules,
         "losses": [row["train_loss"] for row in run.history]}
disable = sys.modules["torch._dynamo"].disable
plain = lambda x: x + 1
state["disable"] = [disable(plain)(1), disable(recursive=False)(plain)(1)]
# torch.compile's first step imports one of torch._dynamo's modules: the real package takes over
model = torch.nn.Linear(3, 2)
compiled = torch.compile(model, backend="eager")
x = torch.randn(4, 3)
with torch.no_grad():
    state["compiled equals eager"] = bool(torch.allclose(compiled(x), model(x)))
state["dynamo after compile"] = type(sys.modules["torch._dynamo"]).__name__
print(json.dumps(state))
"""


def test_a_library_call_leaves_the_process_as_it_found_it(synthetic_data, tmp_path):
    """import headstart; headstart.train(...); torch.compile(model) in one user process behaves as plain torch:
    no stand-in in sys.modules, no finder added to sys.meta_path, the collector on and nothing frozen."""
    state = _python(_USER_PROCESS, str(synthetic_data), str(tmp_path / "run"))
    assert state["finders"] and state["gc"] and state["frozen"] == 0
    assert state["dynamo"] in ("module", "torch")  # the real package, or not imported at all
    assert state["stand-ins"] == []
    assert state["compiled equals eager"] and state["optimized module"]


def test_the_command_process_trains_the_same_without_dynamo_and_can_still_compile(synthetic_data, tmp_path):
    """In the command's process torch._dynamo stays a stand-in through training and the report (1.2 s of
    imports), the imports are frozen out of the collector's reach, and training gives exactly the losses of a
    plain process. Compiling afterwards still works, on the real package."""
    plain = _python(_USER_PROCESS, str(synthetic_data), str(tmp_path / "plain"))
    hooked = _python(_COMMAND_PROCESS, str(synthetic_data), str(tmp_path / "hooked"))
    assert (tmp_path / "hooked" / "report.html").is_file()
    assert hooked["dynamo"] == "_LazyDynamo" and hooked["frozen"] and hooked["gc"]
    assert hooked["losses"] == plain["losses"]
    assert hooked["disable"] == [2, 2]
    assert hooked["compiled equals eager"] and hooked["dynamo after compile"] == "module"


_DEFERRAL = r"""
import json, sys
sys.path.insert(0, sys.argv[1])
from headstart.cli import startup
startup.DEFERRED.update({"hs_user": ("hs_heavy", "hs_heavy.sub"), "hs_bad": ("hs_other",)})
startup.install()
seen = {}
import hs_user
seen["heavy imported by the deferred import"] = "hs_heavy" in sys.modules
seen["compute"] = hs_user.compute(2)  # the call imports the real module
seen["heavy imported by the call"] = "hs_heavy" in sys.modules
seen["thing"] = hs_user.Thing().name
import hs_heavy.sub
seen["later import is real"] = type(sys.modules["hs_heavy.sub"]).__name__ == "module"
import hs_bad
seen["bad value"] = hs_bad.VALUE
seen["bad fell back to a real import"] = type(sys.modules["hs_other"]).__name__ == "module"
print(json.dumps(seen))
"""


def test_deferred_imports_resolve_on_call_and_fall_back_when_used_at_import(tmp_path):
    """A package's `from heavy import f` does not import heavy; calling f does. A package that uses a deferred
    module at import is imported again with the real one."""
    (tmp_path / "hs_heavy").mkdir()
    (tmp_path / "hs_heavy" / "__init__.py").write_text("def double(x):\n    return 2 * x\n")
    (tmp_path / "hs_heavy" / "sub.py").write_text("class Thing:\n    name = 'real thing'\n")
    (tmp_path / "hs_user.py").write_text("from hs_heavy import double\nfrom hs_heavy.sub import Thing\n\n"
                                         "def compute(x):\n    return double(x)\n")
    (tmp_path / "hs_other.py").write_text("VALUE = 41\n")
    (tmp_path / "hs_bad.py").write_text("import hs_other\nVALUE = hs_other.VALUE + 1\n")
    assert _python(_DEFERRAL, str(tmp_path), timeout=60) == {
        "heavy imported by the deferred import": False, "compute": 4, "heavy imported by the call": True,
        "thing": "real thing", "later import is real": True, "bad value": 42, "bad fell back to a real import": True,
    }


def test_grad_cam_imports_without_scikit_learn_scipy_or_matplotlib_in_the_command():
    """grad-cam's unused dependencies are deferred in the command (1.2 s of its import), and resolve when called."""
    script = (
        "import json, sys, numpy as np\n"
        "from headstart.cli import startup\n"
        "startup.install()\n"
        "from headstart.report.explain import _grad_cam_package\n"
        "GradCAM, _ = _grad_cam_package()\n"
        "assert GradCAM.__name__ == 'GradCAM'\n"
        "left = [m for m in ('sklearn', 'scipy', 'matplotlib') if m in sys.modules]\n"
        "assert not left, left\n"
        "import pytorch_grad_cam.utils.image as image, pytorch_grad_cam.utils.svd_on_activations as svd\n"
        "a = np.random.default_rng(0).random((3, 4, 5)).astype('f')\n"
        "import scipy.ndimage\n"
        "assert np.array_equal(image.zoom(a, [2, 2, 2]), scipy.ndimage.zoom(a, [2, 2, 2]))\n"
        "from sklearn.decomposition import KernelPCA\n"
        "assert isinstance(svd.KernelPCA(n_components=1), KernelPCA)\n"
        "import matplotlib.pyplot\n"
        "assert image.plt.get_cmap is matplotlib.pyplot.get_cmap\n"
        "print(json.dumps({'ok': True}))\n"
    )
    assert _python(script, timeout=120) == {"ok": True}


@pytest.mark.parametrize("value", ["0"])
def test_the_hooks_can_be_left_out_to_measure_them(value):
    code = ("import json, sys\nfrom headstart.cli import startup\nstartup.install()\nimport torch\n"
            "print(json.dumps({'installed': startup.installed(), 'dynamo': 'torch._dynamo' in sys.modules}))")
    env = {**os.environ, "HEADSTART_STARTUP_HOOKS": value}
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, env=env)
    assert done.returncode == 0, done.stderr[-2000:]
    assert json.loads(done.stdout.strip().splitlines()[-1])["installed"] is False
