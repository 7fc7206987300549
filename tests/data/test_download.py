"""Offline tests for headstart.data.download: folder and HTTP mirrors, resume, checksums, safe extraction."""

from __future__ import annotations

import dataclasses
import hashlib
import io
import json
import logging
import socket
import stat
import subprocess
import sys
import tarfile
import threading
import zipfile
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from headstart.data import download as dl
from headstart.data.download import (
    DATASETS,
    MARKER,
    MIRROR_ENV,
    DownloadError,
    UnsafeArchiveError,
    download,
    list_datasets,
    safe_extract,
)


def _jpeg(seed: int) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(np.random.default_rng(seed).integers(0, 256, (40, 40, 3), np.uint8)).save(buf, "JPEG")
    return buf.getvalue()


def _zip(path: Path, members: dict[str, bytes]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with zipfile.ZipFile(path, "w") as zf:
        for name, data in members.items():
            zf.writestr(name, data)
    return path


def _hymenoptera_zip(folder: Path) -> Path:
    """A small stand-in for hymenoptera_data.zip: same top folder, 4 train and 2 val images."""
    members = {f"hymenoptera_data/{split}/{c}/{c}{i}.jpg": _jpeg(hash((split, c, i)) % 1000)
               for split, n in (("train", 2), ("val", 1)) for c in ("ants", "bees") for i in range(n)}
    return _zip(folder / "hymenoptera_data.zip", members)


def _digest(path: Path, algorithm: str) -> str:
    return hashlib.new(algorithm, path.read_bytes()).hexdigest()


def _pin(monkeypatch, name: str, archives: list[Path], algorithm: str = "sha1", **changes) -> None:
    """Point the registry entry at the test archives' real checksums (and a small expected layout)."""
    spec = DATASETS[name]
    files = tuple(dataclasses.replace(f, algorithm=algorithm, digest=_digest(a, algorithm))
                  for f, a in zip(spec.files, archives, strict=True))
    monkeypatch.setitem(DATASETS, name, dataclasses.replace(spec, files=files, **changes))


@pytest.fixture
def hymenoptera(tmp_path, monkeypatch):
    archive = _hymenoptera_zip(tmp_path / "mirror")
    _pin(monkeypatch, "hymenoptera", [archive], expect={"train": 4, "val": 2})
    return archive


@pytest.fixture
def server(tmp_path):
    """A local HTTP server for tmp_path/served that honours Range (unless told not to) and logs requests."""
    root = tmp_path / "served"
    root.mkdir()
    state = {"honor_range": True, "requests": [], "sent": 0, "cut_after": None}

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self):
            path = root / self.path.rsplit("/", 1)[-1]
            state["requests"].append((self.path, self.headers.get("Range")))
            if not path.is_file():
                self.send_error(404)
                return
            data = path.read_bytes()
            start = 0
            rng = self.headers.get("Range")
            if rng and state["honor_range"]:
                start = int(rng.removeprefix("bytes=").split("-")[0])
                if start >= len(data):
                    self.send_error(416)
                    return
                self.send_response(206)
                self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
            else:
                self.send_response(200)
            self.send_header("Content-Length", str(len(data) - start))
            self.end_headers()
            body = data[start:]
            if state["cut_after"] is not None:  # the connection drops part-way, once
                body, state["cut_after"] = body[: state["cut_after"]], None
                self.close_connection = True
            state["sent"] += len(body)  # counted before writing: the client may finish and assert before write returns
            self.wfile.write(body)

        def log_message(self, *args):
            pass

    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    state["url"] = f"http://127.0.0.1:{httpd.server_port}/files"
    state["root"] = root
    yield state
    httpd.shutdown()
    httpd.server_close()


def _leftovers(base: Path) -> list[str]:
    return sorted(p.name for p in base.iterdir() if p.name.startswith(".") and p.name != ".downloads")


def test_directory_mirror_happy_path(tmp_path, monkeypatch, hymenoptera):
    monkeypatch.setenv(MIRROR_ENV, str(hymenoptera.parent))
    seen = []
    root = download("hymenoptera", to=tmp_path / "ds", progress=lambda *a: seen.append(a))
    assert root == (tmp_path / "ds" / "hymenoptera").resolve()
    assert sorted(p.name for p in (root / "train").iterdir()) == ["ants", "bees"]
    assert len(list((root / "val").rglob("*.jpg"))) == 2
    marker = json.loads((root / MARKER).read_text())
    assert marker["files"]["hymenoptera_data.zip"]["sha256"] == _digest(hymenoptera, "sha256")
    assert hymenoptera.is_file()  # the mirror's own file is never moved or deleted
    assert _leftovers(root.parent) == []
    assert any(task.startswith("extracting") for task, _, _ in seen)
    # a finished dataset is returned without looking at the mirror again
    monkeypatch.setenv(MIRROR_ENV, str(tmp_path / "nowhere"))
    assert download("hymenoptera", to=tmp_path / "ds") == root
    listed = {d["name"]: d for d in list_datasets(tmp_path / "ds")}
    assert listed["hymenoptera"]["downloaded"] and not listed["flowers102"]["downloaded"]
    assert set(listed) == {"hymenoptera", "pizza_steak_sushi", "flowers102"}


def test_default_folder_comes_from_env(tmp_path, monkeypatch, hymenoptera):
    monkeypatch.setenv(MIRROR_ENV, str(hymenoptera.parent))
    monkeypatch.setenv("HEADSTART_DATASETS", str(tmp_path / "home"))
    assert download("hymenoptera") == (tmp_path / "home" / "hymenoptera").resolve()


def test_url_prefix_mirror_and_resume_with_range(tmp_path, monkeypatch, hymenoptera, server):
    data = hymenoptera.read_bytes()
    (server["root"] / hymenoptera.name).write_bytes(data)
    monkeypatch.setenv(MIRROR_ENV, server["url"])
    cache = tmp_path / "ds" / ".downloads"
    cache.mkdir(parents=True)
    (cache / (hymenoptera.name + ".part")).write_bytes(data[:1000])  # an interrupted earlier download
    root = download("hymenoptera", to=tmp_path / "ds")
    assert server["requests"] == [("/files/hymenoptera_data.zip", "bytes=1000-")]
    assert server["sent"] == len(data) - 1000  # only the rest came over the wire
    assert (root / MARKER).is_file()
    assert list(cache.iterdir()) == []  # downloaded archives are removed once extracted


def test_dropped_connection_is_resumed_by_the_next_run(tmp_path, monkeypatch, hymenoptera, server):
    data = hymenoptera.read_bytes()
    (server["root"] / hymenoptera.name).write_bytes(data)
    monkeypatch.setenv(MIRROR_ENV, server["url"])
    server["cut_after"] = 1500
    with pytest.raises(DownloadError, match="run again to resume"):
        download("hymenoptera", to=tmp_path / "ds")
    assert (tmp_path / "ds" / ".downloads" / (hymenoptera.name + ".part")).stat().st_size == 1500
    root = download("hymenoptera", to=tmp_path / "ds")
    assert server["requests"][-1] == ("/files/hymenoptera_data.zip", "bytes=1500-")
    assert server["sent"] == len(data) and (root / MARKER).is_file()


def test_server_that_ignores_range_restarts_cleanly(tmp_path, monkeypatch, hymenoptera, server):
    (server["root"] / hymenoptera.name).write_bytes(hymenoptera.read_bytes())
    server["honor_range"] = False
    monkeypatch.setenv(MIRROR_ENV, server["url"])
    cache = tmp_path / "ds" / ".downloads"
    cache.mkdir(parents=True)
    (cache / (hymenoptera.name + ".part")).write_bytes(b"garbage that must not stay at the front")
    root = download("hymenoptera", to=tmp_path / "ds")
    assert server["sent"] == hymenoptera.stat().st_size
    assert (root / "train" / "ants").is_dir()


def test_corrupted_download_is_deleted_and_named(tmp_path, monkeypatch, hymenoptera, server):
    bad = bytearray(hymenoptera.read_bytes())
    bad[100] ^= 0xFF
    (server["root"] / hymenoptera.name).write_bytes(bytes(bad))
    monkeypatch.setenv(MIRROR_ENV, server["url"])
    with pytest.raises(DownloadError) as err:
        download("hymenoptera", to=tmp_path / "ds")
    msg = str(err.value)
    assert "hymenoptera_data.zip" in msg and "\n" not in msg
    assert _digest(hymenoptera, "sha1") in msg and hashlib.sha1(bad).hexdigest() in msg
    assert list((tmp_path / "ds" / ".downloads").iterdir()) == []  # neither .part nor the file is kept
    assert not (tmp_path / "ds" / "hymenoptera").exists()


def test_corrupted_directory_mirror_file_is_refused_but_left_alone(tmp_path, monkeypatch, hymenoptera):
    hymenoptera.write_bytes(hymenoptera.read_bytes()[:-10])
    monkeypatch.setenv(MIRROR_ENV, str(hymenoptera.parent))
    with pytest.raises(DownloadError, match=r"checksum mismatch for hymenoptera_data\.zip"):
        download("hymenoptera", to=tmp_path / "ds")
    assert hymenoptera.is_file()


def test_offline_error_says_how_to_use_a_mirror(tmp_path, monkeypatch):
    with socket.socket() as s:  # a port nothing listens on: connection refused, like being offline
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    spec = DATASETS["hymenoptera"]
    offline = dataclasses.replace(spec.files[0], url=f"http://127.0.0.1:{port}/hymenoptera_data.zip")
    monkeypatch.setitem(DATASETS, "hymenoptera", dataclasses.replace(spec, files=(offline,)))
    monkeypatch.delenv(MIRROR_ENV, raising=False)
    with pytest.raises(DownloadError, match=f"set {MIRROR_ENV}=") as err:
        download("hymenoptera", to=tmp_path / "ds")
    assert "\n" not in str(err.value)
    monkeypatch.setenv(MIRROR_ENV, str(tmp_path / "empty_mirror"))
    with pytest.raises(DownloadError, match=r"has no file hymenoptera_data\.zip"):
        download("hymenoptera", to=tmp_path / "ds")


def test_no_checksum_dataset_is_checked_by_layout_and_logs_its_sha256(tmp_path, monkeypatch, caplog):
    members = {f"{split}/{c}/{i}.jpg": _jpeg(i + 10 * len(c)) for split, n in (("train", 2), ("test", 1))
               for c in ("pizza", "steak", "sushi") for i in range(n)}
    archive = _zip(tmp_path / "mirror" / "pizza_steak_sushi.zip", members)
    spec = DATASETS["pizza_steak_sushi"]
    assert spec.files[0].digest is None  # no published checksum: the layout check stands in
    monkeypatch.setenv(MIRROR_ENV, str(archive.parent))
    monkeypatch.setitem(DATASETS, spec.name, dataclasses.replace(spec, expect={"train": 5, "test": 3}))
    with pytest.raises(DownloadError, match="does not look as expected"):
        download("pizza_steak_sushi", to=tmp_path / "ds")
    assert not (tmp_path / "ds" / "pizza_steak_sushi").exists() and _leftovers(tmp_path / "ds") == []
    monkeypatch.setitem(DATASETS, spec.name, dataclasses.replace(spec, expect={"train": 6, "test": 3}))
    with caplog.at_level(logging.WARNING, logger="headstart.data.download"):
        root = download("pizza_steak_sushi", to=tmp_path / "ds")
    assert _digest(archive, "sha256") in caplog.text
    assert sorted(p.name for p in (root / "test").iterdir()) == ["pizza", "steak", "sushi"]


def test_flowers102_is_arranged_from_the_official_mat_files(tmp_path, monkeypatch):
    savemat = pytest.importorskip("scipy.io").savemat
    mirror = tmp_path / "mirror"
    mirror.mkdir()
    with tarfile.open(mirror / "102flowers.tgz", "w:gz") as tf:
        for i in range(1, 7):
            data = _jpeg(i)
            info = tarfile.TarInfo(f"jpg/image_{i:05d}.jpg")
            info.size = len(data)
            tf.addfile(info, io.BytesIO(data))
    savemat(mirror / "imagelabels.mat", {"labels": np.array([[1, 2, 1, 2, 1, 2]])})
    savemat(mirror / "setid.mat", {"trnid": np.array([[1, 2]]), "valid": np.array([[3, 4]]),
                                   "tstid": np.array([[5, 6]])})
    archives = [mirror / n for n in ("102flowers.tgz", "imagelabels.mat", "setid.mat")]
    _pin(monkeypatch, "flowers102", archives, algorithm="md5", num_classes=2,
         expect={"train": 2, "val": 2, "test": 2})
    monkeypatch.setenv(MIRROR_ENV, str(mirror))
    root = download("flowers102", to=tmp_path / "ds")
    names = ["pink primrose", "hard-leaved pocket orchid"]  # labels 1 and 2 of the official list
    assert (root / "train" / names[0] / "image_00001.jpg").is_file()
    assert (root / "val" / names[1] / "image_00004.jpg").is_file()
    assert (root / "test" / names[0] / "image_00005.jpg").is_file()
    assert not (root / "jpg").exists()
    assert sorted(p.name for p in (root / "train").iterdir()) == sorted(names)


def test_flowers102_names_are_the_102_official_ones():
    names = dl.FLOWERS102_CLASSES
    assert len(names) == len(set(names)) == 102
    assert (names[0], names[59], names[101]) == ("pink primrose", "pink-yellow dahlia", "blackberry lily")


def test_flowers102_without_scipy_fails_before_downloading(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "scipy.io", None)
    monkeypatch.setenv(MIRROR_ENV, str(tmp_path / "nothing_here"))
    with pytest.raises(DownloadError, match="install scipy"):
        download("flowers102", to=tmp_path / "ds")


def test_unknown_name_and_foreign_folder(tmp_path, monkeypatch, hymenoptera):
    with pytest.raises(DownloadError, match="known: flowers102, hymenoptera"):
        download("mnist", to=tmp_path)
    (tmp_path / "ds" / "hymenoptera").mkdir(parents=True)
    monkeypatch.setenv(MIRROR_ENV, str(hymenoptera.parent))
    with pytest.raises(DownloadError, match="not a complete download"):
        download("hymenoptera", to=tmp_path / "ds")


def _zip_symlink(path: Path) -> Path:
    with zipfile.ZipFile(path, "w") as zf:
        info = zipfile.ZipInfo("train/a/link")
        info.external_attr = (stat.S_IFLNK | 0o777) << 16
        zf.writestr(info, "../../../outside")
    return path


def _tar(path: Path, members: list[tarfile.TarInfo]) -> Path:
    with tarfile.open(path, "w:gz") as tf:
        for m in members:
            tf.addfile(m, io.BytesIO(b"x" * m.size) if m.isfile() else None)
    return path


def _member(name: str, kind: bytes = tarfile.REGTYPE, link: str = "") -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type, info.linkname, info.size = kind, link, 1 if kind == tarfile.REGTYPE else 0
    return info


MALICIOUS = {
    "zip_absolute": lambda p: _zip(p / "a.zip", {"/tmp/headstart_evil.txt": b"x"}),
    "zip_dotdot": lambda p: _zip(p / "a.zip", {"train/../../evil.txt": b"x"}),
    "zip_symlink": lambda p: _zip_symlink(p / "a.zip"),
    "tar_absolute": lambda p: _tar(p / "a.tgz", [_member("/tmp/headstart_evil.txt")]),
    "tar_dotdot": lambda p: _tar(p / "a.tgz", [_member("../evil.txt")]),
    "tar_symlink_escape": lambda p: _tar(p / "a.tgz", [_member("train/link", tarfile.SYMTYPE, "../../evil")]),
    "tar_symlink_absolute": lambda p: _tar(p / "a.tgz", [_member("link", tarfile.SYMTYPE, "/etc")]),
    "tar_hardlink_escape": lambda p: _tar(p / "a.tgz", [_member("link", tarfile.LNKTYPE, "../evil.txt")]),
    "tar_write_through_link": lambda p: _tar(p / "a.tgz", [_member("d", tarfile.SYMTYPE, "."),
                                                           _member("d/evil.txt")]),
    "tar_device": lambda p: _tar(p / "a.tgz", [_member("dev", tarfile.CHRTYPE)]),
}


@pytest.mark.parametrize("case", sorted(MALICIOUS))
def test_malicious_archives_are_refused_and_nothing_escapes(tmp_path, case):
    (tmp_path / "src").mkdir()
    archive = MALICIOUS[case](tmp_path / "src")
    target = tmp_path / "deep" / "er" / "target"
    with pytest.raises(UnsafeArchiveError, match="refusing to extract"):
        safe_extract(archive, target)
    assert not any(target.rglob("*"))  # every member is checked before the first is written
    assert not list(tmp_path.rglob("evil*")) and not Path("/tmp/headstart_evil.txt").exists()


def test_safe_extract_keeps_links_that_stay_inside(tmp_path):
    members = [_member("train/a/x.jpg"), _member("latest", tarfile.SYMTYPE, "train")]
    safe_extract(_tar(tmp_path / "ok.tgz", members), tmp_path / "out")
    latest = tmp_path / "out" / "latest"
    assert latest.is_symlink() and (latest / "a" / "x.jpg").is_file()


def test_malicious_archive_via_download_leaves_nothing(tmp_path, monkeypatch):
    archive = _zip(tmp_path / "mirror" / "hymenoptera_data.zip", {"hymenoptera_data/train/a/x.jpg": _jpeg(1),
                                                                 "../escaped.jpg": _jpeg(2)})
    _pin(monkeypatch, "hymenoptera", [archive])
    monkeypatch.setenv(MIRROR_ENV, str(archive.parent))
    with pytest.raises(UnsafeArchiveError):
        download("hymenoptera", to=tmp_path / "ds")
    assert sorted(p.name for p in (tmp_path / "ds").iterdir()) == [] and not list(tmp_path.rglob("escaped*"))


def test_check_and_download_never_import_torch():
    code = ("import sys, headstart.data.check, headstart.data.download; "
            "sys.exit('torch' in sys.modules or 'torchvision' in sys.modules)")
    assert subprocess.run([sys.executable, "-c", code], check=False, timeout=60).returncode == 0
