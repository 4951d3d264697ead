"""Speculative decoding: a draft proposes up to k tokens, the model scores
them all in one forward (one entry of the batch step), and the standard
accept / resample rule (Leviathan et al. 2023, Chen et al. 2023) keeps the
output distribution exactly the model's own; when greedy, the draft stands as
far as it matches the model's own choices.

Drafts come from the text itself (prompt lookup: the tokens that followed the
latest earlier occurrence of the last few tokens) or from a smaller model
with the same vocabulary. How many tokens to draft is chosen each step from
the running acceptance and the measured cost of drafting (DraftLength), down
to none (a plain step) where drafting does not pay.
"""

from __future__ import annotations

import secrets
import time
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from . import masks
from .request import Generation, Task
from .sampling import Sampler
from .step import StepEntry

if TYPE_CHECKING:
    from .engine import Engine
    from .outputs import GenerationResult
    from .scheduler import Job


def accept_or_resample(p: np.ndarray, q: np.ndarray | None, x: int,
                       rng: np.random.Generator) -> int:
    """Speculative sampling at one position: the draft token x, drawn from q
    (None: proposed deterministically, q one-hot at x), stands with
    probability min(1, p[x] / q[x]); otherwise a token drawn from
    max(p - q, 0), renormalised, takes its place. The token that stands is
    distributed as p whatever q is."""
    qx = 1.0 if q is None else float(q[x])
    if rng.random() * qx < p[x]:
        return x
    return draw(_residual(p, q, x), rng)


def draw(probs: np.ndarray, rng: np.random.Generator) -> int:
    """One token drawn from probabilities (any non-negative weights)."""
    c = np.cumsum(probs, dtype=np.float64)
    i = int(np.searchsorted(c, rng.random() * c[-1], side="right"))
    return min(i, len(c) - 1)


def _residual(p: np.ndarray, q: np.ndarray | None, x: int) -> np.ndarray:
    """Where a rejected draft token x sends the draw: max(p - q, 0),
    renormalised (q one-hot at x when the draft is deterministic)."""
    if q is None:
        r = p.astype(np.float64)
        r[x] = 0.0
    else:
        r = np.maximum(p.astype(np.float64) - q, 0.0)
    return r if r.sum() > 0 else p.astype(np.float64)


class PromptLookup:
    """Drafts copied from the sequence itself: the tokens that followed the
    latest earlier occurrence of its last 3 (or 2, or 1) tokens, up to an
    image's (ids past the vocabulary: never a token to draw)."""

    max_ngram = 3

    catch_up = 0.0

    def __init__(self, vocab: int):
        self.vocab = vocab

    def propose(self, hist: np.ndarray, n: int, k: int, greedy: bool,
                rng: np.random.Generator) -> tuple[list[int], list[None]]:
        for g in range(min(self.max_ngram, n - 1), 0, -1):
            tail = hist[n - g:n]
            win = np.lib.stride_tricks.sliding_window_view(hist[:n - 1], g)
            hits = np.flatnonzero((win == tail).all(axis=1))
            if hits.size:
                start = int(hits[-1]) + g
                d = hist[start:min(start + k, n)].tolist()
                d = d[:next((i for i, t in enumerate(d) if t >= self.vocab), len(d))]
                return d, [None] * len(d)
        return [], []

    def keep(self, n: int) -> None:
        pass

    def close(self) -> None:
        pass


class DraftModel:
    """Drafts from a second, smaller model sharing the vocabulary (its
    engine): it keeps its own KV-cache sequence, drawn from with the same
    sampling parameters."""

    def __init__(self, engine: "Engine", r: Generation, seed: int):
        self.engine, self.r = engine, r
        self.sampler = Sampler(r.p, engine.vocab_size, r.end_ids, seed=seed + 1)
        self.catch_up = 0.0  # seconds the last proposal spent on skipped text
        self.seq = engine.new_sequence()
        try:
            self.len = engine.reuse_prefix(self.seq, r.prompt)
        except BaseException:
            self.close()
            raise

    def propose(self, hist: np.ndarray, n: int, k: int, greedy: bool,
                rng: np.random.Generator) -> tuple[list[int], list[np.ndarray | None]]:
        eng = self.engine
        t = time.perf_counter()
        lg = eng.forward(self.seq, hist[self.len:n])  # what it has not seen
        if n - self.len > 2:  # text it skipped (plain steps, the prompt); after
            self.catch_up = time.perf_counter() - t  # a verification it has 1 or 2 to see
        self.len = n
        h = hist[:n + k].copy()
        n_gen = self.r.n_generated
        drafts: list[int] = []
        qs: list[np.ndarray | None] = []
        for i in range(k):
            if greedy:
                x, q = self.sampler(lg, h[:n + i], n_gen + i), None
            else:
                q = self.sampler.distribution(lg, h[:n + i], n_gen + i).astype(np.float64)
                x = draw(q, rng)
            if x in self.r.end_ids:
                break
            drafts.append(x)
            qs.append(q)
            h[n + i] = x
            if i < k - 1:
                lg = eng.forward(self.seq, [x])
                self.len += 1
        return drafts, qs

    def keep(self, n: int) -> None:
        """The first n positions stand; the rest of the draft's are dropped."""
        if self.len > n:
            self.engine.truncate(self.seq, n)
            self.len = n

    def close(self) -> None:
        if self.seq >= 0:
            self.engine.release(self.seq)
            self.seq = -1


class DraftLength:
    """How many tokens to draft next, from 0 (a plain step) to k_max.

    With acceptance rate a (each drafted token standing, if the ones before
    it did), a draft of k yields E(k) = 1 + a + ... + a^k tokens in a step
    that costs T(k) = t0 + c k (t0: a plain step, c: drafting and verifying
    one more token, both measured on this sequence's own steps). The k with
    the most tokens per second wins; when that is 0, a probe of a short
    draft now and then (less often while probes keep failing) keeps the
    acceptance current. The acceptance is a decayed count of the recent
    verifications, so it follows the text (copying, then not). A probe that
    cost more than a few plain steps (a draft model catching up on the text
    it skipped) spaces the next ones so that they cost about 2% of the time.
    """

    decay = 0.8          # weight of the past in the acceptance counts, per verification
    smooth = 0.3         # weight of a new time in the running means
    c_prior = 0.15       # c / t0 before both are measured
    refresh = 64         # steps between plain steps that re-measure t0
    probe_k = 1          # a probe drafts one token: a failed probe costs c
    probe_first = 16     # plain steps before the first probe (doubling up to probe_last)
    probe_last = 256
    probe_share = 0.02   # of the time, what probes may cost

    def __init__(self, k_max: int):
        self.k_max = k_max
        self.hit, self.miss = 1.0, 1.0  # prior: a = 0.5
        self.t0: float | None = None
        self.c: float | None = None
        self.verified = 0               # verifications since t0 was measured
        self.idle = 0                   # plain steps since the last probe
        self.probe_every = self.probe_first
        self._best: int | None = None   # best(), until a verification changes it
        self.probing = False

    @property
    def acceptance(self) -> float:
        return self.hit / (self.hit + self.miss)

    def best(self) -> int:
        a = self.acceptance
        t0 = 1.0 if self.t0 is None else self.t0
        c = self.c_prior * t0 if self.c is None else self.c
        rate = [(1.0 - a ** (k + 1)) / (1.0 - a) / (t0 + c * k) if a < 1.0 else (k + 1) / (t0 + c * k)
                for k in range(self.k_max + 1)]
        return int(np.argmax(rate))

    def choose(self, room: int) -> int:
        if room <= 0:
            return 0
        if self.verified >= (2 if self.t0 is None else self.refresh):
            return 0  # a plain step to (re-)measure t0
        if self._best is None:
            self._best = self.best()
        k = self._best
        if k == 0:
            self.idle += 1
            if self.idle >= self.probe_every:
                self.idle = 0
                self.probe_every = min(2 * self.probe_every, self.probe_last)
                self.probing = True
                k = self.probe_k
        else:
            self.probe_every = self.probe_first
        return min(k, room)

    def observe(self, drafted: int, accepted: int, seconds: float, catch_up: float = 0.0) -> None:
        """One step: drafted tokens (0: a plain step), how many stood, its
        time (drafting included) and the part of it a draft model spent on
        the text it had skipped (not a cost of drafting in steady state)."""
        mix = self.smooth
        if self.probing and drafted and self.t0 is not None:
            cost = max(seconds - self.t0, 0.0)
            self.probe_every = max(self.probe_every,
                                   min(int(cost / (self.probe_share * self.t0)), 4 * self.probe_last))
        self.probing = False
        seconds -= catch_up
        if drafted == 0:
            if self.t0 is None:
                self._best = None
            self.t0 = seconds if self.t0 is None else (1 - mix) * self.t0 + mix * seconds
            self.verified = 0
            return
        self._best = None
        self.verified += 1
        self.hit = self.decay * self.hit + accepted
        self.miss = self.decay * self.miss + (1.0 if accepted < drafted else 0.0)
        if self.t0 is not None:
            c = max(seconds - self.t0, 0.0) / drafted
            self.c = c if self.c is None else (1 - mix) * self.c + mix * c


class Speculative(Task):
    """One sequence decoded speculatively: each step verifies the draft's
    proposals (or, with none, takes one token drawn inside the step)."""

    def __init__(self, job: "Job", index: int, r: Generation, blocks: int,
                 draft: "str | Engine", num_draft: int):
        super().__init__(job, index, r.prompt, r.p, blocks)
        self.r, self.draft, self.num_draft = r, draft, num_draft
        seed = r.p.seed if r.p.seed is not None else secrets.randbits(63)
        self.seed = seed
        self.rng = np.random.default_rng(seed)
        self.src: Any = None
        self.drafts: list[int] = []
        self.qs: list = []
        self.n = 0  # the sequence's tokens when the drafts were made
        self.masks: masks.Pending | None = None  # a constraint's masks at the drafted positions
        self.length = DraftLength(num_draft)
        self.t_step = 0.0  # when the last step's results were taken
        self.accepted = 0  # draft tokens that stood in the last step

    def admit(self, engine: "Engine") -> None:
        super().admit(engine)
        self.r.t_admit = time.perf_counter()
        self.r.result.cached_tokens = self.pos
        self.src = (PromptLookup(engine.vocab_size) if isinstance(self.draft, str)
                    else DraftModel(self.draft, self.r, self.seed))

    def first_entry(self, tokens: np.ndarray) -> StepEntry:
        return StepEntry(self.seq, tokens, "last", [self.r.sampler], 0)

    def entries(self) -> list[StepEntry]:
        r = self.r
        n = self.n = r.n_hist  # the cache holds n - 1 positions; r.tok is hist[n - 1]
        room = self.length.choose(min(self.num_draft, r.p.max_new_tokens - r.n_generated - 1,
                                      r.n_ctx - n))
        self.drafts, self.qs = (self.src.propose(r.hist, n, room, r.greedy, self.rng)
                                if room > 0 else ([], []))
        c = r.constraint
        if c is not None and self.drafts:
            # draft tokens the constraint rejects are cut before verification;
            # the masks at the positions verified are computed during the step
            k = c.valid_prefix(self.drafts)
            self.drafts, self.qs = self.drafts[:k], self.qs[:k]
            self.src.keep(n + k)  # a draft model's cache drops the cut tokens
            if self.drafts:
                drafts = list(self.drafts)
                self.masks = masks.submit(lambda: c.draft_masks(drafts))
        if not self.drafts:
            return [StepEntry(self.seq, np.array([r.tok], np.int32), "last", [r.sampler], r.n_generated)]
        return [StepEntry(self.seq, np.asarray([r.tok] + self.drafts, np.int32), "all")]

    def apply(self, engine: "Engine", logits: np.ndarray, tokens: np.ndarray,
              logprobs: Sequence | None) -> None:
        # a step's time runs from the end of the last one's apply to the end
        # of its own: drafting, the forward and taking the tokens
        drafted, first = len(self.drafts), not self.started
        self.accepted = 0
        try:
            self._apply(engine, logits, tokens, logprobs)
        finally:
            now = time.perf_counter()
            if not first:
                catch_up = self.src.catch_up if drafted else 0.0
                self.length.observe(drafted, self.accepted, now - self.t_step, catch_up)
            self.t_step = now
            if self.src is not None:
                self.src.catch_up = 0.0

    def _apply(self, engine: "Engine", logits: np.ndarray, tokens: np.ndarray,
               logprobs: Sequence | None) -> None:
        r = self.r
        if not self.started:
            self.started = True
            r.t_prompt = time.perf_counter()
            r.seq = self.seq
        else:
            r.forwards += 1
        if not self.drafts:  # one token, drawn in the step
            tok = int(tokens[0])
            r.add_logprob(tok, logprobs[0] if logprobs else None)
            self._emit(tok)
            return
        drafts, qs, n = self.drafts, self.qs, self.n
        if self.masks is not None:  # the constrained distribution at each position
            words, self.masks = self.masks.wait(), None
            logits = np.stack([masks.masked(logits[i], words[i])
                               for i in range(len(drafts) + 1)])
        r.drafted += len(drafts)
        a, nxt = 0, None
        for i, x in enumerate(drafts):
            if r.greedy:
                y = r.choose(logits[i])
            else:
                y = accept_or_resample(r.distribution(logits[i]), qs[i], x, self.rng)
                r.note_logprob(logits[i], y)
            if y != x:
                nxt = y
                break
            a += 1
            if r.emit(x):
                break
        r.accepted += a
        self.accepted = a
        self.drafts = []
        if r.done:
            self._finish()
            return
        if nxt is None:  # every draft token stood: one more from the last row
            if r.greedy:
                nxt = r.choose(logits[a])
            else:
                nxt = draw(r.distribution(logits[a]), self.rng)
                r.note_logprob(logits[a], nxt)
        engine.truncate(self.seq, n + a)  # drop the rejected draft's keys and values
        self.src.keep(n + a)
        self._emit(nxt)

    def _emit(self, tok: int) -> None:
        if self.r.emit(tok):
            self._finish()

    def _finish(self) -> None:
        self.r.close()
        self.done = True

    def held(self, engine: "Engine") -> int:
        if not self.started:
            return super().held(engine)
        return -(-(self.r.n_hist - 1) // engine.block_tokens)

    def release(self, engine: "Engine") -> None:
        super().release(engine)
        self.r.seq = -1
        if self.src is not None:
            self.src.close()

    def finish_empty(self) -> None:
        self.r.finish_empty()
        self.done = True

    def results(self) -> list["GenerationResult"]:
        return [self.r.result]
