"""The request schema: every field of a request body checked for type and
range (and the body for depth and valid Unicode) before anything reaches
the engine, each failure a 400 naming its field.

``FIELDS`` is the one table of sampling fields: the API's name, the
SamplingParams field it sets, and its check. Endpoints add their own
fields (messages, prompt, tools, ...) and say which of these they take.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from typing import Any, Callable

from ..sampling import SamplingParams
from . import images as I
from .protocol import APIError, bad

MAX_DEPTH = 64            # nesting of a request body (a JSON Schema inside it included)
INT32 = 2**31 - 1
MAX_N = 16
MAX_STOP = 4
MAX_STOP_CHARS = 512
MAX_LOGIT_BIAS = 1024

Check = Callable[[str, Any], Any]


def check_body(body: Any) -> None:
    """Nesting at most MAX_DEPTH deep, and every string (keys too) valid
    Unicode: JSON allows a lone surrogate escape ("\\ud800"), which no
    tokenizer can encode."""
    stack: list[tuple[Any, int, str]] = [(body, 0, "")]
    while stack:
        v, depth, path = stack.pop()
        if depth > MAX_DEPTH:
            raise APIError(400, f"the request body nests deeper than {MAX_DEPTH} levels",
                           param=path.split(".")[0].split("[")[0] or None)
        if isinstance(v, str):
            _unicode(v, path)
        elif isinstance(v, dict):
            for k, x in v.items():
                _unicode(k, path)
                stack.append((x, depth + 1, f"{path}.{k}" if path else k))
        elif isinstance(v, list):
            for i, x in enumerate(v):
                stack.append((x, depth + 1, f"{path}[{i}]"))


def _unicode(s: str, path: str) -> None:
    try:
        s.encode("utf-8")
    except UnicodeEncodeError:
        raise bad(path or None, "text must be valid Unicode (an unpaired surrogate such as "
                                "\\ud800 is not)") from None


# ---- checks: each takes (the field's name, its value) and returns the value to use ----
def integer(lo: int, hi: int) -> Check:
    def check(name: str, v: Any) -> int:
        if not isinstance(v, int) or isinstance(v, bool) or not lo <= v <= hi:
            raise bad(name, f"{name} must be an integer in [{lo}, {hi}], got {_show(v)}")
        return v
    return check


def number(lo: float | None = None, hi: float | None = None, lo_open: bool = False) -> Check:
    def check(name: str, v: Any) -> float:
        ok = isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) and \
            (lo is None or (v > lo if lo_open else v >= lo)) and (hi is None or v <= hi)
        if not ok:
            rng = f"{'(' if lo_open else '['}{lo if lo is not None else '-inf'}, " \
                  f"{hi if hi is not None else 'inf'}]"
            raise bad(name, f"{name} must be a number in {rng}, got {_show(v)}")
        return float(v)
    return check


def boolean(name: str, v: Any) -> bool:
    if not isinstance(v, bool):
        raise bad(name, f"{name} must be true or false, got {_show(v)}")
    return v


def string(name: str, v: Any) -> str:
    if not isinstance(v, str):
        raise bad(name, f"{name} must be a string, got {_show(v)}")
    return v


def obj(name: str, v: Any) -> dict:
    if not isinstance(v, dict):
        raise bad(name, f"{name} must be an object, got {_show(v)}")
    return v


def stop(name: str, v: Any) -> list[str]:
    items = [v] if isinstance(v, str) else v
    if not isinstance(items, list) or len(items) > MAX_STOP or not all(
            isinstance(s, str) and 0 < len(s) <= MAX_STOP_CHARS for s in items):
        raise bad(name, f"{name} must be a string or an array of at most {MAX_STOP} non-empty "
                        f"strings of at most {MAX_STOP_CHARS} characters")
    return items


def logit_bias(name: str, v: Any) -> dict[int, float]:
    if not isinstance(v, dict) or len(v) > MAX_LOGIT_BIAS:
        raise bad(name, f"{name} must be an object of at most {MAX_LOGIT_BIAS} token id -> "
                        f"bias entries")
    out = {}
    for k, b in v.items():
        s = str(k).strip()
        if not (s.isascii() and s.isdigit()) or len(s) > 10 or int(s) > INT32:
            raise bad(name, f"{name} keys must be token ids (integers in [0, {INT32}]), "
                            f"got {_show(k)}")
        if not isinstance(b, (int, float)) or isinstance(b, bool) or not math.isfinite(b) or \
                abs(b) > 100:
            raise bad(name, f"{name} values must be numbers in [-100, 100], got {_show(b)}")
        out[int(s)] = float(b)
    return out


def top_k(name: str, v: Any) -> int:
    k = integer(-1, INT32)(name, v)
    return 0 if k == -1 else k  # vLLM's -1: off


# API name -> (SamplingParams field, check)
FIELDS: dict[str, tuple[str, Check]] = {
    "max_tokens": ("max_new_tokens", integer(0, INT32)),
    "max_completion_tokens": ("max_new_tokens", integer(0, INT32)),
    "temperature": ("temperature", number(0, 100)),
    "top_p": ("top_p", number(0, 1, lo_open=True)),
    "n": ("n", integer(1, MAX_N)),
    "stop": ("stop", stop),
    "seed": ("seed", integer(-2**63, 2**64 - 1)),
    "presence_penalty": ("presence_penalty", number(-2, 2)),
    "frequency_penalty": ("frequency_penalty", number(-2, 2)),
    "logit_bias": ("logit_bias", logit_bias),
    "top_k": ("top_k", top_k),
    "min_p": ("min_p", number(0, 1)),
    "typical_p": ("typical_p", number(0, 1, lo_open=True)),
    "repetition_penalty": ("repetition_penalty", number(0, 100, lo_open=True)),
    "min_tokens": ("min_new_tokens", integer(0, INT32)),
    "ignore_eos": ("ignore_eos", boolean),
    "response_format": ("response_format", obj),
}
# the API's name of a SamplingParams field, where they differ
API_NAME = {"max_new_tokens": "max_tokens", "min_new_tokens": "min_tokens"}


def sampling_kwargs(body: dict) -> tuple[dict[str, Any], set[str]]:
    """The SamplingParams keywords a body sets (checked) and the API names
    it gave them under."""
    kw: dict[str, Any] = {}
    given: set[str] = set()
    for name, (target, check) in FIELDS.items():
        v = body.get(name)
        if v is None:
            continue
        if target in kw:
            raise bad(name, "give max_tokens or max_completion_tokens, not both")
        kw[target] = check(name, v)
        given.add(name)
    if kw.get("min_new_tokens", 0) > kw.get("max_new_tokens", INT32):
        raise bad("min_tokens", "min_tokens must not exceed max_tokens")
    return kw, given


def unknown_fields(body: dict, known: set[str], sampling: bool = True) -> None:
    for k in body:
        if k not in known and not (sampling and k in FIELDS):
            raise bad(k, f"unrecognized request argument: {k}")


def _show(v: Any) -> str:
    r = repr(v)
    return r if len(r) <= 40 else r[:37] + "..."


# ---- completions and chat ----------------------------------------------------------------
COMMON = {"model", "user", "stream", "stream_options", "n", "best_of", "service_tier", "store",
          "metadata"}
CHAT_ONLY = {"messages", "logprobs", "top_logprobs", "tools", "tool_choice",
             "parallel_tool_calls", "modalities", "reasoning_effort", "functions",
             "function_call", "add_generation_prompt", "chat_template_kwargs"}
COMPLETION_ONLY = {"prompt", "logprobs", "echo", "suffix", "add_special", "prompt_logprobs"}


@dataclass
class ParsedRequest:
    """A completions or chat request, checked."""
    params: SamplingParams
    stream: bool = False
    include_usage: bool = False
    logprobs: int | None = None        # top-n alternatives (None: no logprobs)
    max_tokens_given: bool = False     # the client chose max_tokens (else the server's default)
    echo: bool = False                 # completions: the prompt's text (and logprobs) first
    prompt_logprobs: int | None = None  # vLLM's: the prompt tokens' logprobs (top-n)


def parse_params(body: dict, *, chat: bool, default_max_tokens: int) -> ParsedRequest:
    body = as_object(body)
    unknown_fields(body, COMMON | (CHAT_ONLY if chat else COMPLETION_ONLY))
    kw, given = sampling_kwargs(body)
    max_given = "max_new_tokens" in kw
    if not max_given:
        kw["max_new_tokens"] = default_max_tokens if chat else 16
    if "temperature" not in kw:
        kw["temperature"] = 1.0  # OpenAI's default
    logprobs: int | None = None
    if chat:
        lp, top = body.get("logprobs"), body.get("top_logprobs")
        if lp is not None:
            boolean("logprobs", lp)
        if top is not None:
            integer(0, 20)("top_logprobs", top)
            if not lp:
                raise bad("top_logprobs", "top_logprobs needs logprobs: true")
        if lp:
            logprobs = top or 0
    else:
        lp = body.get("logprobs")
        if lp is not None:
            logprobs = integer(0, 20)("logprobs", lp)
    if logprobs is not None:
        kw["logprobs"] = logprobs
    stream = boolean("stream", body.get("stream", False))
    opts = body.get("stream_options")
    include_usage = False
    if opts is not None:
        if not isinstance(opts, dict) or not stream:
            raise bad("stream_options", "stream_options is an object, with stream: true")
        include_usage = boolean("stream_options.include_usage",
                                opts.get("include_usage", False))
    echo = boolean("echo", body.get("echo", False)) if not chat else False
    plp = body.get("prompt_logprobs")
    prompt_lp = integer(0, 20)("prompt_logprobs", plp) if plp is not None and not chat else None
    if body.get("suffix"):
        raise bad("suffix", "suffix (fill-in-the-middle) is not supported")
    if body.get("add_special") is not None:
        boolean("add_special", body["add_special"])
    bo = body.get("best_of")
    if bo is not None and bo != kw.get("n", 1):
        raise bad("best_of", "best_of is not supported")
    if body.get("model") is not None:
        string("model", body["model"])
    if body.get("user") is not None:
        string("user", body["user"])
    try:
        params = SamplingParams(**kw)
    except ValueError as e:
        msg = str(e)
        field_ = msg.split(" ", 1)[0].rstrip(":")
        name = API_NAME.get(field_, field_)
        raise bad(name, msg.replace(field_, name, 1)) from None
    return ParsedRequest(params=params, stream=stream, include_usage=include_usage, logprobs=logprobs,
                   max_tokens_given=max_given, echo=echo, prompt_logprobs=prompt_lp)


def as_object(body: Any) -> dict:
    if not isinstance(body, dict):
        raise APIError(400, "the request body must be a JSON object")
    return body


def prompts_of(body: dict) -> list:
    """The completions prompt: a string, token ids, or a list of either."""
    p = body.get("prompt")
    if isinstance(p, str):
        return [p]
    if isinstance(p, list) and p:
        if all(_token_id(x) for x in p):
            return [p]
        if all(isinstance(x, str) for x in p):
            return list(p)
        if all(isinstance(x, list) and x and all(_token_id(y) for y in x) for x in p):
            return list(p)
    raise bad("prompt", "prompt must be a string, an array of token ids, or an array of them")


def _token_id(x: Any) -> bool:
    return isinstance(x, int) and not isinstance(x, bool) and 0 <= x <= INT32


ROLES = ("system", "developer", "user", "assistant", "tool")


def messages_of(body: dict) -> list[dict]:
    """The chat messages as the chat template sees them: role and content
    (text parts joined; a user's content with images its parts, the images
    as images.ImageRef, loaded later); an assistant's tool_calls with their
    arguments as objects (as templates write them); a tool result's
    tool_call_id."""
    msgs = body.get("messages")
    if not isinstance(msgs, list) or not msgs:
        raise bad("messages", "messages must be a non-empty array")
    out = []
    for i, m in enumerate(msgs):
        where = f"messages[{i}]"
        if not isinstance(m, dict) or m.get("role") not in ROLES:
            raise bad(where, f"each message is an object with a role ({', '.join(ROLES)})")
        content = content_of(m.get("content"), f"{where}.content")
        if isinstance(content, list) and m["role"] != "user":
            raise bad(f"{where}.content", "images go in user messages")
        msg: dict[str, Any] = {"role": m["role"], "content": content}
        if m["role"] == "developer":
            msg["role"] = "system"
        if isinstance(m.get("name"), str):
            msg["name"] = m["name"]
        reasoning = m.get("reasoning_content", m.get("reasoning"))
        if reasoning is not None and m["role"] == "assistant":  # reaches the template
            msg["reasoning_content"] = string(f"{where}.reasoning_content", reasoning)
        calls = m.get("tool_calls")
        if calls is not None and m["role"] == "assistant":
            msg["tool_calls"] = tool_calls_of(calls, f"{where}.tool_calls")
            if not content:
                msg["content"] = ""
        if m["role"] == "tool":
            tid = m.get("tool_call_id")
            if tid is not None:
                msg["tool_call_id"] = string(f"{where}.tool_call_id", tid)
        out.append(msg)
    return out


def text_of(content: Any, where: str) -> str:
    """A message's content: a string, text parts (joined), or null."""
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        texts = []
        for part in content:
            if not isinstance(part, dict) or part.get("type") not in ("text", "input_text",
                                                                       "output_text") or \
                    not isinstance(part.get("text"), str):
                raise bad(where, "only text content parts are supported")
            texts.append(part["text"])
        return "".join(texts)
    raise bad(where, "content must be a string or an array of text parts")


def content_of(content: Any, where: str) -> str | list:
    """A message's content: a string (text parts joined), or where images are
    among its parts the parts, text as {"type": "text"} and images as
    images.ImageRef (checked for form)."""
    if not isinstance(content, list):
        return text_of(content, where)
    parts = [I.part_of(p, f"{where}[{j}]") for j, p in enumerate(content)]
    if not any(isinstance(p, I.ImageRef) for p in parts):
        return "".join(p["text"] for p in parts if isinstance(p, dict))
    return parts


def tool_calls_of(calls: Any, where: str) -> list[dict]:
    """An assistant turn's tool calls (OpenAI's shape) with each call's
    arguments parsed into an object."""
    if not isinstance(calls, list):
        raise bad(where, "tool_calls must be an array")
    out = []
    for j, c in enumerate(calls):
        fn = c.get("function") if isinstance(c, dict) else None
        if not isinstance(fn, dict) or not isinstance(fn.get("name"), str):
            raise bad(f"{where}[{j}]", "a tool call is {\"id\", \"type\": \"function\", "
                                       "\"function\": {\"name\", \"arguments\"}}")
        args = fn.get("arguments", {})
        if isinstance(args, str):
            try:
                args = json.loads(args) if args.strip() else {}
            except ValueError:
                raise bad(f"{where}[{j}].function.arguments",
                          "arguments must be a JSON object (as a string)") from None
        if not isinstance(args, dict):
            raise bad(f"{where}[{j}].function.arguments", "arguments must be a JSON object")
        call = {"type": "function", "function": {"name": fn["name"], "arguments": args}}
        if isinstance(c.get("id"), str):
            call["id"] = c["id"]
        out.append(call)
    return out


def inputs_of(body: dict) -> list:
    """The embeddings input: a string, token ids, or a list of either."""
    x = body.get("input")
    if isinstance(x, str) and x:
        return [x]
    if isinstance(x, list) and x:
        if all(_token_id(v) for v in x):
            return [x]
        if all(isinstance(v, str) and v for v in x):
            return list(x)
        if all(isinstance(v, list) and v and all(_token_id(y) for y in v) for v in x):
            return list(x)
    raise bad("input", "input must be a non-empty string, token ids, or an array of them")
