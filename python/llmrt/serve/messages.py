"""Anthropic's Messages API (POST /v1/messages, /v1/messages/count_tokens)
as a translation onto the chat path: system and content blocks (text,
image, tool_use, tool_result) become chat messages, tools (input_schema) and
tool_choice (auto / any / tool / none) become OpenAI's; the chat answer (or
its stream of chunks) becomes a Message (or Anthropic's stream of events),
a reply's reasoning a thinking block before the text (thinking blocks
given in the history are dropped: templates drop past reasoning).
Errors are in Anthropic's shape: {"type": "error", "error": {type, message}}."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Any

from . import images as I
from . import protocol as P
from . import schema as S

KNOWN = {"model", "messages", "system", "max_tokens", "stop_sequences", "temperature", "top_p",
         "top_k", "stream", "tools", "tool_choice", "metadata", "thinking", "service_tier",
         "container", "mcp_servers", "cache_control", "output_config", "diagnostics",
         "inference_geo", "speed", "user_profile_id", "workspace_id", "context_management"}
ERROR_TYPES = {400: "invalid_request_error", 401: "authentication_error",
               403: "permission_error", 404: "not_found_error", 413: "request_too_large",
               429: "rate_limit_error", 503: "overloaded_error"}


def error_body(e: P.APIError) -> dict:
    return {"type": "error", "error": {"type": ERROR_TYPES.get(e.status, "api_error"),
                                       "message": e.message}}


def to_chat(body: dict, count_only: bool = False) -> dict:
    """A Messages request -> a chat completions request (checked there)."""
    S.unknown_fields(body, KNOWN, sampling=False)
    msgs: list[dict] = []
    system = body.get("system")
    if system is not None:
        msgs.append({"role": "system", "content": _text(system, "system")})
    raw = body.get("messages")
    if not isinstance(raw, list) or not raw:
        raise P.bad("messages", "messages must be a non-empty array")
    for i, m in enumerate(raw):
        if not isinstance(m, dict) or m.get("role") not in ("user", "assistant"):
            raise P.bad(f"messages[{i}].role", "role must be user or assistant")
        msgs.extend(_turn(m, f"messages[{i}]"))
    chat: dict[str, Any] = {"messages": msgs}
    if body.get("model") is not None:
        chat["model"] = body["model"]
    if not count_only:
        if body.get("max_tokens") is None:
            raise P.bad("max_tokens", "max_tokens is required")
        chat["max_tokens"] = body["max_tokens"]
        for k in ("temperature", "top_p", "top_k"):
            if body.get(k) is not None:
                chat[k] = body[k]
        if body.get("stop_sequences") is not None:
            chat["stop"] = body["stop_sequences"]
        if body.get("stream"):
            chat["stream"] = S.boolean("stream", body["stream"])
            chat["stream_options"] = {"include_usage": True}
    if body.get("tools"):
        chat["tools"] = _tools(body["tools"])
    tc = body.get("tool_choice")
    if tc is not None:
        if not isinstance(tc, dict) or tc.get("type") not in ("auto", "any", "tool", "none"):
            raise P.bad("tool_choice", "tool_choice is {\"type\": auto | any | tool | none}")
        t = tc["type"]
        chat["tool_choice"] = {"auto": "auto", "any": "required", "none": "none"}.get(t) or \
            {"type": "function", "function": {"name": tc.get("name")}}
        if tc.get("disable_parallel_tool_use"):
            chat["parallel_tool_calls"] = False
    return chat


def _text(v: Any, where: str) -> str:
    if isinstance(v, str):
        return v
    if isinstance(v, list):
        parts = []
        for j, b in enumerate(v):
            if not isinstance(b, dict) or b.get("type") != "text" or \
                    not isinstance(b.get("text"), str):
                raise P.bad(f"{where}[{j}]", "only text blocks are supported here")
            parts.append(b["text"])
        return "".join(parts)
    raise P.bad(where, "must be a string or an array of text blocks")


def _turn(m: dict, where: str) -> list[dict]:
    """One Anthropic turn -> chat messages: text joined (a user's text and
    images its parts), tool_use blocks as the assistant's tool_calls,
    tool_result blocks as tool messages."""
    content = m.get("content")
    if isinstance(content, str):
        return [{"role": m["role"], "content": content}]
    if not isinstance(content, list):
        raise P.bad(f"{where}.content", "content must be a string or an array of blocks")
    text: list[Any] = []
    calls, results = [], []
    for j, b in enumerate(content):
        w = f"{where}.content[{j}]"
        t = b.get("type") if isinstance(b, dict) else None
        if t == "text" and isinstance(b.get("text"), str):
            text.append({"type": "text", "text": b["text"]})
        elif t == "image" and m["role"] == "user":
            text.append(I.anthropic_block(b, w))
        elif t == "tool_use" and m["role"] == "assistant":
            if not isinstance(b.get("name"), str) or not isinstance(b.get("input", {}), dict):
                raise P.bad(w, "a tool_use block has a name and an input object")
            calls.append({"id": str(b.get("id") or ""), "type": "function",
                          "function": {"name": b["name"],
                                       "arguments": json.dumps(b.get("input", {}))}})
        elif t == "tool_result" and m["role"] == "user":
            c = b.get("content", "")
            res = c if isinstance(c, str) else _text(c, f"{w}.content")
            if b.get("is_error"):
                res = f"Error: {res}"
            results.append({"role": "tool", "tool_call_id": str(b.get("tool_use_id") or ""),
                            "content": res})
        elif t in ("thinking", "redacted_thinking"):
            continue
        else:
            raise P.bad(w, f"content blocks of type {t!r} are not supported here")
    out: list[dict] = list(results)
    if text or not (calls or results):
        images = any(isinstance(p, I.ImageRef) for p in text)
        out.append({"role": m["role"], "content": text if images else
                    "".join(p["text"] for p in text)})
    if calls:
        if out and out[-1]["role"] == "assistant":
            out[-1]["tool_calls"] = calls
        else:
            out.append({"role": "assistant", "content": None, "tool_calls": calls})
    return out


def _tools(tools: Any) -> list[dict]:
    if not isinstance(tools, list):
        raise P.bad("tools", "tools must be an array")
    out = []
    for i, t in enumerate(tools):
        if not isinstance(t, dict) or not isinstance(t.get("name"), str) or \
                t.get("type", "custom") not in ("custom", None):
            raise P.bad(f"tools[{i}]", "a tool is {name, description, input_schema} (client "
                                       "tools only)")
        fn = {"name": t["name"], "parameters": t.get("input_schema") or {"type": "object"}}
        if isinstance(t.get("description"), str):
            fn["description"] = t["description"]
        out.append({"type": "function", "function": fn})
    return out


# ---- the answer ---------------------------------------------------------------------------
def _stop(finish: str | None, stop: str | None) -> str:
    if finish == "tool_calls":
        return "tool_use"
    if finish == "length":
        return "max_tokens"
    return "stop_sequence" if stop else "end_turn"


def _usage(u: dict | None) -> dict:
    u = u or {}
    return {"input_tokens": u.get("prompt_tokens", 0),
            "output_tokens": u.get("completion_tokens", 0),
            "cache_creation_input_tokens": 0,
            "cache_read_input_tokens": u.get("prompt_tokens_details", {}).get("cached_tokens", 0)}


def _tool_use(c: dict) -> dict:
    return {"type": "tool_use", "id": "toolu_" + c["id"].removeprefix("call_"),
            "name": c["function"]["name"], "input": json.loads(c["function"]["arguments"])}


def from_chat(out: dict, model: str) -> dict:
    ch = out["choices"][0]
    msg = ch["message"]
    content: list[dict] = []
    if msg.get("reasoning_content"):
        content.append({"type": "thinking", "thinking": msg["reasoning_content"],
                        "signature": ""})
    if msg.get("content"):
        content.append({"type": "text", "text": msg["content"]})
    content += [_tool_use(c) for c in msg.get("tool_calls") or []]
    return {"id": P.new_id("msg"), "type": "message", "role": "assistant", "model": model,
            "content": content, "stop_reason": _stop(ch["finish_reason"], ch.get("stop_reason")),
            "stop_sequence": ch.get("stop_reason"), "usage": _usage(out.get("usage"))}


async def stream(chunks: AsyncIterator[bytes], model: str, input_tokens: int
                 ) -> AsyncIterator[bytes]:
    """The chat stream's chunks -> Anthropic's stream of events."""
    def ev(kind: str, **data: Any) -> bytes:
        return f"event: {kind}\ndata: {json.dumps({'type': kind, **data})}\n\n".encode()

    yield ev("message_start", message={
        "id": P.new_id("msg"), "type": "message", "role": "assistant", "model": model,
        "content": [], "stop_reason": None, "stop_sequence": None,
        "usage": {"input_tokens": input_tokens, "output_tokens": 0}})
    index, text_open, thinking_open = 0, False, False
    finish, stop, usage = None, None, None
    async for data in P.chat_chunks(chunks):
        if "error" in data:
            yield ev("error", error={"type": "api_error", "message": data["error"]["message"]})
            return
        usage = data.get("usage") or usage
        for ch in data.get("choices", []):
            d = ch.get("delta", {})
            if d.get("reasoning_content"):
                if not thinking_open:
                    thinking_open = True
                    yield ev("content_block_start", index=index,
                             content_block={"type": "thinking", "thinking": "", "signature": ""})
                yield ev("content_block_delta", index=index,
                         delta={"type": "thinking_delta", "thinking": d["reasoning_content"]})
            if thinking_open and (d.get("content") or d.get("tool_calls")):
                yield ev("content_block_stop", index=index)
                thinking_open, index = False, index + 1
            if d.get("content"):
                if not text_open:
                    text_open = True
                    yield ev("content_block_start", index=index,
                             content_block={"type": "text", "text": ""})
                yield ev("content_block_delta", index=index,
                         delta={"type": "text_delta", "text": d["content"]})
            for c in d.get("tool_calls") or []:
                if text_open:
                    yield ev("content_block_stop", index=index)
                    text_open, index = False, index + 1
                block = _tool_use(c)
                yield ev("content_block_start", index=index,
                         content_block={**block, "input": {}})
                yield ev("content_block_delta", index=index, delta={
                    "type": "input_json_delta", "partial_json": json.dumps(block["input"])})
                yield ev("content_block_stop", index=index)
                index += 1
            finish = ch.get("finish_reason") or finish
            stop = ch.get("stop_reason") or stop
    if text_open or thinking_open:
        yield ev("content_block_stop", index=index)
    yield ev("message_delta", delta={"stop_reason": _stop(finish, stop), "stop_sequence": stop},
             usage={"output_tokens": _usage(usage)["output_tokens"]})
    yield ev("message_stop")
