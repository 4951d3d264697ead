"""Scoring text under the model: each prompt token's log-probability given
the tokens before it (echo / prompt_logprobs in the server) and the
log-likelihood of a continuation (multiple-choice evaluation)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Sequence

import numpy as np

from .outputs import TokenLogprob
from .sampling import top_logprobs

if TYPE_CHECKING:
    from .model import Model

CHUNK = 256  # tokens a forward pass (the logits of every row are kept for one chunk)


@dataclass
class ScoreResult:
    """The log-likelihood of a continuation given a prompt."""
    logprob: float                 # sum over the continuation's tokens (nats)
    is_greedy: bool                # every continuation token the most likely one
    token_ids: list[int]           # the continuation's tokens
    token_logprobs: list[float] = field(default_factory=list)
    prompt_tokens: int = 0


def prompt_logprobs(model: "Model", ids: Sequence[int], top: int = 0,
                    lora: int | None = None) -> list[TokenLogprob | None]:
    """For each token of ids, its logprob given the ones before it and the
    `top` most likely alternatives there; None for the first (nothing
    precedes it). Runs as a fresh sequence between the steps of running
    generations, CHUNK tokens a pass."""
    arr = model._ids(ids)
    adapter = model.check_lora(lora)
    eng = model.engine
    blocks = -(-len(arr) // eng.block_tokens)

    def run() -> list[TokenLogprob | None]:
        out: list[TokenLogprob | None] = [None]
        seq = eng.new_sequence()
        try:
            if adapter:
                eng.set_adapter(seq, adapter)
            for start in range(0, len(arr) - 1, CHUNK):
                chunk = arr[start:min(start + CHUNK, len(arr) - 1)]
                lg = eng.forward(seq, chunk, "all")
                for r in range(len(chunk)):
                    tok = int(arr[start + r + 1])
                    lp, alts = top_logprobs(np.ascontiguousarray(lg[r]), tok, top)
                    out.append(TokenLogprob(tok, float(lp), alts))
        finally:
            eng.release(seq)
        return out
    return model.scheduler.exclusive(blocks, run)


def score(model: "Model", prompt: str | Sequence[int], continuation: str | Sequence[int],
          add_special: bool = True, lora: int | None = None) -> ScoreResult:
    """log P(continuation | prompt): texts are tokenized apart (the prompt
    with the vocabulary's BOS where it adds one, the continuation without),
    as evaluation harnesses do."""
    p = model.prompt_ids(prompt, add_special) if isinstance(prompt, str) else \
        model._ids(prompt).tolist()
    c = model.tokenize(continuation, add_special=False) if isinstance(continuation, str) \
        else model._ids(continuation).tolist()
    if not c:
        raise ValueError("the continuation is empty (no tokens)")
    lps = prompt_logprobs(model, p + c, top=1, lora=lora)[len(p):]
    vals = [x.logprob for x in lps if x is not None]
    greedy = all(x is not None and x.top and x.top[0][0] == x.token_id for x in lps)
    return ScoreResult(logprob=float(sum(vals)), is_greedy=greedy, token_ids=c,
                       token_logprobs=vals, prompt_tokens=len(p))
