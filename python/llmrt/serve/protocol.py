"""The OpenAI API's shapes: request bodies checked field by field and mapped
onto SamplingParams, responses and stream chunks built from results, errors
in OpenAI's error object."""

from __future__ import annotations

import base64
import math
import time
import uuid
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ..sampling import SamplingParams


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


def bad(param: str, message: str) -> APIError:
    return APIError(400, message, param=param)


# OpenAI's names (and llmrt's extras) -> SamplingParams fields
FIELDS = {
    "max_tokens": "max_new_tokens", "max_completion_tokens": "max_new_tokens",
    "temperature": "temperature", "top_p": "top_p", "n": "n", "stop": "stop", "seed": "seed",
    "presence_penalty": "presence_penalty", "frequency_penalty": "frequency_penalty",
    "logit_bias": "logit_bias", "top_k": "top_k", "min_p": "min_p", "typical_p": "typical_p",
    "repetition_penalty": "repetition_penalty", "min_tokens": "min_new_tokens",
    "ignore_eos": "ignore_eos", "response_format": "response_format",
}
BACK = {"max_new_tokens": "max_tokens", "min_new_tokens": "min_tokens"}
# accepted and without effect here
IGNORED = {"model", "user", "stream", "stream_options", "logprobs", "top_logprobs", "messages",
           "prompt", "input", "encoding_format", "dimensions", "echo", "best_of", "suffix",
           "tools", "tool_choice", "parallel_tool_calls", "service_tier",
           "store", "metadata", "modalities", "reasoning_effort", "add_special"}
MAX_N = 16


@dataclass
class Request:
    """A completions or chat request, checked."""
    params: SamplingParams
    stream: bool = False
    include_usage: bool = False
    logprobs: int | None = None  # top-n alternatives (None: no logprobs)
    extra: dict[str, Any] = field(default_factory=dict)


def as_object(body: Any) -> dict:
    if not isinstance(body, dict):
        raise APIError(400, "the request body must be a JSON object")
    return body


def parse_params(body: dict, *, chat: bool, default_max_tokens: int) -> Request:
    body = as_object(body)
    unknown = [k for k in body if k not in FIELDS and k not in IGNORED]
    if unknown:
        raise bad(unknown[0], f"unrecognized request argument: {unknown[0]}")
    kw: dict[str, Any] = {}
    for name, target in FIELDS.items():
        if name in body and body[name] is not None:
            if target in kw:
                raise bad(name, f"give max_tokens or max_completion_tokens, not both")
            kw[target] = body[name]
    if "max_new_tokens" not in kw:
        kw["max_new_tokens"] = default_max_tokens if chat else 16
    if "temperature" not in kw:
        kw["temperature"] = 1.0  # OpenAI's default
    if "logit_bias" in kw:
        lb = kw["logit_bias"]
        if not isinstance(lb, dict):
            raise bad("logit_bias", "logit_bias must be an object of token id -> bias")
        try:
            kw["logit_bias"] = {int(k): float(v) for k, v in lb.items()}
        except (TypeError, ValueError):
            raise bad("logit_bias", "logit_bias keys must be token ids and values numbers") \
                from None
        for v in kw["logit_bias"].values():
            if not math.isfinite(v) or abs(v) > 100:
                raise bad("logit_bias", "logit_bias values must be in [-100, 100]")
    if "stop" in kw and isinstance(kw["stop"], list) and len(kw["stop"]) > 4:
        raise bad("stop", "at most 4 stop sequences")
    n = kw.get("n", 1)
    if isinstance(n, int) and not isinstance(n, bool) and n > MAX_N:
        raise bad("n", f"n must be at most {MAX_N}")
    logprobs: int | None = None
    if chat:
        lp, top = body.get("logprobs"), body.get("top_logprobs")
        if lp not in (None, True, False):
            raise bad("logprobs", "logprobs must be true or false")
        if top is not None and (not isinstance(top, int) or isinstance(top, bool) or
                                not 0 <= top <= 20):
            raise bad("top_logprobs", "top_logprobs must be an integer in [0, 20]")
        if top is not None and not lp:
            raise bad("top_logprobs", "top_logprobs needs logprobs: true")
        if lp:
            logprobs = top or 0
    else:
        lp = body.get("logprobs")
        if lp is not None:
            if not isinstance(lp, int) or isinstance(lp, bool) or not 0 <= lp <= 5:
                raise bad("logprobs", "logprobs must be an integer in [0, 5]")
            logprobs = lp
    if logprobs is not None:
        kw["logprobs"] = logprobs
    stream = body.get("stream", False)
    if not isinstance(stream, bool):
        raise bad("stream", "stream must be true or false")
    opts = body.get("stream_options")
    include_usage = False
    if opts is not None:
        if not isinstance(opts, dict) or not stream:
            raise bad("stream_options", "stream_options is an object, with stream: true")
        include_usage = bool(opts.get("include_usage", False))
    for name in ("tools", "echo", "suffix"):
        if body.get(name):
            raise bad(name, f"{name} is not supported")
    bo = body.get("best_of")
    if bo is not None and bo != kw.get("n", 1):
        raise bad("best_of", "best_of is not supported")
    try:
        params = SamplingParams(**kw)
    except ValueError as e:
        msg = str(e)
        field_ = msg.split(" ", 1)[0].rstrip(":")
        raise bad(BACK.get(field_, field_), msg.replace(field_, BACK.get(field_, field_), 1)) \
            from None
    return Request(params=params, stream=stream, include_usage=include_usage, logprobs=logprobs)


def prompts_of(body: dict) -> list:
    """The completions prompt: a string, token ids, or a list of either."""
    p = body.get("prompt")
    if isinstance(p, str):
        return [p]
    if isinstance(p, list) and p:
        if all(isinstance(x, int) and not isinstance(x, bool) for x in p):
            return [p]
        if all(isinstance(x, str) for x in p):
            return list(p)
        if all(isinstance(x, list) and x and
               all(isinstance(y, int) and not isinstance(y, bool) for y in x) for x in p):
            return list(p)
    raise bad("prompt", "prompt must be a string, an array of token ids, or an array of them")


def messages_of(body: dict) -> list[dict]:
    msgs = body.get("messages")
    if not isinstance(msgs, list) or not msgs:
        raise bad("messages", "messages must be a non-empty array")
    out = []
    for i, m in enumerate(msgs):
        if not isinstance(m, dict) or not isinstance(m.get("role"), str):
            raise bad(f"messages[{i}]", "each message is an object with a role")
        content = m.get("content")
        if isinstance(content, list):  # parts: only text
            texts = []
            for part in content:
                if not isinstance(part, dict) or part.get("type") != "text" or \
                        not isinstance(part.get("text"), str):
                    raise bad(f"messages[{i}].content", "only text content parts are supported")
                texts.append(part["text"])
            content = "".join(texts)
        if content is None:
            content = ""
        if not isinstance(content, str):
            raise bad(f"messages[{i}].content", "content must be a string or text parts")
        out.append({"role": m["role"], "content": content})
    return out


def inputs_of(body: dict) -> list:
    """The embeddings input: a string, token ids, or a list of either."""
    x = body.get("input")
    if isinstance(x, str) and x:
        return [x]
    if isinstance(x, list) and x:
        if all(isinstance(v, int) and not isinstance(v, bool) for v in x):
            return [x]
        if all(isinstance(v, str) and v for v in x):
            return list(x)
        if all(isinstance(v, list) and v and
               all(isinstance(y, int) and not isinstance(y, bool) for y in v) for v in x):
            return list(x)
    raise bad("input", "input must be a non-empty string, token ids, or an array of them")


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
    tokens, token_lps, tops, offsets = [], [], [], []
    off = text_start
    for x in lps:
        t, _ = token_text(tokenizer, x.token_id)
        tokens.append(t)
        token_lps.append(x.logprob)
        top: dict[str, float] = {}
        for i, lp in x.top:  # best first: a text two tokens share keeps the better
            top.setdefault(token_text(tokenizer, i)[0], lp)
        tops.append(top)
        offsets.append(off)
        off += len(t)
    return {"tokens": tokens, "token_logprobs": token_lps, "top_logprobs": tops,
            "text_offset": offsets}


def chat_logprobs(tokenizer: Any, lps: list) -> dict:
    content = []
    for x in lps:
        t, b = token_text(tokenizer, x.token_id)
        content.append({"token": t, "logprob": x.logprob, "bytes": b,
                        "top_logprobs": [{"token": token_text(tokenizer, i)[0], "logprob": lp,
                                          "bytes": token_text(tokenizer, i)[1]}
                                         for i, lp in x.top]})
    return {"content": content}


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


def now() -> int:
    return int(time.time())
