"""Scale-out on Ray Serve (optional extra ``llmrt[ray]``).

Two deployments make one OpenAI endpoint:
- ``Ingress`` (FastAPI): the API key, body limit, JSON and model checks,
  then the request to a replica, its answer (JSON or a stream of
  server-sent events) passed through;
- ``Replica`` x N: each a Model (its own threads and KV cache) and the same
  Service as a single server, behind a prefix-aware router: requests that
  start alike (a conversation's first messages, a prompt's first 512
  characters) go to the replica that served that start before, so its
  prefix cache holds their blocks, unless it is busier than the least busy
  replica by more than ``imbalance`` requests.

``llmrt serve model.gguf --replicas N`` starts a local Ray instance and
serves; ``ray_app(path, replicas=N, ...)`` is the application to pass to
``serve.run`` on an existing cluster (``ray start --head`` on one node,
``ray start --address=HEAD:6379`` on the others: the replicas spread over
the nodes unchanged).
"""

import asyncio
import hashlib
import json
import logging
import os
import signal
import time
from collections.abc import Sequence
from typing import Any, Optional

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, PlainTextResponse, StreamingResponse
from ray import serve
from ray.serve.config import RequestRouterConfig
from ray.serve.request_router import PendingRequest, RequestRouter, RunningReplica

from . import messages as M
from . import protocol as P
from .app import install_errors, install_guard, read_json


def prefix_key(endpoint: str, body: dict) -> Optional[str]:
    """What requests of one conversation share: the first two messages of a
    chat, the first 512 characters of a prompt."""
    if endpoint in ("chat", "messages"):
        msgs = body.get("messages")
        start: Any = msgs[:2] if isinstance(msgs, list) else None
        if endpoint == "messages" and start and body.get("system") is not None:
            start = [body["system"], start]
    elif endpoint == "responses":
        inp = body.get("input")
        start = [body.get("instructions"), inp[:2] if isinstance(inp, list) else inp]
    elif endpoint == "completions":
        p = body.get("prompt")
        start = p[:512] if isinstance(p, (str, list)) else None
    else:
        return None
    if not start:
        return None
    return hashlib.blake2b(json.dumps(start, sort_keys=True).encode(), digest_size=8).hexdigest()


class PrefixAffinityRouter(RequestRouter):
    """Rendezvous hashing of the request's prefix key over the replicas (the
    same key finds the same replica while the set is unchanged), unless that
    replica's queue is longer than the shortest by more than `imbalance`;
    requests without a key, and the fallback, go to the least busy."""

    imbalance = 8

    async def choose_replicas(self, candidate_replicas: list[RunningReplica],
                              pending_request: Optional[PendingRequest] = None
                              ) -> list[list[RunningReplica]]:
        if not candidate_replicas:
            return []

        def load(r: RunningReplica) -> int:
            q = self.replica_queue_len_cache.get(r.replica_id)
            return q if q is not None else 0

        by_load = sorted(candidate_replicas, key=load)
        key = pending_request.kwargs.get("prefix_key") if pending_request is not None else None
        if not key:
            return [by_load]

        def rank(r: RunningReplica) -> str:
            return hashlib.blake2b(f"{key}/{r.replica_id.unique_id}".encode(),
                                   digest_size=8).hexdigest()
        home = max(candidate_replicas, key=rank)
        if load(home) - load(by_load[0]) > self.imbalance:
            return [by_load]
        return [[home], [r for r in by_load if r is not home]]


class Replica:
    """One engine: a Model (with its LoRA adapters) and its Service (the
    deployment's replicas)."""

    def __init__(self, path: str, model_kwargs: dict, service_kwargs: dict,
                 lora: Sequence[tuple[str, str]] = ()):
        from . import load
        from .app import make_service
        model = load(path, **model_kwargs)
        for name, p in lora:
            model.load_lora(p, name=name)
        self.service = make_service(model, **service_kwargs)
        self.started = False

    def _start(self) -> None:
        if not self.started:
            self.service.start(asyncio.get_running_loop())
            self.started = True

    async def call(self, endpoint: str, body: dict, prefix_key: Optional[str] = None):
        """The answer as a stream of items: ("json", body), ("sse", bytes)...
        or ("error", status, body, headers)."""
        self._start()
        svc = self.service
        try:
            if endpoint == "completions":
                out = await svc.completions(body)
            elif endpoint == "chat":
                out = await svc.chat(body)
            elif endpoint == "embeddings":
                out = await svc.embeddings(body)
            elif endpoint == "rerank":
                out = await svc.rerank(body)
            elif endpoint == "responses":
                out = await svc.responses(body)
            elif endpoint == "messages":
                out = await svc.messages(body)
            elif endpoint == "count_tokens":
                out = svc.count_tokens(body)
            elif endpoint == "tokenize":
                out = svc.tokenize(body)
            elif endpoint == "detokenize":
                out = svc.detokenize(body)
            elif endpoint == "tokenizer_info":
                out = svc.tokenizer_info()
            else:
                out = svc.models()
        except P.APIError as e:
            err = M.error_body(e) if endpoint in ("messages", "count_tokens") else e.body()
            yield ("error", e.status, err, e.headers)
            return
        if isinstance(out, dict):
            yield ("json", out)
            return
        async for chunk in out:
            yield ("sse", chunk)

    async def metrics(self) -> bytes:
        from prometheus_client import generate_latest
        return generate_latest(self.service.metrics.registry)


def ray_app(path: Optional[str] = None, replicas: int = 2, model_name: Optional[str] = None,
            api_key: Optional[str] = None, max_batch_size: int = 64, max_queue: int = 256,
            max_body_bytes: int = 8 << 20, default_max_tokens: int = 512,
            public_metrics: bool = False, images: Any = None,
            threads: Optional[int] = None, cpus_per_replica: Optional[float] = None,
            lora: Sequence[tuple[str, str]] = (), **model_kwargs: Any):
    """The OpenAI endpoint over `replicas` engines, as a Ray Serve
    application (pass it to ``serve.run``). lora: (name, path) of adapters
    every replica loads, each served as a model name; images: the limits on
    images in requests (serve.images.Limits)."""
    from ..utils import default_model_path
    path = os.path.abspath(path or default_model_path())
    name = model_name or os.path.splitext(os.path.basename(path))[0]
    lora = [(n, os.path.abspath(p)) for n, p in lora]
    for n, p in lora:  # fail here rather than in every replica's start
        if not os.path.exists(p):
            raise FileNotFoundError(f"LoRA adapter {n!r} not found: {p!r}")
    if threads is None:
        threads = max(1, (os.cpu_count() or 1) // replicas)
    cpus = cpus_per_replica if cpus_per_replica is not None else float(threads)
    router = RequestRouterConfig(request_router_class=PrefixAffinityRouter)  # type: ignore[arg-type]
    deployment: Any = serve.deployment(
        Replica, name="llmrt-replica", num_replicas=replicas,
        ray_actor_options={"num_cpus": cpus},
        max_ongoing_requests=max_batch_size + max_queue, request_router_config=router)
    replica = deployment.bind(path, dict(model_kwargs, threads=threads),
                              dict(model_name=name, max_batch_size=max_batch_size,
                                   max_queue=max_queue, default_max_tokens=default_max_tokens,
                                   images=images),
                              list(lora))
    ingress: Any = _ingress([name] + [n for n, _ in lora], api_key, max_body_bytes,
                            public_metrics)
    return ingress.bind(replica)


# POST routes -> the Replica.call endpoint
ENDPOINTS = {"/v1/completions": "completions", "/v1/chat/completions": "chat",
             "/v1/embeddings": "embeddings", "/v1/responses": "responses",
             "/v1/messages": "messages", "/v1/messages/count_tokens": "count_tokens",
             "/tokenize": "tokenize", "/detokenize": "detokenize", "/v1/rerank": "rerank",
             "/rerank": "rerank", "/v2/rerank": "rerank"}


def _ingress(names: list[str], api_key: Optional[str], max_body_bytes: int,
             public_metrics: bool) -> Any:
    """The ingress deployment: the guard and checks, then each request to a
    replica and its answer back."""
    app = FastAPI(title="llmrt")
    install_errors(app)
    install_guard(app, api_key, max_body_bytes, public_metrics)

    @serve.deployment(name="llmrt-ingress", ray_actor_options={"num_cpus": 0})
    @serve.ingress(app)
    class Ingress:
        def __init__(self, handle: Any):
            self.handle = handle

        @app.get("/tokenizer_info")
        async def tokenizer_info(self) -> Any:
            return await _forward(self.handle, "tokenizer_info", {}, names)

        @app.get("/v1/models")
        async def models(self) -> Any:
            return {"object": "list", "data": [P.model_card(n) for n in names]}

        @app.get("/v1/models/{model_id:path}")
        async def model_card(self, model_id: str) -> Any:
            if model_id not in names:
                raise P.APIError(404, f"the model {model_id[:100]!r} does not exist",
                                 param="model", code="model_not_found")
            return P.model_card(model_id)

        @app.get("/health")
        async def health(self) -> Any:
            return {"status": "ok"}

        @app.get("/metrics")
        async def metrics(self) -> Any:
            # one replica's (each keeps its own; Ray's metrics cover the cluster)
            return PlainTextResponse(await self.handle.metrics.remote())

        @app.get("/{route:path}")
        async def unknown(self, route: str) -> Any:
            raise P.APIError(404, "Not Found", code="not_found")

        @app.post("/{route:path}")
        async def post(self, route: str, request: Request) -> Any:
            endpoint = ENDPOINTS.get("/" + route)
            if endpoint is None:
                raise P.APIError(404, "Not Found", code="not_found")
            return await _forward(self.handle, endpoint,
                                  await read_json(request, max_body_bytes), names)
    return Ingress


async def _forward(handle: Any, endpoint: str, body: dict, names: list[str]) -> Any:
    """A request to a replica, its answer (JSON, or a stream that ends with
    an error event if the replica dies) back."""
    m = body.get("model")
    if m is not None and not isinstance(m, str):
        raise P.bad("model", "model must be a string")
    if m is not None and m not in names:
        raise P.APIError(404, f"the model {m[:100]!r} does not exist (this server has "
                              f"{', '.join(repr(n) for n in names)})", param="model",
                         code="model_not_found")
    gen = handle.options(stream=True).call.remote(endpoint, body,
                                                  prefix_key=prefix_key(endpoint, body))
    first = await gen.__anext__()
    if first[0] == "error":
        _, status, err, headers = first
        return JSONResponse(err, status_code=status, headers=headers)
    if first[0] == "json":
        return JSONResponse(first[1])

    async def rest():
        yield first[1]
        try:
            async for item in gen:
                yield item[1]
        except Exception:  # noqa: BLE001 - the replica died mid-stream
            logging.getLogger("llmrt.serve").exception("a replica's stream failed")
            err = P.APIError(500, "the replica serving this stream failed; the "
                                  "text so far is incomplete", type="server_error")
            yield b"data: " + json.dumps(err.body()).encode() + b"\n\n"
    return StreamingResponse(rest(), media_type="text/event-stream")


def run(a: Any, lora: Sequence[tuple[str, str]] = ()) -> int:
    """``llmrt serve --replicas N``: a local Ray instance and the app on it."""
    import ray

    from . import image_limits, model_kwargs
    kw, images = model_kwargs(a), image_limits(a)
    threads = kw.pop("threads") or max(1, (os.cpu_count() or 1) // a.replicas)
    ray.init(num_cpus=max(os.cpu_count() or 1, a.replicas * threads), include_dashboard=False,
             log_to_driver=False)
    serve.start(http_options={"host": a.host, "port": a.port})
    app = ray_app(a.model, replicas=a.replicas, model_name=a.model_name, api_key=a.api_key,
                  max_batch_size=a.max_batch_size, max_queue=a.max_queue,
                  max_body_bytes=a.max_body_bytes if a.max_body_bytes is not None else 8 << 20,
                  default_max_tokens=a.default_max_tokens,
                  public_metrics=a.public_metrics, images=images, threads=threads,
                  kv_cache_tokens=a.kv_cache_tokens, lora=lora, **kw)
    serve.run(app, name="llmrt", route_prefix="/")
    print(f"llmrt serve: {a.replicas} replicas on http://{a.host}:{a.port}/v1", flush=True)
    stop = {"now": False}

    def on_signal(*_: Any) -> None:
        stop["now"] = True
    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    try:
        while not stop["now"]:
            time.sleep(0.2)
    finally:
        serve.shutdown()
        ray.shutdown()
    return 0
