"""The HTTP layer of ``vlmo serve``: a FastAPI app over a :class:`~vlmo_cli.serve.service.SearchService`.

Endpoints: ``POST /search`` (a JSON text query, or a multipart image upload), ``POST /embed`` (JSON texts or
multipart images), ``POST /score`` and ``POST /classify`` (multipart image + text), ``GET /health``,
``GET /thumbnail/{row}`` (indexed images only), ``GET /`` (a search page) and the OpenAPI schema at ``/docs``.

Every client mistake is a 4xx with a JSON body ``{"error": message, "status": code}``: a non-image upload (400),
an empty query (400), an unknown or ill-typed field (422), a body over the configured limit (413), a content type
other than JSON or multipart (415). Forward passes go through one :class:`DynamicBatcher` per kind of work.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, JSONResponse, Response
from starlette.exceptions import HTTPException as StarletteHTTPException

from ..errors import VlmoError
from .batching import DynamicBatcher
from .page import PAGE_HTML
from .service import SearchService, read_image

log = logging.getLogger(__name__)

MAX_TOP_K = 100
MAX_ITEMS = 256  # texts or images in one /embed request


@dataclass(frozen=True)
class ServeOptions:
    """Server limits and batching. ``max_upload_bytes`` bounds any request body."""

    max_upload_bytes: int = 10 * 2**20
    max_batch: int = 32
    max_wait_ms: float = 5.0


class ClientError(Exception):
    """A request the client must fix: answered with ``status`` and a JSON error body."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


def _error_body(status: int, message: str) -> bytes:
    return json.dumps({"error": message, "status": status}).encode("utf-8")


class BodyLimit:
    """ASGI middleware: refuses a request body over ``limit`` bytes with 413, whether announced by
    ``Content-Length`` or streamed in chunks (it is then buffered up to the limit and replayed)."""

    def __init__(self, app, limit: int) -> None:
        self.app = app
        self.limit = limit

    async def _refuse(self, send) -> None:
        body = _error_body(413, f"the request body is over the limit of {self.limit:,} bytes (--max-upload-mb)")
        await send({"type": "http.response.start", "status": 413,
                    "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]})
        await send({"type": "http.response.body", "body": body})

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = dict(scope.get("headers") or [])
        length = headers.get(b"content-length")
        if length is not None:
            try:
                announced = int(length)
            except ValueError:
                announced = self.limit + 1
            if announced > self.limit:
                await self._refuse(send)
                return
            await self.app(scope, receive, send)
            return
        if scope.get("method") in ("GET", "HEAD", "OPTIONS"):
            await self.app(scope, receive, send)
            return
        chunks, total = [], 0
        while True:
            message = await receive()
            if message["type"] != "http.request":
                return
            chunks.append(message.get("body", b""))
            total += len(chunks[-1])
            if total > self.limit:
                await self._refuse(send)
                return
            if not message.get("more_body"):
                break
        replay = [{"type": "http.request", "body": b"".join(chunks), "more_body": False}]

        async def replayed():
            return replay.pop() if replay else await receive()

        await self.app(scope, replayed, send)


# -------------------------------------------------------------------------------------------- request parsing
def _check_fields(given: Sequence[str], allowed: Sequence[str]) -> None:
    unknown = sorted(set(given) - set(allowed))
    if unknown:
        raise ClientError(422, f"unknown field(s) {', '.join(map(repr, unknown))}; allowed: {', '.join(allowed)}")


def _int_field(value: Any, name: str, low: int, high: int, default: int) -> int:
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, (int, str)):
        raise ClientError(422, f"{name} must be an integer, got {value!r}")
    try:
        number = int(value)
    except ValueError:
        raise ClientError(422, f"{name} must be an integer, got {value!r}") from None
    if not low <= number <= high:
        raise ClientError(422, f"{name} must be between {low} and {high}, got {number}")
    return number


def _text_field(value: Any, name: str) -> str:
    if not isinstance(value, str):
        raise ClientError(422, f"{name} must be a string, got {type(value).__name__}")
    if not value.strip():
        raise ClientError(400, f"{name} is empty")
    return value


async def _read_json(request) -> dict:
    try:
        body = json.loads(await request.body() or b"null")
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ClientError(400, f"the body is not valid JSON ({exc})") from None
    if not isinstance(body, dict):
        raise ClientError(422, "the JSON body must be an object")
    return body


async def _read_form(request) -> tuple[dict[str, str], dict[str, list[tuple[str, bytes]]]]:
    """``(text fields, uploaded files by field)`` of a multipart or urlencoded form."""
    try:
        form = await request.form()
    except Exception as exc:  # noqa: BLE001 - a malformed form is the client's mistake
        raise ClientError(400, f"the form cannot be parsed ({type(exc).__name__}: {exc})") from None
    fields: dict[str, str] = {}
    files: dict[str, list[tuple[str, bytes]]] = {}
    for key, value in form.multi_items():
        if hasattr(value, "read"):
            files.setdefault(key, []).append((value.filename or key, await value.read()))
        else:
            fields[key] = value
    return fields, files


def _kind_of(request) -> str:
    content_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if content_type == "application/json":
        return "json"
    if content_type in ("multipart/form-data", "application/x-www-form-urlencoded"):
        return "form"
    raise ClientError(415, f"send application/json or multipart/form-data, not {content_type or 'no content type'!r}")


def _one_image(files: dict[str, list[tuple[str, bytes]]], field: str = "image"):
    uploads = files.get(field, [])
    if len(uploads) != 1:
        raise ClientError(422, f"upload exactly one image in the field {field!r}")
    name, data = uploads[0]
    try:
        return read_image(data, name)
    except VlmoError as exc:
        raise ClientError(400, str(exc)) from None


# -------------------------------------------------------------------------------------------- OpenAPI
def _body_doc(json_schema: dict | None, form_schema: dict | None) -> dict:
    content = {}
    if json_schema is not None:
        content["application/json"] = {"schema": json_schema}
    if form_schema is not None:
        content["multipart/form-data"] = {"schema": form_schema}
    return {"requestBody": {"required": True, "content": content}}


def _obj(properties: dict, required: list[str]) -> dict:
    return {"type": "object", "properties": properties, "required": required, "additionalProperties": False}


_INT = {"type": "integer"}
_STR = {"type": "string"}
_FILE = {"type": "string", "format": "binary"}


# -------------------------------------------------------------------------------------------- the app
def create_app(service: SearchService, options: ServeOptions | None = None):
    """The FastAPI app (wrapped in the body-size limit) serving ``service``."""
    opts = options or ServeOptions()
    executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="vlmo-model")
    wait = opts.max_wait_ms / 1000
    batchers = {
        "text": DynamicBatcher(service.embed_texts, executor, max_batch=opts.max_batch, max_wait=wait),
        "image": DynamicBatcher(service.embed_images, executor, max_batch=opts.max_batch, max_wait=wait),
        "score": DynamicBatcher(service.score, executor, max_batch=opts.max_batch, max_wait=wait),
        "classify": DynamicBatcher(service.classify, executor, max_batch=opts.max_batch, max_wait=wait),
    }

    @asynccontextmanager
    async def lifespan(_app):
        for batcher in batchers.values():
            batcher.start()
        yield
        for batcher in batchers.values():
            await batcher.stop()
        executor.shutdown(wait=False, cancel_futures=True)

    app = FastAPI(title="vlmo serve", version="1", lifespan=lifespan,
                  description="Search, embed, score and classify with a VLMo model.")

    async def in_model_thread(fn, *args, **kwargs):
        return await asyncio.get_running_loop().run_in_executor(executor, lambda: fn(*args, **kwargs))

    @app.exception_handler(ClientError)
    async def client_error(_request, exc: ClientError):
        return JSONResponse({"error": exc.message, "status": exc.status}, status_code=exc.status)

    @app.exception_handler(VlmoError)
    async def vlmo_error(_request, exc: VlmoError):
        return JSONResponse({"error": str(exc), "status": 400}, status_code=400)

    @app.exception_handler(RequestValidationError)
    async def validation_error(_request, exc: RequestValidationError):
        first = exc.errors()[0] if exc.errors() else {}
        where = ".".join(str(p) for p in first.get("loc", ()))
        return JSONResponse({"error": f"{where}: {first.get('msg', 'invalid request')}", "status": 422},
                            status_code=422)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(_request, exc: StarletteHTTPException):
        return JSONResponse({"error": str(exc.detail), "status": exc.status_code}, status_code=exc.status_code)

    @app.exception_handler(Exception)
    async def server_error(_request, exc: Exception):
        log.exception("internal error")
        return JSONResponse({"error": f"internal error: {type(exc).__name__}", "status": 500}, status_code=500)

    def hit_json(hit) -> dict:
        out = {"rank": hit.rank, "score": hit.score, "similarity": hit.similarity, "itm": hit.itm}
        if hit.path is not None:
            out.update(path=str(hit.path), thumbnail=f"/thumbnail/{hit.row}")
        else:
            out.update(text=hit.text, line=hit.line)
        return out

    search_doc = _body_doc(
        _obj({"text": _STR, "top_k": _INT, "rerank_k": _INT}, ["text"]),
        _obj({"image": _FILE, "text": _STR, "top_k": _INT, "rerank_k": _INT}, []),
    )

    @app.post("/search", openapi_extra=search_doc, summary="top K of the index for a text or an uploaded image")
    async def search(request: Request):
        t0 = time.perf_counter()
        index = service.require_index()
        if _kind_of(request) == "json":
            body = await _read_json(request)
            _check_fields(body, ("text", "top_k", "rerank_k"))
            if "text" not in body:
                raise ClientError(422, "give a text query in the field 'text' (or upload an image as multipart)")
            text, image = _text_field(body["text"], "text"), None
            top_k = _int_field(body.get("top_k"), "top_k", 1, MAX_TOP_K, 5)
            rerank_k = _int_field(body.get("rerank_k"), "rerank_k", 0, MAX_TOP_K, 0)
        else:
            fields, files = await _read_form(request)
            _check_fields([*fields, *files], ("image", "text", "top_k", "rerank_k"))
            if ("text" in fields) == ("image" in files):
                raise ClientError(422, "give exactly one query: a field 'text' or an upload 'image'")
            text = _text_field(fields["text"], "text") if "text" in fields else None
            image = None if text is not None else _one_image(files)
            top_k = _int_field(fields.get("top_k"), "top_k", 1, MAX_TOP_K, 5)
            rerank_k = _int_field(fields.get("rerank_k"), "rerank_k", 0, MAX_TOP_K, 0)
        pixels = None
        if text is not None:
            query = await batchers["text"].submit(text)
        else:
            pixels = service.pixels(image)
            query = await batchers["image"].submit(pixels)
        found = (await in_model_thread(service.nearest, query.unsqueeze(0), max(top_k, rerank_k)))[0]
        hits = await in_model_thread(service.hits, found, top_k=top_k, rerank_k=rerank_k, text=text, pixels=pixels)
        return {"query": {"text": text} if text is not None else {"image": True},
                "index": {"kind": index.kind, "size": len(index)},
                "results": [hit_json(h) for h in hits], "took_ms": round((time.perf_counter() - t0) * 1000, 2)}

    embed_doc = _body_doc(_obj({"texts": {"type": "array", "items": _STR}}, ["texts"]),
                          _obj({"images": {"type": "array", "items": _FILE}}, ["images"]))

    @app.post("/embed", openapi_extra=embed_doc, summary="L2-normalised embeddings of texts or uploaded images")
    async def embed(request: Request):
        if _kind_of(request) == "json":
            body = await _read_json(request)
            _check_fields(body, ("texts",))
            texts = body.get("texts")
            if not isinstance(texts, list) or not texts:
                raise ClientError(422, "texts must be a non-empty list of strings")
            if len(texts) > MAX_ITEMS:
                raise ClientError(422, f"at most {MAX_ITEMS} texts per request, got {len(texts)}")
            items = [_text_field(t, f"texts[{i}]") for i, t in enumerate(texts)]
            vectors = await asyncio.gather(*(batchers["text"].submit(t) for t in items))
            kind = "text"
        else:
            fields, files = await _read_form(request)
            _check_fields([*fields, *files], ("images",))
            uploads = files.get("images", [])
            if not uploads:
                raise ClientError(422, "upload one or more images in the field 'images'")
            if len(uploads) > MAX_ITEMS:
                raise ClientError(422, f"at most {MAX_ITEMS} images per request, got {len(uploads)}")
            pixels = []
            for name, data in uploads:
                try:
                    pixels.append(service.pixels(read_image(data, name)))
                except VlmoError as exc:
                    raise ClientError(400, str(exc)) from None
            vectors = await asyncio.gather(*(batchers["image"].submit(p) for p in pixels))
            kind = "image"
        return {"kind": kind, "dim": int(vectors[0].shape[0]), "embeddings": [v.tolist() for v in vectors]}

    pair_doc = _body_doc(None, _obj({"image": _FILE, "text": _STR}, ["image", "text"]))

    async def read_pair(request) -> tuple[str, Any]:
        if _kind_of(request) != "form":
            raise ClientError(415, "send the image and the text as multipart/form-data (fields 'image', 'text')")
        fields, files = await _read_form(request)
        _check_fields([*fields, *files], ("image", "text"))
        if "text" not in fields:
            raise ClientError(422, "give the text in the field 'text'")
        text = _text_field(fields["text"], "text")
        return text, service.pixels(_one_image(files))

    @app.post("/score", openapi_extra=pair_doc, summary="ITC similarity and ITM match probability of image + text")
    async def score(request: Request):
        text, pixels = await read_pair(request)
        return await batchers["score"].submit((text, pixels))

    @app.post("/classify", openapi_extra=pair_doc, summary="VQA answers / classes of image + text (question)")
    async def classify(request: Request):
        if service.class_head is None:
            raise ClientError(400, "this model has no VQA or classification head (heads: "
                              + ", ".join(service.model.model.config.heads) + ")")
        text, pixels = await read_pair(request)
        predictions = await batchers["classify"].submit((text, pixels))
        return {"head": service.class_head,
                "predictions": [{"index": p.index, "label": p.label, "probability": p.probability}
                                for p in predictions]}

    @app.get("/health", summary="model, index and batching statistics")
    async def health():
        index = service.index
        return {
            "status": "ok",
            "model": str(service.model.path),
            "heads": list(service.model.model.config.heads),
            "device": str(service.model.device),
            "index": None if index is None else {"kind": index.kind, "size": len(index), "source": str(index.folder),
                                                 "search": index.describe_ann()},
            "batching": {name: b.stats.as_dict() for name, b in batchers.items()},
            "max_upload_bytes": opts.max_upload_bytes,
        }

    @app.get("/thumbnail/{row}", summary="a thumbnail of an indexed image (only indexed images are served)")
    async def thumbnail(row: int):
        try:
            data = await in_model_thread(service.thumbnail, row)
        except KeyError:
            raise ClientError(404, f"no indexed image {row}") from None
        except OSError as exc:
            raise ClientError(404, f"indexed image {row} cannot be read any more ({type(exc).__name__})") from None
        return Response(data, media_type="image/jpeg", headers={"Cache-Control": "max-age=3600"})

    @app.get("/", response_class=HTMLResponse, include_in_schema=False)
    async def page():
        return PAGE_HTML

    app.state.service = service
    app.state.batchers = batchers
    return BodyLimit(app, opts.max_upload_bytes)
