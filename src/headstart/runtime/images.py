"""The one safe way to open an image: fully loaded, EXIF-oriented RGB, or an ImageLoadError.

Deliberately free of torch so that a serving-only install can use it.
"""

from __future__ import annotations

import io
import logging
import math
import os
import re
import warnings
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import IO, Any, Union

import numpy as np
from PIL import Image, UnidentifiedImageError

__all__ = [
    "IMAGE_EXTENSIONS",
    "MAX_IMAGE_PIXELS",
    "ImageLoadError",
    "image_info",
    "is_image_file",
    "open_image",
]

logger = logging.getLogger(__name__)

IMAGE_EXTENSIONS: frozenset[str] = frozenset(
    {".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff"}
)
MAX_IMAGE_PIXELS: int = 89_478_485  # PIL's default; we never change PIL's global

Source = Union[str, "os.PathLike[str]", bytes, bytearray, IO[bytes]]

_ORIENTATION_TAG = 0x0112
# EXIF orientation -> transpose that displays the image upright (same table as ImageOps.exif_transpose).
_TRANSPOSE = {
    2: Image.Transpose.FLIP_LEFT_RIGHT,
    3: Image.Transpose.ROTATE_180,
    4: Image.Transpose.FLIP_TOP_BOTTOM,
    5: Image.Transpose.TRANSPOSE,
    6: Image.Transpose.ROTATE_270,
    7: Image.Transpose.TRANSVERSE,
    8: Image.Transpose.ROTATE_90,
}


# A JPEG decoded at a reduced DCT scale may come out this much below the short side it is resized to: the few
# percent left are a slight upscale (docs/benchmarks.md, "Decoding at a reduced scale", has the probe accuracy).
DRAFT_SLACK = 0.9


class ImageLoadError(Exception):
    """An image that cannot be used; ``reason`` is short and human readable."""

    def __init__(self, path: str | None, reason: str | None = None) -> None:
        if reason is None:  # one argument: how torch's DataLoader re-raises a worker's error, with its message
            path, reason = None, path or ""
        self.path = path
        self.reason = reason
        super().__init__(f"{path}: {reason}" if path is not None else reason)


def is_image_file(path: str | os.PathLike[str]) -> bool:
    """True when the file name has a known image extension (case-insensitive); the file is not read."""
    return Path(path).suffix.lower() in IMAGE_EXTENSIONS


def open_image(source: Source, *, max_pixels: int | None = None, min_size: int = 1,
               reduce_to: int | None = None) -> Image.Image:
    """Open a path, bytes or binary file object as a fully loaded, upright RGB image.

    Images with more than ``max_pixels`` pixels (default MAX_IMAGE_PIXELS) are refused from the
    header, before any pixel memory is allocated. Every failure raises ImageLoadError.
    reduce_to: the short side the caller will resize to; a JPEG is then decoded at the smallest DCT scale
    (1/2, 1/4, 1/8: Pillow's draft mode) whose short side is still at least DRAFT_SLACK of that, instead of
    at full size: a 500 px photo for a 256 px resize decodes at 250 px, a quarter of the pixels.
    """
    with _opened(source, max_pixels) as (img, name):
        try:
            img.seek(0)  # animated GIF/WebP: the first frame
            if reduce_to is not None and img.format == "JPEG":
                _draft(img, reduce_to)
            img.load()
            orientation = _orientation(img)
            rgb = _to_rgb(img)
            if orientation in _TRANSPOSE:
                rgb = rgb.transpose(_TRANSPOSE[orientation])
        except Exception as exc:  # decoders raise many exception types on bad data
            raise _load_error(name, exc, img.format) from exc
    if min(rgb.size) < min_size:
        w, h = rgb.size
        raise ImageLoadError(name, f"too small: {w}x{h} (needs at least {min_size}x{min_size})")
    return rgb


def _draft(img: Image.Image, short_side: int) -> None:
    """Ask the JPEG decoder for a reduced scale that keeps the short side >= DRAFT_SLACK * short_side
    (orientation swaps the axes, never the short side). The mode is left alone: CMYK and grey JPEGs convert as
    at full size."""
    w, h = img.size
    short, wanted = min(w, h), math.ceil(DRAFT_SLACK * short_side)
    if short >= 2 * wanted:  # a reduction is possible at all
        img.draft(None, (-(-w * wanted // short), -(-h * wanted // short)))


def image_info(source: Source, *, max_pixels: int | None = None) -> dict[str, Any]:
    """Header-only facts for a dataset doctor; width/height are as displayed (after EXIF rotation)."""
    with _opened(source, max_pixels) as (img, name):
        try:
            orientation = _orientation(img)
            w, h = img.size
            if orientation in (5, 6, 7, 8):  # these orientations swap the axes
                w, h = h, w
            return {
                "format": img.format,
                "mode": img.mode,
                "width": w,
                "height": h,
                "exif_rotated": orientation in _TRANSPOSE,
                "n_frames": int(getattr(img, "n_frames", 1)),
            }
        except Exception as exc:
            raise _load_error(name, exc, img.format) from exc


@contextmanager
def _opened(source: Source, max_pixels: int | None) -> Iterator[tuple[Image.Image, str | None]]:
    """PIL image opened lazily from any source, size-checked from the header; file closed on exit."""
    limit = MAX_IMAGE_PIXELS if max_pixels is None else max_pixels
    name = _name_of(source)
    with ExitStack() as stack:
        try:
            if isinstance(source, (bytes, bytearray, memoryview)):
                fp: IO[bytes] = io.BytesIO(source)
            elif isinstance(source, (str, os.PathLike)):
                # Our own handle, not PIL's, so a loaded image stays valid after we close it.
                fp = stack.enter_context(open(source, "rb"))
            else:
                fp = source
            if _remaining(fp) == 0:
                raise ImageLoadError(name, "empty file (0 bytes)")
            with warnings.catch_warnings():
                # Refuse on PIL's own bomb warning, unless the caller allowed more pixels than PIL does.
                pil_limit = Image.MAX_IMAGE_PIXELS
                refuse = pil_limit is None or limit <= pil_limit
                warnings.simplefilter("error" if refuse else "ignore", Image.DecompressionBombWarning)
                img = Image.open(fp)
        except ImageLoadError:
            raise
        except Exception as exc:  # PIL raises many types on bad data; callers need one
            raise _load_error(name, exc, None, limit) from exc
        w, h = img.size
        if w * h > limit:  # from the header only: nothing decoded or allocated yet
            raise ImageLoadError(name, f"decompression bomb: {w}x{h} pixels exceeds limit of {limit}")
        yield img, name


def _name_of(source: Source) -> str | None:
    if isinstance(source, (str, os.PathLike)):
        return os.fsdecode(source)
    name = getattr(source, "name", None)
    return name if isinstance(name, str) else None


def _remaining(fp: IO[bytes]) -> int | None:
    """Bytes left in a seekable stream (None when it cannot tell)."""
    try:
        pos = fp.tell()
        end = fp.seek(0, os.SEEK_END)
        fp.seek(pos)
        return end - pos
    except (AttributeError, OSError, ValueError):
        return None


def _orientation(img: Image.Image) -> int:
    try:
        return int(img.getexif().get(_ORIENTATION_TAG, 1))
    except Exception:  # corrupt EXIF must not make a good image unreadable
        logger.debug("ignoring unreadable EXIF", exc_info=True)
        return 1


def _to_rgb(img: Image.Image) -> Image.Image:
    mode = img.mode
    if mode == "RGB":
        return img
    if (mode == "P" and "transparency" in img.info) or mode in ("PA", "LA", "La", "RGBa"):
        img, mode = img.convert("RGBA"), "RGBA"
    if mode == "RGBA":
        # Composite onto white: dropping alpha would expose whatever colour transparent pixels hold.
        white = Image.new("RGB", img.size, (255, 255, 255))
        white.paste(img.convert("RGB"), mask=img.getchannel("A"))
        return white
    if mode.startswith("I") or mode == "F":
        return Image.fromarray(_to_uint8(img), "L").convert("RGB")
    return img.convert("RGB")  # L, 1, P, CMYK, YCbCr, RGBX, ...


def _to_uint8(img: Image.Image) -> np.ndarray:
    """Scale a 16/32-bit integer or float single-channel image to 0..255 by its real bit depth."""
    arr = np.asarray(img)
    if img.mode == "F":
        arr = np.nan_to_num(arr.astype(np.float64), nan=0.0, posinf=255.0, neginf=0.0)
        if arr.size and arr.min() >= 0.0 and arr.max() <= 1.0:  # float images are usually 0..1
            arr = arr * 255.0
        return np.clip(np.rint(arr), 0, 255).astype(np.uint8)
    arr = arr.astype(np.int64)
    bits = _bit_depth(img, arr)
    return (np.clip(arr, 0, (1 << bits) - 1) >> (bits - 8)).astype(np.uint8)


def _bit_depth(img: Image.Image, arr: np.ndarray) -> int:
    if img.mode.startswith("I;16") or img.format == "PNG":  # PNG only yields I modes for 16-bit grey
        return 16
    bps = getattr(img, "tag_v2", {}).get(258)  # TIFF BitsPerSample
    if bps:
        return max(8, int(bps[0] if isinstance(bps, tuple) else bps))
    top = int(arr.max(initial=0))
    return 8 if top < 1 << 8 else 16 if top < 1 << 16 else 32


def _load_error(
    name: str | None, exc: BaseException, fmt: str | None, limit: int | None = None
) -> ImageLoadError:
    kind = fmt or (Path(name).suffix.lstrip(".").upper() if name else "") or "image"
    msg = str(exc)
    if isinstance(exc, (Image.DecompressionBombError, Image.DecompressionBombWarning)):
        pixels = re.search(r"\((\d+) pixels\)", msg)
        got = f"{pixels.group(1)} pixels" if pixels else "too many pixels"
        reason = f"decompression bomb: {got} exceeds limit of {limit or MAX_IMAGE_PIXELS}"
    elif isinstance(exc, UnidentifiedImageError):
        reason = "not an image (cannot identify format)"
    elif isinstance(exc, FileNotFoundError):
        reason = "file not found"
    elif isinstance(exc, IsADirectoryError):
        reason = "is a directory, not a file"
    elif isinstance(exc, PermissionError):
        reason = "permission denied"
    elif isinstance(exc, (OSError, SyntaxError, EOFError)) and "truncated" in msg.lower():
        reason = f"truncated or corrupt {kind}"
    else:
        reason = f"corrupt or unsupported {kind} ({msg or type(exc).__name__})"
    logger.debug("cannot load image %s: %s", name, reason)
    return ImageLoadError(name, reason)
