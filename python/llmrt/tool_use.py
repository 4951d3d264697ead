"""A chat request with tools: what it renders and the grammar it runs
with (plan), its reply parsed as it streams (ToolParser) and when it ends
(attach). The tools, their formats and grammars are in tools.py."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from .tools import Format, Generic, Llama3, ToolCall, ToolError, Tools, detect, grammar, messages_for

if TYPE_CHECKING:
    from .tokenizer import Tokenizer


class ToolParser:
    """A reply's tokens in, as they come: the text that is surely not part
    of a call (held back while it may begin one), then the calls at the end."""

    def __init__(self, fmt: Format, tok: "Tokenizer"):
        self.fmt, self._dec = fmt, tok.decoder(skip_special=False, sequence_start=True)
        self.text = ""
        self.sent = 0
        self.in_call = False

    def add(self, ids: Sequence[int]) -> str:
        """New tokens -> the content that may be shown now."""
        self.text += self._dec.add_many(ids)
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
        return None if isinstance(self.fmt, Generic) else self.tools.openai()


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
        rf = {"type": "grammar", "grammar": grammar(fmt, t, tok)}
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
        p.response_format = dict(p.response_format, grammar=grammar(p.fmt, p.tools, tok,
                                                                    relax=True))
        try:
            grammars.compile(p.response_format)
        except ValueError as e2:
            raise ToolError(f"tools: a parameters schema is invalid or unsupported: {e2}") \
                from None


def attach(res: Any, fmt: Format, tok: "Tokenizer") -> Any:
    """A finished result with the calls it made: text without them,
    tool_calls, finish_reason "tool_calls"."""
    text = tok.decode(res.token_ids, skip_special=False)
    content, calls = fmt.parse(text)
    if calls:
        res.text, res.tool_calls, res.finish_reason = content, calls, "tool_calls"
    return res


class ToolStream:
    """chat(stream=True, tools=...): the reply's text pieces without the
    calls; ``result`` has them as tool_calls."""

    def __init__(self, stream: Any, fmt: Format, tok: "Tokenizer"):
        self._s, self._fmt, self._tok = stream, fmt, tok
        self._parser = ToolParser(fmt, tok)
        self._seen = 0
        self._ended = False

    def __iter__(self) -> "ToolStream":
        return self

    def __next__(self) -> str:
        while True:
            try:
                next(self._s)
            except StopIteration:
                if not self._ended:
                    self._ended = True
                    rest, _ = self._parser.finish()
                    if rest:
                        return rest
                raise
            ids = self._s._job.tasks[0].results()[0].token_ids
            out = self._parser.add(ids[self._seen:])
            self._seen = len(ids)
            if out:
                return out

    @property
    def result(self) -> Any:
        return attach(self._s.result, self._fmt, self._tok)

    def close(self) -> None:
        self._s.close()

    def __enter__(self) -> "ToolStream":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()
