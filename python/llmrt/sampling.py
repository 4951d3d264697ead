"""Sampling parameters and the sampler (the chain itself is native: csrc/core/sampler.cpp).

Stages, in this order:

    [structured-output mask] -> penalties -> logit bias -> min_new_tokens
    -> top-k -> typical-p -> top-p -> min-p -> temperature -> draw

The filters (top-k .. min-p) cut on the model's own distribution and
temperature only reshapes what survives, so a filter means the same at every
temperature (llama.cpp's default chain has the same order). Temperature 0 is
greedy. With ``mirostat_mode`` 1 or 2 the chain is penalties -> bias ->
temperature -> mirostat -> draw (top-k .. min-p are not used, as in llama.cpp).

Names follow vLLM and llama-cpp-python: ``max_tokens`` is accepted for
``max_new_tokens``. The penalties follow llama.cpp: they see the last
``penalty_last_n`` tokens of prompt and output (-1: all, 0: off);
``repetition_penalty`` divides positive logits and multiplies negative ones,
``presence_penalty`` is subtracted once from every token present and
``frequency_penalty`` once per occurrence.
"""

from __future__ import annotations

import math
import secrets
import weakref
from collections.abc import Iterable
from dataclasses import dataclass, fields, replace
from typing import Any

import numpy as np

from . import _core, structured

ALIASES = {"max_tokens": "max_new_tokens"}
INT32_MAX = 2**31 - 1  # the native sampler's integers


def _is_int(v: Any) -> bool:
    return isinstance(v, (int, np.integer)) and not isinstance(v, bool)


def _is_num(v: Any) -> bool:
    return isinstance(v, (int, float, np.integer, np.floating)) and not isinstance(v, bool)


@dataclass
class SamplingParams:
    """What generate() does: how many tokens, how each is chosen, when to stop."""

    max_new_tokens: int = 128
    temperature: float = 0.0         # 0: greedy
    top_k: int = 0                   # 0: off
    top_p: float = 1.0               # 1: off
    min_p: float = 0.0               # 0: off
    typical_p: float = 1.0           # 1: off
    repetition_penalty: float = 1.0  # 1: off
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    penalty_last_n: int = 64         # -1: the whole context, 0: no penalties
    logit_bias: dict[int, float] | None = None
    mirostat_mode: int = 0           # 0 off, 1 or 2
    mirostat_tau: float = 5.0
    mirostat_eta: float = 0.1
    seed: int | None = None          # None: a fresh random seed
    stop: str | list[str] | None = None
    stop_token_ids: list[int] | None = None
    ignore_eos: bool = False
    min_new_tokens: int = 0
    logprobs: int | None = None      # None: off; k >= 0: the chosen token's and the top k
    n: int = 1                       # independent samples of the prompt
    num_beams: int = 1               # > 1: beam search
    length_penalty: float = 1.0      # beam score = sum logprob / length ** length_penalty
    response_format: Any = None      # JSON Schema / regex / grammar the text follows (structured.py)
    lora: int | None = None          # the LoRA adapter (Model.load_lora's id) the request runs with

    def __post_init__(self) -> None:
        self.validate()

    @classmethod
    def make(cls, base: "SamplingParams | None" = None, **kwargs: Any) -> "SamplingParams":
        """base (or the defaults) with kwargs replaced; aliases accepted,
        unknown names raise ValueError."""
        names = {f.name for f in fields(cls)}
        clean = {}
        for k, v in kwargs.items():
            k2 = ALIASES.get(k, k)
            if k2 not in names:
                raise ValueError(f"unknown sampling parameter {k!r}")
            if k2 in clean:
                raise ValueError(f"{k!r} given twice (as {k2!r} and an alias)")
            clean[k2] = v
        if base is not None and not isinstance(base, SamplingParams):
            raise ValueError(f"params must be a SamplingParams, got {type(base).__name__}")
        return replace(base, **clean) if base is not None else cls(**clean)

    def validate(self) -> None:
        def bad(name: str, want: str) -> None:
            raise ValueError(f"{name} must be {want}, got {getattr(self, name)!r}")

        def num(name: str, lo: float | None = None, hi: float | None = None,
                lo_open: bool = False, want: str = "") -> None:
            v = getattr(self, name)
            if not _is_num(v) or not math.isfinite(v) or \
                    (lo is not None and (v <= lo if lo_open else v < lo)) or \
                    (hi is not None and v > hi):
                bad(name, want)

        def integer(name: str, lo: int, want: str) -> None:
            v = getattr(self, name)
            if not _is_int(v) or v < lo or v > INT32_MAX:
                bad(name, want + f" and at most {INT32_MAX}")

        integer("max_new_tokens", 0, "an integer >= 0")
        num("temperature", 0.0, want="a finite number >= 0")
        integer("top_k", 0, "an integer >= 0")
        num("top_p", 0.0, 1.0, lo_open=True, want="in (0, 1]")
        num("min_p", 0.0, 1.0, want="in [0, 1]")
        num("typical_p", 0.0, 1.0, lo_open=True, want="in (0, 1]")
        num("repetition_penalty", 0.0, lo_open=True, want="a finite number > 0")
        num("presence_penalty", want="a finite number")
        num("frequency_penalty", want="a finite number")
        integer("penalty_last_n", -1, "an integer >= -1")
        if self.logit_bias is not None:
            if not isinstance(self.logit_bias, dict):
                bad("logit_bias", "a dict {token id: bias}")
            for t, b in self.logit_bias.items():
                if not _is_int(t) or not 0 <= t <= INT32_MAX or not _is_num(b) or \
                        math.isnan(b) or b == math.inf:
                    raise ValueError(f"logit_bias must map token ids >= 0 to finite biases "
                                     f"(or -inf), got {t!r}: {b!r}")
        if self.mirostat_mode not in (0, 1, 2) or not _is_int(self.mirostat_mode):
            bad("mirostat_mode", "0, 1 or 2")
        num("mirostat_tau", 0.0, lo_open=True, want="a finite number > 0")
        num("mirostat_eta", 0.0, lo_open=True, want="a finite number > 0")
        if self.seed is not None and (not _is_int(self.seed) or
                                      not -2**63 <= self.seed < 2**64):
            bad("seed", "an integer in [-2**63, 2**64) or None")
        stops = [self.stop] if isinstance(self.stop, str) else self.stop
        if stops is not None and (not isinstance(stops, (list, tuple)) or
                                  any(not isinstance(s, str) or not s for s in stops)):
            bad("stop", "a non-empty string or a list of non-empty strings")
        if self.stop_token_ids is not None and (
                not isinstance(self.stop_token_ids, (list, tuple, set)) or
                any(not _is_int(t) or not 0 <= t <= INT32_MAX for t in self.stop_token_ids)):
            bad("stop_token_ids", "a list of token ids")
        if not isinstance(self.ignore_eos, bool):
            bad("ignore_eos", "True or False")
        integer("min_new_tokens", 0, "an integer >= 0")
        if self.logprobs is not None and (not _is_int(self.logprobs) or
                                          not 0 <= self.logprobs <= 20):
            bad("logprobs", "None or an integer in [0, 20]")
        integer("n", 1, "an integer >= 1")
        integer("num_beams", 1, "an integer >= 1")
        if self.lora is not None and (not _is_int(self.lora) or self.lora < 1):
            bad("lora", "None or an adapter id from Model.load_lora")
        num("length_penalty", want="a finite number")
        if self.num_beams > 1 and (self.temperature > 0 or self.n > 1 or self.mirostat_mode):
            raise ValueError("num_beams > 1 is beam search over log-probabilities: it needs "
                             "temperature=0, n=1 and no mirostat")
        if structured.normalize(self.response_format) is not None and self.num_beams > 1:
            raise ValueError("response_format does not run with beam search (num_beams > 1)")

    @property
    def stop_strings(self) -> list[str]:
        return [self.stop] if isinstance(self.stop, str) else list(self.stop or [])

    @property
    def uses_penalties(self) -> bool:
        return self.penalty_last_n != 0 and (self.repetition_penalty != 1.0 or
                                             self.presence_penalty != 0.0 or
                                             self.frequency_penalty != 0.0)


class Sampler(_core.Sampler):
    """The native sampler chain for one sequence (its own random state).

    A model step draws with it natively (the logits stay in native code);
    calling it draws from logits given here."""

    def __init__(self, params: SamplingParams, n_vocab: int, end_ids: Iterable[int] = (),
                 seed: int | None = None):
        if seed is None:
            seed = params.seed if params.seed is not None else secrets.randbits(63)
        opts = dict(temperature=params.temperature, top_k=params.top_k, top_p=params.top_p,
                    min_p=params.min_p, typical_p=params.typical_p,
                    repetition_penalty=params.repetition_penalty,
                    presence_penalty=params.presence_penalty,
                    frequency_penalty=params.frequency_penalty,
                    penalty_last_n=params.penalty_last_n,
                    logit_bias={int(k): float(v) for k, v in (params.logit_bias or {}).items()},
                    mirostat=params.mirostat_mode, mirostat_tau=params.mirostat_tau,
                    mirostat_eta=params.mirostat_eta, min_new_tokens=params.min_new_tokens,
                    end_ids=sorted(int(i) for i in end_ids if 0 <= i < n_vocab),
                    seed=int(seed) & (2**64 - 1),
                    logprobs=-1 if params.logprobs is None else params.logprobs)
        super().__init__(opts, n_vocab)
        self.params = params
        self._constraint: weakref.ref | None = None  # set by Grammar.constraint
        self._window = params.penalty_last_n if params.uses_penalties else 0
        self._empty = np.zeros(0, np.int32)

    @property
    def constraint(self) -> "structured.Constraint | None":
        """The structured-output constraint whose masks this sampler applies.
        Held weakly: the constraint holds the mask, a view of this sampler's
        memory, and a strong reference back would be a cycle through a numpy
        array, which the garbage collector cannot see (a leaked matcher per
        constrained request). Its request holds it."""
        c = self._constraint() if self._constraint is not None else None
        return c

    @constraint.setter
    def constraint(self, c: "structured.Constraint | None") -> None:
        self._constraint = weakref.ref(c) if c is not None else None

    def __call__(self, logits: np.ndarray, history: np.ndarray | None = None,
                 n_generated: int = 0) -> int:
        """history: int32 array of the tokens so far (prompt and generated)."""
        return self.sample(logits, self._penalized(history), n_generated)

    def distribution(self, logits: np.ndarray, history: np.ndarray | None = None,
                     n_generated: int = 0) -> np.ndarray:
        """The probabilities (float32, vocabulary size) a call with the same
        arguments draws from: one-hot when greedy. Not for mirostat."""
        return super().distribution(logits, self._penalized(history), n_generated)

    def _penalized(self, history: np.ndarray | None) -> np.ndarray:
        """The part of the history the penalties see (none without penalties)."""
        if not self._window or history is None:
            return self._empty
        return history if self._window < 0 else history[-self._window:]


def top_logprobs(logits: np.ndarray, token: int, k: int) -> tuple[float, list[tuple[int, float]]]:
    """log_softmax(logits)[token] and the k most likely (id, logprob), best first."""
    lp, ids, lps = _core.top_logprobs(logits, token, k)
    return lp, list(zip(ids, lps))
