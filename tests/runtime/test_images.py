"""Tests for headstart.runtime.images on the shared bad/odd image corpus."""

from __future__ import annotations

import contextlib
import io
import subprocess
import sys
import time
import tracemalloc
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageFile

from headstart.runtime.images import (
    IMAGE_EXTENSIONS,
    MAX_IMAGE_PIXELS,
    ImageLoadError,
    image_info,
    is_image_file,
    open_image,
)
from image_corpus import (
    BAD_FILES,
    EXPECTED_SIZES,
    GOOD_FILES,
    TOO_SMALL_FILES,
    make_corpus,
    png_header_only,
)

IMAGES_PY = Path(__file__).resolve().parents[2] / "src" / "headstart" / "runtime" / "images.py"

EXPECTED_REASON = {
    "truncated.jpg": "truncated",
    "empty.jpg": "empty file (0 bytes)",
    "text.jpg": "not an image",
    "bomb.png": "decompression bomb",
}


@pytest.fixture(scope="module")
def corpus(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    return make_corpus(tmp_path_factory.mktemp("corpus"))


def test_corpus_lists_are_consistent(corpus: dict[str, Path]) -> None:
    assert set(GOOD_FILES) | set(BAD_FILES) == set(corpus)
    assert not set(GOOD_FILES) & set(BAD_FILES)
    assert set(EXPECTED_REASON) == set(BAD_FILES)


@pytest.mark.parametrize("name", GOOD_FILES)
def test_good_files_load_as_rgb(corpus: dict[str, Path], name: str) -> None:
    img = open_image(corpus[name])
    assert img.mode == "RGB"
    assert img.size == EXPECTED_SIZES[name]
    img.getpixel((0, 0))  # fully loaded: usable after the file was closed


@pytest.mark.parametrize("name", BAD_FILES)
def test_bad_files_raise_image_load_error(corpus: dict[str, Path], name: str) -> None:
    with pytest.raises(ImageLoadError) as info:  # any other exception type fails the test
        open_image(corpus[name])
    err = info.value
    assert type(err) is ImageLoadError
    assert EXPECTED_REASON[name] in err.reason
    assert err.path == str(corpus[name])
    assert str(err) == f"{corpus[name]}: {err.reason}"


@pytest.mark.parametrize("name", BAD_FILES)
def test_bad_bytes_raise_without_path(corpus: dict[str, Path], name: str) -> None:
    with pytest.raises(ImageLoadError) as info:
        open_image(corpus[name].read_bytes())
    assert info.value.path is None
    assert str(info.value) == info.value.reason
    assert EXPECTED_REASON[name] in info.value.reason


def test_missing_file_and_directory(tmp_path: Path) -> None:
    with pytest.raises(ImageLoadError, match="file not found"):
        open_image(tmp_path / "nope.jpg")
    with pytest.raises(ImageLoadError, match="directory"):
        open_image(tmp_path)


@pytest.mark.parametrize("name", TOO_SMALL_FILES)
def test_min_size(corpus: dict[str, Path], name: str) -> None:
    assert open_image(corpus[name], min_size=1).size == (1, 1)
    with pytest.raises(ImageLoadError, match=r"too small: 1x1 \(needs at least 2x2\)"):
        open_image(corpus[name], min_size=2)


@pytest.mark.parametrize("name", ["rgba.png", "palette_alpha.png"])
def test_transparency_composited_onto_white(corpus: dict[str, Path], name: str) -> None:
    img = open_image(corpus[name])
    assert img.getpixel((0, 0)) == (255, 255, 255)  # hidden colour is red: must not show
    assert img.getpixel((31, 31)) == (0, 0, 255)


def test_gray16_keeps_its_gradient(corpus: dict[str, Path]) -> None:
    row = np.asarray(open_image(corpus["gray16.png"]))[0, :, 0].astype(int)
    assert row[0] == 0 and row[-1] == 255
    assert abs(row[len(row) // 2] - 128) <= 4
    assert np.all(np.diff(row) >= 0) and len(np.unique(row)) > 50


def test_float_tiff_scaled(corpus: dict[str, Path]) -> None:
    row = np.asarray(open_image(corpus["float.tiff"]))[0, :, 0].astype(int)
    assert row[0] == 0 and row[-1] == 255 and np.all(np.diff(row) > 0)


def test_colour_conversions(corpus: dict[str, Path]) -> None:
    r, g, b = open_image(corpus["cmyk.jpg"]).getpixel((16, 16))
    assert r > 200 and g < 60 and b < 60  # CMYK (0,255,255,0) is red
    assert open_image(corpus["animated.gif"]).getpixel((12, 12)) == (255, 0, 0)  # first frame
    assert open_image(corpus["bilevel.png"]).getpixel((0, 0)) in {(0, 0, 0), (255, 255, 255)}


def test_exif_rotation_applied_in_the_right_direction(corpus: dict[str, Path]) -> None:
    img = open_image(corpus["exif_rotated.jpg"])
    assert img.size == (20, 40)
    r, g, b = img.getpixel((17, 2))  # top-right: the stored top-left red square
    assert r > 200 and g < 60 and b < 60
    for xy in [(2, 2), (2, 37), (17, 37)]:
        assert img.getpixel(xy)[0] < 180


@pytest.mark.filterwarnings("ignore::UserWarning")  # PIL warns about the corrupt metadata we create
@pytest.mark.parametrize("name", GOOD_FILES)
def test_damaged_files_only_ever_raise_image_load_error(corpus: dict[str, Path], name: str) -> None:
    data = corpus[name].read_bytes()
    rng = np.random.default_rng(len(data))
    damaged = [data[: len(data) * k // 4] for k in (1, 2, 3)]
    for _ in range(6):
        flipped = bytearray(data)
        for i in rng.integers(0, len(data), size=4):
            flipped[i] = int(rng.integers(0, 256))
        damaged.append(bytes(flipped))
    for blob in damaged:
        try:
            assert open_image(blob).mode == "RGB"  # some damage is invisible to the decoder
        except ImageLoadError as err:
            assert err.reason


def test_bomb_refused_from_header(corpus: dict[str, Path], monkeypatch: pytest.MonkeyPatch) -> None:
    decoded: list[object] = []
    real_load = ImageFile.ImageFile.load
    monkeypatch.setattr(ImageFile.ImageFile, "load", lambda self: decoded.append(self) or real_load(self))
    tracemalloc.start()
    start = time.perf_counter()
    try:
        with pytest.raises(ImageLoadError, match="decompression bomb"):
            open_image(corpus["bomb.png"])
        elapsed = time.perf_counter() - start
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert elapsed < 1.0
    assert peak < 50 * 2**20
    assert decoded == []
    assert corpus["bomb.png"].stat().st_size < 1000


def test_bomb_between_pil_warning_and_error_limits_is_refused() -> None:
    data = png_header_only(10_000, 10_000)  # 1e8 px: PIL only warns here, we must refuse
    with pytest.raises(ImageLoadError, match="decompression bomb"):
        open_image(data)
    with pytest.raises(ImageLoadError, match="decompression bomb"):
        image_info(data)
    assert image_info(data, max_pixels=2 * 10**8)["width"] == 10_000  # caller may allow more


def test_max_pixels_checked_from_header(corpus: dict[str, Path]) -> None:
    with pytest.raises(ImageLoadError, match=r"decompression bomb: 64x48 pixels exceeds limit of 1000"):
        open_image(corpus["good_rgb.jpg"], max_pixels=1000)


def test_bytes_and_file_object_sources(corpus: dict[str, Path]) -> None:
    path = corpus["exif_rotated.jpg"]
    assert open_image(path.read_bytes()).size == (20, 40)
    assert open_image(io.BytesIO(path.read_bytes())).size == (20, 40)
    assert open_image(str(path)).size == (20, 40)
    with path.open("rb") as f:
        assert open_image(f).size == (20, 40)
        assert not f.closed  # the caller's file stays the caller's
    with corpus["text.jpg"].open("rb") as f, pytest.raises(ImageLoadError) as info:
        open_image(f)
    assert info.value.path == str(corpus["text.jpg"])
    with pytest.raises(ImageLoadError, match="empty"):
        open_image(io.BytesIO(b""))


def test_image_info(corpus: dict[str, Path]) -> None:
    info = image_info(corpus["exif_rotated.jpg"])
    assert info == {
        "format": "JPEG",
        "mode": "RGB",
        "width": 20,
        "height": 40,
        "exif_rotated": True,
        "n_frames": 1,
    }
    assert image_info(corpus["gray16.png"])["mode"] == "I;16"
    assert image_info(corpus["cmyk.jpg"])["mode"] == "CMYK"
    assert image_info(corpus["animated.gif"])["n_frames"] == 3
    assert image_info(corpus["good_rgb.jpg"])["exif_rotated"] is False
    for name in ("empty.jpg", "text.jpg", "bomb.png"):
        with pytest.raises(ImageLoadError):
            image_info(corpus[name])


def test_is_image_file() -> None:
    assert is_image_file("a/b/photo.JPG") and is_image_file(Path("x.tiff")) and is_image_file("y.webp")
    assert not is_image_file("notes.txt") and not is_image_file("jpg")
    assert all(ext.startswith(".") and ext == ext.lower() for ext in IMAGE_EXTENSIONS)


def test_pil_globals_untouched(corpus: dict[str, Path]) -> None:
    for path in corpus.values():
        with contextlib.suppress(ImageLoadError):
            open_image(path)
    assert Image.MAX_IMAGE_PIXELS == MAX_IMAGE_PIXELS == 89_478_485
    assert ImageFile.LOAD_TRUNCATED_IMAGES is False


def test_module_does_not_import_torch() -> None:
    code = (
        "import importlib.util, sys\n"
        f"spec = importlib.util.spec_from_file_location('images', {str(IMAGES_PY)!r})\n"
        "mod = importlib.util.module_from_spec(spec); spec.loader.exec_module(mod)\n"
        "assert 'torch' not in sys.modules, 'torch was imported'\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


def test_image_load_error_survives_a_one_argument_reraise():
    # torch's DataLoader re-raises a worker's exception as type(exc)(message)
    from headstart.runtime.images import ImageLoadError

    again = ImageLoadError(str(ImageLoadError("a.jpg", "truncated")))
    assert again.reason == "a.jpg: truncated" and again.path is None


def test_reduce_to_decodes_a_jpeg_at_the_smallest_scale_that_covers_the_resize(tmp_path):
    """Draft mode: a 1024x768 JPEG to be resized to a short side of 256 decodes at 1/2 scale (384 >= 256, and
    1/4 would give 192), upright, with pixels close to a full decode's once both are resized."""
    import numpy as np
    from PIL import Image

    from headstart.runtime.preprocess import resize_short_side

    y, x = np.mgrid[0:768, 0:1024]
    pixels = np.stack([x % 256, y % 256, (x + y) % 256], -1).astype(np.uint8)
    path = tmp_path / "big.jpg"
    exif = Image.Exif()
    exif[0x0112] = 6  # rotated: displayed 768 wide, 1024 high
    Image.fromarray(pixels).save(path, quality=95, exif=exif)
    full, reduced = open_image(path), open_image(path, reduce_to=256)
    assert full.size == (768, 1024) and reduced.size == (384, 512)
    assert open_image(path, reduce_to=500).size == (768, 1024)  # half would be below 500: no reduction
    a = np.asarray(resize_short_side(full, 256, "bicubic"), dtype=float)
    b = np.asarray(resize_short_side(reduced, 256, "bicubic"), dtype=float)
    assert a.shape == b.shape and np.abs(a - b).mean() < 8
    png = tmp_path / "big.png"
    Image.fromarray(pixels).save(png)
    assert open_image(png, reduce_to=256).size == (1024, 768)  # only JPEGs have DCT scales
