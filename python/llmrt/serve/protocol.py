"""The OpenAI API's shapes: request bodies checked field by field and mapped
onto SamplingParams, responses and stream chunks built from results, errors
in OpenAI's error object."""

from __future__ import annotations

import base64
import json
import time
import uuid
from collections.abc import AsyncIterator
from typing import Any

import numpy as np


class APIError(Exception):
    """An error answered in OpenAI's shape: {"error": {message, type, param, code}}."""

    def __init__(self, status: int, message: str, param: str | None = None,
                 type: str = "invalid_request_error", code: str | None = None,
                 headers: dict[str, str] | None = None):
        super().__init__(message)
        self.status, self.message, self.param = status, message, param
        self.type, self.code, self.headers = type, code, headers or {}

    def body(self) -> dict:
        return {"error": {"message": self.message, "type": self.type, "param": self.param,
                          "code": self.code}}


def bad(param: str | None, message: str) -> APIError:
    return APIError(400, message, param=param)


# ---- responses --------------------------------------------------------------------------

def new_id(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:24]}"


def usage(prompt_tokens: int, completion_tokens: int, cached: int = 0) -> dict:
    return {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
            "total_tokens": prompt_tokens + completion_tokens,
            "prompt_tokens_details": {"cached_tokens": cached}}


def token_text(tokenizer: Any, tok: int) -> tuple[str, list[int]]:
    b = tokenizer.token_bytes(tok)
    return b.decode("utf-8", errors="replace"), list(b)


def completion_logprobs(tokenizer: Any, lps: list, text_start: int = 0) -> dict:
    """Completions' logprobs of TokenLogprob items (an echoed prompt's first
    token has logprob None: nothing precedes it)."""
    tokens: list[str] = []
    token_lps: list[float | None] = []
    tops: list[dict[str, float] | None] = []
    offsets: list[int] = []
    off = text_start
    for x in lps:
        t, _ = token_text(tokenizer, x.token_id)
        tokens.append(t)
        token_lps.append(x.logprob)
        if x.logprob is None:
            tops.append(None)
        else:
            top: dict[str, float] = {}
            for i, lp in x.top:  # best first: a text two tokens share keeps the better
                top.setdefault(token_text(tokenizer, i)[0], lp)
            tops.append(top)
        offsets.append(off)
        off += len(t)
    return {"tokens": tokens, "token_logprobs": token_lps, "top_logprobs": tops,
            "text_offset": offsets}


def vllm_prompt_logprobs(tokenizer: Any, lps: list) -> list:
    """vLLM's prompt_logprobs: per prompt token None (the first) or
    {token id: {logprob, rank, decoded_token}} for the token and the top."""
    out: list = []
    for x in lps:
        if x is None:
            out.append(None)
            continue
        d = {str(x.token_id): {"logprob": x.logprob,
                               "rank": 1 + sum(1 for _, lp in x.top if lp > x.logprob),
                               "decoded_token": token_text(tokenizer, x.token_id)[0]}}
        for r, (i, lp) in enumerate(x.top):
            d.setdefault(str(i), {"logprob": lp, "rank": r + 1,
                                  "decoded_token": token_text(tokenizer, i)[0]})
        out.append(d)
    return out


def chat_logprobs(tokenizer: Any, lps: list) -> dict:
    content = []
    for x in lps:
        t, b = token_text(tokenizer, x.token_id)
        content.append({"token": t, "logprob": x.logprob, "bytes": b,
                        "top_logprobs": [{"token": token_text(tokenizer, i)[0], "logprob": lp,
                                          "bytes": token_text(tokenizer, i)[1]}
                                         for i, lp in x.top]})
    return {"content": content}


def model_card(name: str) -> dict:
    return {"id": name, "object": "model", "created": 0, "owned_by": "llmrt"}


def completion_body(rid: str, model: str, created: int, choices: list, use: dict) -> dict:
    return {"id": rid, "object": "text_completion", "created": created, "model": model,
            "choices": choices, "usage": use}


def chat_body(rid: str, model: str, created: int, choices: list, use: dict) -> dict:
    return {"id": rid, "object": "chat.completion", "created": created, "model": model,
            "choices": choices, "usage": use}


def embedding_item(i: int, vec: np.ndarray, fmt: str) -> dict:
    if fmt == "base64":
        emb: Any = base64.b64encode(np.asarray(vec, "<f4").tobytes()).decode("ascii")
    else:
        emb = [float(v) for v in vec]
    return {"object": "embedding", "index": i, "embedding": emb}


async def chat_chunks(chunks: AsyncIterator[bytes]) -> AsyncIterator[dict]:
    """A chat stream's server-sent events (as Service writes them, one JSON
    object a chunk) parsed, up to [DONE]: what the Responses and Messages
    translations read."""
    async for raw in chunks:
        if raw.startswith(b"data: [DONE]"):
            return
        yield json.loads(raw[len(b"data: "):])


def now() -> int:
    return int(time.time())
