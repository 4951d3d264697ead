"""Numpy helpers the runtime and the offline tools (convert, quantize) share:
the q/k row permutation between Hugging Face's and GGUF's RoPE layouts, and
a GGUF tensor's data as float32."""

from __future__ import annotations

import numpy as np


def permute_qk(w: np.ndarray, n_head: int) -> np.ndarray:
    """q / k rows from Hugging Face's order (each head's first half rotated
    with its second half) to GGUF llama's (adjacent pairs rotated)."""
    return (w.reshape(n_head, 2, w.shape[0] // n_head // 2, *w.shape[1:])
            .swapaxes(1, 2).reshape(w.shape))


def dequantize_array(raw: np.ndarray, ggml_type: int, shape: tuple[int, ...]) -> np.ndarray:
    """A GGUF tensor's data -> float32 of the given numpy shape."""
    from gguf.constants import GGMLQuantizationType
    from gguf.quants import dequantize
    return np.asarray(dequantize(np.asarray(raw), GGMLQuantizationType(ggml_type)),
                      np.float32).reshape(shape)
