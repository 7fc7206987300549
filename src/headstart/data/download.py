"""Public datasets by name: verified, resumable downloads, safe extraction into DATA/{train,val,test}/<class>.

Every file is checked against a published checksum before use (a mismatch deletes it). The one
dataset without a published checksum (pizza_steak_sushi) is checked by its exact layout instead,
and its sha256 is logged so users can pin it. ``HEADSTART_DATASETS_MIRROR`` replaces the origin:
a directory holding the files under their URL basenames, or a URL prefix (offline users and CI).
Extraction refuses absolute paths, ``..``, links and device files, and happens in a temporary
folder inside the target that is renamed into place only when complete.
"""

from __future__ import annotations

import hashlib
import http.client
import json
import logging
import os
import re
import shutil
import stat
import tarfile
import tempfile
import urllib.error
import urllib.request
import zipfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from urllib.parse import urlsplit

from headstart._version import __version__
from headstart.data.dataset import DataError
from headstart.data.folders import _find_split, list_images

__all__ = ["DATASETS", "DatasetSpec", "DownloadError", "RemoteFile", "UnsafeArchiveError", "default_dir",
           "download", "list_datasets", "safe_extract"]

log = logging.getLogger(__name__)

Progress = Callable[[str, int, int], None]
MIRROR_ENV = "HEADSTART_DATASETS_MIRROR"
MARKER = ".headstart-dataset.json"  # written last: a dataset folder holding it is complete
_CHUNK = 1 << 20


class DownloadError(DataError):
    """A dataset could not be fetched or verified. The message is one line and says what to do."""


class UnsafeArchiveError(DownloadError):
    """An archive member would land outside the target folder, or is a link or device file."""


@dataclass(frozen=True)
class RemoteFile:
    """One file of a dataset; ``name`` (the URL's basename) is also its name in a mirror."""

    url: str
    algorithm: str | None  # "sha1" | "md5" | "sha256", or None when no checksum is published
    digest: str | None
    extract: bool = True

    @property
    def name(self) -> str:
        return PurePosixPath(urlsplit(self.url).path).name


@dataclass(frozen=True)
class DatasetSpec:
    """A registry entry: the files to fetch and what the arranged folder must hold."""

    name: str
    description: str
    homepage: str
    files: tuple[RemoteFile, ...]
    num_classes: int
    expect: dict[str, int]  # images per split after arranging: the structural check
    arrange: str = "folders"  # "folders": the archive already holds train/..; "flowers102": built from .mat


_FLOWERS = "https://www.robots.ox.ac.uk/~vgg/data/flowers/102/"
DATASETS: dict[str, DatasetSpec] = {
    "hymenoptera": DatasetSpec(
        "hymenoptera", "ants vs bees, 2 classes, ~400 photos (the PyTorch transfer-learning tutorial set)",
        "https://pytorch.org/tutorials/beginner/transfer_learning_tutorial.html",
        (RemoteFile("https://download.pytorch.org/tutorial/hymenoptera_data.zip", "sha1",
                    "c6ff178de032ee56fa5b35c2a6a9005c934faba0"),),
        num_classes=2, expect={"train": 245, "val": 153}),
    "pizza_steak_sushi": DatasetSpec(
        "pizza_steak_sushi", "pizza/steak/sushi, 3 classes, 300 photos (a 10% slice of Food-101)",
        "https://github.com/mrdbourke/pytorch-deep-learning",
        # No checksum is published for this file: the exact layout is checked instead.
        (RemoteFile("https://github.com/mrdbourke/pytorch-deep-learning/raw/main/data/pizza_steak_sushi.zip",
                    None, None),),
        num_classes=3, expect={"train": 225, "test": 75}),
    "flowers102": DatasetSpec(
        "flowers102", "Oxford 102 Flowers, 102 classes, 8189 photos with the official train/val/test split",
        _FLOWERS,
        (RemoteFile(_FLOWERS + "102flowers.tgz", "md5", "52808999861908f626f3c1f4e79d11fa"),
         RemoteFile(_FLOWERS + "imagelabels.mat", "md5", "e0620be6f572b9609742df49c70aed4d", extract=False),
         RemoteFile(_FLOWERS + "setid.mat", "md5", "a5357ecc9cb78c4bef273ce3793fc85c", extract=False)),
        num_classes=102, expect={"train": 1020, "val": 1020, "test": 6149}, arrange="flowers102"),
}


def default_dir() -> Path:
    """Where datasets go without ``to``: $HEADSTART_DATASETS, else ~/.cache/headstart/datasets."""
    return Path(os.environ.get("HEADSTART_DATASETS") or Path.home() / ".cache" / "headstart" / "datasets")


def list_datasets(to: str | Path | None = None) -> list[dict]:
    """One plain dict per known dataset, with where it is (or would be) and whether it is there."""
    base = Path(to).expanduser() if to else default_dir()
    return [{"name": s.name, "description": s.description, "homepage": s.homepage, "classes": s.num_classes,
             "images": s.expect, "path": str(base / s.name), "downloaded": (base / s.name / MARKER).is_file(),
             "files": [{"url": f.url, "checksum": f"{f.algorithm}:{f.digest}" if f.digest else None}
                       for f in s.files]}
            for s in DATASETS.values()]


def download(name: str, to: str | Path | None = None, *, progress: Progress | None = None) -> Path:
    """Fetch, verify and arrange dataset ``name``; returns the folder to train on (TO/NAME).

    A complete earlier download is returned as is, without touching the network.
    """
    if name not in DATASETS:
        raise DownloadError(f"unknown dataset {name!r}; known: {', '.join(sorted(DATASETS))}")
    spec = DATASETS[name]
    base = (Path(to).expanduser() if to else default_dir()).resolve()
    dest = base / name
    if (dest / MARKER).is_file():
        return dest
    if dest.exists():
        raise DownloadError(f"{dest} exists but is not a complete download: remove it or pick another --to")
    if spec.arrange == "flowers102":
        _require_scipy()  # before the large download, not after it
    base.mkdir(parents=True, exist_ok=True)
    fetched = {f.name: _fetch(f, base / ".downloads", progress) for f in spec.files}
    staging = Path(tempfile.mkdtemp(prefix=f".{name}-", dir=base))
    try:
        raw, root = staging / "raw", staging / name
        for f in spec.files:
            if f.extract:
                safe_extract(fetched[f.name][0], raw, progress=progress)
        if spec.arrange == "flowers102":
            _arrange_flowers(raw, fetched["imagelabels.mat"][0], fetched["setid.mat"][0], root)
        else:
            _data_root(raw, name).rename(root)
        _check_layout(root, spec)
        record = {"format": "headstart.dataset/1", "name": name, "headstart": __version__,
                  "files": {n: {"sha256": sha} for n, (_, sha, _) in fetched.items()}}
        (root / MARKER).write_text(json.dumps(record, indent=2) + "\n")
        root.rename(dest)  # same filesystem: the complete folder appears at once
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    for path, _, downloaded in fetched.values():
        if downloaded:  # a mirror directory's own files are never deleted
            path.unlink(missing_ok=True)
    log.info("dataset %s ready in %s", name, dest)
    return dest


def _fetch(f: RemoteFile, cache: Path, progress: Progress | None) -> tuple[Path, str, bool]:
    """The verified local file, its sha256, and whether we downloaded it (True) or the mirror dir holds it."""
    mirror = os.environ.get(MIRROR_ENV, "").strip()
    if mirror and not re.match(r"^(https?|file)://", mirror):
        local = Path(mirror).expanduser() / f.name
        if not local.is_file():
            raise DownloadError(f"{MIRROR_ENV}={mirror} has no file {f.name}: put {f.url} there")
        return local, _verify(f, local, delete=False), False
    url = f"{mirror.rstrip('/')}/{f.name}" if mirror else f.url
    cache.mkdir(parents=True, exist_ok=True)
    target = cache / f.name
    if target.is_file():  # verified by an earlier run that stopped before extraction finished
        try:
            return target, _verify(f, target, delete=True), True
        except DownloadError:
            log.info("cached %s is damaged: downloading it again", f.name)
    part = cache / (f.name + ".part")
    _http_download(url, part, f.name, progress)
    sha = _verify(f, part, delete=True)
    part.replace(target)
    return target, sha, True


def _http_download(url: str, part: Path, label: str, progress: Progress | None) -> None:
    """Download url into part, resuming from its current size with an HTTP Range request."""
    offset = part.stat().st_size if part.exists() else 0
    headers = {"User-Agent": f"headstart/{__version__}"}
    if offset:
        headers["Range"] = f"bytes={offset}-"
    try:
        response = urllib.request.urlopen(urllib.request.Request(url, headers=headers), timeout=60)
    except urllib.error.HTTPError as exc:
        if exc.code == 416 and offset:  # the partial file is no prefix the server recognises: start over
            part.unlink()
            return _http_download(url, part, label, progress)
        raise DownloadError(f"cannot download {url}: HTTP {exc.code} {exc.reason}") from None
    except (urllib.error.URLError, OSError) as exc:
        reason = getattr(exc, "reason", exc)
        msg = (f"cannot reach {urlsplit(url).netloc} ({reason}); offline? fetch {url} elsewhere, put it in "
               f"a folder and set {MIRROR_ENV}=/that/folder (or a URL prefix that serves it)")
        raise DownloadError(msg) from None
    with response:
        content_range = response.headers.get("Content-Range", "")
        resumed = response.status == 206 and content_range.startswith(f"bytes {offset}-")
        if offset and not resumed:
            if response.status == 206:  # a range other than the one asked for: start over without one
                part.unlink()
                return _http_download(url, part, label, progress)
            log.info("server ignored the resume request for %s: downloading it again", label)
            offset = 0
        length = int(response.headers.get("Content-Length") or 0)
        total = offset + length if length else 0
        done = offset
        try:
            with open(part, "ab" if resumed else "wb") as out:
                while chunk := response.read(_CHUNK):
                    out.write(chunk)
                    done += len(chunk)
                    if progress is not None:
                        progress(f"downloading {label}", done, total or done)
        except (OSError, http.client.HTTPException) as exc:  # the bytes so far stay in .part, to resume
            msg = f"download of {label} broke off at {done} bytes ({exc!r}): run again to resume"
            raise DownloadError(msg) from None
    if total and done != total:
        raise DownloadError(f"download of {label} stopped at {done} of {total} bytes: run again to resume")


def _verify(f: RemoteFile, path: Path, *, delete: bool) -> str:
    """Check the published checksum (if any); return the file's sha256 either way."""
    hashes = {"sha256": hashlib.sha256()}
    if f.algorithm and f.algorithm != "sha256":
        hashes[f.algorithm] = hashlib.new(f.algorithm)
    with open(path, "rb") as fh:
        while block := fh.read(_CHUNK):
            for h in hashes.values():
                h.update(block)
    sha256 = hashes["sha256"].hexdigest()
    if f.algorithm is None:
        log.warning("%s has no published checksum; its sha256 is %s (pin it when you mirror it)",
                    f.name, sha256)
        return sha256
    actual = hashes[f.algorithm].hexdigest()
    if actual != f.digest:
        if delete:
            path.unlink(missing_ok=True)
        kept = "deleted it" if delete else "left it in place"
        raise DownloadError(f"checksum mismatch for {f.name}: expected {f.algorithm} {f.digest}, "
                            f"got {actual} ({kept}); run again, or replace the mirror's copy")
    return sha256


def safe_extract(archive: Path, target: Path, *, progress: Progress | None = None) -> None:
    """Extract a zip or tar(.gz/.bz2/.xz) into target, refusing any member that could escape it."""
    target.mkdir(parents=True, exist_ok=True)
    if zipfile.is_zipfile(archive):
        with zipfile.ZipFile(archive) as zf:
            members = zf.infolist()
            for info in members:
                kind = stat.S_IFMT(info.external_attr >> 16)
                if kind and not (stat.S_ISREG(kind) or stat.S_ISDIR(kind)):
                    raise UnsafeArchiveError(f"refusing to extract {archive.name}: {info.filename!r} is a "
                                             "link or special file")
                _check_inside(archive, info.filename, target, target)
            for i, info in enumerate(members, 1):
                zf.extract(info, target)
                if progress is not None:
                    progress(f"extracting {archive.name}", i, len(members))
        return
    if not tarfile.is_tarfile(archive):
        raise DownloadError(f"{archive.name} is neither a zip nor a tar archive")
    with tarfile.open(archive, "r:*") as tf:
        members = tf.getmembers()
        links = [m.name.rstrip("/") + "/" for m in members if m.issym() or m.islnk()]
        for m in members:
            _check_inside(archive, m.name, target, target)
            if any(m.name.startswith(link) for link in links):
                raise UnsafeArchiveError(f"refusing to extract {archive.name}: {m.name!r} lies below a link")
            if m.issym() or m.islnk():  # a symlink's target is relative to its folder, a hardlink's to root
                base = target / Path(m.name).parent if m.issym() else target
                _check_inside(archive, m.linkname, base, target, what="link target")
            elif not (m.isfile() or m.isdir()):
                raise UnsafeArchiveError(f"refusing to extract {archive.name}: {m.name!r} is a device or "
                                         "special file")
        try:
            for i, m in enumerate(members, 1):
                # Python's "data" filter re-checks all of the above (and drops set-uid bits): a second line.
                tf.extract(m, target, filter="data")
                if progress is not None:
                    progress(f"extracting {archive.name}", i, len(members))
        except tarfile.FilterError as exc:
            raise UnsafeArchiveError(f"refusing to extract {archive.name}: {exc}") from None


def _check_inside(archive: Path, name: str, base: Path, target: Path, what: str = "member") -> None:
    """Refuse absolute names, drive letters, and names that resolve outside target (``..`` in members)."""
    clean = name.replace("\\", "/")
    resolved = os.path.realpath(base / clean)
    root = os.path.realpath(target)
    dotdot = what == "member" and ".." in clean.split("/")
    inside = resolved == root or resolved.startswith(root + os.sep)
    if clean.startswith("/") or re.match(r"^[A-Za-z]:", clean) or dotdot or not inside:
        raise UnsafeArchiveError(f"refusing to extract {archive.name}: {what} {name!r} escapes the target")


def _data_root(raw: Path, name: str) -> Path:
    """The extracted folder that holds train/ (the archive's top level, or its single top folder)."""
    for candidate in (raw, *sorted(d for d in raw.iterdir() if d.is_dir())):
        if _find_split(candidate, "train"):
            return candidate
    raise DownloadError(f"the {name} archive has no train/ folder: the upstream file may have changed")


def _require_scipy() -> None:
    try:
        import scipy.io  # noqa: F401
    except ImportError:
        msg = "flowers102 labels are MATLAB .mat files: install scipy first (pip install scipy)"
        raise DownloadError(msg) from None


def _arrange_flowers(raw: Path, labels_mat: Path, setid_mat: Path, root: Path) -> None:
    """Move jpg/image_NNNNN.jpg into root/{train,val,test}/<class>/ by the official labels and split."""
    from scipy.io import loadmat

    labels = [int(x) for x in loadmat(labels_mat, squeeze_me=True)["labels"].ravel()]
    setid = loadmat(setid_mat, squeeze_me=True)
    names = _flower_names(max(labels))
    for split, key in (("train", "trnid"), ("val", "valid"), ("test", "tstid")):
        for image_id in (int(x) for x in setid[key].ravel()):
            folder = root / split / names[labels[image_id - 1] - 1]
            folder.mkdir(parents=True, exist_ok=True)
            source = raw / "jpg" / f"image_{image_id:05d}.jpg"
            if not source.is_file():
                raise DownloadError(f"102flowers.tgz lacks {source.name}, which setid.mat lists")
            source.rename(folder / source.name)


# The 102 flower names in label order (label 1 first), as torchvision 0.29's Flowers102.classes lists
# them; copied rather than imported so that fetching data never imports torch. "?" is dropped for folders.
FLOWERS102_CLASSES: tuple[str, ...] = tuple((
    'pink primrose;hard-leaved pocket orchid;canterbury bells;sweet pea;english marigold;tiger lily;'
    "moon orchid;bird of paradise;monkshood;globe thistle;snapdragon;colt's foot;king protea;"
    'spear thistle;yellow iris;globe-flower;purple coneflower;peruvian lily;balloon flower;'
    'giant white arum lily;fire lily;pincushion flower;fritillary;red ginger;grape hyacinth;'
    'corn poppy;prince of wales feathers;stemless gentian;artichoke;sweet william;carnation;'
    'garden phlox;love in the mist;mexican aster;alpine sea holly;ruby-lipped cattleya;cape flower;'
    'great masterwort;siam tulip;lenten rose;barbeton daisy;daffodil;sword lily;poinsettia;'
    'bolero deep blue;wallflower;marigold;buttercup;oxeye daisy;common dandelion;petunia;wild pansy;'
    'primula;sunflower;pelargonium;bishop of llandaff;gaura;geranium;orange dahlia;'
    'pink-yellow dahlia?;cautleya spicata;japanese anemone;black-eyed susan;silverbush;'
    'californian poppy;osteospermum;spring crocus;bearded iris;windflower;tree poppy;gazania;azalea;'
    'water lily;rose;thorn apple;morning glory;passion flower;lotus;toad lily;anthurium;frangipani;'
    'clematis;hibiscus;columbine;desert-rose;tree mallow;magnolia;cyclamen;watercress;canna lily;'
    'hippeastrum;bee balm;ball moss;foxglove;bougainvillea;camellia;mallow;mexican petunia;bromelia;'
    'blanket flower;trumpet creeper;blackberry lily'
    ).replace("?", "").split(";"))


def _flower_names(n: int) -> list[str]:
    if n > len(FLOWERS102_CLASSES):  # labels beyond the known list: numbered names rather than guesses
        return [f"class_{i:03d}" for i in range(1, n + 1)]
    return list(FLOWERS102_CLASSES[:n])


def _check_layout(root: Path, spec: DatasetSpec) -> None:
    """The structural check: the exact number of classes and of images per split."""
    found = {s: len(list_images(d)) for s in spec.expect if (d := _find_split(root, s))}
    train = _find_split(root, "train")
    classes = len([d for d in train.iterdir() if d.is_dir()]) if train else 0
    if found != spec.expect or classes != spec.num_classes:
        raise DownloadError(f"{spec.name} does not look as expected: {classes} classes and images {found}, "
                            f"expected {spec.num_classes} and {spec.expect}; the upstream files may have "
                            "changed")
