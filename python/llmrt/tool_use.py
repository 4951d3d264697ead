"""A chat request with tools: what it renders and the grammar it runs
with (plan); a chat reply read as it streams (ReplyParser: reasoning apart,
calls held back, with ToolParser for the calls' text formats) and when it
ends (finish_reply). The tools, their formats and grammars are in tools.py;
the reasoning styles in reasoning.py."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from .reasoning import HarmonySplitter, Pieces, ThinkSplitter, add_piece, join, style_of
from .tools import Format, Generic, Harmony, Llama3, ToolCall, ToolError, Tools, detect, grammar, messages_for

if TYPE_CHECKING:
    from .tokenizer import Tokenizer


class ToolParser:
    """A reply's tokens (or its text) in, as they come: the text that is
    surely not part of a call (held back while it may begin one), then the
    calls at the end."""

    def __init__(self, fmt: Format, tok: "Tokenizer | None"):
        self.fmt = fmt
        self._dec = tok.decoder(skip_special=False, sequence_start=True) if tok else None
        self.text = ""
        self.sent = 0
        self.in_call = False

    def add(self, ids: Sequence[int]) -> str:
        """New tokens -> the content that may be shown now."""
        assert self._dec is not None, "a ToolParser without a tokenizer takes text (add_text)"
        return self.add_text(self._dec.add_many(ids))

    def add_text(self, text: str) -> str:
        """New text -> the content that may be shown now."""
        self.text += text
        if self.in_call:
            return ""
        trig = self.fmt.trigger
        at = self.text.find(trig, self.sent)
        if isinstance(self.fmt, Llama3) and self.text.lstrip().startswith("{"):
            at = 0
        if at >= 0:
            self.in_call = True
            out, self.sent = self.text[self.sent:at], at
            return out
        # hold back an end that may begin the trigger
        keep = 0
        for k in range(min(len(trig) - 1, len(self.text) - self.sent), 0, -1):
            if trig.startswith(self.text[-k:]):
                keep = k
                break
        if isinstance(self.fmt, Llama3) and not self.text.strip():
            keep = len(self.text) - self.sent
        out = self.text[self.sent:len(self.text) - keep]
        self.sent = len(self.text) - keep
        return out

    def finish(self) -> tuple[str, list[ToolCall]]:
        """(the content not yet shown, the calls)."""
        if self._dec is not None:
            self.text += self._dec.flush()
        content, calls = self.fmt.parse(self.text)
        if not calls:
            out, self.sent = self.text[self.sent:], len(self.text)
            return out, []
        shown = self.text[:self.sent].strip()
        return (content[len(shown):] if content.startswith(shown) else ""), calls


@dataclass
class Plan:
    """What a chat request with tools renders and generates with."""
    tools: Tools
    fmt: Format
    messages: list[dict]
    response_format: Any  # the calls' grammar (lazy for "auto"), or None

    @property
    def parses(self) -> bool:
        return self.tools.choice != "none"

    def template_tools(self) -> list[dict] | None:
        if isinstance(self.fmt, Generic):
            return None
        if isinstance(self.fmt, Harmony):  # its template writes each description
            return [{"type": "function", "function": {"description": "", **t["function"]}}
                    for t in self.tools.openai()]
        return self.tools.openai()


def plan(template: str | None, messages: Sequence[dict], tok: "Tokenizer", tools: Any,
         tool_choice: Any = None, parallel_tool_calls: Any = True,
         response_format: Any = None) -> Plan:
    """Checks a request's tools and gives what to render and the grammar."""
    t = Tools(tools, tool_choice, parallel_tool_calls)
    fmt = detect(template)
    rf = None
    if t.choice != "none":
        if response_format is not None and not (isinstance(response_format, dict) and
                                                response_format.get("type") == "text"):
            raise ToolError("response_format: give it or tools (with tool_choice other than "
                            "\"none\"), not both")
        rf = {"type": "grammar", "grammar": grammar(fmt, t, tok, lazy=t.choice == "auto")}
        if t.choice == "auto":
            rf["trigger"] = fmt.trigger
    return Plan(t, fmt, messages_for(fmt, messages, t), rf)


def compile_checked(grammars: Any, p: Plan, tok: "Tokenizer") -> None:
    """Compiles the plan's grammar; a schema the engine refuses is relaxed
    to any object for tools that are not strict (an error for strict ones)."""
    if p.response_format is None:
        return
    try:
        grammars.compile(p.response_format)
    except ValueError as e:
        if all(x.strict for x in p.tools.callable()):
            raise ToolError(f"tools: a parameters schema is invalid or unsupported: {e}") \
                from None
        p.response_format = dict(p.response_format, grammar=grammar(
            p.fmt, p.tools, tok, relax=True, lazy=p.tools.choice == "auto"))
        try:
            grammars.compile(p.response_format)
        except ValueError as e2:
            raise ToolError(f"tools: a parameters schema is invalid or unsupported: {e2}") \
                from None


def attach(res: Any, fmt: Format, tok: "Tokenizer") -> Any:
    """A finished result with the calls it made: text without them,
    tool_calls, finish_reason "tool_calls"."""
    return finish_reply(res, Reply(fmt=fmt), tok)


# ---- a chat reply: reasoning, content and calls ---------------------------------------
@dataclass
class Reply:
    """How a chat reply is read: the template's reasoning style ("harmony",
    "think" or None; ``open_``: the prompt opened the reasoning) and the
    calls' format (None: calls are not parsed)."""
    style: str | None = None
    open_: bool = False
    fmt: Format | None = None

    @property
    def active(self) -> bool:
        """Whether the reply is more than its text."""
        return self.style is not None or self.fmt is not None

    @property
    def by_ids(self) -> bool:
        """Read from its tokens with special tokens spelled (else from its text)."""
        return self.style == "harmony" or self.fmt is not None


def reply_for(template: str | None, prompt: str, p: "Plan | None") -> Reply:
    """How a chat request's reply is read, given its rendered prompt."""
    style, open_ = style_of(template, prompt)
    return Reply(style, open_, p.fmt if p is not None and p.parses else None)


class ReplyParser:
    """A reply as it streams -> (kind, text) pieces to show, kind
    "content" or "reasoning" (nothing of a call), then the rest and the
    calls at the end."""

    def __init__(self, reply: Reply, tok: "Tokenizer"):
        self.reply = reply
        self._dec = tok.decoder(skip_special=False, sequence_start=True) if reply.by_ids \
            else None
        self._seen = 0
        self._split: HarmonySplitter | ThinkSplitter | None = None
        if reply.style == "harmony":
            self._split = HarmonySplitter(calls=reply.fmt is not None)
        elif reply.style == "think":
            self._split = ThinkSplitter(reply.open_)
        self._tools = ToolParser(reply.fmt, None) \
            if reply.fmt is not None and reply.style != "harmony" else None

    def add(self, piece: str, ids: Sequence[int]) -> Pieces:
        """A text piece of the reply and its token ids so far -> what to show now."""
        if self._dec is not None:
            piece = self._dec.add_many(ids[self._seen:])
            self._seen = len(ids)
        return self._route(self._split.feed(piece) if self._split else [("content", piece)])

    def finish(self, ids: Sequence[int] = ()) -> tuple[Pieces, list[ToolCall]]:
        """(what is left to show, the calls), given the reply's token ids
        (those after the last piece are read)."""
        text = ""
        if self._dec is not None:
            text = self._dec.add_many(ids[self._seen:]) + self._dec.flush()
            self._seen = max(self._seen, len(ids))
        pieces = self._split.feed(text) + self._split.end() if self._split else \
            [("content", text)]
        out = self._route(pieces)
        calls: list[ToolCall] = []
        if self._tools is not None:
            rest, calls = self._tools.finish()
            add_piece(out, "content", rest)
        elif isinstance(self._split, HarmonySplitter) and self.reply.fmt is not None:
            calls = [ToolCall(n, a) for n, a in self._split.calls]
        return out, calls

    def _route(self, pieces: Pieces) -> Pieces:
        out: Pieces = []
        for kind, text in pieces:
            if kind == "content" and self._tools is not None:
                text = self._tools.add_text(text)
            add_piece(out, kind, text)
        return out


def _split(reply: Reply, text: str) -> tuple[str, str]:
    """(content, reasoning) of a whole reply's text in the think style."""
    if reply.style != "think":
        return text, ""
    t = ThinkSplitter(reply.open_)
    pieces = t.feed(text) + t.end()
    return join(pieces, "content"), join(pieces, "reasoning")


def finish_reply(res: Any, reply: Reply, tok: "Tokenizer") -> Any:
    """A finished chat result read as the reply says: text the content,
    ``reasoning_content`` the reasoning (None without), the calls as
    tool_calls with finish_reason "tool_calls"."""
    if not reply.active:
        return res
    calls: list[ToolCall] = []
    if reply.style == "harmony":
        h = HarmonySplitter(calls=reply.fmt is not None)
        pieces = h.feed(tok.decode(res.token_ids, skip_special=False)) + h.end()
        content, reasoning = join(pieces, "content"), join(pieces, "reasoning")
        calls = [ToolCall(n, a) for n, a in h.calls]
    else:
        content, reasoning = _split(reply, res.text)
        if reply.fmt is not None:
            c, calls = reply.fmt.parse(_split(reply, tok.decode(res.token_ids,
                                                                skip_special=False))[0])
            content = c if calls else content
    res.text, res.reasoning_content = content, reasoning or None
    if calls:
        res.tool_calls, res.finish_reason = calls, "tool_calls"
    return res


class ReplyStream:
    """chat(stream=True) of a reply with reasoning or calls: iterating gives
    the content's pieces; ``deltas()`` the (kind, text) pairs, "reasoning"
    and "content", as they come; ``result`` the whole (reasoning_content,
    tool_calls)."""

    def __init__(self, stream: Any, reply: Reply, tok: "Tokenizer"):
        self._s, self._reply, self._tok = stream, reply, tok
        self._parser = ReplyParser(reply, tok)
        self._gen = self._deltas()
        self._result: Any = None

    def _ids(self) -> list[int]:
        return self._s._job.tasks[0].results()[0].token_ids

    def _deltas(self) -> Iterator[tuple[str, str]]:
        for piece in self._s:
            yield from self._parser.add(piece, self._ids())
        yield from self._parser.finish(self._ids())[0]

    def deltas(self) -> Iterator[tuple[str, str]]:
        return self._gen

    def __iter__(self) -> "ReplyStream":
        return self

    def __next__(self) -> str:
        for kind, text in self._gen:
            if kind == "content":
                return text
        raise StopIteration

    @property
    def result(self) -> Any:
        if self._result is None:
            self._result = finish_reply(self._s.result, self._reply, self._tok)
        return self._result

    def close(self) -> None:
        self._s.close()

    def __enter__(self) -> "ReplyStream":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()
