"""Reranking: documents ordered by relevance to a query.

Encoders with a classification head (cross-encoders: bge-reranker,
ms-marco MiniLM) score each (query, document) pair with it
(llmrt.encoder). A decoder scores a pair as Qwen3-Reranker does: the chance
that the answer to its judging prompt is "yes" rather than "no", read off
the last position's logits of those two tokens.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    from .model import Model

# Qwen3-Reranker's prompt (its model card)
JUDGE_SYSTEM = ('Judge whether the Document meets the requirements based on the Query and the '
                'Instruct provided. Note that the answer can only be "yes" or "no".')
DEFAULT_INSTRUCTION = "Given a web search query, retrieve relevant passages that answer the query"
PROMPT_HEAD = f"<|im_start|>system\n{JUDGE_SYSTEM}<|im_end|>\n<|im_start|>user\n"
PROMPT_TAIL = "<|im_end|>\n<|im_start|>assistant\n<think>\n\n</think>\n\n"


@dataclass
class RerankResult:
    """One document's place in a ranking."""

    index: int        # its position in the documents given
    score: float      # relevance in [0, 1]
    document: str | None = None

    def __iter__(self):  # (index, score) unpacking
        return iter((self.index, self.score))


def check_request(query: Any, documents: Any, top_n: Any) -> None:
    if not isinstance(query, str) or isinstance(documents, (str, bytes)) or \
            not isinstance(documents, Sequence) or not all(isinstance(d, str) for d in documents):
        raise TypeError("rerank takes a query string and a list of document strings")
    if top_n is not None and (isinstance(top_n, bool) or not isinstance(top_n, int) or top_n < 0):
        raise ValueError(f"top_n must be a non-negative integer, got {top_n!r}")


def relevance(logits: np.ndarray) -> np.ndarray:
    """Scores in [0, 1] of classifier logits (n, outputs): the sigmoid of
    one output, else the softmax's probability of class 1."""
    lg = logits.astype(np.float64)
    if lg.shape[1] == 1:
        return (1 / (1 + np.exp(-lg[:, 0]))).astype(np.float32)
    e = np.exp(lg - lg.max(axis=1, keepdims=True))
    return (e[:, 1] / e.sum(axis=1)).astype(np.float32)


def ranked(scores: np.ndarray, documents: Sequence[str], top_n: int | None,
           return_documents: bool) -> list[RerankResult]:
    """Best first (ties: the earlier document first), the top_n of them."""
    order = sorted(range(len(scores)), key=lambda i: (-float(scores[i]), i))
    if top_n is not None:
        order = order[:top_n]
    return [RerankResult(i, float(scores[i]), documents[i] if return_documents else None)
            for i in order]


def _one_token(model: Model, text: str) -> int:
    ids = model.tokenizer.encode(text, add_special=False)
    if len(ids) != 1:
        raise ValueError(f"this model's vocabulary has no single token {text!r}: it cannot "
                         f"rerank as Qwen3-Reranker does")
    return ids[0]


def _head_rows(model: Model, ids: list[int]) -> np.ndarray:
    """Rows of the output head (or the tied embedding) as float32 (len(ids), n_embd)."""
    from . import _core
    g = model.engine._gguf
    name = g.roles.get("output") or g.roles["tok_embd"]
    type_id, rows, cols, buf = g.tensors[name]
    per_row = buf.size // rows
    raw = buf.reshape(rows, per_row)
    return np.stack([_core.dequantize(type_id, np.ascontiguousarray(raw[i]), 1, cols).reshape(-1)
                     for i in ids])


def decoder_scores(model: Model, query: str, documents: Sequence[str],
                   instruction: str | None = None) -> np.ndarray:
    """P(yes) of each document's judging prompt (Qwen3-Reranker's scoring)."""
    if not documents:
        return np.zeros(0, np.float32)
    yes, no = _one_token(model, "yes"), _one_token(model, "no")
    inst = DEFAULT_INSTRUCTION if instruction is None else instruction
    prompts = [f"{PROMPT_HEAD}<Instruct>: {inst}\n<Query>: {query}\n<Document>: {d}{PROMPT_TAIL}"
               for d in documents]
    h = model.embed(prompts, pooling="last", normalize=False, add_special=False)
    w = _head_rows(model, [no, yes]).astype(np.float64)
    lg = h.astype(np.float64) @ w.T  # (n, 2): no, yes
    return relevance(lg)


def decoder_rerank(model: Model, query: str, documents: Sequence[str], top_n: int | None,
                   return_documents: bool, instruction: str | None) -> list[RerankResult]:
    check_request(query, documents, top_n)
    return ranked(decoder_scores(model, query, documents, instruction), documents, top_n,
                  return_documents)
