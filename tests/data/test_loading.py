"""decode_split: every image opened once, in order, resized, hashed by its file's bytes; bad files listed, never
raised; a split decoded without keeping its images decodes them again equal. map_items keeps the order of its
paths and reads a bounded window ahead."""

from __future__ import annotations

import hashlib
import threading
import time
from contextlib import closing
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from conftest import make_synthetic_dataset
from headstart.data.loading import decode_split, map_items
from headstart.runtime.images import ImageLoadError, open_image
from headstart.runtime.preprocess import resize_short_side


@pytest.fixture
def items(tmp_path) -> list[tuple[str, int]]:
    """Six good images (48 x 56, height x width), labels in class order, interleaved with three bad files."""
    classes = ("blue", "green", "red")
    root = make_synthetic_dataset(tmp_path / "data", classes=classes, per_split={"train": 2}, size=48)
    good = [(str(root / "train" / name / f"{name}_{i}.jpg"), label) for label, name in enumerate(classes)
            for i in range(2)]
    (tmp_path / "garbage.jpg").write_bytes(b"not a jpeg at all")
    (tmp_path / "empty.png").write_bytes(b"")
    bad = [(str(tmp_path / "garbage.jpg"), 0), (str(tmp_path / "missing.jpg"), 1), (str(tmp_path / "empty.png"), 2)]
    return [good[0], bad[0], good[1], good[2], bad[1], good[3], good[4], bad[2], good[5]]


def _pixels(image: Image.Image) -> tuple:
    return image.mode, image.size, image.tobytes()


def test_decode_keeps_order_labels_and_hashes_of_the_file_bytes(items):
    seen = []
    decoded = decode_split(items, short_side=None, threads=2, progress=lambda done, total: seen.append((done, total)))
    good = [items[i] for i in (0, 2, 3, 5, 6, 8)]
    assert decoded.paths == [p for p, _ in good] and decoded.labels == [y for _, y in good]
    assert decoded.labels == [0, 0, 1, 1, 2, 2]
    assert decoded.hashes == [hashlib.sha1(Path(p).read_bytes()).hexdigest() for p, _ in good]
    for path, image in zip(decoded.paths, decoded.images):
        assert _pixels(image) == _pixels(open_image(path)) and image.size == (56, 48)
    assert seen == [(i, len(items)) for i in range(1, len(items) + 1)]


def test_unreadable_files_are_listed_as_failures_without_raising(items, caplog):
    decoded = decode_split(items, short_side=32, threads=2)
    failures = dict(decoded.failures)
    assert [Path(p).name for p, _ in decoded.failures] == ["garbage.jpg", "missing.jpg", "empty.png"]
    assert all(isinstance(reason, str) and reason for reason in failures.values())
    assert "not found" in failures[items[4][0]]
    assert not set(failures) & set(decoded.paths) and len(decoded.images) == len(decoded.hashes) == 6
    assert f"skipping {items[1][0]}" in caplog.text


def test_decode_resizes_the_short_side(items):
    good = [items[i] for i in (0, 2, 3)]
    for short_side, interpolation in ((32, "bicubic"), (20, "nearest"), (48, "bilinear")):
        decoded = decode_split(good, short_side=short_side, interpolation=interpolation, threads=2)
        assert (decoded.short_side, decoded.interpolation) == (short_side, interpolation)
        for path, image in zip(decoded.paths, decoded.images):
            assert min(image.size) == short_side
            expected = resize_short_side(open_image(path), short_side, interpolation)  # as prediction decodes
            assert _pixels(image) == _pixels(expected)
    assert decode_split(good, short_side=32, threads=2).images[0].size == (37, 32)  # int(32 * 56 / 48) wide


def test_without_kept_images_load_decodes_them_again_equal(items):
    kept = decode_split(items, short_side=32, interpolation="bicubic", threads=2)
    light = decode_split(items, short_side=32, interpolation="bicubic", threads=2, keep_images=False)
    assert light.images is None
    assert (light.paths, light.labels, light.hashes, light.failures) == (kept.paths, kept.labels, kept.hashes,
                                                                          kept.failures)
    for indices in ([3, 0, 5], [4], list(range(6))):  # several (in threads) and one (a DataLoader worker's call)
        assert [_pixels(i) for i in light.load(indices)] == [_pixels(kept.images[i]) for i in indices]
        assert [_pixels(i) for i in kept.load(indices)] == [_pixels(kept.images[i]) for i in indices]


def test_load_raises_when_a_file_went_bad_after_decoding(items):
    light = decode_split(items, short_side=32, threads=2, keep_images=False)
    Path(light.paths[1]).write_bytes(b"overwritten")
    with pytest.raises(ImageLoadError):
        light.load([0, 1])
    with pytest.raises(ImageLoadError):
        light.load([1])
    assert len(light.load([0, 2])) == 2


def test_map_items_keeps_the_order_of_the_paths():
    paths = [f"item-{i}" for i in range(30)]
    rng = np.random.default_rng(0)
    delays = dict(zip(paths, rng.uniform(0, 0.004, len(paths))))

    def fn(path, data):
        time.sleep(delays[path])  # later items often finish first
        return path, data, threading.get_ident()

    with closing(map_items(fn, paths, workers=3)) as futures:
        results = [f.result() for f in futures]
    assert [r[0] for r in results] == paths
    assert all(data is None for _, data, _ in results)  # plain files: fn reads them in its own thread
    assert threading.get_ident() not in {r[2] for r in results}


def test_map_items_reads_at_most_four_items_per_worker_ahead():
    pulled = []

    def paths():
        for i in range(100):
            pulled.append(i)
            yield f"item-{i}"

    with closing(map_items(lambda path, data: path, paths(), workers=2)) as futures:
        first = next(futures)
        assert len(pulled) == 8 and first.result() == "item-0"
        rest = [f.result() for f in futures]
    assert rest == [f"item-{i}" for i in range(1, 100)]


def test_an_error_other_than_a_bad_image_is_raised(items, monkeypatch):
    from headstart.data import loading

    def broken(*args, **kwargs):
        raise MemoryError("out of memory")

    monkeypatch.setattr(loading, "open_image", broken)
    with pytest.raises(MemoryError):
        decode_split(items[:1], short_side=None, threads=1)
