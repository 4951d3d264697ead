"""Choosing the next token from logits.

Stages, in this order (the order llama.cpp's default chain uses, so that
top-k / top-p / min-p cut on the model's own distribution and temperature
only reshapes what survives): top-k -> top-p -> min-p -> temperature -> draw.
Temperature 0 is greedy (argmax). Each stage works on the surviving
candidates only, never on a full sort of the vocabulary.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np


@dataclass
class SamplerSettings:
    temperature: float = 0.0
    top_k: int = 0        # 0: off
    top_p: float = 1.0    # 1: off
    min_p: float = 0.0    # 0: off
    seed: int | None = None

    def validate(self) -> None:
        t = self.temperature
        if not isinstance(t, (int, float)) or isinstance(t, bool) or not math.isfinite(t) or t < 0:
            raise ValueError(f"temperature must be a finite number >= 0, got {t!r}")
        if not isinstance(self.top_k, int) or isinstance(self.top_k, bool) or self.top_k < 0:
            raise ValueError(f"top_k must be an integer >= 0, got {self.top_k!r}")
        p = self.top_p
        if not isinstance(p, (int, float)) or isinstance(p, bool) or not 0.0 < p <= 1.0:
            raise ValueError(f"top_p must be in (0, 1], got {p!r}")
        m = self.min_p
        if not isinstance(m, (int, float)) or isinstance(m, bool) or not 0.0 <= m <= 1.0:
            raise ValueError(f"min_p must be in [0, 1], got {m!r}")
        if self.seed is not None and (not isinstance(self.seed, int) or isinstance(self.seed, bool)):
            raise ValueError(f"seed must be an integer or None, got {self.seed!r}")


class Sampler:
    def __init__(self, settings: SamplerSettings):
        settings.validate()
        self.s = settings
        self.rng = np.random.default_rng(settings.seed)

    def __call__(self, logits: np.ndarray) -> int:
        s = self.s
        if s.temperature == 0.0 or s.top_k == 1:
            return int(np.argmax(logits))
        logits = np.asarray(logits, dtype=np.float64)
        # top-k (argpartition: O(V)), then sort only the survivors
        if 0 < s.top_k < logits.size:
            cand = np.argpartition(-logits, s.top_k - 1)[: s.top_k]
        else:
            cand = np.arange(logits.size)
        order = np.argsort(-logits[cand], kind="stable")
        cand = cand[order]
        z = logits[cand]
        p = np.exp(z - z[0])
        p /= p.sum()
        keep = p.size
        if s.top_p < 1.0:
            # smallest prefix whose mass reaches top_p
            keep = min(keep, int(np.searchsorted(np.cumsum(p), s.top_p)) + 1)
        if s.min_p > 0.0:
            keep = min(keep, max(1, int(np.count_nonzero(p >= s.min_p * p[0]))))
        cand, z = cand[:keep], z[:keep]
        q = np.exp((z - z[0]) / s.temperature)
        q /= q.sum()
        return int(cand[self.rng.choice(q.size, p=q)])
