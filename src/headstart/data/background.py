"""Every split decoded in the background while training starts up: `DecodeJob.start(...)`, then `.result()`.

Training imports torch, Lightning and timm first, on one thread. Decoding on threads of this process
meanwhile (PIL releases the GIL while it decodes) still slowed those imports: every time the importing
thread let go of the GIL for a file read, a decoding thread took it, and the import waited for its turn
back. So the work goes to a helper process (headstart.child) at a lower priority, which shares no GIL.
The pixels come back through an unnamed temporary file that both processes hold open (in /dev/shm where
there is one), read once when training asks for them: much quicker than unpickling them from a pipe.
Where no helper process can run, a thread does the same work. Measurements: docs/benchmarks.md, "Decoding
helper process".
"""

from __future__ import annotations

import contextlib
import logging
import mmap
import os
import pickle
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future
from typing import BinaryIO

from PIL import Image

from headstart.child import child_pipes, end_child, start_child
from headstart.data.loading import DecodedSplit, PixelStore, decode_split
from headstart.runtime import images

__all__ = ["DecodeJob"]

log = logging.getLogger(__name__)

Items = list[tuple[str, int]]
Progress = Callable[[str, int, int], None]  # (what, done, total)

_PROGRESS_EVERY = 0.1  # seconds between the child's progress messages


class DecodeJob:
    """The splits decoded in a helper process where one can run, else on a thread. result() returns
    {split: DecodedSplit} (or raises what decoding raised); close() stops the work if it is still running."""

    def __init__(self, splits: dict[str, Items], short_side: int | None, interpolation: str, keep_images: bool,
                 progress: Progress | None, in_memory: bool = True, reduce_to: int | None = None):
        self._args = (splits, short_side, interpolation, keep_images, reduce_to)
        self._in_memory = in_memory  # False: the pixels stay in a file on disk, read back per image
        self._progress = progress
        self._process = None
        self._pixels = None  # the shared temporary file the child writes pixels into
        self._reply: tuple | None = None  # the child's last message
        self._reader: threading.Thread | None = None
        self._future: Future | None = None

    @classmethod
    def start(cls, splits: dict[str, Items], *, short_side: int | None, interpolation: str = "bilinear",
              keep_images: bool = True, in_memory: bool = True, progress: Progress | None = None,
              reduce_to: int | None = None) -> DecodeJob:
        """in_memory=False (a large set): the images are kept decoded in a file on disk instead of in memory
        (DecodedSplit.store), where a helper process can write them; else they are decoded again when used.
        reduce_to: the model's Preprocessing.reduce_to (decode_split's)."""
        job = cls(splits, short_side, interpolation, keep_images, progress, in_memory, reduce_to)
        try:
            started = job._start_process()
        except BaseException:  # an interrupt while starting: no helper left behind
            job.close()
            raise
        if not started:
            job._start_thread()
        return job

    def result(self) -> dict[str, DecodedSplit]:
        if self._future is None:
            self._reader.join()
            reply, self._reply = self._reply, None
            try:
                decoded = self._collect(reply)
            except (OSError, ValueError) as exc:  # the shared file could not be read back: decode here
                log.debug("could not read the decoded pixels back (%s)", exc)
                decoded = None
            finally:
                self.close()
            if decoded is not None:
                self._future = Future()
                self._future.set_result(decoded)
            else:  # the helper failed or died: decode here, where an error raises with its own traceback
                log.debug("the decoding process ended with %r; decoding in this process", reply and reply[0])
                self._start_thread()
        return self._future.result()

    def close(self) -> None:
        """End the helper process (if still decoding) and free the shared pixels. Idempotent."""
        process, self._process = self._process, None
        if process is not None:
            if process.poll() is None:
                process.kill()
            process.wait()
            process.stdout.close()
        pixels, self._pixels = self._pixels, None
        if pixels is not None:
            pixels.close()

    def _start_process(self) -> bool:
        if os.name != "posix" or not _only_pil_formats():  # posix: the pixels file is an inherited descriptor
            return False
        try:
            self._pixels = _pixels_file(*self._args[:4], in_memory=self._in_memory)
        except OSError:
            return False
        if self._pixels is None:  # no room anywhere for the pixels: a thread holds them in memory as it goes
            return False
        self._process = start_child(__name__, "serve", pass_fds=(self._pixels.fileno(),))
        if self._process is None:
            self.close()
            return False
        request = (*self._args, self._pixels.fileno(), self._progress is not None, os.getpid(),
                   images.MAX_IMAGE_PIXELS)
        self._reader = threading.Thread(target=self._talk, args=(self._process, request),
                                        name="headstart-decode-replies", daemon=True)
        self._reader.start()
        return True

    def _talk(self, process, request: tuple) -> None:
        """The reader thread: sends the request (a large one fills the pipe until the helper has started, so
        not from the caller's thread), then passes progress to the callback and keeps the last message."""
        try:
            process.stdin.write(pickle.dumps(request, protocol=pickle.HIGHEST_PROTOCOL))
            process.stdin.close()
        except OSError:  # the helper died: result() decodes here
            return
        while True:
            try:
                message = pickle.load(process.stdout)
            except Exception:  # EOF (the child died or was killed), garbage, closed: whatever came last stands
                return
            if message[0] == "progress":
                self._progress(*message[1:])
            else:
                self._reply = message
                return

    def _collect(self, reply: tuple | None) -> dict[str, DecodedSplit] | None:
        if reply is None or reply[0] != "done":
            return None
        splits, size = reply[1], reply[2]
        (_, short_side, interpolation, _, reduce_to) = self._args
        if not self._in_memory:
            return self._stored(splits, short_side, interpolation, reduce_to)
        # writable: MADV_REMOVE (see _free) works on shared writable mappings only
        mapped = mmap.mmap(self._pixels.fileno(), size, access=mmap.ACCESS_WRITE) if size else None
        try:
            with memoryview(mapped if mapped is not None else b"") as view:
                freed = 0
                decoded = {}
                for split, (paths, labels, hashes, failures, layout) in splits.items():
                    for path, reason in failures:  # the helper logs nothing: its output is not the user's
                        log.warning("skipping %s: %s", path, reason)
                    kept = None if layout is None else []
                    for offset, length, mode, image_size in layout or ():
                        kept.append(Image.frombytes(mode, image_size, view[offset:offset + length]))  # a copy
                        freed = _free(mapped, freed, offset + length)
                    decoded[split] = DecodedSplit(paths, labels, kept, hashes, failures, short_side=short_side,
                                                  interpolation=interpolation, reduce_to=reduce_to)
            return decoded
        finally:
            if mapped is not None:
                mapped.close()

    def _stored(self, splits: dict, short_side: int | None, interpolation: str, reduce_to: int | None
                ) -> dict[str, DecodedSplit]:
        """The splits with their pixels left in the file: a descriptor of its own, open as long as they are."""
        file = os.fdopen(os.dup(self._pixels.fileno()), "rb")
        decoded = {}
        for split, (paths, labels, hashes, failures, layout) in splits.items():
            for path, reason in failures:
                log.warning("skipping %s: %s", path, reason)
            decoded[split] = DecodedSplit(paths, labels, None, hashes, failures, short_side=short_side,
                                          interpolation=interpolation, reduce_to=reduce_to,
                                          store=PixelStore(file, layout) if layout is not None else None)
        return decoded

    def _start_thread(self) -> None:
        """The same work on a daemon thread: when the run fails before it needs the images (a bad --out), the
        process exits at once instead of waiting for a large set to finish decoding."""
        self._future = future = Future()
        splits, short_side, interpolation, keep_images, reduce_to = self._args
        keep_images = keep_images and self._in_memory  # a thread holds what it keeps in memory

        def work() -> None:
            try:
                _lower_priority()  # the pool's threads inherit it (Linux)
                future.set_result(_decode_all(splits, short_side, interpolation, keep_images, self._progress,
                                              reduce_to))
            except BaseException as exc:  # re-raised in the caller by future.result()
                future.set_exception(exc)

        threading.Thread(target=work, name="headstart-decode", daemon=True).start()


_SHM = "/dev/shm"
_FREE_EVERY = 64 << 20  # bytes of pixels copied out between two releases of the file's memory
_CHUNK = 256  # images the helper decodes before writing them out


def _only_pil_formats() -> bool:
    """Whether every image format PIL opens in this process is one of PIL's own. A helper process starts with
    those only: a plugin registered here (HEIF, AVIF...) would be missing there, so such a set decodes here."""
    return all(getattr(factory, "__module__", "").startswith("PIL.") for factory, _ in Image.OPEN.values())


def _pixels_file(splits: dict[str, Items], short_side: int | None, interpolation: str, keep_images: bool, *,
                 in_memory: bool = True) -> BinaryIO | None:
    """An unnamed file for the helper's pixels: in /dev/shm (memory) with room reserved for them up front, so
    that several runs at once (the ranks of one machine) cannot fill it together and break others' shared
    memory (containers often give it 64 MB); else, or for pixels that stay in the file (not in_memory), in the
    temporary folder when it has room (the OS caches its pages, and can let them go); else None."""
    if not keep_images:
        return tempfile.TemporaryFile()  # checked and hashed only: nothing is written to it
    if short_side is None:  # sizes unknown until decoded
        return None
    # a short side of `short_side`, a long side of 1.5x on average, 3 bytes per pixel
    needed = int(sum(map(len, splits.values())) * short_side * short_side * 1.5 * 3)
    if os.path.isdir(_SHM) and in_memory:
        pixels = tempfile.TemporaryFile(dir=_SHM)  # noqa: SIM115
        try:
            os.posix_fallocate(pixels.fileno(), 0, needed)
            return pixels
        except OSError:  # no room (ENOSPC), or a file system that cannot reserve
            pixels.close()
    folder = tempfile.gettempdir()
    stats = os.statvfs(folder)
    return tempfile.TemporaryFile(dir=folder) if stats.f_bavail * stats.f_frsize > 1.25 * needed else None


def _free(mapped: mmap.mmap, freed: int, done: int) -> int:
    """Give back the memory of the file's bytes before `done` (copied out already) every 64 MB, so that the
    pixels are never held twice over; returns the new start of what is still held."""
    end = done // mmap.PAGESIZE * mmap.PAGESIZE
    if end - freed < _FREE_EVERY:
        return freed
    with contextlib.suppress(AttributeError, OSError):  # no MADV_REMOVE here: the file is freed at close()
        mapped.madvise(mmap.MADV_REMOVE, freed, end - freed)
    return end


def _lower_priority() -> None:
    """This thread (Linux: a thread is a process to the scheduler) or process at nice 10: the imports that run
    meanwhile are what the run waits for, so they get a core when they want one, and decoding takes every
    cycle they leave."""
    if sys.platform == "linux":
        os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), 10)


def _decode_all(splits: dict[str, Items], short_side: int | None, interpolation: str, keep_images: bool,
                progress: Progress | None, reduce_to: int | None = None) -> dict[str, DecodedSplit]:
    return {split: decode_split(items, short_side=short_side, interpolation=interpolation, keep_images=keep_images,
                                reduce_to=reduce_to,
                                progress=(lambda d, t, s=split: progress(f"decode {s}", d, t)) if progress
                                else None)
            for split, items in splits.items()}


def _throttled(send: Callable[[tuple], None], what: str, total: int) -> Callable[[int], None]:
    """The helper's progress for one split: a message at most every 0.1 s, and for its last image."""
    sent = 0.0

    def progress(done: int) -> None:
        nonlocal sent
        if done == total or time.monotonic() - sent >= _PROGRESS_EVERY:
            sent = time.monotonic()
            send(("progress", what, done, total))

    return progress


def _write_split(pixels: BinaryIO, size: int, items: Items, short_side: int | None, interpolation: str,
                 keep_images: bool, progress: Callable[[int], None] | None, parent: int | None = None,
                 reduce_to: int | None = None) -> tuple[tuple, int]:
    """One split decoded chunk by chunk (the helper's memory stays bounded), its pixels appended to `pixels`,
    which holds `size` bytes so far: ((paths, labels, hashes, failures, layout or None), the new size).
    Between chunks, a helper whose parent has died (killed: it never closed anything) stops."""
    paths, labels, hashes, failures, layout = [], [], [], [], [] if keep_images else None
    for start in range(0, len(items), _CHUNK):
        if parent is not None and os.getppid() != parent:
            end_child()
        part = decode_split(items[start:start + _CHUNK], short_side=short_side, interpolation=interpolation,
                            keep_images=keep_images, reduce_to=reduce_to,
                            progress=(lambda done, _, start=start: progress(start + done)) if progress else None)
        paths += part.paths
        labels += part.labels
        hashes += part.hashes
        failures += part.failures
        for img in part.images or ():
            data = img.tobytes()
            pixels.write(data)
            layout.append((size, len(data), img.mode, img.size))
            size += len(data)
    return (paths, labels, hashes, failures, layout), size


def serve() -> None:
    """The helper process: decode the request's splits, write their pixels to the shared file, reply with
    everything else: per split (paths, labels, hashes, failures, layout), layout giving each image's (offset,
    length, mode, size) in the file, or None when the images are not kept."""
    requests, replies = child_pipes()
    _lower_priority()
    logging.getLogger().addHandler(logging.NullHandler())  # the parent logs the failures it is sent

    def send(message: tuple) -> None:
        pickle.dump(message, replies, protocol=pickle.HIGHEST_PROTOCOL)
        replies.flush()

    try:
        (splits, short_side, interpolation, keep_images, reduce_to, fd, want_progress, parent,
         images.MAX_IMAGE_PIXELS) = pickle.load(requests)
        with os.fdopen(fd, "wb") as pixels:
            size, result = 0, {}
            for split, items in splits.items():
                progress = _throttled(send, f"decode {split}", len(items)) if want_progress else None
                result[split], size = _write_split(pixels, size, items, short_side, interpolation, keep_images,
                                                   progress, parent, reduce_to)
        send(("done", result, size))
    except BrokenPipeError:  # the parent is gone
        pass
    except Exception as exc:  # the parent decodes again itself, and meets the error with its own traceback
        with contextlib.suppress(OSError):
            send(("error", f"{type(exc).__name__}: {exc}"))
    end_child()
