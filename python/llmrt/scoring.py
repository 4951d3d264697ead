"""Scoring text under the model: each prompt token's log-probability given
the tokens before it (echo / prompt_logprobs in the server) and the
log-likelihood of a continuation (multiple-choice evaluation)."""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np

from .outputs import PerplexityResult, TokenLogprob
from .sampling import top_logprobs
from .utils import progress_bar

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


def perplexity(model: "Model", text: str | Sequence[int], window: int = 512,
               max_windows: int | None = None, progress: bool | None = None
               ) -> PerplexityResult:
    """Perplexity of a text (or token ids) under the model, as llama.cpp's
    perplexity tool measures it: the tokens are cut into consecutive
    windows of `window` tokens (a shorter rest is dropped), each window
    runs as a fresh sequence (its first token replaced by BOS when the
    vocabulary adds one), and the second half of each window is scored:
    exp of the mean negative log-likelihood of each token given the ones
    before it in its window."""
    if not isinstance(window, int) or isinstance(window, bool) or window < 4:
        raise ValueError(f"window must be an integer of at least 4 tokens, got {window!r}")
    if window > model.context_length:
        raise ValueError(f"window {window} exceeds the context length {model.context_length}")
    if isinstance(text, str):
        ids = model.tokenize(text, add_special=False)
    else:
        arr = np.asarray(list(text))
        if arr.ndim != 1 or (arr.size and not np.issubdtype(arr.dtype, np.integer)):
            raise ValueError("text must be a string or a 1-D sequence of token ids")
        if arr.size and (arr.min() < 0 or arr.max() >= model.vocab_size):
            raise ValueError(f"token ids must be in [0, {model.vocab_size})")
        ids = arr.tolist()
    n_win = len(ids) // window
    if max_windows is not None:
        n_win = min(n_win, max_windows)
    if n_win < 1:
        raise ValueError(f"the text is {len(ids)} tokens: perplexity needs at least one "
                         f"window of {window}")
    bos = model.tokenizer.bos_id if model.tokenizer.add_bos else None
    first = window // 2
    nll, count = 0.0, 0
    bar = progress_bar(n_win, "perplexity", progress)
    t0 = time.perf_counter()
    for w in range(n_win):
        chunk = list(ids[w * window:(w + 1) * window])
        if bos is not None:
            chunk[0] = bos
        lg = model.logits(chunk)[first:-1].astype(np.float64)
        target = np.asarray(chunk[first + 1:])
        mx = lg.max(axis=1)
        lse = mx + np.log(np.exp(lg - mx[:, None]).sum(axis=1))
        nll += float((lse - lg[np.arange(len(target)), target]).sum())
        count += len(target)
        bar.set_postfix_str(f"ppl {np.exp(nll / count):.4f}", refresh=False)
        bar.update(1)
    bar.close()
    return PerplexityResult(perplexity=float(np.exp(nll / count)), nll=nll / count,
                            tokens=count, windows=n_win, window=window,
                            seconds=time.perf_counter() - t0)
