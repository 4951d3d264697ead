"""Beam search over log-probabilities, as a task of the batch.

Each beam is a KV-cache sequence; a beam's children fork it (blocks shared,
copied on write), and all the beams advance in one step. A beam that picks
an end token becomes a finished hypothesis scored sum logprob / length **
length_penalty (length: generated tokens); the search ends when num_beams
hypotheses are finished and no live beam can beat the worst of them, or at
max_new_tokens. Stop strings cut the final texts.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import TYPE_CHECKING, NamedTuple

import numpy as np

from .outputs import Beam, GenerationResult
from .request import Task
from .sampling import SamplingParams, top_logprobs
from .step import StepEntry

if TYPE_CHECKING:
    from .engine import Engine
    from .scheduler import Job
    from .tokenizer import Tokenizer


class LiveBeam(NamedTuple):
    """A beam still growing: its KV-cache sequence, its tokens so far and
    their summed logprob."""

    seq: int
    tokens: list[int]
    logprob: float


class Hypothesis(NamedTuple):
    """A finished beam: its length-penalised score, its tokens, and whether
    it ended on an end token (rather than at the length limit)."""

    score: float
    tokens: list[int]
    ended: bool


class Candidate(NamedTuple):
    """A beam's possible next token: the summed logprob with it, the beam's
    index and the token."""

    logprob: float
    beam: int
    token: int


class BeamSearch(Task):
    def __init__(self, job: "Job", index: int, prompt: list[int], p: SamplingParams,
                 end_ids: set[int], tokenizer: "Tokenizer", context_length: int, blocks: int):
        super().__init__(job, index, prompt, p, blocks)
        self.width = p.num_beams
        self.end_ids, self.tokenizer = end_ids, tokenizer
        self.max_new = min(p.max_new_tokens, context_length - len(prompt) + 1)
        self.beams: list[LiveBeam] = []
        self.hyps: list[Hypothesis] = []
        self.step_i = 0
        self.result = GenerationResult(text="", token_ids=[], finish_reason="length",
                                       prompt_tokens=len(prompt))
        self.t_admit: float | None = None
        self.t_prompt: float | None = None

    def admit(self, engine: "Engine") -> None:
        super().admit(engine)
        self.t_admit = time.perf_counter()
        self.result.cached_tokens = self.pos

    def first_entry(self, tokens: np.ndarray) -> StepEntry:
        return StepEntry(self.seq, tokens, "last")

    def entries(self) -> list[StepEntry]:
        return [StepEntry(b.seq, np.asarray(b.tokens[-1:], np.int32), "last") for b in self.beams]

    def _score(self, total: float, n: int) -> float:
        return total / (max(n, 1) ** self.p.length_penalty)

    def apply(self, engine: "Engine", logits: np.ndarray, tokens: np.ndarray,
              logprobs: Sequence | None) -> None:
        if not self.started:
            self.started = True
            self.t_prompt = time.perf_counter()
            self.beams = [LiveBeam(self.seq, [], 0.0)]
            self.seq = -1  # the beams own the sequences now
        B, step = self.p.num_beams, self.step_i
        cands: list[Candidate] = []
        for bi, (beam, lg) in enumerate(zip(self.beams, logits)):
            _, top = top_logprobs(lg, 0, 2 * B)  # the 2B most likely and their logprobs
            cands.extend(Candidate(beam.logprob + lp, bi, t) for t, lp in top)
        cands.sort(key=lambda c: (-c.logprob, c.beam, c.token))
        chosen: list[Candidate] = []
        for rank, c in enumerate(cands):
            if c.token in self.end_ids:
                if rank < B:  # only end tokens among the best B candidates finish a beam
                    toks = self.beams[c.beam].tokens
                    self.hyps.append(Hypothesis(self._score(c.logprob, len(toks) + 1), toks, True))
                continue
            chosen.append(c)
            if len(chosen) == B:
                break
        last = step == self.max_new - 1
        best_live = max((c.logprob for c in chosen), default=-np.inf)
        finished = len(self.hyps) >= B and (
            not chosen or
            min(sorted((h.score for h in self.hyps), reverse=True)[:B]) >=
            self._score(best_live, step + 1))
        if finished or last or not chosen:
            if not finished:
                self.hyps.extend(Hypothesis(self._score(c.logprob, step + 1),
                                            self.beams[c.beam].tokens + [c.token], False)
                                 for c in chosen)
            self._finish()
            return
        # children: the first child of a beam takes over its sequence, the
        # others fork it before it moves on
        users: dict[int, int] = {}
        for c in chosen:
            users[c.beam] = users.get(c.beam, 0) + 1
        new: list[LiveBeam] = []
        try:
            for c in chosen:
                parent = self.beams[c.beam]
                users[c.beam] -= 1
                seq = engine.fork(parent.seq) if users[c.beam] > 0 else parent.seq
                new.append(LiveBeam(seq, parent.tokens + [c.token], c.logprob))
        except BaseException:
            for b in new:  # the forks made so far
                if b.seq not in (x.seq for x in self.beams):
                    engine.release(b.seq)
            raise
        old, self.beams = self.beams, new
        for bi, b in enumerate(old):
            if bi not in users:  # no child: its blocks go back
                engine.release(b.seq)
        self.step_i += 1

    def _finish(self) -> None:
        res, p = self.result, self.p
        done = sorted(self.hyps, key=lambda h: -h.score)[:self.p.num_beams]
        stops = p.stop_strings
        out = []
        for h in done:
            text = self.tokenizer.decode(h.tokens, skip_special=True)
            for s in stops:
                i = text.find(s)
                if i != -1:
                    text = text[:i]
            out.append(Beam(text, list(h.tokens), float(h.score)))
        best = out[0]
        t_end = time.perf_counter()
        res.text, res.token_ids = best.text, best.token_ids
        res.finish_reason = "stop" if done[0].ended or any(s in self.tokenizer.decode(
            best.token_ids, skip_special=True) for s in stops) else "length"
        res.beams = out
        t0 = self.job.t0
        t_admit = self.t_admit if self.t_admit is not None else t0
        t_prompt = self.t_prompt if self.t_prompt is not None else t_admit
        res.timings = {
            "prompt_ms": (t_prompt - t_admit) * 1e3,
            "time_to_first_token_ms": (t_prompt - t0) * 1e3,
            "decode_ms": (t_end - t_prompt) * 1e3,
            "prompt_tokens_per_s": len(self.prompt) / max(t_prompt - t_admit, 1e-9),
            "decode_tokens_per_s": 0.0,
            "queue_ms": (t_admit - t0) * 1e3,
        }
        self.done = True

    def held(self, engine: "Engine") -> int:
        if not self.started:
            return super().held(engine)
        blocks: set[int] = set()
        for seq, _, _ in self.beams:
            blocks.update(engine.block_table(seq))
        return len(blocks)

    def sequences(self) -> list[int]:
        return super().sequences() + [b.seq for b in self.beams]

    def release(self, engine: "Engine") -> None:
        super().release(engine)
        self.beams = []

    def finish_empty(self) -> None:
        self.result.timings = {"prompt_ms": 0.0}
        self.result.beams = []
        self.done = True

    def results(self) -> list[GenerationResult]:
        return [self.result]
