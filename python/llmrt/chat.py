"""Chat templates from GGUF metadata, rendered in jinja2's sandbox.

A template inside a model file is untrusted code: it runs in an
ImmutableSandboxedEnvironment, which refuses attribute access to internals
and mutation of the values passed in.
"""

from __future__ import annotations

import datetime
import json
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from .reasoning import CALL, END, RETURN, is_harmony_vocab

if TYPE_CHECKING:
    from .tokenizer import Tokenizer

# Used when a file carries no template: ChatML, which most small instruct
# models (SmolLM2 and Qwen2 among them) were trained on.
CHATML_TEMPLATE = (
    "{% for message in messages %}{{ '<|im_start|>' + message['role'] + '\n' + "
    "message['content'] + '<|im_end|>' + '\n' }}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)

# Texts of end-of-turn tokens used by common templates.
END_OF_TURN_TEXTS = ("<|im_end|>", "<|eot_id|>", "<|end|>", "<end_of_turn>", "<|endoftext|>",
                     "</s>")


def end_token_ids(tok: "Tokenizer") -> frozenset[int]:
    """The tokens that end a generation: end of text, end of turn (the
    vocabulary's eos / eot, and control or user-defined tokens spelled as
    common templates end a turn; Gemma's SentencePiece model defines
    <end_of_turn> as user-defined). In a harmony vocabulary (gpt-oss) the
    turn ends at <|return|> or <|call|>, never at <|end|>, which ends one
    message of several."""
    ids = {i for i in (tok.eos_id, tok.eot_id) if i is not None}
    for i in tok.special_ids | tok.user_defined_ids:
        if tok.tokens[i] in END_OF_TURN_TEXTS:
            ids.add(i)
    if is_harmony_vocab(tok):
        ids |= {i for i in map(tok.special_token_id, (CALL, RETURN)) if i is not None}
        ids -= {i for i in [tok.special_token_id(END)] if i is not None}
    return frozenset(ids)


class TemplateError(ValueError):
    pass


def _raise(msg: str):
    raise TemplateError(msg)


def _tojson(x: Any, ensure_ascii: bool = False, indent: int | None = None,
            separators: Any = None, sort_keys: bool = False) -> str:
    """tojson as the templates were written for (transformers' filter):
    plain JSON text, keys in their order, nothing HTML-escaped. (jinja's own
    sorts keys, escapes <, >, & and ' and returns markup, which escapes the
    text a template adds to it: gpt-oss's tool results.)"""
    return json.dumps(x, ensure_ascii=ensure_ascii, indent=indent, separators=separators,
                      sort_keys=sort_keys)


def with_reasoning(messages: Sequence[dict[str, Any]], harmony: bool = False) -> list[Any]:
    """Messages for a template that reads an assistant turn's reasoning:
    ``reasoning_content`` (or ``reasoning`` / ``thinking``) given under the
    names the templates read (Qwen3's reasoning_content, gpt-oss's
    thinking); for harmony, a turn's content None (one that only calls) as
    the empty text that template tests."""
    if not isinstance(messages, (list, tuple)):
        return messages  # type: ignore[return-value]  # render() says what is wrong
    out: list[Any] = []
    for m in messages:
        if isinstance(m, dict) and m.get("role") == "assistant":
            r = next((m[k] for k in ("reasoning_content", "reasoning", "thinking")
                      if isinstance(m.get(k), str)), None)
            if r is not None:
                m = {**m, "reasoning_content": r, "thinking": r}
            if harmony and m.get("content") is None and m.get("tool_calls"):
                m = {**m, "content": ""}
        out.append(m)
    return out


def render(template: str, messages: Sequence[dict[str, Any]], *, bos_token: str = "",
           eos_token: str = "", add_generation_prompt: bool = True, **extra: Any) -> str:
    from jinja2 import TemplateError as JinjaError
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    if not isinstance(messages, (list, tuple)) or not messages:
        raise ValueError("messages must be a non-empty list of {'role': ..., 'content': ...}")
    for i, m in enumerate(messages):
        # content may be None on an assistant turn that only calls tools, and
        # a list of parts where it holds images (vision.split_images)
        c = m.get("content") if isinstance(m, dict) else None
        if not isinstance(m, dict) or not isinstance(m.get("role"), str) or \
                not (isinstance(c, str) or (c is None and m.get("tool_calls")) or
                     (isinstance(c, list) and all(isinstance(p, dict) for p in c))):
            raise ValueError(f"messages[{i}] must be a dict with string 'role' and 'content'")
    # loop controls ({% break %}, {% continue %}) as transformers enables them
    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True,
                                        extensions=["jinja2.ext.loopcontrols"])
    env.globals["raise_exception"] = _raise
    env.filters["tojson"] = _tojson
    env.globals["strftime_now"] = lambda fmt: datetime.datetime.now().strftime(fmt)
    try:
        tmpl = env.from_string(template)
        return tmpl.render(messages=list(messages), bos_token=bos_token, eos_token=eos_token,
                           add_generation_prompt=add_generation_prompt, **extra)
    except TemplateError:
        raise
    except (JinjaError, TypeError, KeyError, IndexError, AttributeError, ZeroDivisionError,
            OverflowError) as e:  # a template's own error on these messages
        raise TemplateError(f"chat template failed: {e}") from None
