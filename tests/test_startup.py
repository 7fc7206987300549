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
