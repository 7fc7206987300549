"""The report's figure worker: figures drawn in another process, and every way that can fail costs only speed."""

import os
import signal
import subprocess
import sys
import textwrap

import numpy as np
import pytest

from conftest import exits_within
from headstart import child
from headstart.report import image_plots, plots
from headstart.report.figures import FigureWorker


@pytest.fixture
def worker(monkeypatch):
    monkeypatch.setattr(child, "usable_cores", lambda: 2)  # a worker even where the test runner has one core
    with FigureWorker.start() as started:
        yield started


def test_figures_are_drawn_in_other_processes(worker, tmp_path):
    pids = [worker.draw(os.getpid) for _ in range(4)]
    path = worker.draw(plots.plot_confusion_matrix, [[3, 1], [0, 4]], ["cat", "dog"], tmp_path / "cm.png")
    assert os.getpid() not in {pid() for pid in pids}
    assert len({pid() for pid in pids}) == 2  # shared by the two workers
    assert path() == tmp_path / "cm.png"
    assert (tmp_path / "cm.png").read_bytes().startswith(b"\x89PNG")


def test_replies_come_back_to_the_right_request(worker, tmp_path):
    """Requests sent before any reply is read, then read in reverse order."""
    waits = [worker.draw(plots.plot_coverage, np.full((20, 2), 0.5 + i / 100), np.zeros(20, int), 0.6,
                         tmp_path / f"coverage_{i}.png") for i in range(4)]
    assert [w() for w in reversed(waits)] == [tmp_path / f"coverage_{i}.png" for i in reversed(range(4))]


def test_a_plot_error_is_raised_here_with_its_own_type(worker, tmp_path):
    wait = worker.draw(image_plots.plot_conv_filters, np.zeros((2, 3)), tmp_path / "bad.png")  # not [N, 3, k, k]
    with pytest.raises(ValueError):
        wait()
    assert worker.draw(os.getpid)() != os.getpid()  # the worker is still there for the next figure


def test_an_argument_that_cannot_be_sent_is_drawn_here_and_the_worker_stays(worker):
    assert worker.draw(len, [lambda: 0])() == 1  # a lambda does not pickle
    assert worker.draw(os.getpid)() != os.getpid()


def test_settle_waits_for_every_figure(worker, tmp_path):
    for i in range(3):
        worker.draw(plots.plot_confusion_matrix, [[i, 1], [0, 4]], ["cat", "dog"], tmp_path / f"cm{i}.png")
    worker.settle()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cm0.png", "cm1.png", "cm2.png"]


@pytest.mark.skipif(sys.platform == "win32", reason="SIGSTOP")
def test_a_dead_worker_costs_only_speed(worker):
    processes = [channel.process for channel in worker._channels]
    for process in processes:
        process.send_signal(signal.SIGSTOP)  # the request below stays unread in the pipe
    pending = worker.draw(os.getpid)
    for process in processes:
        process.kill()
        process.wait()
    assert pending() == os.getpid()  # drawn here instead
    assert worker.draw(os.getpid)() == os.getpid()


def test_without_a_spare_core_figures_are_drawn_here(monkeypatch):
    monkeypatch.setattr(child, "usable_cores", lambda: 1)
    with FigureWorker.start() as here:
        assert here._channels == []
        assert here.draw(os.getpid)() == os.getpid()


def test_the_worker_does_not_rerun_an_unguarded_script(tmp_path):
    """multiprocessing's spawn would import the main script again in the worker; this worker imports only its
    own module, so a script without `if __name__ == "__main__":` runs once."""
    marks = tmp_path / "marks.txt"
    script = tmp_path / "unguarded.py"
    script.write_text(textwrap.dedent(f"""
        import os
        from headstart import child
        from headstart.report import figures
        child.usable_cores = lambda: 2
        with open({str(marks)!r}, "a") as f:
            f.write("ran\\n")
        with figures.FigureWorker.start() as worker:
            print(worker.draw(os.getpid)() != os.getpid())
    """))
    proc = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "True"
    assert marks.read_text() == "ran\n"


@pytest.mark.skipif(sys.platform == "win32", reason="SIGKILL")
def test_the_worker_exits_when_its_parent_is_killed():
    code = textwrap.dedent("""
        import os, signal
        from headstart import child
        from headstart.report import figures
        child.usable_cores = lambda: 2
        worker = figures.FigureWorker.start()
        print(worker.draw(os.getpid)(), flush=True)
        os.kill(os.getpid(), signal.SIGKILL)
    """)
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == -signal.SIGKILL
    assert exits_within(int(proc.stdout.strip()), 30)

