"""Atomic writes: temp file, fsync, rename; the file gets the permissions the umask gives, like open() would."""

import os
import stat
import threading

import pytest

from headstart import artifact
from headstart.artifact import atomic_write_bytes, atomic_write_json

pytestmark = pytest.mark.skipif(os.name != "posix", reason="POSIX permission bits")


@pytest.fixture
def umask():
    """Sets the process umask for one test, and puts the old one back."""
    old = os.umask(0o022)
    yield lambda mask: os.umask(mask)
    os.umask(old)


def _mode(path) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


@pytest.mark.parametrize("mask, expected", [(0o022, 0o644), (0o077, 0o600), (0o002, 0o664)])
def test_atomic_write_follows_the_umask(tmp_path, umask, mask, expected):
    umask(mask)
    atomic_write_bytes(tmp_path / "model.safetensors", b"weights")
    atomic_write_json(tmp_path / "model.json", {"a": 1})
    assert _mode(tmp_path / "model.safetensors") == _mode(tmp_path / "model.json") == expected
    plain = tmp_path / "plain"
    plain.write_bytes(b"")  # what open() gives: the reference
    assert _mode(plain) == expected
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.json", "model.safetensors", "plain"]


def test_the_umask_is_read_without_changing_it(umask, monkeypatch):
    umask(0o027)
    changed = []
    monkeypatch.setattr(os, "umask", lambda mask: changed.append(mask) or 0o027)
    assert artifact.current_umask() == 0o027
    if os.path.exists("/proc/self/status"):
        assert not changed, "os.umask was called although /proc/self/status has the umask"


def test_without_proc_the_umask_is_still_right(umask, monkeypatch):
    umask(0o077)
    monkeypatch.setattr(artifact, "_PROC_STATUS", "/nonexistent/status")
    assert artifact.current_umask() == 0o077
    assert os.umask(0o077) == 0o077  # and it was put back


def test_a_reader_never_sees_a_partial_file(tmp_path):
    path = tmp_path / "big.bin"
    atomic_write_bytes(path, b"a" * 1_000_000)
    seen, stop = set(), threading.Event()

    def read():
        while not stop.is_set():
            seen.add(len(path.read_bytes()))

    reader = threading.Thread(target=read)
    reader.start()
    for size in (2_000_000, 1_000_000, 3_000_000):
        atomic_write_bytes(path, b"b" * size)
    stop.set()
    reader.join()
    assert seen <= {1_000_000, 2_000_000, 3_000_000}
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]
