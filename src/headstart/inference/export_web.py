"""The web export (`--format web`): a static folder that classifies in the browser with no server.

    index.html, topk.js, app.js,    the page (inference/web/): drag and drop, top-k bars, "unsure"; topk.js
    style.css                       and style.css are the served page's too
    ort.js                          onnxruntime-web's wasm backend as a classic script (vendored, see below)
    ort-wasm.js                     its WebAssembly binary, gzip + base64
    model.js                        the fp32 ONNX model (base64) and its metadata
    model.json                      the same metadata, for other clients

Everything the page loads is a classic <script src>: a page opened from file:// can load those, but cannot
fetch() a .wasm or .onnx file or import an ES module. The runtime files come from the npm package
onnxruntime-web, vendored into the package by scripts/fetch_web_runtime.py (`make install` runs it) into
inference/web/vendor/.
"""

from __future__ import annotations

import base64
import json
import re
import shutil
from pathlib import Path

from headstart.artifact import ArtifactError, atomic_write_json

__all__ = ["WEB_FORMAT", "read_web_model", "runtime_files", "write_web"]

WEB_FORMAT = "headstart.web/1"
PAGE = Path(__file__).parent / "web"
VENDOR = PAGE / "vendor"
_MODEL_B64 = re.compile(r'globalThis\.HEADSTART_MODEL_B64="([A-Za-z0-9+/=]*)";')


def runtime_files() -> dict:
    """The vendored runtime: {"ort.js": path, "wasm_gz": path, "version": ...}, or an ArtifactError saying how to
    get it."""
    record = VENDOR / "runtime.json"
    script, wasm = VENDOR / "ort.js", VENDOR / "ort-wasm-simd-threaded.wasm.gz"
    if not (record.is_file() and script.is_file() and wasm.is_file()):
        raise ArtifactError(f"the web format needs onnxruntime-web's files in {VENDOR}, which this install lacks: "
                            f"run `python scripts/fetch_web_runtime.py` in a headstart checkout (uses npm)")
    return {"ort.js": script, "wasm_gz": wasm, **json.loads(record.read_text())}


def write_web(onnx_bytes: bytes, folder: Path, meta: dict) -> dict:
    """The static folder in `folder` (which exists and is empty). Returns the metadata written."""
    runtime = runtime_files()
    meta = dict(meta, format=WEB_FORMAT, runtime=f"onnxruntime-web {runtime['version']} (wasm, 1 thread)")
    for name in ("index.html", "topk.js", "app.js", "style.css"):
        shutil.copyfile(PAGE / name, folder / name)
    shutil.copyfile(runtime["ort.js"], folder / "ort.js")
    wasm = base64.b64encode(runtime["wasm_gz"].read_bytes()).decode("ascii")
    (folder / "ort-wasm.js").write_text(f'globalThis.HEADSTART_ORT_WASM_GZ="{wasm}";\n')
    (folder / "model.js").write_text(
        f"globalThis.HEADSTART_MODEL_META={json.dumps(meta)};\n"
        f'globalThis.HEADSTART_MODEL_B64="{base64.b64encode(onnx_bytes).decode("ascii")}";\n')
    atomic_write_json(folder / "model.json", meta)
    return meta


def read_web_model(folder: Path) -> bytes:
    """The ONNX model bytes the page loads, read back from model.js."""
    match = _MODEL_B64.search((Path(folder) / "model.js").read_text())
    if match is None:
        raise ArtifactError(f"{folder / 'model.js'}: no model in it")
    return base64.b64decode(match.group(1))
