"""paused_gc pauses the cyclic collector and restores the caller's setting; the `headstart` command's fast exit
keeps its output and its exit code."""

import gc
import json
import os
import subprocess
import sys

import pytest

from headstart.startup import paused_gc


@pytest.mark.parametrize("enabled", [True, False])
def test_paused_gc_restores_what_the_caller_had(enabled):
    (gc.enable if enabled else gc.disable)()
    try:
        with paused_gc():
            assert not gc.isenabled()
        assert gc.isenabled() == enabled
        with pytest.raises(KeyError), paused_gc():
            raise KeyError("an import that fails")
        assert gc.isenabled() == enabled
    finally:
        gc.enable()


def test_overlapping_blocks_in_two_threads_leave_the_collector_on():
    """A opens, B opens, A closes (still paused: B is inside), B closes (on again)."""
    import threading

    a_in, b_in, a_out = threading.Event(), threading.Event(), threading.Event()
    seen = {}

    def a():
        with paused_gc():
            a_in.set()
            b_in.wait(10)
        a_out.set()

    def b():
        a_in.wait(10)
        with paused_gc():
            b_in.set()
            a_out.wait(10)
            seen["after A closed"] = gc.isenabled()

    threads = [threading.Thread(target=a), threading.Thread(target=b)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(20)
    assert seen == {"after A closed": False}
    assert gc.isenabled()


def _command(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    """`python -m headstart.cli ARGS`, which is what the installed `headstart` script runs (cli.command)."""
    return subprocess.run([sys.executable, "-m", "headstart.cli", *args], capture_output=True, text=True,
                          timeout=120, env=env)


def test_a_successful_command_flushes_its_output_before_the_fast_exit():
    """stdout is a pipe here, so it is block-buffered: what a command wrote last, without a flush of its own
    (rich flushes its prints), would be lost by os._exit."""
    code = ("import sys\nimport headstart.cli as cli\n"
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


_DEFERRAL_SCRIPT = r'''
import json, logging, sys
from headstart.startup import import_deferring

sys.path.insert(0, sys.argv[1])
seen = {}

def load_user():
    import hs_user
    return hs_user

user = import_deferring(load_user, ("hs_heavy", "hs_heavy.sub"), "hs_user")
seen["heavy imported by the deferred import"] = "hs_heavy" in sys.modules
seen["compute"] = user.compute(2)  # the call imports the real module
seen["heavy imported by the call"] = "hs_heavy" in sys.modules
seen["thing"] = user.Thing().name
import hs_heavy.sub
seen["later import is real"] = type(sys.modules["hs_heavy.sub"]).__name__ == "module"

def load_bad():
    import hs_bad
    return hs_bad

bad = import_deferring(load_bad, ("hs_other",), "hs_bad")
seen["bad value"] = bad.VALUE
seen["its first module, imported again"] = bad.first.VALUE
seen["bad fell back to a real import"] = type(sys.modules["hs_other"]).__name__ == "module"
print(json.dumps(seen))
'''


def test_deferred_imports_resolve_on_call_and_fall_back_when_used_at_import(tmp_path):
    """A package's `from heavy import f` does not import heavy; calling f does. A package that uses a deferred
    name while importing (here `VALUE + 1`) is imported again the plain way. Later imports get real modules."""
    (tmp_path / "hs_heavy").mkdir()
    (tmp_path / "hs_heavy" / "__init__.py").write_text("def compute(x):\n    return x * 10\n")
    (tmp_path / "hs_heavy" / "sub.py").write_text("class Thing:\n    name = 'real thing'\n")
    (tmp_path / "hs_user.py").write_text("from hs_heavy import compute\nfrom hs_heavy.sub import Thing\n")
    (tmp_path / "hs_other.py").write_text("VALUE = 41\n")
    # hs_bad.first imports fine with a stand-in, then hs_bad itself fails: both are imported again for real.
    (tmp_path / "hs_bad").mkdir()
    (tmp_path / "hs_bad" / "first.py").write_text("from hs_other import VALUE\n")
    (tmp_path / "hs_bad" / "__init__.py").write_text("from hs_bad import first\nVALUE = first.VALUE + 1\n")
    done = subprocess.run([sys.executable, "-c", _DEFERRAL_SCRIPT, str(tmp_path)], capture_output=True, text=True,
                          timeout=60)
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout) == {
        "heavy imported by the deferred import": False, "compute": 20, "heavy imported by the call": True,
        "thing": "real thing", "later import is real": True, "bad value": 42, "its first module, imported again": 41,
        "bad fell back to a real import": True}


def test_a_module_already_imported_is_not_deferred():
    from headstart.startup import deferred_imports

    with deferred_imports("json", "hs_never_imported"):
        assert sys.modules["json"] is json
        assert type(sys.modules["hs_never_imported"]).__name__ == "_DeferredModule"
    assert "hs_never_imported" not in sys.modules


def test_freeze_imports_freezes_what_a_paused_block_created_and_only_when_asked():
    script = (
        "import gc, json\n"
        "from headstart.startup import freeze_imports, paused_gc\n"
        "with paused_gc():\n"
        "    kept = [[i] for i in range(1000)]\n"
        "library = gc.get_freeze_count()\n"
        "freeze_imports()\n"
        "with paused_gc():\n"
        "    with paused_gc():\n"
        "        more = [[i] for i in range(1000)]\n"
        "    inner = gc.get_freeze_count()\n"
        "print(json.dumps([library, inner, gc.get_freeze_count() >= 1000, gc.isenabled()]))\n"
    )
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout) == [0, 0, True, True]


_VISION_SCRIPT = r"""
import json, sys
from headstart.startup import import_without_dynamo

import_without_dynamo("timm", "torchvision", "lightning_fabric")
import torch, torchvision, timm
out = {"deferred": "torch._dynamo.eval_frame" not in sys.modules,
       "standins_left": [n for n in ("torch._dynamo", "torch._dynamo.utils") if n in sys.modules]}
# timm's torch.compiler.disable'd methods run (NaFlexVit's position embedding is one)
model = timm.create_model("naflexvit_base_patch16_gap", pretrained=False, num_classes=2, depth=1, embed_dim=64,
                          num_heads=2).eval()
with torch.no_grad():
    out["timm"] = list(model(torch.randn(1, 3, 64, 64)).shape)
# torchvision's roi_align runs; the is_compile_supported it took imports torch._dynamo when called
boxes = torch.tensor([[0, 0, 0, 4, 4.0]])
out["roi_align"] = list(torchvision.ops.roi_align(torch.randn(1, 3, 8, 8), boxes, 2).shape)
out["supported"] = sys.modules["torchvision.ops.roi_align"].is_compile_supported("cpu")
out["imported_on_call"] = "torch._dynamo.eval_frame" in sys.modules
# Lightning's isinstance checks see torch.compile's modules as before
import lightning_fabric.wrappers as wrappers
out["compiled_seen"] = isinstance(torch.compile(torch.nn.Linear(2, 2)), wrappers.OptimizedModule)
print(json.dumps(out))
"""


def test_vision_libraries_import_without_dynamo_and_work_as_before():
    done = subprocess.run([sys.executable, "-c", _VISION_SCRIPT], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert json.loads(done.stdout.strip().splitlines()[-1]) == {
        "deferred": True, "standins_left": [], "timm": [1, 2], "roi_align": [1, 3, 2, 2], "supported": True,
        "imported_on_call": True,
        "compiled_seen": True}


_UNEXPECTED_NAME_SCRIPT = r"""
import json, sys
import torch
from headstart import startup

# What a newer torchvision or timm might do at import: use a name of torch._dynamo that is not deferred.
startup._install_lazy_dynamo()
try:
    from torch._dynamo import config
finally:
    startup._drop_lazy_dynamo()
print(json.dumps({"real": config.__name__, "module": type(sys.modules["torch._dynamo"]).__name__}))
"""


def test_a_name_that_is_not_deferred_imports_the_real_dynamo_on_the_spot():
    done = subprocess.run([sys.executable, "-c", _UNEXPECTED_NAME_SCRIPT], capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert json.loads(done.stdout.strip().splitlines()[-1]) == {"real": "torch._dynamo.config", "module": "module"}


_COMPILE_LATER_SCRIPT = r"""
import json, sys
from headstart import startup

startup.compile_free_process()
startup.import_without_dynamo("lightning_fabric", "timm", "torchvision")
import torch
import lightning_fabric.wrappers as wrappers

out = {"standing_in": type(sys.modules["torch._dynamo"]).__name__}
# a module of torch._dynamo imported by name: the real one, executed once, with its own spec
from torch._dynamo.backends.registry import list_backends
registry = sys.modules["torch._dynamo.backends.registry"]
out["submodule"] = [callable(list_backends), registry.__spec__.origin.endswith("registry.py"),
                    type(sys.modules["torch._dynamo"]).__name__]
# and torch.compile works in the same process, its modules seen by Lightning's checks
compiled = torch.compile(torch.nn.Linear(2, 2), backend="eager")
out["compiled"] = [list(compiled(torch.ones(1, 2)).shape), isinstance(compiled, wrappers.OptimizedModule)]
print(json.dumps(out))
"""


def test_a_compile_free_process_can_still_compile_after_all():
    """An import of one of torch._dynamo's modules (torch.compile's first step) replaces the stand-in with the
    real package: nothing fails, the module is the real one."""
    done = subprocess.run([sys.executable, "-c", _COMPILE_LATER_SCRIPT], capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert json.loads(done.stdout.strip().splitlines()[-1]) == {
        "standing_in": "_LazyDynamo", "submodule": [True, True, "module"], "compiled": [[1, 2], True]}


_TRAIN_SCRIPT = r"""
import json, sys
from headstart import startup
import headstart

if sys.argv[1] == "compile-free":
    startup.compile_free_process()
run = headstart.train(sys.argv[2], out=sys.argv[3], mode="finetune", epochs=2, image_size=64, batch_size=8,
                      precision="32")  # the report too: Grad-CAM's backward pass
# the optimizers' not-to-be-traced methods, taken both ways (decorator with and without arguments)
import torch
disable = sys.modules["torch._dynamo"].disable
plain = lambda x: x + 1
print(json.dumps({"losses": [row["train_loss"] for row in run.history],
                  "dynamo": type(sys.modules.get("torch._dynamo")).__name__,
                  "disable": [disable(plain)(1), disable(recursive=False)(plain)(1)]}))
"""


def test_a_compile_free_process_trains_the_same_without_importing_dynamo(synthetic_data, tmp_path):
    """The `headstart` command's training and report never import torch._dynamo (torch.optim would, for its
    tracer's sake: 1.2 s), and it trains exactly as a normal process does."""
    out = {}
    for mode in ("compile-free", "normal"):
        done = subprocess.run([sys.executable, "-c", _TRAIN_SCRIPT, mode, str(synthetic_data), str(tmp_path / mode)],
                              capture_output=True, text=True, timeout=300)
        assert done.returncode == 0, done.stderr[-3000:]
        out[mode] = json.loads(done.stdout.strip().splitlines()[-1])
    assert (tmp_path / "compile-free" / "report.html").is_file()
    assert out["compile-free"]["dynamo"] == "_LazyDynamo" and out["normal"]["dynamo"] == "module"
    assert out["compile-free"]["losses"] == out["normal"]["losses"]
    assert out["compile-free"]["disable"] == [2, 2]
