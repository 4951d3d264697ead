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
from typing import TYPE_CHECKING

import numpy as np

from .outputs import Beam, GenerationResult
from .request import Task
from .sampling import SamplingParams, top_logprobs

if TYPE_CHECKING:
    from .engine import Engine, Entry
    from .scheduler import Job
    from .tokenizer import Tokenizer


class BeamSearch(Task):
    def __init__(self, job: "Job", index: int, prompt: list[int], p: SamplingParams,
                 end_ids: set[int], tokenizer: "Tokenizer", context_length: int, blocks: int):
        super().__init__(job, index, prompt, p, blocks)
        self.width = p.num_beams
        self.end_ids, self.tokenizer = end_ids, tokenizer
        self.max_new = min(p.max_new_tokens, context_length - len(prompt) + 1)
        self.beams: list[tuple[int, list[int], float]] = []  # (seq, tokens, sum logprob)
        self.hyps: list[tuple[float, list[int], bool]] = []  # (score, tokens, ended on an end token)
        self.step_i = 0
        self.result = GenerationResult(text="", token_ids=[], finish_reason="length",
                                       prompt_tokens=len(prompt))
        self.t_admit: float | None = None
        self.t_prompt: float | None = None

    def admit(self, engine: "Engine") -> None:
        super().admit(engine)
        self.t_admit = time.perf_counter()
        self.result.cached_tokens = self.pos

    def first_entry(self, tokens: np.ndarray) -> "Entry":
        return (self.seq, tokens, "last")

    def entries(self) -> list["Entry"]:
        return [(seq, np.asarray(toks[-1:], np.int32), "last") for seq, toks, _ in self.beams]

    def _score(self, total: float, n: int) -> float:
        return total / (max(n, 1) ** self.p.length_penalty)

    def apply(self, engine: "Engine", logits: np.ndarray, tokens: np.ndarray,
              logprobs: Sequence | None) -> None:
        if not self.started:
            self.started = True
            self.t_prompt = time.perf_counter()
            self.beams = [(self.seq, [], 0.0)]
            self.seq = -1  # the beams own the sequences now
        B, step = self.p.num_beams, self.step_i
        cands: list[tuple[float, int, int]] = []
        for bi, ((_, _toks, total), lg) in enumerate(zip(self.beams, logits)):
            _, top = top_logprobs(lg, 0, 2 * B)  # the 2B most likely and their logprobs
            cands.extend((total + lp, bi, t) for t, lp in top)
        cands.sort(key=lambda c: (-c[0], c[1], c[2]))
        chosen = []
        for rank, (total, bi, t) in enumerate(cands):
            if t in self.end_ids:
                if rank < B:  # only end tokens among the best B candidates finish a beam
                    toks = self.beams[bi][1]
                    self.hyps.append((self._score(total, len(toks) + 1), toks, True))
                continue
            chosen.append((total, bi, t))
            if len(chosen) == B:
                break
        last = step == self.max_new - 1
        best_live = max((c[0] for c in chosen), default=-np.inf)
        finished = len(self.hyps) >= B and (
            not chosen or
            min(sorted((d[0] for d in self.hyps), reverse=True)[:B]) >=
            self._score(best_live, step + 1))
        if finished or last or not chosen:
            if not finished:
                self.hyps.extend((self._score(total, step + 1), self.beams[bi][1] + [t], False)
                                 for total, bi, t in chosen)
            self._finish()
            return
        # children: the first child of a beam takes over its sequence, the
        # others fork it before it moves on
        users: dict[int, int] = {}
        for _, bi, _ in chosen:
            users[bi] = users.get(bi, 0) + 1
        new = []
        try:
            for total, bi, t in chosen:
                parent = self.beams[bi][0]
                users[bi] -= 1
                seq = engine.fork(parent) if users[bi] > 0 else parent
                new.append((seq, self.beams[bi][1] + [t], total))
        except BaseException:
            for seq, _, _ in new:  # the forks made so far
                if seq not in (b[0] for b in self.beams):
                    engine.release(seq)
            raise
        old, self.beams = self.beams, new
        for bi, b in enumerate(old):
            if bi not in users:  # no child: its blocks go back
                engine.release(b[0])
        self.step_i += 1

    def _finish(self) -> None:
        res, p = self.result, self.p
        done = sorted(self.hyps, key=lambda d: -d[0])[:self.p.num_beams]
        stops = p.stop_strings
        out = []
        for sc, toks, _ended in done:
            text = self.tokenizer.decode(toks, skip_special=True)
            for s in stops:
                i = text.find(s)
                if i != -1:
                    text = text[:i]
            out.append(Beam(text, list(toks), float(sc)))
        best = out[0]
        t_end = time.perf_counter()
        res.text, res.token_ids = best.text, best.token_ids
        res.finish_reason = "stop" if done[0][2] or any(s in self.tokenizer.decode(
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
        return super().sequences() + [b[0] for b in self.beams]

    def release(self, engine: "Engine") -> None:
        super().release(engine)
        self.beams = []

    def finish_empty(self) -> None:
        self.result.timings = {"prompt_ms": 0.0}
        self.result.beams = []
        self.done = True

    def results(self) -> list[GenerationResult]:
        return [self.result]
