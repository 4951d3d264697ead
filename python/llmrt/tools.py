"""Tool (function) calling: the tools rendered through the model's chat
template, the calls it writes parsed in its family's format, and the
grammar that enforces them.

Formats, chosen from the chat template:

    hermes    <tool_call>\\n{"name": ..., "arguments": {...}}\\n</tool_call>  (Qwen 2.5 / 3,
              Hermes, SmolLM3 and most templates that take tools)
    llama3    {"name": ..., "parameters": {...}}, after <|python_tag|> or alone (Llama 3.1-3.3)
    mistral   [TOOL_CALLS][{"name": ..., "arguments": {...}}, ...]
    harmony   gpt-oss: a commentary message to functions.NAME whose body is the
              arguments (<|channel|>commentary to=functions.NAME <|constrain|>json
              <|message|>{...}<|call|>); one call a turn (<|call|> ends it)
    generic   a template without tools: the tools are described in a system
              message that asks for the hermes format

``tool_choice``: "auto" (the model chooses; from the moment it starts a
call, the call is held to the tools' schemas: a grammar that wakes at the
format's trigger), "none" (no calls parsed), "required" (at least one call,
by grammar from the first token) or {"type": "function", "function":
{"name": ...}} (that call). ``parallel_tool_calls=False`` allows one call.
A tool's ``parameters`` schema is enforced on its arguments (an object
with listed properties takes no others unless it says so); a schema the
grammar engine cannot compile is an error for a ``strict`` tool and
relaxed to any object otherwise.
"""

from __future__ import annotations

import json
import re
import uuid
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from .reasoning import CHANNEL, CONSTRAIN, END, MESSAGE, START, HarmonySplitter, join

if TYPE_CHECKING:
    from .tokenizer import Tokenizer

NAME = re.compile(r"^[A-Za-z0-9_.\-]{1,64}$")
# JSON laid out as the templates write it (", " and ": ", no other whitespace)
LAYOUT = {"whitespace_flexible": False, "item_separator": ", ", "key_separator": ": "}


class ToolError(ValueError):
    """A malformed tools / tool_choice argument (its message names the field)."""


@dataclass
class ToolCall:
    """One call the model made: arguments as JSON text (OpenAI's shape)."""
    name: str
    arguments: str
    id: str = ""

    def __post_init__(self) -> None:
        if not self.id:
            self.id = "call_" + uuid.uuid4().hex[:24]

    def to_openai(self) -> dict:
        return {"id": self.id, "type": "function",
                "function": {"name": self.name, "arguments": self.arguments}}


@dataclass
class Tool:
    name: str
    description: str
    parameters: dict
    strict: bool

    def openai(self) -> dict:
        fn: dict[str, Any] = {"name": self.name, "parameters": self.parameters}
        if self.description:
            fn["description"] = self.description
        return {"type": "function", "function": fn}


class Tools:
    """A request's tools and tool_choice, checked."""

    def __init__(self, tools: Any, tool_choice: Any = None, parallel_tool_calls: Any = True):
        if not isinstance(tools, list) or not tools:
            raise ToolError("tools: must be a non-empty array of {\"type\": \"function\", "
                            "\"function\": {\"name\", \"parameters\"}}")
        self.tools: list[Tool] = []
        for i, t in enumerate(tools):
            fn = t.get("function") if isinstance(t, dict) and t.get("type", "function") == \
                "function" else None
            if not isinstance(fn, dict):
                raise ToolError(f"tools[{i}]: a tool is {{\"type\": \"function\", \"function\": "
                                f"{{...}}}}")
            name = fn.get("name")
            if not isinstance(name, str) or not NAME.match(name):
                raise ToolError(f"tools[{i}].function.name: 1-64 letters, digits, '_', '.' "
                                f"or '-', got {name!r}")
            if any(x.name == name for x in self.tools):
                raise ToolError(f"tools[{i}].function.name: {name!r} is given twice")
            params = fn.get("parameters", {"type": "object", "properties": {}})
            if not isinstance(params, dict):
                raise ToolError(f"tools[{i}].function.parameters: must be a JSON Schema object")
            desc = fn.get("description", "")
            if not isinstance(desc, str):
                raise ToolError(f"tools[{i}].function.description: must be a string")
            strict = fn.get("strict", False)
            if not isinstance(strict, bool) and strict is not None:
                raise ToolError(f"tools[{i}].function.strict: must be true or false")
            self.tools.append(Tool(name, desc, params, bool(strict)))
        if tool_choice is None:
            tool_choice = "auto"
        if isinstance(tool_choice, dict):
            fn = tool_choice.get("function")
            name = fn.get("name") if isinstance(fn, dict) else tool_choice.get("name")
            if tool_choice.get("type") != "function" or not isinstance(name, str):
                raise ToolError("tool_choice: \"auto\", \"none\", \"required\" or {\"type\": "
                                "\"function\", \"function\": {\"name\": ...}}")
            if not any(t.name == name for t in self.tools):
                raise ToolError(f"tool_choice: no tool is named {name!r}")
            self.choice, self.forced = "named", name  # type: str, str | None
        elif tool_choice in ("auto", "none", "required"):
            self.choice, self.forced = tool_choice, None
        else:
            raise ToolError("tool_choice: \"auto\", \"none\", \"required\" or {\"type\": "
                            "\"function\", \"function\": {\"name\": ...}}")
        if not isinstance(parallel_tool_calls, bool):
            raise ToolError("parallel_tool_calls: must be true or false")
        self.parallel = parallel_tool_calls and self.choice != "named"

    def callable(self) -> list[Tool]:
        return [t for t in self.tools if self.forced in (None, t.name)]

    def openai(self) -> list[dict]:
        return [t.openai() for t in self.tools]


# ---- formats --------------------------------------------------------------------------
class Format:
    """How one model family writes calls."""
    name = ""
    trigger = ""           # the text that begins a call (auto: the grammar wakes here)
    name_key = "arguments"

    def call_object(self, tool: Tool, args: str) -> str:
        """Lark for one call's JSON object, given the arguments' grammar."""
        return (f'"{{\\"name\\": \\"{tool.name}\\", \\"{self.name_key}\\": " {args} "}}"')

    def calls(self, objs: str, parallel: bool, lit: Any) -> str:
        """Lark for the calls from the trigger on."""
        raise NotImplementedError

    def parse(self, text: str) -> tuple[str, list[ToolCall]]:
        """(the text apart from the calls, the calls) of a finished reply."""
        raise NotImplementedError

    def from_start(self, calls: str) -> str:
        """Lark for a reply that must call from its first token, given the
        calls' (those after the trigger)."""
        return calls


class Hermes(Format):
    name, trigger = "hermes", "<tool_call>"

    def calls(self, objs: str, parallel: bool, lit: Any) -> str:
        call = f'{lit("<tool_call>")} "\\n" ({objs}) "\\n" {lit("</tool_call>")}'
        return f'{call} ("\\n" {call})*' if parallel else call

    def parse(self, text: str) -> tuple[str, list[ToolCall]]:
        calls, rest = [], []
        pos = 0
        for m in re.finditer(r"<tool_call>\s*(.*?)\s*(?:</tool_call>|$)", text, re.S):
            c = _call_of(m.group(1))
            if c is None:
                continue
            rest.append(text[pos:m.start()])
            pos = m.end()
            calls.append(c)
        rest.append(text[pos:])
        return "".join(rest).strip() if calls else text, calls


class Llama3(Format):
    name, trigger, name_key = "llama3", "<|python_tag|>", "parameters"

    def calls(self, objs: str, parallel: bool, lit: Any) -> str:
        return f'{lit("<|python_tag|>")}? ({objs})' + (f' ("; " ({objs}))*' if parallel else "")

    def parse(self, text: str) -> tuple[str, list[ToolCall]]:
        body = text.split("<|python_tag|>", 1)[1] if "<|python_tag|>" in text else text
        body = body.strip()
        if not body.startswith("{"):
            return text, []
        calls = []
        for part in _json_objects(body):
            c = _call_of(part)
            if c is None:
                return text, []
            calls.append(c)
        return "", calls


class Mistral(Format):
    name, trigger = "mistral", "[TOOL_CALLS]"

    def calls(self, objs: str, parallel: bool, lit: Any) -> str:
        more = f' (", " ({objs}))*' if parallel else ""
        return f'{lit("[TOOL_CALLS]")} "[" ({objs}){more} "]"'

    def parse(self, text: str) -> tuple[str, list[ToolCall]]:
        if "[TOOL_CALLS]" not in text:
            return text, []
        before, after = text.split("[TOOL_CALLS]", 1)
        try:
            items = json.loads(after.strip())
        except ValueError:
            return text, []
        items = items if isinstance(items, list) else [items]
        calls = [_call_of(json.dumps(x)) for x in items]
        if not calls or any(c is None for c in calls):
            return text, []
        return before.strip(), [c for c in calls if c is not None]


class Harmony(Format):
    """gpt-oss's calls: the grammar wakes at the recipient (" to=functions",
    written before or after the channel) and holds the name, the header's
    rest and the arguments; from the first token (tool_choice "required"
    or named) an analysis message may come first."""
    name, trigger = "harmony", " to=functions"

    def call_object(self, tool: Tool, args: str) -> str:
        return f'{json.dumps(tool.name)} header {args}'

    def calls(self, objs: str, parallel: bool, lit: Any) -> str:
        return (f'" to=functions." ({objs})\n'
                f'header: ({lit(CHANNEL)} "commentary")? ctype? {lit(MESSAGE)}\n'
                f'ctype: " " {lit(CONSTRAIN)}? "json" | {lit(CONSTRAIN)} "json"\n'
                f'before: (analysis ({lit(START)} "assistant")?)? ({lit(CHANNEL)} "commentary")?\n'
                f'analysis: {lit(CHANNEL)} "analysis" {lit(MESSAGE)} /(.|\\n)*/ {lit(END)}')

    def from_start(self, calls: str) -> str:
        return "before " + calls

    def parse(self, text: str) -> tuple[str, list[ToolCall]]:
        h = HarmonySplitter()
        pieces = h.feed(text) + h.end()
        return join(pieces, "content"), [ToolCall(n, a) for n, a in h.calls]


class Generic(Hermes):
    """A template that knows no tools: described in a system message."""
    name = "generic"


def detect(template: str | None) -> Format:
    t = template or ""
    if CHANNEL in t and MESSAGE in t:
        return Harmony()
    if "[TOOL_CALLS]" in t:
        return Mistral()
    if "<tool_call>" in t:
        return Hermes()
    if "<|python_tag|>" in t or ("<|start_header_id|>" in t and "tools" in t):
        return Llama3()
    if "tools" in t:
        return Hermes()
    return Generic()


def system_prompt(tools: Tools) -> str:
    """The tools described for a template that has no place for them."""
    lines = ["You can call these functions. Each is described as a JSON Schema:", "<tools>"]
    lines += [json.dumps(t.openai()["function"]) for t in tools.tools]
    lines += ["</tools>",
              "To call a function, reply with a JSON object of its name and arguments "
              "inside <tool_call></tool_call> tags, one tag per call:",
              '<tool_call>\n{"name": <function-name>, "arguments": <args-json-object>}\n'
              "</tool_call>"]
    return "\n".join(lines)


def messages_for(fmt: Format, messages: Sequence[dict], tools: Tools | None) -> list[dict]:
    """The messages a template renders. For the generic format the tools
    go into the system message, and calls and tool results in history
    become text the model can read."""
    messages = [_with_object_arguments(m) for m in messages]
    if not isinstance(fmt, Generic):
        return messages
    out = []
    for m in messages:
        m = dict(m)
        if m.get("tool_calls"):
            calls = "\n".join(
                "<tool_call>\n" + json.dumps({"name": c["function"]["name"],
                                              "arguments": c["function"]["arguments"]}) +
                "\n</tool_call>" for c in m["tool_calls"])
            m["content"] = ((m.get("content") or "") + "\n" + calls).strip()
            del m["tool_calls"]
        if m.get("role") == "tool":
            m = {"role": "user", "content": f"<tool_response>\n{m.get('content', '')}\n"
                                            f"</tool_response>"}
        out.append(m)
    if tools is not None and tools.choice != "none":
        sp = system_prompt(tools)
        if out and out[0].get("role") == "system":
            out[0] = {**out[0], "content": out[0]["content"] + "\n\n" + sp}
        else:
            out.insert(0, {"role": "system", "content": sp})
    return out


def _with_object_arguments(m: Any) -> Any:
    """An assistant turn's tool calls with JSON-text arguments parsed (the
    templates write them with tojson)."""
    calls = m.get("tool_calls") if isinstance(m, dict) else None
    if not calls or not isinstance(calls, list):
        return m
    fixed = []
    for c in calls:
        fn = c.get("function") if isinstance(c, dict) else None
        if isinstance(fn, dict) and isinstance(fn.get("arguments"), str):
            try:
                args = json.loads(fn["arguments"] or "{}")
            except ValueError:
                raise ToolError(f"tool_calls: the arguments of {fn.get('name')!r} are not "
                                f"JSON") from None
            c = {**c, "function": {**fn, "arguments": args}}
        fixed.append(c)
    return {**m, "tool_calls": fixed}


def _call_of(text: str) -> ToolCall | None:
    try:
        obj = json.loads(text)
    except ValueError:
        return None
    if not isinstance(obj, dict) or not isinstance(obj.get("name"), str):
        return None
    args = obj.get("arguments", obj.get("parameters", {}))
    if isinstance(args, str):
        try:
            args = json.loads(args)
        except ValueError:
            return None
    if not isinstance(args, dict):
        return None
    return ToolCall(obj["name"], json.dumps(args, ensure_ascii=False))


def _json_objects(text: str) -> Iterator[str]:
    """The top-level JSON objects of text (separated by ';', ',' or space)."""
    dec = json.JSONDecoder()
    i = 0
    while i < len(text):
        while i < len(text) and text[i] in " \n\t;,":
            i += 1
        if i >= len(text):
            return
        try:
            _, end = dec.raw_decode(text, i)
        except ValueError:
            yield text[i:]
            return
        yield text[i:end]
        i = end


# ---- the grammar ------------------------------------------------------------------------
def grammar(fmt: Format, tools: Tools, tok: "Tokenizer", relax: bool = False,
            lazy: bool = True) -> str:
    """Lark (llguidance) for the calls from the format's trigger on (lazy),
    or from the reply's first token."""
    objs = []
    for t in tools.callable():
        schema = {"type": "object"} if relax and not t.strict else _closed(t.parameters)
        schema = {**schema, "x-guidance": LAYOUT}
        objs.append(fmt.call_object(t, "%json " + json.dumps(schema)))
    calls = fmt.calls(" | ".join(objs), tools.parallel, _literal(tok))
    return "start: " + (calls if lazy else fmt.from_start(calls))


def _closed(node: Any) -> Any:
    """A schema whose objects with listed properties take no others unless
    it says so (additionalProperties: false where absent), as llama.cpp's
    and xgrammar's tool grammars read a schema: else a model may pad the
    arguments with keys no function takes until max_tokens."""
    from .structured import map_schema

    def close(s: dict) -> dict:
        if "properties" in s and "additionalProperties" not in s and "patternProperties" not in s:
            return dict(s, additionalProperties=False)
        return s
    return map_schema(node, close)


def _literal(tok: "Tokenizer") -> Any:
    """Lark for a literal text: a special token's id where the text is one
    (the grammar engine sees special tokens apart from text)."""
    def lit(text: str) -> str:
        i = tok.special_token_id(text)
        return f"<[{i}]>" if i is not None else json.dumps(text)
    return lit
