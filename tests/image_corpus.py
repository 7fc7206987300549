"""A deterministic corpus of good, odd and broken image files for tests.

``make_corpus(dir)`` writes every file into ``dir`` (and nowhere else) and returns name -> path.

* ``GOOD_FILES`` must load as RGB with ``EXPECTED_SIZES[name]`` (the upright, displayed size).
* ``BAD_FILES`` must raise ImageLoadError.
* ``tiny.png`` is a 1x1 image: in GOOD_FILES because it loads with the default ``min_size=1``,
  but it is refused ("too small") with ``min_size=2`` or more - listed in ``TOO_SMALL_FILES``.
* ``exif_rotated.jpg`` is stored 40x20 with EXIF Orientation=6 and displays as 20x40; the stored
  top-left corner is red, so the upright image has red at its TOP-RIGHT corner (``EXIF_RED_CORNER``).
* ``rgba.png`` (and ``palette_alpha.png``) have a fully transparent left half whose hidden colour is
  red: composited correctly onto white it is (255, 255, 255); the right half is opaque blue.
* ``gray16.png`` is a 16-bit horizontal ramp 0..65535 (must not saturate to white when loaded).
* ``bomb.png`` is a few hundred bytes whose IHDR claims 50000x50000; it must be refused unread.
"""

from __future__ import annotations

import io
import struct
import zlib
from pathlib import Path

import numpy as np
from PIL import Image

__all__ = [
    "BAD_FILES",
    "EXIF_RED_CORNER",
    "EXPECTED_SIZES",
    "GOOD_FILES",
    "TOO_SMALL_FILES",
    "make_corpus",
    "png_header_only",
]

EXPECTED_SIZES: dict[str, tuple[int, int]] = {
    "good_rgb.jpg": (64, 48),
    "gray.png": (32, 32),
    "rgba.png": (32, 32),
    "palette.gif": (32, 32),
    "palette_alpha.png": (32, 32),
    "bilevel.png": (16, 16),
    "animated.gif": (24, 24),
    "cmyk.jpg": (32, 32),
    "gray16.png": (64, 8),
    "float.tiff": (16, 16),
    "image.webp": (32, 32),
    "image.tiff": (32, 32),
    "exif_rotated.jpg": (20, 40),
    "tiny.png": (1, 1),
}
GOOD_FILES: tuple[str, ...] = tuple(EXPECTED_SIZES)
BAD_FILES: tuple[str, ...] = ("truncated.jpg", "empty.jpg", "text.jpg", "bomb.png")
TOO_SMALL_FILES: tuple[str, ...] = ("tiny.png",)
EXIF_RED_CORNER = "top-right"

RED, BLUE = (255, 0, 0), (0, 0, 255)


def _chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def png_header_only(width: int, height: int) -> bytes:
    """A tiny PNG whose valid IHDR claims width x height RGB but whose IDAT holds almost nothing."""
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)  # 8-bit RGB, no interlace
    idat = zlib.compress(b"\x00" * 64)
    return b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", ihdr) + _chunk(b"IDAT", idat) + _chunk(b"IEND", b"")


def _ramp_rgb(w: int, h: int) -> Image.Image:
    y, x = np.mgrid[0:h, 0:w]
    arr = np.stack([x * 255 // max(w - 1, 1), y * 255 // max(h - 1, 1), (x + y) % 256], axis=-1)
    return Image.fromarray(arr.astype(np.uint8), "RGB")


def _half_transparent_rgba() -> Image.Image:
    arr = np.zeros((32, 32, 4), np.uint8)
    arr[:, :16] = (*RED, 0)  # hidden colour under alpha 0: naive alpha-dropping would show red
    arr[:, 16:] = (*BLUE, 255)
    return Image.fromarray(arr, "RGBA")


def make_corpus(dir: Path) -> dict[str, Path]:
    """Write the corpus into ``dir`` (created if needed) and return name -> path."""
    dir = Path(dir)
    dir.mkdir(parents=True, exist_ok=True)
    out: dict[str, Path] = {}

    def save(name: str, img: Image.Image, **kw: object) -> None:
        out[name] = dir / name
        img.save(out[name], **kw)

    def write(name: str, data: bytes) -> None:
        out[name] = dir / name
        out[name].write_bytes(data)

    save("good_rgb.jpg", _ramp_rgb(64, 48), quality=90)
    save("gray.png", _ramp_rgb(32, 32).convert("L"))
    save("rgba.png", _half_transparent_rgba())
    save("palette.gif", _ramp_rgb(32, 32).quantize(colors=16, dither=Image.Dither.NONE))
    pal = Image.new("P", (32, 32), 0)  # index 0 = red, fully transparent; index 1 = opaque blue
    pal.putpalette([*RED, *BLUE] + [0, 0, 0] * 254)
    pal.paste(1, (16, 0, 32, 32))
    save("palette_alpha.png", pal, transparency=0)
    save("bilevel.png", Image.fromarray(np.indices((16, 16)).sum(0) % 2 == 0))
    frames = [Image.new("RGB", (24, 24), c) for c in (RED, (0, 255, 0), BLUE)]
    save("animated.gif", frames[0], save_all=True, append_images=frames[1:], duration=100, loop=0)
    save("cmyk.jpg", Image.new("CMYK", (32, 32), (0, 255, 255, 0)), quality=95)  # CMYK red
    ramp16 = np.tile(np.linspace(0, 65535, 64).round().astype(np.uint16), (8, 1))
    save("gray16.png", Image.fromarray(ramp16))  # mode I;16
    save("float.tiff", Image.fromarray(np.tile(np.linspace(0, 1, 16, dtype=np.float32), (16, 1))))
    save("image.webp", _ramp_rgb(32, 32), quality=90)
    save("image.tiff", _ramp_rgb(32, 32))
    stored = Image.new("RGB", (40, 20), (128, 128, 128))
    stored.paste(RED, (0, 0, 8, 8))  # stored top-left -> displayed top-right after Orientation=6
    exif = Image.Exif()
    exif[0x0112] = 6
    save("exif_rotated.jpg", stored, quality=95, exif=exif.tobytes())
    save("tiny.png", Image.new("RGB", (1, 1), (10, 20, 30)))

    full = io.BytesIO()
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (64, 64, 3), np.uint8)).save(
        full, "JPEG", quality=90
    )
    write("truncated.jpg", full.getvalue()[: len(full.getvalue()) // 2])
    write("empty.jpg", b"")
    write("text.jpg", b"This is a text file, not a JPEG.\n")
    write("bomb.png", png_header_only(50_000, 50_000))
    return out
