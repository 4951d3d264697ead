"""Embedding and reranking over HTTP: the service of an EncoderModel (BERT,
XLM-RoBERTa, nomic-bert: it embeds and reranks, and does not generate) and
the rerank endpoint of any model that reranks.

/v1/rerank (also /rerank, /v2/rerank) takes and answers the Jina / Cohere
shape that vLLM and llama.cpp serve: {query, documents (strings or
{"text": ...}), top_n (0 or absent: all), return_documents (default true),
instruction (vLLM's; a decoder reranker's, Qwen3-Reranker)}
-> {id, model, usage: {prompt_tokens, total_tokens}, results: [{index,
relevance_score, document: {text}}] best first}. /v1/embeddings is OpenAI's;
``dimensions`` below the model's width cuts each vector and normalises it
again, as OpenAI does for its Matryoshka models. The model's native call
runs in a worker thread (the model holds its own lock), so the event loop
keeps serving while it runs.
"""

from __future__ import annotations

import asyncio
import inspect
import os
from dataclasses import dataclass
from typing import Any

import numpy as np
from starlette.concurrency import run_in_threadpool

from . import protocol as P
from . import schema as S
from .metrics import Metrics

MAX_INPUTS = 2048   # texts an embeddings request, documents a rerank request may hold


def _short(msg: str, limit: int = 300) -> str:
    line = msg.strip().splitlines()[0] if msg.strip() else msg
    return line if len(line) <= limit else line[:limit - 3] + "..."


def _too_many(n: int, limit: int, what: str, param: str) -> P.APIError:
    return P.APIError(413, f"the request holds {n} {what}; this server takes at most {limit}",
                      param=param, code="request_too_large")


# ---- rerank: any model with a rerank method --------------------------------------------
@dataclass
class RerankRequest:
    query: str
    documents: list[str]
    top_n: int | None           # None: all
    return_documents: bool
    instruction: str | None = None


RERANK_FIELDS = {"model", "query", "documents", "top_n", "return_documents", "instruction",
                 "user"}


def rerank_request(body: dict, max_inputs: int = MAX_INPUTS) -> RerankRequest:
    """A rerank body checked, each failure a 400 naming its field (413 for
    more documents than the server takes)."""
    S.unknown_fields(body, RERANK_FIELDS, sampling=False)
    query = body.get("query")
    if not isinstance(query, str) or not query:
        raise P.bad("query", "query must be a non-empty string")
    docs = body.get("documents")
    if not isinstance(docs, list):
        raise P.bad("documents", "documents must be an array of strings (or of {\"text\": ...} "
                                 "objects)")
    if len(docs) > max_inputs:
        raise _too_many(len(docs), max_inputs, "documents", "documents")
    texts = []
    for i, d in enumerate(docs):
        t = d.get("text") if isinstance(d, dict) else d
        if not isinstance(t, str):
            raise P.bad(f"documents[{i}]", "each document is a string or an object with a "
                                           "string \"text\"")
        texts.append(t)
    top_n = body.get("top_n")
    if top_n is not None:
        top_n = S.integer(0, S.INT32)("top_n", top_n) or None   # vLLM's 0: all
    ret = body.get("return_documents")
    ret = True if ret is None else S.boolean("return_documents", ret)
    if body.get("user") is not None:
        S.string("user", body["user"])
    inst = body.get("instruction")
    if inst is not None:
        S.string("instruction", inst)
    return RerankRequest(query, texts, top_n, ret, inst)


def pair_tokens(model: Any, query: str, documents: list[str]) -> int:
    """Tokens of the (query, document) pairs the model reads (cut to its context)."""
    tok = model.tokenizer
    if not documents:
        return 0
    if hasattr(tok, "encode_pair_batch"):
        pairs = tok.encode_pair_batch([(query, d) for d in documents],
                                      max_length=model.context_length)
        return sum(len(ids) for ids, _ in pairs)
    q = len(model.tokenize(query))
    return sum(min(q + len(model.tokenize(d)), model.context_length) for d in documents)


def _rerank(model: Any, req: RerankRequest) -> tuple[list, int]:
    kw: dict[str, Any] = {"top_n": req.top_n}
    if req.instruction is not None:
        if "instruction" not in inspect.signature(model.rerank).parameters:
            raise P.bad("instruction", "this model's reranking takes no instruction")
        kw["instruction"] = req.instruction
    if not req.documents:
        return [], 0
    try:
        results = model.rerank(req.query, req.documents, **kw)
    except (ValueError, TypeError) as e:   # a model that cannot rerank, a text it cannot take
        raise P.bad(None, _short(str(e))) from None
    return results, pair_tokens(model, req.query, req.documents)


def rerank_body(name: str, req: RerankRequest, results: list, ntok: int) -> dict:
    out = []
    for r in results:
        item: dict[str, Any] = {"index": int(r.index), "relevance_score": float(r.score)}
        if req.return_documents:
            item["document"] = {"text": req.documents[r.index]}
        out.append(item)
    return {"id": P.new_id("rerank"), "model": name,
            "usage": {"prompt_tokens": ntok, "total_tokens": ntok}, "results": out}


async def rerank(svc: Any, body: dict) -> dict:
    """/v1/rerank over a Service or EncoderService: its model's rerank in a
    worker thread; 400 where the model does not rerank."""
    model = svc.model
    if not callable(getattr(model, "rerank", None)):
        raise P.bad("model", f"the model {svc.name!r} does not rerank: /v1/rerank needs a "
                             f"cross-encoder reranker (an encoder GGUF with a classification "
                             f"head, such as bge-reranker)")
    if not getattr(model, "is_reranker", True):
        raise P.bad("model", f"the model {svc.name!r} is an embedding model without a "
                             f"classification head: it serves /v1/embeddings, not /v1/rerank "
                             f"(serve a cross-encoder reranker for that)")
    req = rerank_request(body, getattr(svc, "max_inputs", MAX_INPUTS))
    svc._admit()
    svc.inflight += 1
    try:
        results, ntok = await run_in_threadpool(_rerank, model, req)
    finally:
        svc.inflight -= 1
    svc.metrics.prompt_tokens.inc(ntok)
    return rerank_body(svc.name, req, results, ntok)


# ---- the service of an encoder model ---------------------------------------------------
class EncoderService:
    """What the app serves over an EncoderModel: /v1/embeddings, /v1/rerank
    (a reranker), tokens and models; the generation endpoints answer 400.
    Requests in flight are bounded as a Service's are (503 beyond)."""

    def __init__(self, model: Any, model_name: str | None = None, max_batch_size: int = 64,
                 max_queue: int = 256, max_inputs: int = MAX_INPUTS, **unused: Any):
        self.model = model
        self.name = model_name or os.path.splitext(os.path.basename(model.path))[0]
        self.metrics = Metrics(model)
        self.inflight = 0
        self.limit = max_batch_size + max_queue
        self.max_inputs = max_inputs
        self.draining = False

    def start(self, loop: asyncio.AbstractEventLoop) -> None:
        pass

    def stop(self) -> None:
        pass

    def drain(self, timeout: float) -> None:
        """Shutting down: new requests get 503; those in flight finish."""
        self.draining = True

    def _admit(self) -> None:
        if self.draining:
            raise P.APIError(503, "the server is shutting down", type="server_overloaded")
        if self.inflight >= self.limit:
            raise P.APIError(503, "the server is at capacity; retry later",
                             type="server_overloaded", headers={"Retry-After": "1"})

    # ---- models ----
    def check_model(self, body: dict) -> None:
        m = body.get("model")
        if m is None:
            return
        if not isinstance(m, str):
            raise P.bad("model", "model must be a string")
        if m != self.name:
            raise P.APIError(404, f"the model {m[:100]!r} does not exist (this server has "
                                  f"{self.name!r})", param="model", code="model_not_found")

    def names(self) -> list[str]:
        return [self.name]

    def models(self) -> dict:
        return {"object": "list", "data": [P.model_card(self.name)]}

    def model_card(self, model_id: str) -> dict:
        if model_id != self.name:
            raise P.APIError(404, f"the model {model_id[:100]!r} does not exist", param="model",
                             code="model_not_found")
        return P.model_card(model_id)

    # ---- generation: not this model's ----
    def _no_generation(self) -> P.APIError:
        kind = "a reranking" if self.model.is_reranker else "an embedding"
        serves = "/v1/embeddings and /v1/rerank" if self.model.is_reranker else "/v1/embeddings"
        return P.APIError(400, f"the model {self.name!r} is {kind} model ({self.model.arch}): "
                               f"it serves {serves}, not text generation", param="model",
                          code="model_not_supported")

    async def completions(self, body: dict, disconnected: Any = None) -> dict:
        raise self._no_generation()

    chat = responses = messages = completions

    def count_tokens(self, body: dict) -> dict:
        raise self._no_generation()

    # ---- tokens ----
    def tokenize(self, body: dict) -> dict:
        S.unknown_fields(body, {"model", "prompt", "messages", "add_special_tokens"},
                         sampling=False)
        if "messages" in body:
            raise P.bad("messages", "this model has no chat template: tokenize a prompt")
        add = S.boolean("add_special_tokens", body.get("add_special_tokens", True))
        ids = self.model.tokenize(S.string("prompt", body.get("prompt")), add_special=add)
        return {"count": len(ids), "max_model_len": self.model.context_length, "tokens": ids}

    def detokenize(self, body: dict) -> dict:
        S.unknown_fields(body, {"model", "tokens"}, sampling=False)
        ids = body.get("tokens")
        V = self.model.tokenizer.vocab_size
        if not isinstance(ids, list) or not all(
                isinstance(t, int) and not isinstance(t, bool) and 0 <= t < V for t in ids):
            raise P.bad("tokens", f"tokens must be an array of token ids in [0, {V})")
        return {"prompt": self.model.detokenize(ids)}

    def tokenizer_info(self) -> dict:
        tok = self.model.tokenizer

        def text(i: int | None) -> str | None:
            return tok.tokens[i] if i is not None else None
        return {"tokenizer_class": type(tok).__name__, "bos_token": text(tok.bos_id),
                "eos_token": text(tok.eos_id), "pad_token": text(getattr(tok, "pad_id", None)),
                "add_bos_token": tok.add_bos, "model_max_length": self.model.context_length,
                "chat_template": None}

    # ---- embeddings, rerank ----
    async def embeddings(self, body: dict) -> dict:
        S.unknown_fields(body, {"input", "model", "encoding_format", "dimensions", "user"},
                         sampling=False)
        inputs = S.inputs_of(body)
        if len(inputs) > self.max_inputs:
            raise _too_many(len(inputs), self.max_inputs, "inputs", "input")
        fmt = body.get("encoding_format", "float")
        if fmt not in ("float", "base64"):
            raise P.bad("encoding_format", "encoding_format must be 'float' or 'base64'")
        dims = body.get("dimensions")
        if dims is not None:
            dims = S.integer(1, self.model.n_embd)("dimensions", dims)
        self._admit()
        self.inflight += 1
        try:
            vecs, ntok = await run_in_threadpool(self._embed, inputs, dims)
        finally:
            self.inflight -= 1
        self.metrics.prompt_tokens.inc(ntok)
        return {"object": "list",
                "data": [P.embedding_item(i, v, fmt) for i, v in enumerate(vecs)],
                "model": self.name, "usage": {"prompt_tokens": ntok, "total_tokens": ntok}}

    def _embed(self, inputs: list, dims: int | None) -> tuple[np.ndarray, int]:
        """(in a worker thread) the inputs' ids, each within the context (a
        400 past it, as OpenAI answers), embedded; cut to dims."""
        model, n_ctx = self.model, self.model.context_length
        texts = [x for x in inputs if isinstance(x, str)]
        enc = iter(model.tokenizer.encode_batch(texts) if hasattr(model.tokenizer, "encode_batch")
                   else [model.tokenize(t) for t in texts])
        ids = [list(next(enc)) if isinstance(x, str) else list(x) for x in inputs]
        for i, t in enumerate(ids):
            if len(t) > n_ctx:
                raise P.bad("input", f"this model's maximum context length is {n_ctx} tokens; "
                                     f"input {i} has {len(t)}")
        try:
            vecs = model.embed(ids, truncate=False)
        except ValueError as e:
            raise P.bad("input", _short(str(e))) from None
        if dims is not None and dims < vecs.shape[1]:   # Matryoshka: cut, normalise again
            vecs = vecs[:, :dims]
            vecs = vecs / np.maximum(np.linalg.norm(vecs, axis=1, keepdims=True), 1e-12)
        return vecs, sum(len(t) for t in ids)

    async def rerank(self, body: dict) -> dict:
        return await rerank(self, body)
