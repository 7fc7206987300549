"""The layers of docs/architecture.md hold (import-linter's contracts in pyproject.toml), and no library module
patches another package or calls private torch functions: only the CLI's start-up module may."""

import re
import shutil
import subprocess
import sys
from pathlib import Path

SRC = Path(__file__).resolve().parents[1] / "src" / "headstart"


def test_the_import_contracts_are_kept():
    lint = shutil.which("lint-imports") or str(Path(sys.executable).parent / "lint-imports")
    done = subprocess.run([lint], capture_output=True, text=True, timeout=300, cwd=SRC.parents[1])
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-2000:]
    assert "0 broken" in done.stdout


def test_no_library_module_patches_the_process():
    # cli/: the command's own process; child.py: ends headstart's helper processes, never the user's.
    pattern = re.compile(r"sys\.modules\[|meta_path|_disable_dynamo|gc\.freeze|os\._exit")
    library = [path for path in SRC.rglob("*.py") if path.parent.name != "cli" and path.name != "child.py"]
    offenders = [f"{path.relative_to(SRC)}:{n}" for path in library
                 for n, line in enumerate(path.read_text().splitlines(), 1) if pattern.search(line)]
    assert offenders == []


def test_the_cli_is_imported_by_nothing():
    importers = [str(path.relative_to(SRC)) for path in SRC.rglob("*.py") if path.parent.name != "cli"
                 and re.search(r"^\s*(from|import) headstart\.cli\b", path.read_text(), re.M)]
    assert importers == []


def test_every_module_imports_first():
    """A user's script may import any module first (say `headstart.training.search.run`): none may depend on
    another package having been imported before it, as an import cycle does."""
    script = r"""
import importlib, pkgutil, sys
import headstart
names = [m.name for m in pkgutil.walk_packages(headstart.__path__, "headstart.")
         if ".cli" not in m.name and not m.name.startswith("headstart.demo_data")]
failed = []
for name in names:
    for loaded in [n for n in sys.modules if n == "headstart" or n.startswith("headstart.")]:
        del sys.modules[loaded]  # this throwaway interpreter only: each module is the first headstart import
    try:
        importlib.import_module(name)
    except ImportError as exc:
        if "circular" in str(exc) or "partially initialized" in str(exc):
            failed.append(f"{name}: {exc}")
print(len(names), "modules")
print("\n".join(failed))
"""
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    lines = done.stdout.strip().splitlines()
    assert int(lines[0].split()[0]) > 50
    assert lines[1:] == []
