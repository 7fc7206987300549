"""DecodeJob: the splits decoded in a helper process give what decoding here gives (images, hashes, failures);
progress arrives; a helper that dies or cannot start costs only speed; close() ends a running helper."""

from __future__ import annotations

import os
import time

import pytest

from conftest import exits_within, make_synthetic_dataset
from headstart import child
from headstart.data import background
from headstart.data.background import DecodeJob
from headstart.data.folders import discover
from headstart.data.loading import decode_split


@pytest.fixture
def splits(tmp_path) -> dict[str, list[tuple[str, int]]]:
    root = make_synthetic_dataset(tmp_path / "data", per_split={"train": 5, "val": 2, "test": 2}, size=40)
    (root / "train" / "red" / "broken.jpg").write_bytes(b"not a jpeg")
    return discover(root).splits


@pytest.fixture(autouse=True)
def two_cores(monkeypatch):
    monkeypatch.setattr(child, "usable_cores", lambda: 2)  # a helper even where the test runner has one core


def _expected(splits, keep_images=True):
    return {s: decode_split(items, short_side=32, interpolation="bicubic", keep_images=keep_images)
            for s, items in splits.items()}


def _same(got, expected):
    assert got.keys() == expected.keys()
    for split, want in expected.items():
        have = got[split]
        assert (have.paths, have.labels, have.hashes, have.failures) == (want.paths, want.labels, want.hashes,
                                                                          want.failures)
        assert (have.short_side, have.interpolation) == (32, "bicubic")
        if want.images is None:
            assert have.images is None
        else:
            assert [(i.mode, i.size, i.tobytes()) for i in have.images] == [
                (i.mode, i.size, i.tobytes()) for i in want.images]


@pytest.mark.parametrize("keep_images", [True, False])
def test_the_helper_process_decodes_what_this_process_would(splits, keep_images):
    seen = []
    job = DecodeJob.start(splits, short_side=32, interpolation="bicubic", keep_images=keep_images,
                          progress=lambda what, done, total: seen.append((what, done, total)))
    helper = job._process
    assert helper is not None and helper.pid != os.getpid()
    _same(job.result(), _expected(splits, keep_images))
    assert any("broken.jpg" in path for path, _ in job.result()["train"].failures)
    for split, items in splits.items():  # the last image of every split is always reported
        assert (f"decode {split}", len(items), len(items)) in seen
    assert job._process is None and helper.poll() is not None  # ended and reaped once the result is in


def test_a_helper_that_dies_costs_only_speed(splits):
    job = DecodeJob.start(splits, short_side=32, interpolation="bicubic")
    job._process.kill()
    _same(job.result(), _expected(splits))


def test_without_a_second_core_a_thread_decodes(splits, monkeypatch):
    monkeypatch.setattr(child, "usable_cores", lambda: 1)
    job = DecodeJob.start(splits, short_side=32, interpolation="bicubic")
    assert job._process is None
    _same(job.result(), _expected(splits))


def test_close_ends_a_helper_that_is_still_decoding(splits, monkeypatch):
    monkeypatch.setattr(background, "_PROGRESS_EVERY", 0.0)
    slow = {"train": splits["train"] * 200}  # long enough to be running when close() comes
    job = DecodeJob.start(slow, short_side=32, interpolation="bicubic", progress=lambda *a: time.sleep(0.01))
    helper = job._process
    job.close()
    assert helper.poll() is not None
    job.close()  # again: nothing left to do


def test_chunks_of_the_helper_join_into_the_same_splits(splits, monkeypatch):
    """What the helper runs for each split, here, with chunks of 2 images (a broken file among them)."""
    import io

    monkeypatch.setattr(background, "_CHUNK", 2)
    pixels = io.BytesIO()
    size = 0
    joined = {}
    for split, items in splits.items():
        joined[split], size = background._write_split(pixels, size, items, 32, "bicubic", True, None)
    assert size == len(pixels.getvalue())
    expected = _expected(splits)
    for split, (paths, labels, hashes, failures, layout) in joined.items():
        want = expected[split]
        assert (paths, labels, hashes, failures) == (want.paths, want.labels, want.hashes, want.failures)
        assert [pixels.getvalue()[o:o + n] for o, n, _, _ in layout] == [i.tobytes() for i in want.images]


@pytest.mark.skipif(not os.path.isdir("/dev/shm"), reason="Linux shared memory")
def test_copied_pixels_are_given_back_as_the_copy_goes(monkeypatch):
    import mmap
    import tempfile

    monkeypatch.setattr(background, "_FREE_EVERY", 0)
    with tempfile.TemporaryFile(dir="/dev/shm") as f:
        f.write(os.urandom(1 << 20))
        f.flush()
        held = os.fstat(f.fileno()).st_blocks
        with mmap.mmap(f.fileno(), 1 << 20, access=mmap.ACCESS_WRITE) as mapped:
            assert background._free(mapped, 0, (1 << 20) - 100) == (1 << 20) - mmap.PAGESIZE
        assert os.fstat(f.fileno()).st_blocks < held // 100  # only the last page is still held


def test_pixels_go_to_shared_memory_only_with_room_reserved_else_to_a_roomy_temp_folder(splits, monkeypatch,
                                                                                          tmp_path):
    import errno
    import tempfile
    from types import SimpleNamespace

    shm = tmp_path / "shm"
    shm.mkdir()
    monkeypatch.setattr(background, "_SHM", str(shm))
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    reserved = []
    monkeypatch.setattr(os, "posix_fallocate", lambda fd, offset, size: reserved.append(size))
    with background._pixels_file(splits, 256, "bilinear", True) as f:  # room: reserved up front
        assert reserved and reserved[0] >= 256 * 256 * 3 * sum(map(len, splits.values()))

    def full(*_):
        raise OSError(errno.ENOSPC, "no space")

    monkeypatch.setattr(os, "posix_fallocate", full)
    folder_room = {"bytes": 10 << 30}
    monkeypatch.setattr(os, "statvfs", lambda _: SimpleNamespace(f_bavail=folder_room["bytes"] // 4096,
                                                                 f_frsize=4096))
    with background._pixels_file(splits, 256, "bilinear", True) as f:
        assert f is not None  # in the temporary folder
    folder_room["bytes"] = 1 << 20
    assert background._pixels_file(splits, 256, "bilinear", True) is None  # nowhere: a thread decodes
    assert background._pixels_file(splits, None, "bilinear", True) is None  # sizes unknown
    with background._pixels_file(splits, 256, "bilinear", False) as f:  # nothing to write
        assert f is not None


def test_a_pil_plugin_registered_here_keeps_decoding_here(splits, monkeypatch):
    from PIL import Image

    class PluginImage:  # what a third-party opener (pillow-heif...) registers
        pass

    monkeypatch.setitem(Image.OPEN, "HS-TEST", (PluginImage, None))
    job = DecodeJob.start(splits, short_side=32, interpolation="bicubic")
    assert job._process is None
    _same(job.result(), _expected(splits))


def test_the_helper_uses_this_process_pixel_limit_and_the_failures_are_logged_here(splits, monkeypatch, caplog):
    from headstart.runtime import images

    monkeypatch.setattr(images, "MAX_IMAGE_PIXELS", 1000)  # every 40x48 test image is now too large
    with caplog.at_level("WARNING", logger="headstart"):
        job = DecodeJob.start(splits, short_side=32, interpolation="bicubic")
        assert job._process is not None
        decoded = job.result()
    reasons = [r for d in decoded.values() for p, r in d.failures if not p.endswith("broken.jpg")]
    assert not any(d.paths for d in decoded.values())
    assert len(reasons) == sum(map(len, splits.values())) - 1 and all("decompression bomb" in r for r in reasons)
    assert sum("skipping" in r.getMessage() for r in caplog.records) == sum(map(len, splits.values()))


@pytest.mark.skipif(not hasattr(os, "getppid"), reason="POSIX")
def test_the_helper_stops_when_its_parent_is_killed(tmp_path):
    import signal
    import subprocess
    import sys
    import textwrap

    make_synthetic_dataset(tmp_path / "data", per_split={"train": 3}, size=40)
    code = textwrap.dedent(f"""
        import os, signal, time
        from headstart import child
        from headstart.data import background
        from headstart.data.background import DecodeJob
        from headstart.data.folders import discover
        child.usable_cores = lambda: 2
        background._CHUNK = 1
        items = discover({str(tmp_path / "data")!r}).splits["train"] * 30000  # a minute of decoding
        job = DecodeJob.start({{"train": items}}, short_side=32)  # no progress: nothing to write to a dead parent
        print(job._process.pid, flush=True)
        time.sleep(1.5)  # the request is sent and decoding has begun
        os.kill(os.getpid(), signal.SIGKILL)
    """)
    started = time.monotonic()
    # run() returns when the helper, which shares the dead parent's stderr, has exited too
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=180)
    assert time.monotonic() - started < 20  # it checks between chunks, here every image
    assert proc.returncode == -signal.SIGKILL, proc.stderr
    assert exits_within(int(proc.stdout.strip()), 5)



def test_a_large_set_keeps_its_pixels_in_a_file_on_disk_not_in_memory(splits, monkeypatch):
    """in_memory=False: one decode, the pixels left in a temp-folder file (never /dev/shm), read back per image,
    still readable after the job is closed, and equal to what an in-memory decode gives."""
    made = []
    real = background._pixels_file

    def spy(*args, **kwargs):
        made.append(kwargs.get("in_memory"))
        return real(*args, **kwargs)

    monkeypatch.setattr(background, "_pixels_file", spy)
    monkeypatch.setattr(background, "_SHM", "/nonexistent-so-any-shm-use-would-fail")
    job = DecodeJob.start(splits, short_side=32, interpolation="bicubic", in_memory=False)
    got = job.result()
    job.close()
    assert made == [False]
    expected = _expected(splits)
    for split, want in expected.items():
        have = got[split]
        assert have.images is None and have.store is not None
        assert (have.paths, have.hashes, have.failures) == (want.paths, want.hashes, want.failures)
        order = list(range(len(want.paths)))[::-1]
        assert [img.tobytes() for img in have.load(order)] == [want.images[i].tobytes() for i in order]
        view = have.view(order)  # read per item: a batch at a time in memory during extraction
        assert len(view) == len(order) and view[0].tobytes() == want.images[order[0]].tobytes()
        assert [img.tobytes() for img in view[1:3]] == [want.images[i].tobytes() for i in order[1:3]]
