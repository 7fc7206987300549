"""Vendor onnxruntime-web's WebAssembly runtime into the package, for `headstart export RUN --format web`.

    python scripts/fetch_web_runtime.py           # `make install` runs it; needs npm (registry access) once

Runs `npm pack onnxruntime-web@VERSION` (the npm registry's ordinary client), checks the tarball against the
pinned sha512 integrity, and writes src/headstart/inference/web/vendor/ (git-ignored, shipped in the wheel):
- ort.js: dist/ort.wasm.bundle.min.mjs (the wasm backend with its Emscripten glue inlined) as a classic
  script: `import.meta.url` becomes the script's own URL and the final `export {...}` becomes `globalThis.ort`.
  ES modules do not load from file:// in Chromium; classic scripts do.
- ort-wasm-simd-threaded.wasm.gz: dist/ort-wasm-simd-threaded.wasm, gzip -9 (14.8 MB -> 3.8 MB); the export
  writes it base64-encoded into ort-wasm.js and the page inflates it with DecompressionStream, because a page
  opened from file:// cannot fetch() a .wasm file.
- LICENSE.onnxruntime-web (MIT) and runtime.json (version, integrity, sizes).
Idempotent: does nothing when runtime.json already names this version and the files are there.
"""

from __future__ import annotations

import base64
import gzip
import hashlib
import json
import re
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

VERSION = "1.31.1"
INTEGRITY = "sha512-5GeH+bWQ+HxM10z7erGlsWqryrwMbSvm/1tkIsKTT48g0fI19VXVVC435t4t7VsPdSQeS7NmuZPXrQ73k82URw=="
VENDOR = Path(__file__).resolve().parents[1] / "src" / "headstart" / "inference" / "web" / "vendor"
BUNDLE = "package/dist/ort.wasm.bundle.min.mjs"
WASM = "package/dist/ort-wasm-simd-threaded.wasm"
LICENSE = "MIT License, Copyright (c) Microsoft Corporation (onnxruntime-web {version}, npm)\n"


def classic_script(module: str) -> str:
    """The minified ES module as a classic script defining globalThis.ort."""
    match = re.search(r"export\s*\{([^}]*)\};?\s*(//# sourceMappingURL=\S*)?\s*$", module)
    if match is None:
        raise SystemExit("onnxruntime-web's bundle has no final export statement: the conversion needs updating")
    body = module[: match.start()]
    if re.search(r"^\s*import\s", body, re.M) or re.search(r"[;}]import(\s*[{*]|\s+\w)", body):
        raise SystemExit("onnxruntime-web's bundle has static imports: the conversion needs updating")
    names = [part.strip().split(" as ") for part in match.group(1).split(",") if part.strip()]
    exported = ",".join(f"{pair[-1]}:{pair[0]}" for pair in names)
    body = body.replace("import.meta.url", "__headstartOrtUrl")
    return ('(function(){"use strict";var __headstartOrtUrl=(document.currentScript&&document.currentScript.src)'
            '||location.href;\n' + body + f"globalThis.ort={{{exported}}};\n}})();\n")


def fetch(version: str = VERSION, integrity: str = INTEGRITY) -> Path:
    record = VENDOR / "runtime.json"
    if record.is_file() and json.loads(record.read_text()).get("integrity") == integrity and \
            (VENDOR / "ort.js").is_file() and (VENDOR / "ort-wasm-simd-threaded.wasm.gz").is_file():
        return VENDOR
    with tempfile.TemporaryDirectory() as tmp:
        try:
            done = subprocess.run(["npm", "pack", f"onnxruntime-web@{version}", "--silent"], cwd=tmp,
                                  capture_output=True, text=True, timeout=600)
        except FileNotFoundError:
            raise SystemExit("npm is not installed: install Node.js/npm (Debian: apt-get install npm)") from None
        if done.returncode != 0:
            raise SystemExit(f"npm pack onnxruntime-web@{version} failed: {done.stderr.strip()[-500:]}")
        tarball = Path(tmp) / done.stdout.strip().splitlines()[-1]
        data = tarball.read_bytes()
        actual = "sha512-" + base64.b64encode(hashlib.sha512(data).digest()).decode()
        if actual != integrity:
            raise SystemExit(f"{tarball.name}: integrity {actual} does not match the pinned {integrity}")
        with tarfile.open(tarball) as tar:
            module = tar.extractfile(BUNDLE).read().decode("utf-8")  # type: ignore[union-attr]
            wasm = tar.extractfile(WASM).read()  # type: ignore[union-attr]
    script = classic_script(module)
    packed = gzip.compress(wasm, 9, mtime=0)
    VENDOR.mkdir(parents=True, exist_ok=True)
    (VENDOR / "ort.js").write_text(script)
    (VENDOR / "ort-wasm-simd-threaded.wasm.gz").write_bytes(packed)
    (VENDOR / "LICENSE.onnxruntime-web").write_text(LICENSE.format(version=version))
    record.write_text(json.dumps({"package": "onnxruntime-web", "version": version, "integrity": integrity,
                                  "files": {"ort.js": len(script.encode()), "ort-wasm-simd-threaded.wasm.gz":
                                            len(packed)}, "wasm_bytes": len(wasm)}, indent=2) + "\n")
    return VENDOR


if __name__ == "__main__":
    folder = fetch()
    sizes = {p.name: p.stat().st_size for p in sorted(folder.iterdir())}
    print(f"{folder}: " + ", ".join(f"{name} {size / 1e6:.2f} MB" for name, size in sizes.items()))
    sys.exit(0)
