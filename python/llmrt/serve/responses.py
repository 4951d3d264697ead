"""OpenAI's Responses API (POST /v1/responses) as a translation onto the
chat path: input items (text and input_image parts) and instructions become
chat messages, function tools and text.format become tools and
response_format; the chat answer (or its stream of chunks) becomes a
Response object (or its stream of typed events); a reply's reasoning
becomes a reasoning item before the message. Stateless:
previous_response_id is refused, store is ignored; reasoning items in the
input are dropped (templates drop past reasoning)."""

from __future__ import annotations

import json
import time
from collections.abc import AsyncIterator
from typing import Any

from . import protocol as P
from . import schema as S

KNOWN = {"model", "input", "instructions", "tools", "tool_choice", "parallel_tool_calls",
         "max_output_tokens", "temperature", "top_p", "stream", "text", "store", "metadata",
         "user", "seed", "reasoning", "truncation", "previous_response_id", "include",
         "service_tier", "top_logprobs", "stop", "top_k", "min_p", "repetition_penalty",
         "presence_penalty", "frequency_penalty", "stream_options", "background"}


def to_chat(body: dict) -> dict:
    """A Responses request -> a chat completions request (checked there)."""
    S.unknown_fields(body, KNOWN, sampling=False)
    if body.get("previous_response_id") is not None:
        raise P.bad("previous_response_id", "previous_response_id is not supported (responses "
                                            "are not stored): send the whole input")
    if body.get("background"):
        raise P.bad("background", "background responses are not supported")
    msgs: list[dict] = []
    if body.get("instructions") is not None:
        msgs.append({"role": "system", "content": S.string("instructions",
                                                           body["instructions"])})
    inp = body.get("input")
    if isinstance(inp, str):
        msgs.append({"role": "user", "content": inp})
    elif isinstance(inp, list) and inp:
        for i, item in enumerate(inp):
            msgs.extend(_item(item, f"input[{i}]", msgs))
    else:
        raise P.bad("input", "input must be a string or a non-empty array of input items")
    chat: dict[str, Any] = {"messages": msgs}
    for src, dst in (("temperature", "temperature"), ("top_p", "top_p"), ("seed", "seed"),
                     ("max_output_tokens", "max_tokens"), ("stop", "stop"), ("top_k", "top_k"),
                     ("min_p", "min_p"), ("repetition_penalty", "repetition_penalty"),
                     ("presence_penalty", "presence_penalty"),
                     ("frequency_penalty", "frequency_penalty"), ("model", "model"),
                     ("parallel_tool_calls", "parallel_tool_calls"), ("user", "user")):
        if body.get(src) is not None:
            chat[dst] = body[src]
    if body.get("stream"):
        chat["stream"] = S.boolean("stream", body["stream"])
        chat["stream_options"] = {"include_usage": True}
    if body.get("top_logprobs"):
        chat["logprobs"], chat["top_logprobs"] = True, body["top_logprobs"]
    effort = body["reasoning"].get("effort") if isinstance(body.get("reasoning"), dict) else None
    if effort is not None:
        chat["reasoning_effort"] = effort
    if body.get("tools"):
        chat["tools"] = _tools(body["tools"])
    tc = body.get("tool_choice")
    if tc is not None:
        if isinstance(tc, dict) and tc.get("type") == "function":
            chat["tool_choice"] = {"type": "function", "function": {"name": tc.get("name")}}
        else:
            chat["tool_choice"] = tc
    fmt = (body.get("text") or {}).get("format") if isinstance(body.get("text"), dict) else None
    if fmt is not None:
        if not isinstance(fmt, dict):
            raise P.bad("text.format", "text.format must be an object")
        if fmt.get("type") == "json_schema":
            chat["response_format"] = {"type": "json_schema", "json_schema": {
                "name": fmt.get("name"), "schema": fmt.get("schema"),
                "strict": fmt.get("strict")}}
        elif fmt.get("type") in ("json_object", "text"):
            chat["response_format"] = {"type": fmt["type"]}
        else:
            raise P.bad("text.format.type", "text.format.type must be text, json_object or "
                                            "json_schema")
    return chat


def _item(item: Any, where: str, msgs: list[dict]) -> list[dict]:
    """One input item -> chat messages (a function call joins the assistant
    turn before it)."""
    if not isinstance(item, dict):
        raise P.bad(where, "an input item is an object")
    t = item.get("type", "message")
    if t == "message":
        role = item.get("role")
        if role not in ("user", "system", "developer", "assistant"):
            raise P.bad(f"{where}.role", "role must be user, system, developer or assistant")
        content = S.content_of(item.get("content"), f"{where}.content")
        if isinstance(content, list) and role != "user":
            raise P.bad(f"{where}.content", "images go in user messages")
        return [{"role": "system" if role == "developer" else role, "content": content}]
    if t == "function_call":
        name, args = item.get("name"), item.get("arguments", "{}")
        if not isinstance(name, str) or not isinstance(args, str):
            raise P.bad(where, "a function_call item has a name and arguments (JSON text)")
        call = {"id": str(item.get("call_id") or item.get("id") or ""), "type": "function",
                "function": {"name": name, "arguments": args}}
        if msgs and msgs[-1]["role"] == "assistant" and "tool_calls" in msgs[-1]:
            msgs[-1]["tool_calls"].append(call)
            return []
        return [{"role": "assistant", "content": None, "tool_calls": [call]}]
    if t == "function_call_output":
        out = item.get("output")
        if not isinstance(out, str):
            out = S.text_of(out, f"{where}.output") if isinstance(out, list) else json.dumps(out)
        return [{"role": "tool", "tool_call_id": str(item.get("call_id") or ""),
                 "content": out}]
    if t == "reasoning":
        return []
    raise P.bad(f"{where}.type", f"input items of type {t!r} are not supported")


def _tools(tools: Any) -> list[dict]:
    if not isinstance(tools, list):
        raise P.bad("tools", "tools must be an array")
    out = []
    for i, t in enumerate(tools):
        if not isinstance(t, dict) or t.get("type") != "function":
            raise P.bad(f"tools[{i}]", "only function tools are supported")
        fn = {k: t[k] for k in ("name", "description", "parameters", "strict") if k in t}
        out.append({"type": "function", "function": fn})
    return out


# ---- the answer ---------------------------------------------------------------------------
def _base(rid: str, body: dict, model: str, created: int) -> dict:
    return {"id": rid, "object": "response", "created_at": created, "model": model,
            "status": "in_progress", "error": None, "incomplete_details": None,
            "instructions": body.get("instructions"),
            "max_output_tokens": body.get("max_output_tokens"),
            "temperature": body.get("temperature", 1.0), "top_p": body.get("top_p", 1.0),
            "tools": body.get("tools") or [], "tool_choice": body.get("tool_choice", "auto"),
            "parallel_tool_calls": body.get("parallel_tool_calls", True),
            "text": body.get("text") or {"format": {"type": "text"}},
            "metadata": body.get("metadata") or {}, "output": [], "usage": None,
            "store": False}


def _usage(u: dict | None) -> dict | None:
    if not u:
        return None
    return {"input_tokens": u["prompt_tokens"], "output_tokens": u["completion_tokens"],
            "total_tokens": u["total_tokens"],
            "input_tokens_details": {"cached_tokens":
                                     u.get("prompt_tokens_details", {}).get("cached_tokens", 0)},
            "output_tokens_details": {"reasoning_tokens": 0}}


def _finish(resp: dict, finish: str | None, usage: dict | None) -> dict:
    resp["status"] = "incomplete" if finish == "length" else "completed"
    if finish == "length":
        resp["incomplete_details"] = {"reason": "max_output_tokens"}
    resp["usage"] = _usage(usage)
    return resp


def _message(mid: str, text: str, status: str = "completed") -> dict:
    return {"type": "message", "id": mid, "status": status, "role": "assistant",
            "content": [{"type": "output_text", "text": text, "annotations": []}]}


def _reasoning(rid: str, text: str, status: str = "completed") -> dict:
    return {"type": "reasoning", "id": rid, "summary": [], "status": status,
            "content": [{"type": "reasoning_text", "text": text}]}


def _call(c: dict, status: str = "completed") -> dict:
    return {"type": "function_call", "id": "fc_" + c["id"].removeprefix("call_"),
            "call_id": c["id"], "name": c["function"]["name"],
            "arguments": c["function"]["arguments"], "status": status}


def from_chat(out: dict, body: dict, model: str) -> dict:
    """A chat completion -> a Response."""
    ch = out["choices"][0]
    resp = _base(P.new_id("resp"), body, model, out["created"])
    msg = ch["message"]
    if msg.get("reasoning_content"):
        resp["output"].append(_reasoning(P.new_id("rs"), msg["reasoning_content"]))
    if msg.get("content"):
        resp["output"].append(_message(P.new_id("msg"), msg["content"]))
    for c in msg.get("tool_calls") or []:
        resp["output"].append(_call(c))
    return _finish(resp, ch["finish_reason"], out.get("usage"))


async def stream(chunks: AsyncIterator[bytes], body: dict, model: str
                 ) -> AsyncIterator[bytes]:
    """The chat stream's chunks -> the Responses stream's events."""
    seq = 0
    resp = _base(P.new_id("resp"), body, model, int(time.time()))

    def ev(kind: str, **data: Any) -> bytes:
        nonlocal seq
        data = {"type": kind, "sequence_number": seq, **data}
        seq += 1
        return f"event: {kind}\ndata: {json.dumps(data)}\n\n".encode()

    yield ev("response.created", response=dict(resp))
    yield ev("response.in_progress", response=dict(resp))
    mid, text, opened = P.new_id("msg"), "", False
    thinking: dict | None = None  # the reasoning item being written
    finish, usage = None, None
    async for data in P.chat_chunks(chunks):
        if "error" in data:
            resp["status"], resp["error"] = "failed", {"code": "server_error",
                                                       "message": data["error"]["message"]}
            yield ev("response.failed", response=resp)
            return
        usage = data.get("usage") or usage
        for ch in data.get("choices", []):
            d = ch.get("delta", {})
            if d.get("reasoning_content"):
                if thinking is None:
                    thinking = _reasoning(P.new_id("rs"), "", "in_progress")
                    yield ev("response.output_item.added", output_index=len(resp["output"]),
                             item=dict(thinking, content=[]))
                thinking["content"][0]["text"] += d["reasoning_content"]
                yield ev("response.reasoning_text.delta", item_id=thinking["id"],
                         output_index=len(resp["output"]), content_index=0,
                         delta=d["reasoning_content"])
            if (d.get("content") or d.get("tool_calls")) and thinking is not None:
                for b in _close_reasoning(ev, resp, thinking):
                    yield b
                thinking = None
            if d.get("content"):
                if not opened:
                    opened = True
                    yield ev("response.output_item.added", output_index=len(resp["output"]),
                             item=_message(mid, "", "in_progress") | {"content": []})
                    yield ev("response.content_part.added", item_id=mid,
                             output_index=len(resp["output"]), content_index=0,
                             part={"type": "output_text", "text": "", "annotations": []})
                text += d["content"]
                yield ev("response.output_text.delta", item_id=mid,
                         output_index=len(resp["output"]), content_index=0, delta=d["content"])
            for c in d.get("tool_calls") or []:
                if opened:
                    for b in from_close(ev, resp, mid, text):
                        yield b
                    opened = False
                item = _call(c)
                idx = len(resp["output"])
                yield ev("response.output_item.added", output_index=idx,
                         item=item | {"arguments": "", "status": "in_progress"})
                yield ev("response.function_call_arguments.delta", item_id=item["id"],
                         output_index=idx, delta=item["arguments"])
                yield ev("response.function_call_arguments.done", item_id=item["id"],
                         output_index=idx, arguments=item["arguments"])
                yield ev("response.output_item.done", output_index=idx, item=item)
                resp["output"].append(item)
            finish = ch.get("finish_reason") or finish
    if thinking is not None:
        for b in _close_reasoning(ev, resp, thinking):
            yield b
    if opened:
        for b in from_close(ev, resp, mid, text):
            yield b
    yield ev("response.completed", response=_finish(resp, finish, usage))


def from_close(ev: Any, resp: dict, mid: str, text: str) -> list[bytes]:
    """The events that close the message item being written."""
    idx = len(resp["output"])
    item = _message(mid, text)
    resp["output"].append(item)
    return [ev("response.output_text.done", item_id=mid, output_index=idx, content_index=0,
               text=text),
            ev("response.content_part.done", item_id=mid, output_index=idx, content_index=0,
               part=item["content"][0]),
            ev("response.output_item.done", output_index=idx, item=item)]


def _close_reasoning(ev: Any, resp: dict, item: dict) -> list[bytes]:
    """The events that close the reasoning item being written."""
    idx = len(resp["output"])
    item["status"] = "completed"
    resp["output"].append(item)
    return [ev("response.reasoning_text.done", item_id=item["id"], output_index=idx,
               content_index=0, text=item["content"][0]["text"]),
            ev("response.output_item.done", output_index=idx, item=item)]
