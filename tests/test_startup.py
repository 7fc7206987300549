"""paused_gc pauses the cyclic collector and restores the caller's setting; the `headstart` command's fast exit
keeps its output and its exit code."""

import gc
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


def _command(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    """`python -m headstart.cli ARGS`, which is what the installed `headstart` script runs (cli.command)."""
    return subprocess.run([sys.executable, "-m", "headstart.cli", *args], capture_output=True, text=True,
                          timeout=120, env=env)


def test_a_successful_command_flushes_its_output_before_the_fast_exit(tmp_path):
    # stdout is a pipe here, so it is block-buffered: without the flush the table would be lost
    done = _command("cache", env=dict(os.environ, HEADSTART_CACHE=str(tmp_path), COLUMNS="200"))
    assert done.returncode == 0, done.stderr
    assert "features" in done.stdout and "engines" in done.stdout


def test_a_failed_command_keeps_its_exit_code(tmp_path):
    failed = _command("train", str(tmp_path / "missing"))
    assert failed.returncode == 2
    assert "data folder not found" in failed.stderr + failed.stdout


def test_the_installed_script_runs_the_fast_exit():
    from importlib.metadata import entry_points

    (script,) = [e for e in entry_points(group="console_scripts") if e.name == "headstart"]
    assert script.value == "headstart.cli:command"
