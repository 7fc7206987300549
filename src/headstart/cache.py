"""headstart's cache folder: what is in it, and clearing it. No torch here: `headstart cache` is instant.

$HEADSTART_CACHE (default ~/.cache/headstart) holds:
- features/: pooled features, per backbone + weights + transform + view, keyed by image content (features.py);
- engines/: backbone graphs exported to ONNX and OpenVINO's compiled blobs (onnx_forward.py);
- files of their own at the top, such as the CPU's measured bf16 speed (device.py).
Everything in it can be computed again: clearing it costs time, never a result.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Sequence
from pathlib import Path

__all__ = ["CACHE_PARTS", "cache_root", "cache_usage", "clear_cache"]

CACHE_PARTS = ("features", "engines")


def cache_root() -> Path:
    return Path(os.environ.get("HEADSTART_CACHE", Path.home() / ".cache" / "headstart"))


def cache_usage(root: Path | None = None) -> dict[str, dict]:
    """{part: {"path", "files", "bytes"}} for each part of the cache, present or not."""
    root = root or cache_root()
    usage = {}
    for part in CACHE_PARTS:
        files = [p for p in (root / part).rglob("*") if p.is_file()] if (root / part).is_dir() else []
        usage[part] = {"path": str(root / part), "files": len(files),
                       "bytes": sum(p.stat().st_size for p in files)}
    return usage


def clear_cache(parts: Sequence[str], root: Path | None = None) -> int:
    """Remove the named parts ("features", "engines", or "all"); returns the bytes freed. Run it while no
    training uses the cache: a run reading features that vanish under it fails."""
    unknown = sorted(set(parts) - {*CACHE_PARTS, "all"})
    if unknown:
        raise ValueError(f"unknown cache part(s) {', '.join(unknown)}; choose from {', '.join(CACHE_PARTS)}, all")
    root = root or cache_root()
    chosen = CACHE_PARTS if "all" in parts else tuple(dict.fromkeys(parts))
    usage = cache_usage(root)
    for part in chosen:
        shutil.rmtree(root / part, ignore_errors=True)
    return sum(usage[part]["bytes"] for part in chosen)
