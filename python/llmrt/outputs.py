"""What generate() and perplexity() return: results, and the streams that
hand out text as it is produced."""

from __future__ import annotations

import weakref
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .scheduler import Job


@dataclass
class TokenLogprob:
    """One generated token's log-probability under the model (log_softmax of
    the raw logits, before penalties and temperature) and the top alternatives."""
    token_id: int
    logprob: float
    top: list[tuple[int, float]] = field(default_factory=list)  # (id, logprob), best first


@dataclass
class Beam:
    text: str
    token_ids: list[int]
    score: float  # sum of logprobs / len(token_ids) ** length_penalty


@dataclass
class GenerationResult:
    text: str
    token_ids: list[int]
    finish_reason: str  # "stop" (end token or stop string), "length" or "tool_calls"
    prompt_tokens: int = 0
    timings: dict[str, float] = field(default_factory=dict)
    logprobs: list[TokenLogprob] | None = None  # with SamplingParams.logprobs
    beams: list[Beam] | None = None  # beam search: every final beam, best first
    cached_tokens: int = 0  # prompt tokens whose keys and values the prefix cache held
    tool_calls: list | None = None  # chat(tools=...): the calls made (llmrt.tools.ToolCall)
    stop_string: str | None = None  # the stop string that ended it, if one did
    # chat() of a model that reasons first (harmony's analysis channel,
    # <think>...</think>): the reasoning, apart from text (the answer)
    reasoning_content: str | None = None

    def __str__(self) -> str:
        return self.text


@dataclass
class PerplexityResult:
    perplexity: float
    nll: float        # mean negative log-likelihood per scored token (nats)
    tokens: int       # tokens scored
    windows: int
    window: int
    seconds: float


class _Stream:
    """Events of a running job. Reading drives the model (the reading thread
    runs the batch's steps when no other thread is); close() cancels the job
    and frees its KV-cache blocks at once, as does dropping the stream."""

    def __init__(self, job: "Job", shape: Any):
        self._job, self._shape = job, shape
        self._finalizer = weakref.finalize(self, job.abandon)
        self.done = False

    def __iter__(self):
        return self

    def _next_event(self) -> tuple[int, str, int]:
        if self.done:
            raise StopIteration
        ev = self._job.next_event()
        if ev is None:
            self.done = True
            raise StopIteration
        return ev

    def close(self) -> None:
        """Stop generating; what was not read is dropped."""
        if not self.done:
            self._job.cancel()
            self.done = True
            self._job.events.clear()

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def _results(self) -> Any:
        if not self.done or self._job.cancelled:
            raise RuntimeError("the stream has not been read to the end yet")
        return self._shape(self._job.results())


class TextStream(_Stream):
    """Text pieces of a generation as they are produced; ``result`` holds the
    GenerationResult once iteration has finished."""

    def __next__(self) -> str:
        return self._next_event()[1]

    @property
    def result(self) -> GenerationResult:
        res: GenerationResult = self._results()
        return res


class BatchStream(_Stream):
    """(prompt index, text piece) pairs of a batched generation as they are
    produced; ``results`` holds one result per prompt (a list of n for
    n > 1) once iteration has finished."""

    def __next__(self) -> tuple[int, str]:
        return self._next_event()[:2]

    @property
    def results(self) -> list:
        return self._results()
