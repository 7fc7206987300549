"""What a request to the app holds: its body models, the images read from multipart or JSON bodies, and the
body-size limit. Errors are HTTPExceptions with a one-line detail naming the problem."""

from __future__ import annotations

import base64
import binascii
from dataclasses import dataclass
from typing import Any

from fastapi import HTTPException, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from starlette.datastructures import UploadFile
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.formparsers import MultiPartException

__all__ = ["FILE_FIELDS", "TOP_K_MAX", "BodyLimit", "Error", "ExplainJSON", "ExplainResponse", "PredictJSON",
           "PredictResponse", "Upload", "body_spec", "message", "read_images"]

TOP_K_MAX = 100
# The multipart fields read as image uploads: `files`, and `file` as `curl -F file=@cat.jpg` sends it.
FILE_FIELDS = ("files", "file")
# The page loads only its own files: nothing from the network, no inline script.


class Error(BaseModel):
    detail: str


class Prediction(BaseModel):
    filename: str
    label: str = Field(description='the top class, or "unsure" when its confidence is below the threshold')
    confidence: float = Field(description="calibrated probability of the top class")
    top_k: list[tuple[str, float]]


class ImageError(BaseModel):
    filename: str
    error: str


class PredictResponse(BaseModel):
    predictions: list[Prediction | ImageError]
    model: str
    engine: str


class ExplainResponse(BaseModel):
    filename: str
    label: str = Field(description="the class explained: class_name, or the top class")
    confidence: float = Field(description="calibrated probability of the class explained")
    predicted: str = Field(description='the model\'s answer ("unsure" below the threshold)')
    overlay_png: str = Field(description="base64 PNG: Grad-CAM heatmap over the center crop the model sees")
    engine: str


class PredictJSON(BaseModel):
    model_config = ConfigDict(extra="forbid")
    images: list[str] = Field(min_length=1, description="base64 image files (a data: URL prefix is accepted)")
    top_k: int | None = Field(None, ge=1, le=TOP_K_MAX)
    threshold: float | None = Field(None, ge=0, le=1)


class ExplainJSON(BaseModel):
    model_config = ConfigDict(extra="forbid")
    images: list[str] = Field(min_length=1, max_length=1, description="one base64 image file")
    class_name: str | None = Field(None, description="explain this class instead of the prediction")
    threshold: float | None = Field(None, ge=0, le=1)


@dataclass
class Upload:
    filename: str
    data: bytes | None
    error: str | None = None


def message(exc: ValidationError | RequestValidationError) -> str:
    parts = []
    for err in exc.errors():
        where = ".".join(str(p) for p in err.get("loc", ()) if p != "body")
        parts.append(f"{where}: {err['msg']}" if where else err["msg"])
    return "; ".join(parts)


def _b64(text: str) -> bytes:
    if text.startswith("data:") and "," in text:  # a data: URL, as a browser's FileReader makes
        text = text.split(",", 1)[1]
    return base64.b64decode("".join(text.split()), validate=True)


async def read_images(request: Request, model: type[BaseModel], max_images: int) -> tuple[list[Upload], dict]:
    """The request's images (bytes, or a per-image error) and its options, or a 4xx HTTPException."""
    media = request.headers.get("content-type", "").split(";")[0].strip().lower()
    names = [n for n in model.model_fields if n != "images"]
    if media == "multipart/form-data":
        try:
            form = await request.form(max_files=max_images, max_fields=len(names) + 4)
        except (StarletteHTTPException, MultiPartException) as exc:
            detail = getattr(exc, "detail", None) or getattr(exc, "message", str(exc))
            if "too many files" in str(detail).lower():
                raise HTTPException(422, f"too many images: more than {max_images} in one request "
                                         f"(the server's limit)") from exc
            raise HTTPException(400, f"malformed multipart body: {detail}") from exc
        try:
            files, fields = [], {}
            for key, value in form.multi_items():
                if key in FILE_FIELDS and isinstance(value, UploadFile):
                    files.append(value)
                elif key in FILE_FIELDS:
                    raise HTTPException(422, f"field {key!r} must hold file uploads, not text")
                elif key not in names or isinstance(value, UploadFile) or key in fields:
                    raise HTTPException(422, f"unexpected form field {key!r}: send images in 'files' (or 'file') "
                                             f"and optionally {', '.join(repr(n) for n in names)} once each")
                else:
                    fields[key] = value
            uploads = [Upload(f.filename or f"files[{i}]", await f.read()) for i, f in enumerate(files)]
        finally:
            await form.close()
        try:
            options = model.model_validate({"images": ["-"], **fields}).model_dump(exclude={"images"})
        except ValidationError as exc:
            raise HTTPException(422, f"bad form field: {message(exc)}") from exc
    elif media == "application/json" or media.endswith("+json"):
        try:
            parsed = model.model_validate_json(await request.body())
        except ValidationError as exc:
            raise HTTPException(422, f"bad JSON body: {message(exc)}") from exc
        options = parsed.model_dump(exclude={"images"})
        uploads = []
        for i, text in enumerate(parsed.images):
            try:
                uploads.append(Upload(f"images[{i}]", _b64(text)))
            except (binascii.Error, ValueError) as exc:
                uploads.append(Upload(f"images[{i}]", None, f"not valid base64 ({exc})"))
    elif not media and not await request.body():
        uploads, options = [], {}
    else:
        raise HTTPException(415, f"unsupported content type {media!r}: send multipart/form-data with image "
                                 f"files in 'files' (or 'file'), or application/json with base64 strings in "
                                 f"'images'")
    if not uploads:
        raise HTTPException(422, "no image: send one or more image files in the multipart field 'files' (or "
                                 "'file'), or base64 strings in the JSON field 'images'")
    if len(uploads) > max_images:
        raise HTTPException(422, f"too many images: {len(uploads)} in one request, the limit is {max_images}")
    return uploads, options


def body_spec(model: type[BaseModel], max_images: int) -> dict:
    """OpenAPI requestBody for an endpoint that takes multipart files or JSON base64 (parsed by hand)."""
    schema = model.model_json_schema()
    fields = {name: next((s for s in prop.get("anyOf", [prop]) if s.get("type") != "null"), prop)
              for name, prop in schema["properties"].items() if name != "images"}
    files = {"type": "array", "minItems": 1, "maxItems": max_images,
             "items": {"type": "string", "format": "binary"}}
    # `file` is the same field under curl's usual name (-F file=@cat.jpg); either one carries the images.
    multipart = {"type": "object", "anyOf": [{"required": [name]} for name in FILE_FIELDS], "properties": {
        "files": files, "file": {**files, "description": "the same as files"}, **fields}}
    return {"requestBody": {"required": True, "content": {
        "multipart/form-data": {"schema": multipart}, "application/json": {"schema": schema}}}}


class BodyLimit:
    """413 for a body over `max_bytes`: a declared Content-Length at once, else counted as it arrives.

    The body is read here in full (it is bounded) and replayed to the app, so no handler sees a partial one.
    """

    def __init__(self, app: Any, max_bytes: int) -> None:
        self.app, self.max_bytes = app, max_bytes

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        headers = dict(scope.get("headers") or [])
        declared = headers.get(b"content-length")
        limit = f"the server's limit of {self.max_bytes:,} bytes"
        if declared is not None:
            if not declared.isdigit():
                return await _reply(send, 400, f"invalid Content-Length header {declared[:40].decode('latin-1')!r}")
            if int(declared) > self.max_bytes:
                return await _reply(send, 413, f"request body is {int(declared):,} bytes, over {limit}")
        chunks, total = [], 0
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                return None
            chunks.append(message.get("body", b""))
            total += len(chunks[-1])
            if total > self.max_bytes:
                return await _reply(send, 413, f"request body exceeds {limit}")
            if not message.get("more_body"):
                break
        body, replayed = b"".join(chunks), False

        async def replay() -> dict:
            nonlocal replayed
            if replayed:
                return await receive()
            replayed = True
            return {"type": "http.request", "body": body, "more_body": False}

        return await self.app(scope, replay, send)


async def _reply(send: Any, status: int, detail: str) -> None:
    await JSONResponse({"detail": detail}, status)({"type": "http"}, None, send)
