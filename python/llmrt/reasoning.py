"""A chat reply's reasoning apart from its content, as the text streams in.

Two ways of writing a reply are read here, chosen from the chat template:

    harmony   gpt-oss's channels: messages ``<|channel|>analysis<|message|>...
              <|end|>``, ``<|start|>assistant<|channel|>final<|message|>...
              <|return|>``; a call is a commentary message to
              ``functions.NAME`` (``<|channel|>commentary to=functions.NAME
              <|constrain|>json<|message|>{...}<|call|>``, the recipient
              also before the channel). analysis is the reasoning, final and
              commentary without a recipient the content.
    think     ``<think>...</think>`` before the answer (Qwen3, DeepSeek-R1),
              where the template writes those tags; the reasoning may start
              open when the prompt ends with ``<think>``.

Each splitter takes text pieces and gives (kind, text) pieces, kind
"content" or "reasoning", never showing a marker or part of one; ``end()``
gives the rest. A reply cut off anywhere or malformed still splits: text
outside any message is content, a message on an unknown channel is content.
"""

from __future__ import annotations

import json
import re
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .tokenizer import Tokenizer

Pieces = list[tuple[str, str]]  # (kind, text): kind "content" or "reasoning"

# harmony's structural tokens, as the template and the vocabulary spell them
START, CHANNEL, MESSAGE, CONSTRAIN = "<|start|>", "<|channel|>", "<|message|>", "<|constrain|>"
END, RETURN, CALL, ENDOFTEXT = "<|end|>", "<|return|>", "<|call|>", "<|endoftext|>"
_MARKS = (START, CHANNEL, MESSAGE, CONSTRAIN, END, RETURN, CALL, ENDOFTEXT)
_RECIPIENT = re.compile(r"\bto=([^\s<]+)")
_CHANNEL = re.compile(re.escape(CHANNEL) + r"\s*([^\s<]+)")
THINK_OPEN, THINK_CLOSE = "<think>", "</think>"


def style_of(template: str | None, prompt: str = "") -> tuple[str | None, bool]:
    """(the template's reply style: "harmony", "think" or None, whether the
    prompt leaves the reasoning open)."""
    t = template or ""
    if CHANNEL in t and MESSAGE in t:
        return "harmony", False
    if THINK_CLOSE in t:
        return "think", prompt.rstrip().endswith(THINK_OPEN)
    return None, False


def is_harmony_vocab(tok: "Tokenizer") -> bool:
    """A vocabulary with harmony's markers as special tokens, whose turn
    ends at <|return|> or <|call|> (<|end|> only ends a message)."""
    return all(tok.special_token_id(t) is not None for t in (CHANNEL, MESSAGE, RETURN, CALL))


def add_piece(out: Pieces, kind: str, text: str) -> None:
    if not text:
        return
    if out and out[-1][0] == kind:
        out[-1] = (kind, out[-1][1] + text)
    else:
        out.append((kind, text))


def join(pieces: Pieces, kind: str) -> str:
    return "".join(t for k, t in pieces if k == kind)


class HarmonySplitter:
    """gpt-oss's channels, split as the text comes. With ``calls``, a
    commentary message to functions.NAME is a call ((name, arguments)
    pairs in ``calls`` once it ends: its JSON object, or as content where
    it is not one); without, its text is reasoning."""

    def __init__(self, calls: bool = True):
        self.parse_calls = calls
        self.calls: list[tuple[str, str]] = []
        self._buf = ""
        self._header = ""      # the current message's header so far
        self._in_body = False
        self._kind = "content"  # where the body goes: content, reasoning or call
        self._name = ""
        self._args = ""        # a call's body

    def feed(self, text: str) -> Pieces:
        self._buf += text
        return self._run(final=False)

    def end(self) -> Pieces:
        out = self._run(final=True)
        self._close(out)
        self._flush_header(out)
        return out

    def _run(self, final: bool) -> Pieces:
        out: Pieces = []
        while self._buf:
            i = self._buf.find("<|")
            if i < 0:
                keep = 1 if self._buf.endswith("<") and not final else 0  # "<" of "<|"?
                self._text(self._buf[:len(self._buf) - keep], out)
                self._buf = self._buf[len(self._buf) - keep:]
                break
            if i > 0:
                self._text(self._buf[:i], out)
                self._buf = self._buf[i:]
            mark = next((m for m in _MARKS if self._buf.startswith(m)), None)
            if mark is None:
                if not final and any(m.startswith(self._buf) for m in _MARKS):
                    break  # may be a marker still arriving
                self._text("<|", out)
                self._buf = self._buf[2:]
                continue
            self._buf = self._buf[len(mark):]
            self._mark(mark, out)
        return out

    def _text(self, text: str, out: Pieces) -> None:
        if not self._in_body:
            self._header += text
        elif self._kind == "call":
            self._args += text
        else:
            add_piece(out, self._kind, text)

    def _mark(self, mark: str, out: Pieces) -> None:
        if not self._in_body:
            if mark in (CHANNEL, CONSTRAIN):
                self._header += mark
            elif mark == MESSAGE:
                self._open()
            else:  # a message ends or starts without a body: its header was text
                self._flush_header(out)
            return
        if mark in (MESSAGE, CONSTRAIN):
            self._text(mark, out)  # inside a body: text
            return
        self._close(out)
        if mark == CHANNEL:  # a new message without <|end|><|start|>
            self._header = CHANNEL

    def _open(self) -> None:
        h, self._header = self._header, ""
        rec = _RECIPIENT.search(h)
        ch = _CHANNEL.search(h)
        channel = ch.group(1) if ch else ""
        self._in_body, self._name, self._args = True, "", ""
        if rec is not None and rec.group(1).startswith("functions."):
            self._kind = "call" if self.parse_calls else "reasoning"
            self._name = rec.group(1)[len("functions."):]
        elif rec is not None or channel == "analysis":
            self._kind = "reasoning"  # the model's own work (a built-in tool's call)
        else:
            self._kind = "content"    # final, commentary to the user, or unknown

    def _close(self, out: Pieces) -> None:
        if self._in_body and self._kind == "call":
            try:
                args = json.loads(self._args)
            except ValueError:
                args = None
            if isinstance(args, dict) and self._name:
                self.calls.append((self._name, json.dumps(args, ensure_ascii=False)))
            else:
                add_piece(out, "content", self._args)
        self._in_body, self._kind, self._args = False, "content", ""

    def _flush_header(self, out: Pieces) -> None:
        """A header that never reached <|message|>: plain text is content;
        one with markers or a recipient (cut off) is dropped."""
        h, self._header = self._header, ""
        if "<|" not in h and not _RECIPIENT.search(h) and h.strip() != "assistant":
            add_piece(out, "content", h)


class ThinkSplitter:
    """``<think>...</think>`` at the start of a reply (open from the start
    when the prompt opened it): the reasoning (whitespace at its ends
    dropped), then the content (whitespace at its start dropped)."""

    def __init__(self, open_: bool = False):
        self._state = "reason_start" if open_ else "start"
        self._buf = ""

    def feed(self, text: str) -> Pieces:
        self._buf += text
        return self._run(final=False)

    def end(self) -> Pieces:
        out = self._run(final=True)
        if self._buf:
            add_piece(out, "reasoning" if self._state == "reasoning" else "content", self._buf)
            self._buf = ""
        return out

    def _run(self, final: bool) -> Pieces:
        out: Pieces = []
        while self._buf:
            st, buf = self._state, self._buf
            if st == "start":
                s = buf.lstrip()
                if s.startswith(THINK_OPEN):
                    self._state, self._buf = "reason_start", s[len(THINK_OPEN):]
                elif THINK_OPEN.startswith(s) and not final:
                    break  # whitespace, or "<thi" so far
                else:
                    self._state = "content"
            elif st in ("reason_start", "after"):
                s = buf.lstrip()
                if not s and not final:
                    self._buf = ""
                    break
                if st == "reason_start" and s.startswith(THINK_OPEN):
                    self._buf = s[len(THINK_OPEN):]  # the tag again after a prompt opened it
                    continue
                self._state, self._buf = ("reasoning" if st == "reason_start" else "content"), s
            elif st == "reasoning":
                i = buf.find(THINK_CLOSE)
                if i >= 0:
                    add_piece(out, "reasoning", buf[:i].rstrip())
                    self._state, self._buf = "after", buf[i + len(THINK_CLOSE):]
                    continue
                if final:
                    add_piece(out, "reasoning", buf.rstrip())
                    self._buf = ""
                    break
                # hold back trailing whitespace and what may begin </think>
                keep = next((k for k in range(min(len(buf), len(THINK_CLOSE) - 1), 0, -1)
                             if THINK_CLOSE.startswith(buf[-k:])), 0)
                shown = buf[:len(buf) - keep].rstrip()
                add_piece(out, "reasoning", shown)
                self._buf = buf[len(shown):]
                break
            else:
                add_piece(out, "content", buf)
                self._buf = ""
        return out
