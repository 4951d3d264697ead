"""Chat templates from GGUF metadata, rendered in jinja2's sandbox.

A template inside a model file is untrusted code: it runs in an
ImmutableSandboxedEnvironment, which refuses attribute access to internals
and mutation of the values passed in.
"""

from __future__ import annotations

import datetime
from collections.abc import Sequence
from typing import Any

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


class TemplateError(ValueError):
    pass


def _raise(msg: str):
    raise TemplateError(msg)


def render(template: str, messages: Sequence[dict[str, Any]], *, bos_token: str = "",
           eos_token: str = "", add_generation_prompt: bool = True, **extra: Any) -> str:
    from jinja2 import TemplateError as JinjaError
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    if not isinstance(messages, (list, tuple)) or not messages:
        raise ValueError("messages must be a non-empty list of {'role': ..., 'content': ...}")
    for i, m in enumerate(messages):
        # content may be None on an assistant turn that only calls tools
        if not isinstance(m, dict) or not isinstance(m.get("role"), str) or \
                not (isinstance(m.get("content"), str) or
                     (m.get("content") is None and m.get("tool_calls"))):
            raise ValueError(f"messages[{i}] must be a dict with string 'role' and 'content'")
    # loop controls ({% break %}, {% continue %}) as transformers enables them
    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True,
                                        extensions=["jinja2.ext.loopcontrols"])
    env.globals["raise_exception"] = _raise
    env.globals["strftime_now"] = lambda fmt: datetime.datetime.now().strftime(fmt)
    try:
        tmpl = env.from_string(template)
        return tmpl.render(messages=list(messages), bos_token=bos_token, eos_token=eos_token,
                           add_generation_prompt=add_generation_prompt, **extra)
    except TemplateError:
        raise
    except JinjaError as e:
        raise TemplateError(f"chat template failed: {e}") from None
