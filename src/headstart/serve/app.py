"""The HTTP app: POST /predict, POST /explain, GET /health, GET /model, the page at / and offline API docs.

Errors are JSON `{"detail": "..."}` naming the problem and, where there is one, the file:
- 413: body over `max_body_bytes` (Content-Length checked first, then the bytes counted as they arrive);
- 415: a content type other than multipart/form-data or application/json;
- 400: a malformed multipart body or Content-Length;
- 422: no image, more than `max_images` images, bad parameters, unknown fields, bad JSON.
Images are judged one by one, as `headstart predict` does for files: when some images of a request are
usable the answer is 200 and each unusable one is a `{"filename", "error"}` entry in its place; when none
is, 422 with every file's reason (so a single bad upload is a 4xx).
"""

from __future__ import annotations

import asyncio
import base64
import io
import logging
import os
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

from fastapi import FastAPI, HTTPException, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse
from fastapi.staticfiles import StaticFiles
from pydantic import BaseModel

from headstart.runtime.images import ImageLoadError, open_image
from headstart.runtime.preprocess import Preprocessing, resize_short_side
from headstart.serve.batching import MicroBatcher
from headstart.serve.requests import (
    TOP_K_MAX,
    BodyLimit,
    Error,
    ExplainJSON,
    ExplainResponse,
    PredictJSON,
    PredictResponse,
    Upload,
    body_spec,
    message,
    read_images,
)

__all__ = ["ENGINES", "LOOPBACK", "create_app", "resolve_engine", "serve"]

log = logging.getLogger(__name__)

ENGINES = ("auto", "onnx", "torch", "onnx-int8", "openvino", "openvino-int8")
LOOPBACK = ("127.0.0.1", "localhost", "::1")
STATIC = Path(__file__).parent / "static"
# What the served page shares with the web export's page (which must also work with no server).
SHARED_PAGE = Path(__file__).resolve().parents[1] / "inference" / "web"
PAGE_CSP = ("default-src 'self'; img-src 'self' data: blob:; style-src 'self'; script-src 'self'; "
            "connect-src 'self'; object-src 'none'; base-uri 'none'; frame-ancestors 'none'")


def resolve_engine(run_dir: str | os.PathLike, engine: str) -> str:
    """"auto": onnx when RUN/model.onnx exists and onnxruntime is installed, else torch (when installed)."""
    if engine not in ENGINES:
        raise ValueError(f"unknown engine {engine!r}; choose one of {', '.join(ENGINES)}")
    if engine != "auto":
        return engine
    import importlib.util

    if importlib.util.find_spec("onnxruntime") and (Path(run_dir) / "model.onnx").is_file():
        return "onnx"
    if importlib.util.find_spec("torch"):
        return "torch"
    raise ValueError(f"{run_dir} has no model.onnx and torch is not installed: export it with "
                     f"`headstart export {run_dir}` where headstart[train] is installed, or install that here")


def _model_info(clf: Any, run_dir: Path, engine: str, threshold: float) -> dict:
    """GET /model: what a client needs to know, from model.json where the run has one (metrics live there)."""
    from headstart.artifact import read_manifest

    manifest = dict(clf.manifest)
    if (run_dir / "model.json").is_file():
        manifest = {**read_manifest(run_dir), **manifest}
    return {"backbone": manifest.get("backbone"), "classes": clf.classes, "metrics": manifest.get("metrics", {}),
            "temperature": clf.temperature, "threshold": threshold, "model_threshold": clf.threshold,
            "preprocessing": manifest.get("preprocessing"), "engine": engine, "unsure_label": "unsure"}


def create_app(run_dir: str | os.PathLike, *, engine: str = "auto", max_body_bytes: int = 10_000_000,
               max_images: int = 32, batch_window_ms: float = 5, max_batch: int = 32,
               default_threshold: float | None = None) -> FastAPI:
    """The app serving one trained run. engine: "onnx" (RUN/model.onnx), "torch", or "auto" (onnx when the
    export and onnxruntime are there)."""
    from headstart._version import __version__
    from headstart.inference.classifier import load
    from headstart.runtime.results import predict_images

    if default_threshold is not None and not 0 <= default_threshold <= 1:
        raise ValueError(f"default_threshold must be in [0, 1], got {default_threshold}")
    run_dir = Path(run_dir)
    engine = resolve_engine(run_dir, engine)
    clf = load(run_dir, engine=engine)
    threshold_default = clf.threshold if default_threshold is None else float(default_threshold)
    info = _model_info(clf, run_dir, engine, threshold_default)
    pre = info["preprocessing"]
    log.info("serving %s (%s, %d classes) with the %s engine", run_dir, info["backbone"], len(clf.classes),
             engine)

    async def decoded(request: Request, model: type[BaseModel], limit: int) -> tuple[list, dict]:
        uploads, options = await read_images(request, model, limit)
        items = await asyncio.get_running_loop().run_in_executor(app.state.decoders, _decode, uploads, pre)
        if all(img is None for _, img in items):
            raise HTTPException(422, "no usable image: " + "; ".join(f"{u.filename}: {u.error}" for u, _ in items))
        return items, options

    def start_workers() -> None:
        """The model's batching thread and the decoding threads; again after a lifespan has stopped them."""
        if getattr(app.state, "batcher", None) is None or app.state.batcher.closed:
            app.state.batcher = MicroBatcher(lambda images: clf.logits(images, batch_size=max_batch),
                                             window_ms=batch_window_ms, max_batch=max_batch)
            # Bounded: many large uploads at once cannot hold more than a few full-size decoded images.
            app.state.decoders = ThreadPoolExecutor(max_workers=min(4, os.cpu_count() or 1),
                                                    thread_name_prefix="headstart-decode")

    @asynccontextmanager
    async def lifespan(_app: FastAPI):
        start_workers()
        yield
        app.state.batcher.close()
        app.state.decoders.shutdown(wait=False)

    from fastapi_offline import FastAPIOffline

    app = FastAPIOffline(title="headstart", version=__version__, redoc_url=None,
                         static_url="/docs-static", lifespan=lifespan, swagger_ui_parameters={"validatorUrl": None},
                         description=f"Image classifier `{info['backbone']}` ({', '.join(clf.classes)}) on the "
                                     f"{engine} engine. Errors are JSON `{{\"detail\": ...}}`; see GET /model.")
    app.state.classifier, app.state.engine, app.state.info = clf, engine, info
    start_workers()
    app.add_middleware(BodyLimit, max_bytes=max_body_bytes)

    _add_page_and_errors(app)
    errors = {code: {"model": Error} for code in (400, 413, 415, 422)}

    @app.get("/health")
    async def health() -> dict:
        return {"status": "ok", "engine": engine, "model": info["backbone"], **app.state.batcher.stats.to_dict()}

    @app.get("/model")
    async def model() -> dict:
        return {**info, "max_images": max_images, "max_body_bytes": max_body_bytes,
                "batch_window_ms": batch_window_ms, "max_batch": max_batch}

    @app.post("/predict", response_model=PredictResponse, responses=errors,
              openapi_extra=body_spec(PredictJSON, max_images))
    async def predict(request: Request, top_k: int | None = Query(None, ge=1, le=TOP_K_MAX),
                      threshold: float | None = Query(None, ge=0, le=1)) -> dict:
        """Labels for one or more images: multipart `files` (or `file`), or JSON `{"images": [base64, ...]}`.
        `top_k` and `threshold` as query parameters or form/JSON fields (the body's win)."""
        batcher = app.state.batcher
        with batcher.expecting() as ticket:  # a batch gathering now may wait for this request's images
            items, options = await decoded(request, PredictJSON, max_images)
            good = [(up, img) for up, img in items if img is not None]
            logits = await batcher.logits([img for _, img in good], ticket)
        top_k = options.get("top_k") or top_k or 3
        threshold = next(t for t in (options.get("threshold"), threshold, threshold_default) if t is not None)
        # The one result format (runtime/results.py), on the logits the batcher computed for the good images.
        inputs = [img if img is not None else ImageLoadError(up.filename, up.error) for up, img in items]
        rows = predict_images(inputs, lambda _images: logits, classes=clf.classes, temperature=clf.temperature,
                              threshold=threshold, top_k=top_k, names=[up.filename for up, _ in items])
        predictions = [{"filename": row.pop("path"), **row} for row in rows]
        return {"predictions": predictions, "model": info["backbone"], "engine": engine}

    @app.post("/explain", response_model=ExplainResponse, responses=errors,
              openapi_extra=body_spec(ExplainJSON, 1))
    async def explain(request: Request, class_name: str | None = Query(None),
                      threshold: float | None = Query(None, ge=0, le=1)) -> dict:
        """Grad-CAM for one image (torch engine only): where the model looked for its answer or `class_name`."""
        if not hasattr(clf, "net"):
            raise HTTPException(400, f"Grad-CAM needs the torch engine; this server runs the {engine} engine "
                                     f"(start it with --engine torch)")
        items, options = await decoded(request, ExplainJSON, 1)
        target = options.get("class_name") or class_name
        if target is not None and target not in clf.classes:
            raise HTTPException(422, f"unknown class {target!r}; the model knows: {', '.join(clf.classes)}")
        threshold = next(t for t in (options.get("threshold"), threshold, threshold_default) if t is not None)
        up, image = items[0]
        result = await app.state.batcher.run(_explain, clf, image, target, threshold)
        return {"filename": up.filename, **result, "engine": engine}

    return app


def _decode(uploads: list[Upload], pre: dict) -> list[tuple[Upload, Any]]:
    """Each upload decoded and resized to the model's resize size, or None with its error."""
    spec = Preprocessing.from_dict(pre)
    out = []
    for up in uploads:
        if up.error is not None:
            out.append((up, None))
            continue
        try:
            # The first step of the model's preprocessing, done here: it is exact (a short side already at
            # resize_size is left alone) and frees the full-size image before it waits for a batch.
            img = open_image(up.data, reduce_to=spec.reduce_to)
            out.append((up, resize_short_side(img, spec.resize_size, spec.interpolation)))
        except ImageLoadError as exc:
            up.error = exc.reason
            out.append((up, None))
        up.data = None
    return out


def _add_page_and_errors(app: FastAPI) -> None:
    """The page and its files, and errors as JSON: a validation error is a 422, anything else a 500."""

    @app.get("/static/style.css", include_in_schema=False)
    async def style() -> FileResponse:
        return FileResponse(SHARED_PAGE / "style.css", media_type="text/css")

    @app.get("/static/topk.js", include_in_schema=False)
    async def topk() -> FileResponse:
        return FileResponse(SHARED_PAGE / "topk.js", media_type="text/javascript")

    app.mount("/static", StaticFiles(directory=STATIC), name="static")

    @app.exception_handler(RequestValidationError)
    async def validation_error(_request: Request, exc: RequestValidationError) -> JSONResponse:
        return JSONResponse({"detail": message(exc)}, 422)

    @app.exception_handler(Exception)
    async def server_error(_request: Request, exc: Exception) -> JSONResponse:
        # a bug or a model failure, never bad input: still JSON, so clients and the page can show it
        log.error("internal error: %r", exc, exc_info=exc)
        return JSONResponse({"detail": f"internal error ({type(exc).__name__}); see the server's log"}, 500)

    @app.get("/", include_in_schema=False)
    async def page() -> FileResponse:
        return FileResponse(STATIC / "index.html", headers={"Content-Security-Policy": PAGE_CSP})


def _explain(clf: Any, image: Any, target: str | None, threshold: float) -> dict:
    """On the model's thread: Grad-CAM hooks the network, so it must not overlap with a batch."""
    from headstart.report.explain import display_crop, gradcam, overlay
    from headstart.runtime.metrics import softmax

    probs = softmax(clf.logits([image]), clf.temperature)[0]
    top = int(probs.argmax())
    explained = clf.classes.index(target) if target is not None else top
    cam = gradcam(clf, [image], explained)[0]
    buffer = io.BytesIO()
    overlay(display_crop(clf, image), cam).save(buffer, format="PNG")
    return {"label": clf.classes[explained], "confidence": float(probs[explained]),
            "predicted": clf.classes[top] if probs[top] >= threshold else "unsure",
            "overlay_png": base64.b64encode(buffer.getvalue()).decode("ascii")}


def serve(run_dir: str | os.PathLike, host: str = "127.0.0.1", port: int = 8000, *, engine: str = "auto",
          log_level: str = "info", **kwargs: Any) -> None:
    """Serve a run over HTTP until interrupted (uvicorn, one process: one model in memory).

    Loopback by default: there is no authentication, so binding another address exposes the model to
    whoever can reach it. kwargs go to create_app (max_body_bytes, max_images, batch_window_ms, ...).
    """
    import uvicorn

    app = create_app(run_dir, engine=engine, **kwargs)
    if host not in LOOPBACK:
        log.warning("listening on %s: anyone who can reach port %d can use the model (no authentication)",
                    host, port)
    uvicorn.run(app, host=host, port=port, log_level=log_level)
