"""Shared fixtures: an isolated feature cache, the ../shared folder, and synthetic image datasets."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

# Under pytest-xdist (make test runs two workers on the two cores), each worker and the subprocesses it
# starts use one thread: two workers with two threads each oversubscribe the cores, and OpenMP's spinning
# threads then cost far more than they compute.
if os.environ.get("PYTEST_XDIST_WORKER"):
    os.environ["OMP_NUM_THREADS"] = "1"

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared"
DEMO_DATA = REPO / "src" / "headstart" / "demo_data"


@pytest.fixture(autouse=True, scope="session")
def _isolated_cache(tmp_path_factory):
    """Tests never read or fill the user's feature cache."""
    old = os.environ.get("HEADSTART_CACHE")
    os.environ["HEADSTART_CACHE"] = str(tmp_path_factory.mktemp("headstart-cache"))
    yield
    if old is None:
        os.environ.pop("HEADSTART_CACHE", None)
    else:
        os.environ["HEADSTART_CACHE"] = old


@pytest.fixture(scope="session")
def shared() -> Path:
    if not SHARED.is_dir():
        pytest.skip(f"{SHARED} is missing: the real datasets and weights live there")
    return SHARED


def make_synthetic_dataset(root: Path, classes=("red", "green", "blue"), per_split=None, size=48,
                           seed: int = 0) -> Path:
    """Images whose dominant colour is their class, with noise: separable even by random features."""
    per_split = per_split or {"train": 12, "val": 6, "test": 6}
    rng = np.random.default_rng(seed)
    palette = {"red": (200, 40, 40), "green": (40, 200, 40), "blue": (40, 40, 200), "gray": (128, 128, 128)}
    for split, count in per_split.items():
        for name in classes:
            folder = root / split / name
            folder.mkdir(parents=True, exist_ok=True)
            for i in range(count):
                base = np.array(palette.get(name, rng.integers(0, 255, 3)), dtype=np.float32)
                pixels = np.clip(base + rng.normal(0, 30, (size, size + 8, 3)), 0, 255).astype(np.uint8)
                Image.fromarray(pixels).save(folder / f"{name}_{i}.jpg", quality=90)
    return root


@pytest.fixture
def synthetic_data(tmp_path) -> Path:
    return make_synthetic_dataset(tmp_path / "data")


CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--disable-quic", "--no-first-run"]


def require_chromium():
    """playwright's sync API, with Debian's Chromium present. Locally a missing browser skips with how to
    install it; in CI (.ci/run sets HEADSTART_REQUIRE_BROWSER=1) it fails instead."""
    hint = "apt-get install chromium (Debian package), and pip install playwright (no browser download)"
    required = os.environ.get("HEADSTART_REQUIRE_BROWSER") == "1"
    if not CHROMIUM.exists():
        if required:
            pytest.fail(f"no {CHROMIUM}: {hint}")
        pytest.skip(f"no {CHROMIUM}: {hint}")
    try:
        from playwright import sync_api
    except ImportError:
        if required:
            pytest.fail(f"playwright is not installed: {hint}")
        pytest.skip(f"playwright is not installed: {hint}")
    return sync_api


def exits_within(pid: int, seconds: float) -> bool:
    """Whether process `pid` (a helper whose parent was killed) is gone within `seconds`."""
    import time

    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline and _alive(pid):
        time.sleep(0.1)
    return not _alive(pid)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # an exited child of an exited parent is reaped by init; a zombie still answers kill(0)
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split(") ")[1][0] != "Z"
    except OSError:
        return True


def noisy_dataset(root: Path) -> Path:
    """The synthetic dataset with a red image filed as green and one train image copied byte for byte into test."""
    import shutil

    data = make_synthetic_dataset(root)
    shutil.move(data / "train" / "red" / "red_3.jpg", data / "train" / "green" / "red_3.jpg")
    shutil.copy(data / "train" / "blue" / "blue_0.jpg", data / "test" / "blue" / "copy_of_blue_0.jpg")
    return data


@pytest.fixture(scope="session")
def audited(tmp_path_factory):
    """(DATA, AuditReport) of noisy_dataset, audited once with the real default backbone at 64 px."""
    from headstart.audit.report import audit_dataset

    data = noisy_dataset(tmp_path_factory.mktemp("audit") / "photos")
    return data, audit_dataset(data, image_size=64)
