"""Embeddings of texts from a model's final normed hidden states."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from .model import Model


def file_pooling(meta: dict, arch: str) -> str:
    """The pooling a file's {arch}.pooling_type names (llama.cpp's values:
    1 mean, 2 cls, 3 last), mean where it names none."""
    return {2: "cls", 3: "last"}.get(meta.get(f"{arch}.pooling_type"), "mean")  # type: ignore[arg-type]


def embed(model: Model, texts: str | Sequence[str] | Sequence[Sequence[int]], pooling: str,
          normalize: bool, add_special: bool) -> np.ndarray:
    """Model.embed: the texts (or token id lists) as one batch of fresh
    sequences between the steps of running generations, pooled (mean, first
    or last token) and L2-normalised unless normalize=False."""
    if pooling not in ("mean", "cls", "last"):
        raise ValueError(f"pooling must be 'mean', 'cls' or 'last', got {pooling!r}")
    single = isinstance(texts, str) or (
        isinstance(texts, (list, tuple, np.ndarray)) and len(texts) > 0 and
        not isinstance(texts[0], (str, list, tuple, np.ndarray)))
    items = [texts] if single else list(texts)
    if not items:
        raise ValueError("texts is empty")
    ids = [np.asarray(model.prompt_ids(t, add_special), np.int32)  # type: ignore[arg-type]
           for t in items]
    bt = model.engine.block_tokens
    blocks = sum(-(-len(t) // bt) for t in ids)

    def run() -> np.ndarray:
        eng = model.engine
        seqs = [eng.new_sequence() for _ in ids]
        try:
            return eng.hidden_states(list(zip(seqs, ids)))
        finally:
            for s in seqs:
                eng.release(s)
    h = model.scheduler.exclusive(blocks, run)
    out = np.empty((len(ids), h.shape[1]), np.float32)
    row = 0
    for i, t in enumerate(ids):
        rows = h[row:row + len(t)]
        row += len(t)
        out[i] = rows.mean(axis=0) if pooling == "mean" else rows[0] if pooling == "cls" else rows[-1]
    if normalize:
        out /= np.maximum(np.linalg.norm(out, axis=1, keepdims=True), 1e-12)
    return out

