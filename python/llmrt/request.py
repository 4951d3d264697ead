"""One request: a prompt and the sequences that continue it.

Generation is one generated sequence: its sampler, its tokens and text, the end
and stop checks, the pieces it streams, logprobs and timings. Task is what
the scheduler runs: a prompt (which the scheduler feeds in chunks), the
KV-cache blocks reserved for it, and per step the entries it adds to the
batch and what it does with their outputs. Decode is the plain decode loop:
n samples of one prompt (the prompt runs once, the samples fork its
sequence), one token a step each, drawn inside the model's step.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np

from .outputs import GenerationResult, TokenLogprob
from .sampling import Sampler, SamplingParams, top_logprobs
from .step import DecodeEntry, StepEntry

if TYPE_CHECKING:
    from .engine import Engine
    from .scheduler import Job
    from .tokenizer import IncrementalDecoder, Tokenizer


class Generation:
    """One sequence's generation. emit() takes each chosen token and hands
    the job the text that is safe to show (held back while it may begin a
    stop string); close() ends it with the result's text and timings."""

    def __init__(self, tokenizer: "Tokenizer", prompt: list[int], p: SamplingParams,
                 sampler: Sampler, end_ids: set[int], context_length: int, job: "Job",
                 index: int, speculative: bool = False, choice: int = 0):
        self.tokenizer, self.prompt, self.p = tokenizer, prompt, p
        self.sampler, self.end_ids, self.n_ctx = sampler, end_ids, context_length
        self.job, self.index, self.speculative = job, index, speculative
        self.choice = choice  # which of the prompt's n samples
        self.stops = p.stop_strings
        self.result = GenerationResult(text="", token_ids=[], finish_reason="length",
                                       prompt_tokens=len(prompt),
                                       logprobs=[] if p.logprobs is not None else None)
        self.greedy = (p.temperature == 0 or p.top_k == 1) and not p.mirostat_mode
        # tokens so far (for the penalties of draws made here, prompt lookup)
        self.hist = np.zeros(min(len(prompt) + p.max_new_tokens, context_length) + 1, np.int32)
        self.hist[:len(prompt)] = prompt
        self.n_hist = len(prompt)
        self.seq = -1   # its KV-cache sequence
        self.tok = -1   # the token to feed next
        self.text, self.emitted = "", 0
        self.finished, self.cut, self.done = "length", False, False
        self.t_admit: float | None = None
        self.t_prompt: float | None = None
        self.t_first: float | None = None
        self.forwards = self.drafted = self.accepted = 0
        self._dec: IncrementalDecoder | None = None
        self.constraint = sampler.constraint  # structured output, or None

    @property
    def n_generated(self) -> int:
        return len(self.result.token_ids)

    def budget(self) -> int:
        """Tokens it may still draw: up to max_new_tokens, and while the
        context has room for the token that precedes each."""
        return min(self.p.max_new_tokens - self.n_generated, self.n_ctx + 1 - self.n_hist)

    # ---- choosing -----------------------------------------------------------------------
    def choose(self, lg: np.ndarray) -> int:
        """The next token from a row of logits here (the sampler chain, on
        logits already masked by a constraint), with its logprobs when asked
        for."""
        tok = self.sampler(lg, self.hist[:self.n_hist], self.n_generated)
        self.note_logprob(lg, tok)
        return tok

    def distribution(self, lg: np.ndarray) -> np.ndarray:
        return self.sampler.distribution(lg, self.hist[:self.n_hist], self.n_generated)

    def note_logprob(self, lg: np.ndarray, tok: int) -> None:
        if self.p.logprobs is not None:
            self.add_logprob(tok, _core_top(lg, tok, self.p.logprobs))

    def add_logprob(self, tok: int, lp: tuple | None) -> None:
        """A drawn token's (logprob, top ids, top logprobs), as a step reports it."""
        if self.result.logprobs is not None and lp is not None:
            self.result.logprobs.append(TokenLogprob(tok, lp[0], list(zip(lp[1], lp[2]))))

    # ---- the text -----------------------------------------------------------------------
    def emit(self, tok: int) -> bool:
        """One chosen token: end and stop checks, text out. Returns whether
        the generation is over."""
        if self._dec is None:
            self.t_first = time.perf_counter()
            self._dec = self.tokenizer.decoder(skip_special=True)
        if tok in self.end_ids:
            self.finished, self.done = "stop", True
            return True
        # a constraint that is complete and takes no more ends the generation
        complete = self.constraint is not None and self.constraint.consume(tok)
        ids = self.result.token_ids
        ids.append(tok)
        self.hist[self.n_hist] = tok
        self.n_hist += 1
        self.tok = tok
        piece = self._dec.add(tok)
        if self.stops:
            text, emitted = self.text + piece, self.emitted
            self.text = text
            cut = self._find_stop(text, emitted)
            if cut is not None:
                self.text = text[:cut]
                self.result.stop_string = next(
                    (x for x in self.stops if text.startswith(x, cut)), None)
                self.finished, self.cut, self.done = "stop", True, True
                return True
            safe = len(text) - self._held(text, emitted)
            if safe > emitted:
                self.job.put(self.index, text[emitted:safe], self.choice)
                self.emitted = safe
        elif piece:
            self.text += piece
            self.emitted = len(self.text)
            self.job.put(self.index, piece, self.choice)
        if complete:
            self.finished, self.done = "stop", True
        elif len(ids) >= self.p.max_new_tokens or self.n_hist > self.n_ctx:
            self.done = True
        return self.done

    def close(self) -> None:
        """The end: the text still held back goes out, and the result gets its
        text, finish reason and timings."""
        res = self.result
        text = self.text
        if not self.cut and self._dec is not None:
            text += self._dec.flush()
        if len(text) > self.emitted:
            self.job.put(self.index, text[self.emitted:], self.choice)
        self.emitted = len(text)
        t_end = time.perf_counter()
        t0 = self.job.t0
        t_admit = self.t_admit if self.t_admit is not None else t0
        t_prompt = self.t_prompt if self.t_prompt is not None else t_end
        t_first = self.t_first or t_end
        res.text = text
        res.finish_reason = self.finished
        n_dec = max(len(res.token_ids) - 1, 0)
        res.timings = {
            "prompt_ms": (t_prompt - t_admit) * 1e3,
            "time_to_first_token_ms": (t_first - t0) * 1e3,
            "decode_ms": (t_end - t_first) * 1e3,
            "prompt_tokens_per_s": len(self.prompt) / max(t_prompt - t_admit, 1e-9),
            "decode_tokens_per_s": n_dec / max(t_end - t_first, 1e-9) if n_dec else 0.0,
            "queue_ms": (t_admit - t0) * 1e3,
        }
        if self.speculative:
            res.timings["draft_tokens"] = self.drafted
            res.timings["draft_acceptance"] = (self.accepted / self.drafted
                                               if self.drafted else 0.0)
            res.timings["tokens_per_forward"] = n_dec / self.forwards if self.forwards else 0.0
        self.done = True

    def finish_empty(self) -> None:
        """max_new_tokens = 0: nothing to generate."""
        self.result.timings = {"prompt_ms": 0.0}
        self.done = True

    def _held(self, text: str, emitted: int) -> int:
        """Length of the longest end of text (past emitted) that could begin a stop string."""
        best = 0
        for s in self.stops:
            for k in range(min(len(s) - 1, len(text) - emitted), best, -1):
                if text.endswith(s[:k]):
                    best = k
                    break
        return best

    def _find_stop(self, text: str, emitted: int) -> int | None:
        if not self.stops:
            return None
        start = max(0, emitted - max(len(s) for s in self.stops))
        best = None
        for s in self.stops:
            i = text.find(s, start)
            if i != -1 and (best is None or i < best):
                best = i
        return best


def _core_top(lg: np.ndarray, tok: int, k: int) -> tuple:
    lp, top = top_logprobs(lg, tok, k)
    return lp, [t for t, _ in top], [v for _, v in top]


class Task:
    """What the scheduler runs: one prompt and the sequences that continue
    it, admitted together with `blocks` KV-cache blocks reserved for them.

    The scheduler feeds the prompt (positions pos.. of seq) in chunks; its
    last chunk goes in as first_entry(tokens). From then on each step adds
    entries() to the batch. apply() receives the outputs of the task's
    entries of a step: logits rows (entries without samplers) and drawn
    tokens and logprobs (one per sampler), in entry order."""

    width = 1  # sequences it decodes at once (counted against max_batch_size)
    multi_step = False  # its steps can run several to a native call (decode_entries)

    def __init__(self, job: "Job", index: int, prompt: list[int], p: SamplingParams,
                 blocks: int):
        self.job, self.index, self.prompt, self.p, self.blocks = job, index, prompt, p, blocks
        self.seq = -1
        self.pos = 0          # prompt positions in the cache
        self.started = False  # the prompt has run
        self.done = False

    def admit(self, engine: "Engine") -> None:
        self.seq = engine.new_sequence()
        if self.p.lora:  # before the prefix: the cache keeps each adapter's blocks apart
            engine.set_adapter(self.seq, self.p.lora)
        self.pos = engine.reuse_prefix(self.seq, self.prompt)

    def first_entry(self, tokens: np.ndarray) -> StepEntry:
        raise NotImplementedError

    def entries(self) -> list[StepEntry]:
        raise NotImplementedError

    def apply(self, engine: "Engine", logits: np.ndarray, tokens: np.ndarray,
              logprobs: Sequence | None) -> None:
        raise NotImplementedError

    def held(self, engine: "Engine") -> int:
        """KV-cache blocks its sequences hold now (shared ones once)."""
        return -(-self.pos // engine.block_tokens)

    def sequences(self) -> list[int]:
        return [self.seq] if self.seq >= 0 else []

    def release(self, engine: "Engine") -> None:
        for s in self.sequences():
            engine.release(s)
        self.seq = -1

    def decode_entries(self) -> list[DecodeEntry]:
        """With multi_step: its entries of a multi-step decode (Engine.decode)."""
        raise NotImplementedError

    def apply_decoded(self, engine: "Engine", tokens: np.ndarray,
                      logprobs: Sequence | None) -> None:
        """With multi_step: one step's draws of the entries decode_entries gave
        (-1: stopped)."""
        raise NotImplementedError

    def finish_empty(self) -> None:
        raise NotImplementedError

    def results(self) -> list[GenerationResult]:
        raise NotImplementedError


class Decode(Task):
    """n samples of one prompt (n = 1: a plain generation). The prompt runs
    once and every sample draws its first token from its last row; the
    samples then fork its sequence (full blocks shared, the last one copied
    on write) and decode one token a step each, drawn inside the step."""

    multi_step = True

    def __init__(self, job: "Job", index: int, requests: list[Generation], blocks: int,
                 per_sample: int):
        super().__init__(job, index, requests[0].prompt, requests[0].p, blocks)
        self.reqs = requests
        self.live = list(requests)
        # a constraint's mask is for one draw: constrained samples step singly
        self.multi_step = not any(r.constraint for r in requests)
        self.per_sample = per_sample  # blocks reserved for each sample's own positions
        self._snap: list[Generation] = []  # the requests of the last decode_entries()

    @property
    def width(self) -> int:  # type: ignore[override]
        return len(self.live)

    def admit(self, engine: "Engine") -> None:
        super().admit(engine)
        t = time.perf_counter()
        for r in self.reqs:
            r.t_admit = t
            r.result.cached_tokens = self.pos

    def first_entry(self, tokens: np.ndarray) -> StepEntry:
        return StepEntry(self.seq, tokens, "last", [r.sampler for r in self.reqs], 0)

    def entries(self) -> list[StepEntry]:
        return [StepEntry(r.seq, np.array([r.tok], np.int32), "last", [r.sampler], r.n_generated)
                for r in self.live]

    def apply(self, engine: "Engine", logits: np.ndarray, tokens: np.ndarray,
              logprobs: Sequence | None) -> None:
        if not self.started:
            self.started = True
            t = time.perf_counter()
            self.reqs[0].seq = self.seq
            for r in self.reqs[1:]:
                r.seq = engine.fork(self.seq)
            for r in self.reqs:
                r.t_prompt = t
        self._take(engine, self.live, tokens, logprobs)

    def decode_entries(self) -> list[DecodeEntry]:
        self._snap = list(self.live)
        return [DecodeEntry(r.seq, r.tok, r.sampler, r.n_generated, r.budget()) for r in self._snap]

    def apply_decoded(self, engine: "Engine", tokens: np.ndarray,
                      logprobs: Sequence | None) -> None:
        self._take(engine, self._snap, tokens, logprobs)

    def _take(self, engine: "Engine", reqs: list[Generation], tokens: np.ndarray,
              logprobs: Sequence | None) -> None:
        """Each request's drawn token (tokens[i] for reqs[i]; -1 or a request
        already done: skipped, e.g. after a stop string within a multi-step
        call)."""
        finished = False
        for i, r in enumerate(reqs):
            tok = int(tokens[i])
            if tok < 0 or r.done:
                continue
            r.forwards += 1
            if logprobs:
                r.add_logprob(tok, logprobs[i])
            if r.emit(tok):
                self._finish(engine, r)
                finished = True
        if finished:
            self.live = [r for r in self.live if not r.done]
            self.done = not self.live

    def _finish(self, engine: "Engine", r: Generation) -> None:
        r.close()
        engine.release(r.seq)
        if r.seq == self.seq:
            self.seq = -1
        r.seq = -1
        self.blocks -= self.per_sample  # its own positions are no longer needed

    def held(self, engine: "Engine") -> int:
        if not self.started:
            return super().held(engine)
        if len(self.reqs) == 1:  # cache length: the prompt and every token but the last drawn
            r = self.reqs[0]
            return -(-(len(self.prompt) + r.n_generated - 1) // engine.block_tokens)
        # samples share the prompt's blocks, the last one until each writes
        # to it: the distinct blocks of their tables
        blocks: set[int] = set()
        for r in self.live:
            blocks.update(engine.block_table(r.seq))
        return len(blocks)

    def sequences(self) -> list[int]:
        if not self.started:
            return super().sequences()
        return [r.seq for r in self.reqs if r.seq >= 0]

    def release(self, engine: "Engine") -> None:
        for s in self.sequences():
            engine.release(s)
        for r in self.reqs:
            r.seq = -1
        self.seq = -1

    def finish_empty(self) -> None:
        for r in self.reqs:
            r.finish_empty()
        self.done = True

    def results(self) -> list[GenerationResult]:
        return [r.result for r in self.reqs]
