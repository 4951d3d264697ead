"""Structured output: text that follows a JSON Schema, a regular expression
or a grammar.

``response_format`` (a SamplingParams field) takes OpenAI's shapes and a
few more:

    {"type": "text"}                          no constraint
    {"type": "json_object"}                   any JSON object ("schema": {...} narrows it)
    {"type": "json_schema", "json_schema": {"name": ..., "schema": {...}}}
    a JSON Schema itself (a dict), or a pydantic model class
    {"type": "regex", "pattern": "..."}
    {"type": "grammar", "grammar": "..."}     a Lark-style grammar (or GBNF)
    {"type": "grammar", "grammar": "...", "trigger": "..."}
                                              free text until the text ends with the
                                              trigger, which the grammar then begins with
    {"type": "choice", "choices": ["a", ...]} exactly one of these strings

llguidance is the constraint engine. Its tokenizer is built once per model
from the GGUF vocabulary's token bytes (control tokens marked special) and
the model's end tokens. JSON is written compactly (", " and ": " between
items, no other whitespace; a schema's "x-guidance" options override that).

How a step uses it: before the forward pass, each constrained sampler that
draws in the step expects a mask, and one worker thread computes the masks
(the allowed next tokens given the tokens so far) while the forward pass
runs; the native sampler waits for its mask and applies it before every
other stage. The drawn token then advances the matcher; when the matcher can
go no further the generation ends ("stop"). End tokens are allowed only
where the constraint is complete.
"""

from __future__ import annotations

import json
import threading
from collections import OrderedDict
from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING, Any, Callable

import numpy as np

if TYPE_CHECKING:
    from .sampling import Sampler
    from .tokenizer import Tokenizer

TYPES = ("text", "json_object", "json_schema", "regex", "grammar", "choice")
# how JSON is laid out unless a schema's "x-guidance" says otherwise
JSON_LAYOUT = {"whitespace_flexible": False, "item_separator": ", ", "key_separator": ": "}
_WHAT = {"json": "JSON Schema", "regex": "regex", "grammar": "grammar", "lazy": "grammar",
         "choice": "choices"}


# A calendar date (RFC 3339 full-date) with February 29 only in leap years:
# llguidance's "date" format knows month lengths but not leap years.
DATE_PATTERN = (
    r"^(?:(?:[0-9]{2}(?:0[48]|[2468][048]|[13579][26])|(?:[02468][048]|[13579][26])00)-02-29"
    r"|[0-9]{4}-(?:(?:0[13578]|1[02])-(?:0[1-9]|[12][0-9]|3[01])"
    r"|(?:0[469]|11)-(?:0[1-9]|[12][0-9]|30)|02-(?:0[1-9]|1[0-9]|2[0-8])))$")
_DATA_KEYS = ("enum", "const", "default", "examples")  # values there are data, not schemas
# keywords whose value maps names to subschemas (the names are not keywords)
_SCHEMA_MAPS = ("properties", "patternProperties", "$defs", "definitions", "dependentSchemas")


def map_schema(node: Any, fix: Callable[[dict], dict]) -> Any:
    """A copy of a JSON Schema with `fix` applied to every subschema,
    innermost first; data (enum, const, default, examples) and the names
    of properties and definitions are left alone."""
    if isinstance(node, list):
        return [map_schema(x, fix) for x in node]
    if not isinstance(node, dict):
        return node
    out: dict = {}
    for k, v in node.items():
        if k in _DATA_KEYS:
            out[k] = v
        elif k in _SCHEMA_MAPS and isinstance(v, dict):
            out[k] = {name: map_schema(s, fix) for name, s in v.items()}
        else:
            out[k] = map_schema(v, fix)
    return fix(out)


def _strict_date(s: dict) -> dict:
    """A {"format": "date"} string (without a pattern of its own) given
    DATE_PATTERN instead."""
    if s.get("format") == "date" and "pattern" not in s and s.get("type", "string") == "string":
        s = {k: v for k, v in s.items() if k != "format"}
        s["pattern"] = DATE_PATTERN
    return s


def _strict_dates(node: Any) -> Any:
    return map_schema(node, _strict_date)


def _first_line(msg: str, limit: int = 300) -> str:
    """An engine's message without the state it dumps after the first line."""
    line = (msg or "").strip().split("\n", 1)[0].strip()
    return line if len(line) <= limit else line[:limit - 3] + "..."


def _bad(msg: str) -> ValueError:
    return ValueError(f"response_format: {msg}")


def normalize(rf: Any) -> tuple[str, Any] | None:
    """response_format -> (kind, source) with kind "json" (a schema dict),
    "regex", "grammar" (text) or "choice" (a list of strings); None for
    plain text. Raises ValueError for a malformed one (the source itself is
    checked when it is compiled)."""
    if rf is None:
        return None
    if isinstance(rf, type) and hasattr(rf, "model_json_schema"):  # a pydantic model
        return "json", rf.model_json_schema()
    if isinstance(rf, str):
        raise _bad(f"give a dict such as {{\"type\": \"json_object\"}}, not the string {rf!r}")
    if not isinstance(rf, dict):
        raise _bad(f"must be a dict (or a pydantic model class), got {type(rf).__name__}")
    t = rf.get("type")
    if t not in TYPES:  # a bare JSON Schema ("type": "object", "anyOf": [...], ...)
        return "json", rf

    def field(name: str, kind: type, alt: str | None = None) -> Any:
        v = rf.get(name, rf.get(alt) if alt else None)
        if not isinstance(v, kind) or (isinstance(v, (str, list)) and not v):
            raise _bad(f"type {t!r} needs a non-empty {name!r} "
                       f"({'a string' if kind is str else kind.__name__})")
        return v

    if t == "text":
        return None
    if t == "json_object":
        schema = rf.get("schema")
        if schema is None:
            return "json", {"type": "object"}
        if not isinstance(schema, dict):
            raise _bad("json_object's 'schema' must be a JSON Schema object")
        return "json", schema
    if t == "json_schema":
        js = rf.get("json_schema")
        if not isinstance(js, dict):
            raise _bad("type 'json_schema' needs 'json_schema': {\"name\": ..., "
                       "\"schema\": {...}}")
        schema = js.get("schema", js.get("json_schema"))
        if schema is None:  # the schema given directly under json_schema
            schema = {k: v for k, v in js.items() if k not in ("name", "description", "strict")}
        if not isinstance(schema, dict):
            raise _bad("json_schema.schema must be a JSON Schema object")
        return "json", schema
    if t == "regex":
        return "regex", field("pattern", str, "regex")
    if t == "grammar":
        g = field("grammar", str)
        trig = rf.get("trigger")
        if trig is None:
            return "grammar", g
        if not isinstance(trig, str) or not trig:
            raise _bad("a grammar's 'trigger' must be a non-empty string")
        return "lazy", (g, trig)
    choices = field("choices", list)
    if not all(isinstance(c, str) and c for c in choices):
        raise _bad("'choices' must be non-empty strings")
    return "choice", choices


def _lark_source(kind: str, src: Any) -> str:
    """The llguidance grammar for a normalized response_format."""
    import llguidance as llg
    if kind == "json":
        try:
            return llg.LLMatcher.grammar_from_json_schema(_strict_dates(src),
                                                          defaults=JSON_LAYOUT)  # type: ignore[arg-type]
        except (ValueError, TypeError) as e:
            raise _bad(f"the JSON Schema is invalid: {e}") from None
    if kind == "regex":
        return llg.LLMatcher.grammar_from_regex(src)
    if kind in ("grammar", "lazy"):
        try:
            return llg.grammar_from("grammar", src if kind == "grammar" else src[0])
        except ValueError as e:
            raise _bad(f"the grammar is invalid: {e}") from None
    return llg.LLMatcher.grammar_from_lark("start: " + " | ".join(json.dumps(c) for c in src))


# ---- compiled response formats ----------------------------------------------------------
class Grammars:
    """One model's llguidance tokenizer and its compiled response formats
    (the most recent 64; a matcher per sequence is a copy of one)."""

    capacity = 64

    def __init__(self, tokenizer: "Tokenizer", n_vocab: int, end_ids: Iterable[int]):
        self._tok, self._n_vocab = tokenizer, n_vocab
        self._ends = sorted(set(end_ids))
        self._lltok: Any = None
        self._cache: OrderedDict[str, Any] = OrderedDict()
        self._lock = threading.Lock()

    def _tokenizer(self) -> Any:
        if self._lltok is None:
            self._lltok = _lltokenizer(self._tok, self._n_vocab, self._ends)
        return self._lltok

    @property
    def eos(self) -> frozenset[int]:
        """The token llguidance allows where a constraint is complete."""
        return frozenset([_llg_eos(self._tok, self._ends)])

    def compile(self, rf: Any) -> "Grammar | None":
        """The response_format, compiled (None: plain text). Raises
        ValueError when it is malformed or its schema, regex or grammar is
        invalid or unsupported."""
        norm = normalize(rf)
        if norm is None:
            return None
        kind, src = norm
        try:
            key = kind + "\0" + json.dumps(src, sort_keys=True)
        except (TypeError, ValueError):
            raise _bad(f"the {_WHAT[kind]} is not JSON-serialisable") from None
        with self._lock:
            g = self._cache.get(key)
            if g is not None:
                self._cache.move_to_end(key)
                return g
            try:
                import llguidance as llg
            except ImportError:
                raise ImportError("response_format needs the llguidance package: pip install "
                                  "'llmrt[structured]'") from None
            lltok = self._tokenizer()
            m = llg.LLMatcher(lltok, _lark_source(kind, src), log_level=0)
            if not m.is_error():
                # a constraint nothing can satisfy (a schema {"$ref": "#"}) fails
                # at its first mask: find out here rather than mid-generation
                probe = m.deep_copy()
                probe.compute_bitmask()
                m = probe if probe.is_error() else m
            if m.is_error():
                raise _bad(f"the {_WHAT[kind]} is invalid or unsupported: "
                           f"{_first_line(m.get_error())}")
            g = Grammar(m, self.eos)
            if kind == "lazy":
                tok = self._tok
                g.trigger = src[1].encode("utf-8")
                g.token_bytes = tok.token_bytes
            self._cache[key] = g
            if len(self._cache) > self.capacity:
                self._cache.popitem(last=False)
            return g


class Grammar:
    """A compiled response format: a fresh matcher to copy for each sequence."""

    trigger: bytes | None = None  # a lazy grammar's trigger
    token_bytes: Callable[[int], bytes] | None = None

    def __init__(self, matcher: Any, eos: frozenset[int]):
        self._m, self.eos = matcher, eos

    def matcher(self) -> Any:
        """A fresh llguidance matcher of the format (a copy: its state is the caller's)."""
        return self._m.deep_copy()

    def constraint(self, sampler: "Sampler", end_ids: Iterable[int]) -> "Constraint":
        if self.trigger is not None and self.token_bytes is not None:
            c: Constraint = LazyConstraint(self.matcher(), sampler, set(end_ids), self.eos,
                                           self.trigger, self.token_bytes)
        else:
            c = Constraint(self.matcher(), sampler, set(end_ids), self.eos)
        sampler.constraint = c
        return c


class Constraint:
    """One sequence's constraint: its matcher and its sampler's mask."""

    active = True  # masks the draws (a lazy one only once triggered)

    def __init__(self, matcher: Any, sampler: "Sampler", end_ids: set[int],
                 eos: frozenset[int]):
        self.m, self.sampler = matcher, sampler
        sampler.enable_mask()
        self.words = sampler.mask()
        # llguidance allows its end tokens where the constraint is complete;
        # this sequence's own end tokens (stop_token_ids, none with
        # ignore_eos) take their place
        self._drop = sorted(eos - end_ids)
        self._add = sorted(end_ids - eos)
        self.error: BaseException | None = None

    # ---- on the worker thread ----
    def fill(self) -> None:
        """Computes the mask for the next draw into the sampler's words. A
        failure allows every token for this draw and ends the generation when
        the token is consumed (its own error, not the batch's)."""
        try:
            self.compute(self.words)
        except BaseException as e:  # noqa: BLE001 - reported by consume()
            self.error = e
            self.words[:] = 0xFFFFFFFF
        finally:
            self.sampler.mask_done()

    def compute(self, words: np.ndarray) -> None:
        m = self.m
        m.unsafe_compute_mask_ptr(words.ctypes.data, words.nbytes)
        if m.is_error():
            raise RuntimeError(f"structured output: {_first_line(m.get_error())}")
        for t in self._drop:
            words[t >> 5] &= np.uint32(~(1 << (t & 31)) & 0xFFFFFFFF)
        if self._add and m.is_accepting():
            for t in self._add:
                words[t >> 5] |= np.uint32(1 << (t & 31))

    def draft_masks(self, drafts: Sequence[int]) -> np.ndarray:
        """The masks at each position of a draft being verified: row i for
        the token after drafts[:i] (len(drafts) + 1 rows); the matcher is
        left where it was."""
        out = np.empty((len(drafts) + 1, len(self.words)), np.uint32)
        n = 0
        try:
            for i in range(len(drafts) + 1):
                self.compute(out[i])
                if i < len(drafts):
                    if not self.m.consume_token(int(drafts[i])):
                        raise RuntimeError(f"structured output: draft token {drafts[i]} "
                                           f"does not fit ({_first_line(self.m.get_error())})")
                    n += 1
        finally:
            if n:
                self.m.rollback(n)
        return out

    # ---- on the stepping thread ----
    def valid_prefix(self, tokens: Sequence[int]) -> int:
        """How many of the tokens, in order, the constraint accepts next."""
        return int(self.m.validate_tokens([int(t) for t in tokens])) if tokens else 0

    def consume(self, tok: int) -> bool:
        """A drawn token advances the matcher. Returns whether the
        constraint is complete and can take no more."""
        if self.error is not None:
            err, self.error = self.error, None
            raise err
        if not self.m.consume_token(int(tok)):
            raise RuntimeError(f"structured output: token {tok} does not fit the constraint "
                               f"({_first_line(self.m.get_error())})")
        return bool(self.m.is_stopped())


class LazyConstraint(Constraint):
    """A lazy grammar's constraint: dormant (no masks) until the generated
    text ends with the trigger, spelled by whole tokens; those tokens then
    begin the grammar, which masks every draw from there on. (A trigger
    that begins inside a token leaves the text unconstrained.)"""

    active = False

    def __init__(self, matcher: Any, sampler: "Sampler", end_ids: set[int],
                 eos: frozenset[int], trigger: bytes, token_bytes: Callable[[int], bytes]):
        super().__init__(matcher, sampler, end_ids, eos)
        self._trigger, self._bytes = trigger, token_bytes
        self._recent: list[int] = []
        self._tail = b""

    def valid_prefix(self, tokens: Sequence[int]) -> int:
        return super().valid_prefix(tokens) if self.active else len(tokens)

    def draft_masks(self, drafts: Sequence[int]) -> np.ndarray:
        if self.active:
            return super().draft_masks(drafts)
        return np.full((len(drafts) + 1, len(self.words)), 0xFFFFFFFF, np.uint32)

    def consume(self, tok: int) -> bool:
        if self.active:
            return super().consume(tok)
        self._recent = (self._recent + [int(tok)])[-64:]
        self._tail = (self._tail + self._bytes(int(tok)))[-4 * len(self._trigger) - 64:]
        if not self._tail.endswith(self._trigger):
            return False
        spelled, k = b"", 0
        while k < len(self._recent) and len(spelled) < len(self._trigger):
            k += 1
            spelled = self._bytes(self._recent[-k]) + spelled
        if spelled != self._trigger:
            return False
        toks = self._recent[-k:]
        if self.m.validate_tokens(toks) != len(toks):
            return False
        for t in toks:
            self.m.consume_token(t)
        self.active = True
        return bool(self.m.is_stopped())


def _lltokenizer(tok: "Tokenizer", n_vocab: int, ends: Sequence[int]) -> Any:
    """llguidance's tokenizer for a vocabulary: each token's bytes, control
    tokens (and <...> user-defined ones) marked special by a 0xFF prefix,
    padding up to the model's vocabulary size as empty tokens."""
    import llguidance as llg

    from .tokenizer import CONTROL, USER_DEFINED
    toks: list[bytes] = []
    for i in range(tok.vocab_size):
        b = tok.token_bytes(i)
        t = tok.types[i]
        if t == CONTROL or (t == USER_DEFINED and b.startswith(b"<") and b.endswith(b">")):
            b = b"\xff" + b
        toks.append(b)
    toks += [b""] * (n_vocab - len(toks))
    eos = _llg_eos(tok, ends)

    class Vocab:
        eos_token_id = eos
        bos_token_id = tok.bos_id
        tokens = toks
        special_token_ids: list[int] = []

        def __call__(self, text: Any) -> list[int]:
            if isinstance(text, bytes):
                text = text.decode("utf-8", errors="replace")
            return tok.encode(text, add_special=False)

    return llg.LLTokenizer(llg.TokenizerWrapper(Vocab()), n_vocab=n_vocab, eos_token=eos)


def _llg_eos(tok: "Tokenizer", ends: Sequence[int]) -> int:
    """The one end token llguidance knows; a sequence's other end tokens
    are allowed by Constraint.compute."""
    return ends[0] if ends else (tok.eos_id if tok.eos_id is not None else 0)
