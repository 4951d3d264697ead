"""The step contract between the Python tasks and the native model.

A forward step takes a list of StepEntry (one sequence's new rows each) and
gives a StepResult; a multi-step decode call takes DecodeEntry and gives a
DecodeResult. The entries are named tuples: the native side reads them by
position (seq, tokens, logits, samplers, n_generated), Python by name.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Literal, NamedTuple

import numpy as np

if TYPE_CHECKING:
    from .sampling import Sampler

Logits = Literal["none", "last", "all"]

# One draw's logprobs: (logprob of the token drawn, top ids, their logprobs).
TokenLogprobs = tuple[float, list[int], list[float]]


class StepEntry(NamedTuple):
    """Tokens appended to one sequence in a forward step.

    logits: which rows' logits come back ("none", "last" or "all"). With
    samplers (logits "last"), each sampler draws a next token from the last
    row inside the step instead, its n_generated-th; the logits stay native.
    """

    seq: int
    tokens: np.ndarray  # int32 (n,)
    logits: Logits = "none"
    samplers: list[Sampler] | None = None
    n_generated: int = 0
    # float32 (m, n_embd): the rows of its token ids past the vocabulary (an
    # image's), in order; the engine fills it in (vision.ImageTable)
    embeds: np.ndarray | None = None

    @property
    def rows(self) -> int:
        """Logit rows this entry adds to the step's result."""
        if self.samplers:
            return 0
        return {"none": 0, "last": 1}.get(self.logits, len(self.tokens))

    @property
    def draws(self) -> int:
        """Tokens drawn for this entry inside the step."""
        return len(self.samplers) if self.samplers else 0


class StepResult(NamedTuple):
    """A forward step's outputs, in entry order: the logit rows of entries
    without samplers, float32 (rows, vocab); one drawn token per sampler,
    int32; and per sampler None or its logprobs (None when no sampler asked)."""

    logits: np.ndarray
    tokens: np.ndarray
    logprobs: list[TokenLogprobs | None] | None


class DecodeEntry(NamedTuple):
    """One sampled sequence in a multi-step decode call: the token to feed,
    the sampler drawing its next ones, the tokens it generated so far and
    how many more it may draw."""

    seq: int
    token: int
    sampler: Sampler
    n_generated: int
    budget: int


class DecodeResult(NamedTuple):
    """Tokens int32 (steps run, entries), -1 once an entry stopped; logprobs
    None, or per step per entry None / its logprobs."""

    tokens: np.ndarray
    logprobs: list[list[TokenLogprobs | None]] | None


def outputs(entries: list[StepEntry]) -> tuple[int, int]:
    """(logit rows, draws) a list of entries produces."""
    return sum(e.rows for e in entries), sum(e.draws for e in entries)
