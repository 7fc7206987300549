"""Near-duplicates: planted resized / recompressed / cropped / brightened copies are found (within a split: a
warning; across splits: leakage), a look-alike with a different layout is not, and exact copies are left to the
doctor. Features are synthetic here (close for copies and for the look-alike), so the pHash decides."""

from __future__ import annotations

import io
import shutil

import numpy as np
import pytest
from PIL import Image, ImageEnhance

from headstart.audit.duplicates import near_duplicates
from headstart.audit.features import Embedded


def _picture(rng, size=(200, 150)) -> Image.Image:
    """A smooth random picture: low-frequency structure, as photos have."""
    small = rng.integers(0, 255, (6, 8, 3), dtype=np.uint8)
    return Image.fromarray(small).resize(size, Image.BICUBIC)


def _altered(img: Image.Image, kind: str) -> Image.Image:
    w, h = img.size
    if kind == "resize70":
        return img.resize((round(w * 0.7), round(h * 0.7)), Image.BILINEAR)
    if kind == "jpeg60":
        buffer = io.BytesIO()
        img.save(buffer, "JPEG", quality=60)
        return Image.open(io.BytesIO(buffer.getvalue())).convert("RGB")
    if kind == "crop10":
        return img.crop((round(w * 0.05), round(h * 0.05), w - round(w * 0.05), h - round(h * 0.05)))
    return ImageEnhance.Brightness(img).enhance(1.2)


KINDS = ("resize70", "jpeg60", "crop10", "bright20")


@pytest.fixture
def planted(tmp_path):
    rng = np.random.default_rng(0)
    paths, splits, features, hashes = [], [], [], []
    base = rng.normal(size=(12, 32))

    def add(img, name, split, feature):
        path = tmp_path / name
        img.save(path, quality=95)
        paths.append(str(path))
        splits.append(split)
        features.append(feature)
        hashes.append(name)

    originals = [_picture(rng) for _ in range(12)]
    for i, img in enumerate(originals):
        add(img, f"orig{i}.png", "train", base[i])
    for i, kind in enumerate(KINDS):  # copies of 0-3 into test (leakage), of 4-7 within train
        add(_altered(originals[i], kind), f"leak_{kind}.png", "test", base[i] + 0.1 * rng.normal(size=32))
        add(_altered(originals[4 + i], kind), f"dup_{kind}.png", "train", base[4 + i] + 0.1 * rng.normal(size=32))
    # a look-alike: the embedding says "same" but the picture is another one
    add(_picture(rng), "lookalike.png", "test", base[8] + 0.1 * rng.normal(size=32))
    f = np.array(features, dtype=np.float32)
    f /= np.linalg.norm(f, axis=1, keepdims=True)
    emb = Embedded(["x"], paths, splits, np.zeros(len(paths), dtype=np.int64), hashes, f, 0, [], short_side=256)
    return emb, tmp_path


def test_planted_copies_are_found_and_a_lookalike_is_not(planted):
    emb, _ = planted
    found = {frozenset((d.first.rsplit("/", 1)[1], d.second.rsplit("/", 1)[1])): d for d in near_duplicates(emb)}
    for i, kind in enumerate(KINDS):
        leak = found[frozenset((f"orig{i}.png", f"leak_{kind}.png"))]
        assert leak.leakage and leak.phash_distance <= 19
        within = found[frozenset((f"orig{4 + i}.png", f"dup_{kind}.png"))]
        assert not within.leakage
    assert len(found) == 8  # nothing else: not the look-alike, not two different originals


def test_exact_copies_are_left_to_the_doctor(planted):
    emb, root = planted
    shutil.copy(emb.paths[9], root / "same.png")
    emb.paths.append(str(root / "same.png"))
    emb.splits.append("test")
    emb.hashes.append(emb.hashes[9])  # the same content hash
    emb.features = np.vstack([emb.features, emb.features[9:10]])
    emb.labels = np.append(emb.labels, 0)
    assert not any("same.png" in (d.first + d.second) for d in near_duplicates(emb))


def test_tiny_images_are_left_to_the_exact_check(tmp_path):
    rng = np.random.default_rng(3)
    paths = []
    for i in range(3):
        Image.fromarray(rng.integers(0, 255, (8, 8), dtype=np.uint8)).save(tmp_path / f"d{i}.png")
        paths.append(str(tmp_path / f"d{i}.png"))
    ImageEnhance.Brightness(Image.open(paths[2]).convert("RGB")).enhance(1.2).save(tmp_path / "copy.png")
    paths.append(str(tmp_path / "copy.png"))
    features = np.ones((4, 4), dtype=np.float32) / 2  # tiny images all look alike to an ImageNet backbone
    emb = Embedded(["x"], paths, ["train"] * 3 + ["test"], np.zeros(4, dtype=np.int64), list("abcd"), features, 0, [])
    assert near_duplicates(emb, tiny=set(paths)) == []
    assert len(near_duplicates(emb)) > 0  # without the size rule, the equal features would call them copies


def test_in_a_set_of_look_alikes_only_a_copy_that_stands_out_is_found(tmp_path):
    """Scans, X-rays, upscaled digits: distinct images pass the cosine and pHash thresholds by the thousand (46,209
    pairs on digits upscaled to 64 px before the crowd rule). Only a pair far closer than either image's 5th
    nearest neighbour is a copy."""
    rng = np.random.default_rng(1)
    center = rng.normal(size=32)
    picture = _picture(rng)
    paths, features = [], []
    for i in range(30):  # one picture, slightly different each time; features all within ~0.97 of each other
        path = tmp_path / f"scan{i}.png"
        Image.fromarray(np.clip(np.asarray(picture, dtype=np.int16) + rng.integers(-3, 4, (150, 200, 3)), 0, 255)
                        .astype(np.uint8)).save(path)
        paths.append(str(path))
        features.append(center + 0.15 * rng.normal(size=32))
    copy = tmp_path / "copy_of_scan0.jpg"
    _altered(Image.open(paths[0]).convert("RGB"), "jpeg60").save(copy)
    paths.append(str(copy))
    features.append(features[0] + 0.02 * rng.normal(size=32))
    f = np.array(features, dtype=np.float32)
    f /= np.linalg.norm(f, axis=1, keepdims=True)
    assert (f[:30] @ f[:30].T).min() > 0.9  # every distinct pair passes the cosine threshold
    splits = ["train"] * 15 + ["test"] * 16
    emb = Embedded(["x"], paths, splits, np.zeros(len(paths), dtype=np.int64), [p for p in paths], f, 0, [],
                   short_side=256)
    found = [frozenset((d.first.rsplit("/", 1)[1], d.second.rsplit("/", 1)[1])) for d in near_duplicates(emb)]
    assert found == [frozenset(("scan0.png", "copy_of_scan0.jpg"))]
