"""The OpenAI-compatible HTTP app over one Model: FastAPI routes over a
Service (service.py), the API key, the body size limit and OpenAI's error
object for every failure."""

from __future__ import annotations

import asyncio
import json
import logging
from contextlib import asynccontextmanager
from typing import TYPE_CHECKING, Any

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, PlainTextResponse, StreamingResponse
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from starlette.exceptions import HTTPException as StarletteHTTPException

from . import protocol as P
from .service import Service

if TYPE_CHECKING:
    from ..model import Model

log = logging.getLogger("llmrt.serve")


def install_errors(app: FastAPI, count: Any = None) -> None:
    """OpenAI's error object for API errors, unknown routes and failures."""
    @app.exception_handler(P.APIError)
    async def api_error(request: Request, e: P.APIError) -> JSONResponse:
        if count:
            count(request.url.path, e.status)
        return JSONResponse(e.body(), status_code=e.status, headers=e.headers)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, e: StarletteHTTPException) -> JSONResponse:
        err = P.APIError(e.status_code, str(e.detail),
                         code="not_found" if e.status_code == 404 else None)
        return JSONResponse(err.body(), status_code=e.status_code)

    @app.exception_handler(Exception)
    async def server_error(request: Request, e: Exception) -> JSONResponse:
        log.exception("request failed")
        err = P.APIError(500, f"internal error: {e}", type="server_error")
        return JSONResponse(err.body(), status_code=500)


def install_guard(app: FastAPI, api_key: str | None, max_body_bytes: int) -> None:
    """The API key on /v1/*, and 413 for a body declared too large."""
    @app.middleware("http")
    async def guard(request: Request, call_next: Any) -> Any:
        if api_key and request.url.path.startswith("/v1/"):
            if request.headers.get("authorization", "") != f"Bearer {api_key}":
                err = P.APIError(401, "invalid or missing API key (Authorization: Bearer ...)",
                                 code="invalid_api_key")
                return JSONResponse(err.body(), status_code=401)
        size = request.headers.get("content-length")
        if size is not None and size.isdigit() and int(size) > max_body_bytes:
            return JSONResponse(_too_large(max_body_bytes).body(), status_code=413)
        return await call_next(request)


def _too_large(limit: int) -> P.APIError:
    return P.APIError(413, f"the request body is larger than {limit} bytes",
                      code="request_too_large")


async def read_json(request: Request, max_body_bytes: int) -> dict:
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > max_body_bytes:
            raise _too_large(max_body_bytes)
        chunks.append(chunk)
    try:
        body = json.loads(b"".join(chunks) or b"null")
    except (ValueError, UnicodeDecodeError) as e:
        raise P.APIError(400, f"the request body is not valid JSON: {e}") from None
    return P.as_object(body)


def respond(out: Any) -> Any:
    """A Service answer as an HTTP response."""
    if isinstance(out, dict):
        return JSONResponse(out)
    return StreamingResponse(out, media_type="text/event-stream")


def create_app(model: "Model", model_name: str | None = None, api_key: str | None = None,
               max_batch_size: int = 64, max_queue: int = 256,
               max_body_bytes: int = 8 << 20, default_max_tokens: int = 512) -> FastAPI:
    """The OpenAI API over `model`: /v1/models, /v1/completions,
    /v1/chat/completions, /v1/embeddings, /health, /metrics."""
    svc = Service(model, model_name, max_batch_size, max_queue, default_max_tokens)
    metrics = svc.metrics

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        svc.start(asyncio.get_running_loop())
        yield
        svc.stop()

    app = FastAPI(title="llmrt", lifespan=lifespan)
    app.state.service = svc
    install_errors(app, lambda path, status: metrics.requests.labels(path, str(status)).inc())
    install_guard(app, api_key, max_body_bytes)

    async def body_of(request: Request) -> dict:
        body = await read_json(request, max_body_bytes)
        svc.check_model(body)
        return body

    def ok(path: str, out: Any) -> Any:
        metrics.requests.labels(path, "200").inc()
        return respond(out)

    @app.post("/v1/completions")
    async def completions(request: Request) -> Any:
        return ok("/v1/completions", await svc.completions(await body_of(request)))

    @app.post("/v1/chat/completions")
    async def chat_completions(request: Request) -> Any:
        return ok("/v1/chat/completions", await svc.chat(await body_of(request)))

    @app.post("/v1/embeddings")
    async def embeddings(request: Request) -> Any:
        return ok("/v1/embeddings", await svc.embeddings(await body_of(request)))

    @app.get("/v1/models")
    async def models() -> Any:
        return svc.models()

    @app.get("/health")
    async def health() -> Any:
        return {"status": "ok"}

    @app.get("/metrics")
    async def prometheus() -> Any:
        return PlainTextResponse(generate_latest(metrics.registry),
                                 media_type=CONTENT_TYPE_LATEST)

    return app
