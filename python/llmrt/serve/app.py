"""The OpenAI-compatible HTTP app over one Model: FastAPI routes over a
Service (service.py; an EncoderService, encoding.py, over an embedding or
reranking model), the API key, the body size limit and OpenAI's error object
for every failure."""

from __future__ import annotations

import asyncio
import hmac
import json
import logging
from contextlib import asynccontextmanager
from typing import TYPE_CHECKING, Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, PlainTextResponse, StreamingResponse
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from starlette.exceptions import HTTPException as StarletteHTTPException

from . import messages as M
from . import protocol as P
from . import schema as S
from .encoding import MAX_INPUTS, EncoderService
from .service import Service

if TYPE_CHECKING:
    from ..encoder import EncoderModel
    from ..model import Model

log = logging.getLogger("llmrt.serve")


ROUTES = ("/v1/completions", "/v1/chat/completions", "/v1/embeddings", "/v1/models",
          "/v1/responses", "/v1/messages", "/v1/messages/count_tokens", "/tokenize",
          "/detokenize", "/tokenizer_info", "/health", "/metrics", "/v1/rerank", "/rerank",
          "/v2/rerank")


def error_response(path: str, e: P.APIError) -> JSONResponse:
    """OpenAI's error object; Anthropic's under /v1/messages."""
    body = M.error_body(e) if path.startswith("/v1/messages") else e.body()
    return JSONResponse(body, status_code=e.status, headers=e.headers)


def route_label(path: str) -> str:
    """A metrics label for a path: a known route, or "other" (a label per
    path a client makes up would grow without bound)."""
    if path.startswith("/v1/models/"):
        return "/v1/models/{id}"
    return path if path in ROUTES else "other"


def install_errors(app: FastAPI, count: Any = None) -> None:
    """OpenAI's error object for API errors, unknown routes and failures;
    each counted by status. No internal text reaches a client."""
    def counted(request: Request, status: int) -> None:
        if count:
            count(route_label(request.url.path), status)

    @app.exception_handler(P.APIError)
    async def api_error(request: Request, e: P.APIError) -> JSONResponse:
        counted(request, e.status)
        return error_response(request.url.path, e)

    @app.exception_handler(RequestValidationError)
    async def validation_error(request: Request, e: RequestValidationError) -> JSONResponse:
        counted(request, 400)
        return error_response(request.url.path, P.APIError(400, "invalid request"))

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, e: StarletteHTTPException) -> JSONResponse:
        counted(request, e.status_code)
        detail = e.detail if isinstance(e.detail, str) else "error"
        return error_response(request.url.path, P.APIError(
            e.status_code, detail, code="not_found" if e.status_code == 404 else None))

    @app.exception_handler(Exception)
    async def server_error(request: Request, e: Exception) -> JSONResponse:
        log.exception("request failed")
        counted(request, 500)
        return error_response(request.url.path, P.APIError(
            500, "internal server error (see the server's log)", type="server_error"))


OPEN_PATHS = ("/health",)
DOC_PATHS = ("/docs", "/redoc", "/openapi.json", "/docs/oauth2-redirect")


def install_guard(app: FastAPI, api_key: str | None, max_body_bytes: int,
                  public_metrics: bool = False, count: Any = None) -> None:
    """The API key on every route but /health (and /metrics with
    public_metrics), and 413 for a body declared too large. (Plain ASGI, not
    an http middleware: that one hides a client's disconnect from the
    routes, and a request whose client left must be seen to go.)"""
    app.add_middleware(_Guard, api_key=api_key, max_body_bytes=max_body_bytes,
                       public_metrics=public_metrics, count=count)


class _Guard:
    def __init__(self, app: Any, api_key: str | None, max_body_bytes: int,
                 public_metrics: bool, count: Any):
        self.app, self.key, self.limit = app, api_key, max_body_bytes
        self.public_metrics, self.count = public_metrics, count

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        path = scope.get("path", "")
        headers = {k.decode("latin-1").lower(): v.decode("latin-1")
                   for k, v in scope.get("headers", [])}
        open_ = path in OPEN_PATHS or (self.public_metrics and path == "/metrics")
        if self.key and not open_ and not (
                hmac.compare_digest(headers.get("authorization", "").encode(),
                                    f"Bearer {self.key}".encode()) or
                hmac.compare_digest(headers.get("x-api-key", "").encode(),  # Anthropic's
                                    self.key.encode())):
            err = P.APIError(401, "invalid or missing API key (Authorization: Bearer ...)",
                             code="invalid_api_key", headers={"WWW-Authenticate": "Bearer"})
            return await self._refuse(path, err, scope, receive, send)
        size = headers.get("content-length")
        if size is not None and size.isdigit() and int(size) > self.limit:
            return await self._refuse(path, _too_large(self.limit), scope, receive, send)
        await self.app(scope, receive, send)

    async def _refuse(self, path: str, err: P.APIError, scope: dict, receive: Any,
                      send: Any) -> None:
        if self.count:
            self.count(route_label(path), err.status)
        await error_response(path, err)(scope, receive, send)


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
        raise P.APIError(400, f"the request body is not valid JSON: {str(e)[:200]}") from None
    except RecursionError:
        raise P.APIError(400, f"the request body nests deeper than {S.MAX_DEPTH} levels") \
            from None
    S.check_body(body)
    return S.as_object(body)


def respond(out: Any) -> Any:
    """A Service answer as an HTTP response."""
    if isinstance(out, dict):
        return JSONResponse(out)
    return StreamingResponse(out, media_type="text/event-stream")


def make_service(model: "Model | EncoderModel", model_name: str | None = None,
                 max_batch_size: int = 64, max_queue: int = 256, default_max_tokens: int = 512,
                 images: Any = None, max_inputs: int = MAX_INPUTS) -> Service | EncoderService:
    """A Service over a Model; an EncoderService over an EncoderModel."""
    from ..encoder import EncoderModel
    if isinstance(model, EncoderModel):
        return EncoderService(model, model_name, max_batch_size, max_queue, max_inputs)
    return Service(model, model_name, max_batch_size, max_queue, default_max_tokens, images)


def create_app(model: "Model | EncoderModel", model_name: str | None = None,
               api_key: str | None = None, max_batch_size: int = 64, max_queue: int = 256,
               max_body_bytes: int = 8 << 20, default_max_tokens: int = 512,
               public_metrics: bool = False, images: Any = None,
               max_inputs: int = MAX_INPUTS) -> FastAPI:
    """The OpenAI API over `model`: /v1/models, /v1/completions,
    /v1/chat/completions, /v1/embeddings, /v1/rerank, /tokenize, /detokenize,
    /health, /metrics (an EncoderModel: embeddings and rerank; generation is
    a 400). images: the limits on images in requests (serve.images.Limits;
    default: its defaults); max_inputs: the texts an embeddings request of an
    encoder, the documents a rerank request may hold (beyond: 413)."""
    svc = make_service(model, model_name, max_batch_size, max_queue, default_max_tokens, images,
                       max_inputs)
    metrics = svc.metrics

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        app.state.loop = asyncio.get_running_loop()   # for a signal handler's drain
        svc.start(app.state.loop)
        yield
        svc.stop()

    app = FastAPI(title="llmrt", lifespan=lifespan)
    app.state.service = svc
    app.state.loop = None

    def count(path: str, status: int) -> None:
        metrics.requests.labels(path, str(status)).inc()
    install_errors(app, count)
    install_guard(app, api_key, max_body_bytes, public_metrics, count)

    async def body_of(request: Request) -> dict:
        body = await read_json(request, max_body_bytes)
        svc.check_model(body)
        return body

    def ok(path: str, out: Any) -> Any:
        count(path, 200)
        return respond(out)

    for path, (method, is_async, watches) in POSTS.items():
        _post_route(app, svc, path, method, is_async, watches, body_of, ok)

    @app.get("/tokenizer_info")
    async def tokenizer_info() -> Any:
        return ok("/tokenizer_info", svc.tokenizer_info())

    @app.get("/v1/models")
    async def models() -> Any:
        return ok("/v1/models", svc.models())

    @app.get("/v1/models/{model_id:path}")
    async def model_card(model_id: str) -> Any:
        return ok("/v1/models/{id}", svc.model_card(model_id))

    @app.get("/health")
    async def health() -> Any:
        return {"status": "ok"}

    @app.get("/metrics")
    async def prometheus() -> Any:
        return PlainTextResponse(generate_latest(metrics.registry),
                                 media_type=CONTENT_TYPE_LATEST)

    return app


# POST routes: path -> (the Service method, whether it is a coroutine, whether
# it takes the client's disconnect to cancel on)
POSTS = {"/v1/completions": ("completions", True, True),
         "/v1/chat/completions": ("chat", True, True),
         "/v1/embeddings": ("embeddings", True, False),
         "/v1/rerank": ("rerank", True, False),
         "/rerank": ("rerank", True, False),     # vLLM's and llama.cpp's other paths
         "/v2/rerank": ("rerank", True, False),
         "/v1/responses": ("responses", True, True),
         "/v1/messages": ("messages", True, True),
         "/v1/messages/count_tokens": ("count_tokens", False, False),
         "/tokenize": ("tokenize", False, False),
         "/detokenize": ("detokenize", False, False)}


def _post_route(app: FastAPI, svc: Service | EncoderService, path: str, method: str, is_async: bool,
                watches: bool, body_of: Any, ok: Any) -> None:
    fn = getattr(svc, method)

    async def route(request: Request) -> Any:
        args: tuple = (await body_of(request),)
        if watches:
            args += (request.is_disconnected,)
        return ok(path, await fn(*args) if is_async else fn(*args))
    app.add_api_route(path, route, methods=["POST"], name=method)
