"""`llmrt serve`: the OpenAI-compatible server (FastAPI + uvicorn; optional
extra ``llmrt[server]``) and its scale-out on Ray Serve (``llmrt[ray]``).

    llmrt serve model.gguf --port 8000 [--api-key KEY] [--replicas N]

An embedding or reranking model (a BERT / XLM-RoBERTa / nomic-bert GGUF)
serves /v1/embeddings and /v1/rerank; its generation endpoints answer 400.

In Python: ``create_app(model, ...)`` is the ASGI app over one Model;
``ray_app(path, ...)`` is a Ray Serve application of N replicas behind one
endpoint, for ``serve.run`` on an existing Ray cluster.
"""

from __future__ import annotations

import argparse
import os
from typing import Any

SERVER_EXTRA = "pip install 'llmrt[server]'"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("model", nargs="?", help="GGUF file (default: SmolLM2-135M-Instruct)")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8000)
    p.add_argument("--api-key", default=os.environ.get("LLMRT_API_KEY"),
                   help="required as 'Authorization: Bearer KEY' (default: $LLMRT_API_KEY)")
    p.add_argument("--model-name", default=None, help="the model's id in the API "
                                                      "(default: the file's name)")
    p.add_argument("--device", default="cpu", choices=("cpu", "cuda"))
    p.add_argument("--threads", "-t", type=int, default=None)
    p.add_argument("--max-batch-size", type=int, default=64,
                   help="sequences decoding together (default 64)")
    p.add_argument("--max-queue", type=int, default=256,
                   help="requests waiting beyond the batch before 503 (default 256)")
    p.add_argument("--kv-cache-tokens", type=int, default=None,
                   help="KV-cache positions (default: max(context, 32768))")
    p.add_argument("--context-length", type=int, default=None)
    p.add_argument("--default-max-tokens", type=int, default=512,
                   help="max_tokens of a chat request that gives none (default 512)")
    p.add_argument("--max-body-bytes", type=int, default=None,
                   help="bytes a request body may have (default 8 MiB; 32 MiB for a model "
                        "that takes images, whose base64 data URIs come in the body)")
    p.add_argument("--batch-invariant", action="store_true",
                   help="results equal to a request sent alone, bit for bit")
    p.add_argument("--replicas", type=int, default=1,
                   help="engine replicas behind one endpoint, on Ray Serve (llmrt[ray])")
    p.add_argument("--lora", action="append", default=[], metavar="NAME=PATH",
                   help="a LoRA adapter (PEFT directory or GGUF file) served as model NAME "
                        "(repeatable)")
    p.add_argument("--public-metrics", action="store_true",
                   help="serve /metrics without the API key")
    p.add_argument("--shutdown-timeout", type=float, default=30.0,
                   help="seconds SIGTERM waits for requests in flight before cancelling "
                        "them (default 30)")
    p.add_argument("--max-images", type=int, default=8,
                   help="images a request may hold (default 8)")
    p.add_argument("--max-image-bytes", type=int, default=20 << 20,
                   help="bytes an image may have, encoded (default 20 MiB; a data URI also "
                        "counts in --max-body-bytes)")
    p.add_argument("--max-image-pixels", type=int, default=None,
                   help="width x height an image may have (default and most: 50,000,000)")
    p.add_argument("--allow-image-urls", action="store_true",
                   help="fetch http(s) image URLs given in requests (else only data: URIs); "
                        "the server then fetches any URL a client names, internal ones too")
    p.add_argument("--image-url-timeout", type=float, default=10.0,
                   help="seconds an image URL's fetch may take in all (default 10)")
    p.add_argument("--max-inputs", type=int, default=2048,
                   help="texts an embeddings request (of an encoder model) or documents a "
                        "rerank request may hold (default 2048; beyond: 413)")
    p.add_argument("--log-level", default="warning")


def image_limits(a: Any):
    """The image flags as serve.images.Limits."""
    from ..images import DEFAULT_MAX_PIXELS
    from .images import Limits
    px = a.max_image_pixels or DEFAULT_MAX_PIXELS
    if a.max_images < 0 or a.max_image_bytes < 1 or not 1 <= px <= DEFAULT_MAX_PIXELS or \
            not a.image_url_timeout > 0:
        raise SystemExit(f"llmrt serve: --max-images must be >= 0, --max-image-bytes and "
                         f"--image-url-timeout > 0, --max-image-pixels in [1, "
                         f"{DEFAULT_MAX_PIXELS}] (the vision encoder's own limit)")
    return Limits(max_images=a.max_images, max_bytes=a.max_image_bytes, max_pixels=px,
                  allow_urls=a.allow_image_urls, url_timeout=a.image_url_timeout)


def model_kwargs(a: Any) -> dict:
    return dict(device=a.device, threads=a.threads, context_length=a.context_length,
                batch_invariant=a.batch_invariant)


def load(path: str | None, kv_cache_tokens: int | None = None, **kw: Any):
    """The server's Model: a KV cache of at least 32768 positions, so that
    many requests run at once (memory is committed as it is used). An
    encoder's file gives an EncoderModel (no KV cache)."""
    from ..encoder import EncoderModel, is_encoder_file
    from ..gguf_loader import load_gguf
    from ..model import Model
    from ..utils import default_model_path
    path = path or default_model_path()
    if is_encoder_file(path):
        return EncoderModel(path, device=kw.get("device", "cpu"), threads=kw.get("threads"))
    if kv_cache_tokens is None:
        n_ctx = kw.get("context_length") or load_gguf(path).config["n_ctx_train"]
        kv_cache_tokens = max(n_ctx, 32768)
    return Model(path, kv_cache_tokens=kv_cache_tokens, **kw)


def create_app(*args: Any, **kwargs: Any):
    try:
        from .app import create_app as make
    except ImportError as e:
        raise ImportError(f"the server needs FastAPI, uvicorn and prometheus-client: "
                          f"{SERVER_EXTRA} ({e})") from None
    return make(*args, **kwargs)


def ray_app(*args: Any, **kwargs: Any):
    from .ray_serve import ray_app as make
    return make(*args, **kwargs)


def lora_args(items: list[str]) -> list[tuple[str, str]]:
    """--lora NAME=PATH items -> (name, absolute path) pairs."""
    out = []
    for item in items or []:
        name, sep, path = item.partition("=")
        if not sep or not name or not path:
            raise SystemExit(f"llmrt serve: --lora wants NAME=PATH, got {item!r}")
        out.append((name, os.path.abspath(path)))
    return out


def main(a: Any) -> int:
    lora = lora_args(getattr(a, "lora", []))
    if a.replicas > 1:
        from .ray_serve import run as run_ray
        return run_ray(a, lora)
    try:
        import uvicorn
    except ImportError:
        raise SystemExit(f"llmrt serve needs FastAPI and uvicorn: {SERVER_EXTRA}") from None
    model = load(a.model, a.kv_cache_tokens, **model_kwargs(a))
    if lora and not hasattr(model, "load_lora"):
        raise SystemExit(f"llmrt serve: {model!r} does not take LoRA adapters")
    if a.max_inputs < 1:
        raise SystemExit("llmrt serve: --max-inputs must be >= 1")
    for name, path in lora:
        model.load_lora(path, name=name)
    if a.max_body_bytes is None:
        a.max_body_bytes = (32 << 20) if getattr(model, "vision", None) is not None else 8 << 20
    app = create_app(model, model_name=a.model_name, api_key=a.api_key,
                     max_batch_size=a.max_batch_size, max_queue=a.max_queue,
                     max_body_bytes=a.max_body_bytes, default_max_tokens=a.default_max_tokens,
                     public_metrics=a.public_metrics, images=image_limits(a),
                     max_inputs=a.max_inputs)
    print(f"llmrt serve: {model!r} on http://{a.host}:{a.port}/v1", flush=True)
    svc = app.state.service

    class Server(uvicorn.Server):
        def handle_exit(self, sig: int, frame: Any) -> None:
            # the first signal drains: requests in flight get shutdown_timeout
            # seconds, then a 503 each; uvicorn's own cut comes 5 s later
            loop = app.state.loop
            if not svc.draining and loop is not None:
                loop.call_soon_threadsafe(svc.drain, a.shutdown_timeout)
            super().handle_exit(sig, frame)

    Server(uvicorn.Config(app, host=a.host, port=a.port, log_level=a.log_level,
                          timeout_graceful_shutdown=a.shutdown_timeout + 5)).run()
    return 0
