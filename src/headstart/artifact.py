"""The run directory as plain data: model.safetensors + model.json, atomic writes, sha256 checks. No torch."""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from pathlib import Path
from typing import Any

__all__ = [
    "MODEL_FORMAT",
    "ArtifactError",
    "atomic_write_bytes",
    "atomic_write_json",
    "atomic_write_text",
    "current_umask",
    "read_manifest",
    "sha256_file",
    "verify_weights",
]

MODEL_FORMAT = "headstart.model/1"
WEIGHTS_FILE = "model.safetensors"
MANIFEST_FILE = "model.json"
_PROC_STATUS = "/proc/self/status"


class ArtifactError(RuntimeError):
    """A run directory that cannot be loaded; the message names the file and what is wrong."""


def current_umask() -> int:
    """The process's umask. Linux shows it in /proc (4.7+); elsewhere os.umask must set it to read it, and
    a file another thread creates in that instant gets the stand-in mask, so that is only the fallback."""
    try:
        with open(_PROC_STATUS) as f:
            for line in f:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    mask = os.umask(0o077)  # the strictest stand-in for that instant
    os.umask(mask)
    return mask


def atomic_write_bytes(path: str | Path, data: bytes) -> None:
    """Write to a temp file in the same folder, fsync, then rename: readers see the old file or the new one.

    The file gets the mode open() would give it (0o666 less the umask): mkstemp's 0o600 would keep a serving
    container or another user from reading a run.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            os.chmod(tmp, 0o666 & ~current_umask())
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write_text(path: str | Path, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path: str | Path, data: Any) -> None:
    atomic_write_text(path, json.dumps(data, indent=2, sort_keys=False) + "\n")


def sha256_file(path: str | Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def read_manifest(run_dir: str | Path) -> dict[str, Any]:
    run_dir = Path(run_dir)
    path = run_dir / MANIFEST_FILE
    if not path.is_file():
        raise ArtifactError(f"{path}: not found; is {run_dir} a headstart run directory?")
    try:
        manifest = json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise ArtifactError(f"{path}: not valid JSON ({exc})") from exc
    if manifest.get("format") != MODEL_FORMAT:
        raise ArtifactError(f"{path}: unknown format {manifest.get('format')!r}, expected {MODEL_FORMAT}")
    return manifest


def verify_weights(run_dir: str | Path, manifest: dict[str, Any]) -> Path:
    """The weights file, after checking it against the sha256 recorded in model.json."""
    path = Path(run_dir) / manifest.get("weights_file", WEIGHTS_FILE)
    if not path.is_file():
        raise ArtifactError(f"{path}: weights file not found")
    actual = sha256_file(path)
    if actual != manifest.get("weights_sha256"):
        raise ArtifactError(
            f"{path}: sha256 {actual[:12]}... does not match model.json "
            f"({str(manifest.get('weights_sha256'))[:12]}...): "
            f"the file is damaged or was replaced"
        )
    return path
