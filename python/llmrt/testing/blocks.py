"""GGUF blocks for tests and benchmarks: a plain numpy decoding of every
block layout (independent of the native kernels), random K-quant blocks and
gguf's own encoders."""

from __future__ import annotations

import gguf
import numpy as np
from gguf import GGMLQuantizationType as QT

from ..ggml_types import TYPES as GGML_TYPES


def dequantize_ref(raw: np.ndarray, type_name: str, rows: int, cols: int) -> np.ndarray:
    """GGUF bytes of a (rows, cols) tensor -> float64 values."""
    raw = np.ascontiguousarray(raw).view(np.uint8).reshape(rows, -1)
    if type_name == "F32":
        return raw.view(np.float32).astype(np.float64)
    if type_name == "F16":
        return raw.view(np.float16).astype(np.float64)
    if type_name == "BF16":
        return (raw.view(np.uint16).astype(np.uint32) << 16).view(np.float32).astype(np.float64)
    nb = cols // 32
    if type_name == "Q8_0":
        b = raw.reshape(rows, nb, 34)
        d = b[..., :2].copy().view(np.float16).astype(np.float64)  # (rows, nb, 1)
        q = b[..., 2:].copy().view(np.int8).astype(np.float64)
        return (d * q).reshape(rows, cols)
    if type_name == "MXFP4":  # doubled E2M1 values, half the E8M0 scale
        b = raw.reshape(rows, nb, 17)
        e = b[..., :1].astype(np.int64)
        d = np.ldexp(1.0, e - 128)  # (rows, nb, 1); 2^(e - 128) exactly, subnormal scales too
        qs = b[..., 1:]
        q = np.concatenate([qs & 0x0F, qs >> 4], axis=-1)
        values = np.array([0, 1, 2, 3, 4, 6, 8, 12, 0, -1, -2, -3, -4, -6, -8, -12], np.float64)
        return (d * values[q]).reshape(rows, cols)
    if type_name in ("Q4_0", "Q4_1"):
        size = 18 if type_name == "Q4_0" else 20
        b = raw.reshape(rows, nb, size)
        d = b[..., :2].copy().view(np.float16).astype(np.float64)
        qs = b[..., size - 16:]
        q = np.concatenate([qs & 0x0F, qs >> 4], axis=-1).astype(np.float64)  # j, j+16
        if type_name == "Q4_0":
            return (d * (q - 8)).reshape(rows, cols)
        m = b[..., 2:4].copy().view(np.float16).astype(np.float64)
        return (d * q + m).reshape(rows, cols)
    if type_name in ("Q5_0", "Q5_1", "Q4_K", "Q5_K", "Q6_K"):
        # gguf-py's own dequantizer: an implementation independent of llmrt's
        return gguf.quants.dequantize(raw, QT[type_name]).astype(np.float64).reshape(rows, cols)
    raise ValueError(type_name)


KQUANT_BYTES = {n: GGML_TYPES[n].nbytes for n in ("Q4_K", "Q5_K", "Q6_K")}


def random_kquant(type_name: str, rows: int, cols: int, rng: np.random.Generator,
                  scale: float = 1.0) -> np.ndarray:
    """Random K-quant blocks (any bit pattern is a valid block) with fp16
    super-block scales chosen so weights are O(scale); (rows, bytes per row) uint8."""
    size = KQUANT_BYTES[type_name]
    nb = cols // 256
    raw = rng.integers(0, 256, (rows, nb, size), dtype=np.uint8)
    # |w| ~ d * sub-scale (~32, up to 63; Q6_K's int8 up to 127) * q (~8..32)
    unit = scale / (32 * 8 if type_name != "Q6_K" else 64 * 16)
    d = ((rng.random((rows, nb)) + 0.5) * unit).astype(np.float16).view(np.uint8)
    if type_name == "Q6_K":
        raw[..., 208:210] = d.reshape(rows, nb, 2)
    else:
        raw[..., 0:2] = d.reshape(rows, nb, 2)
        dmin = (rng.random((rows, nb)) * unit).astype(np.float16).view(np.uint8)
        raw[..., 2:4] = dmin.reshape(rows, nb, 2)
    return raw.reshape(rows, nb * size)


def encode_tensor(w: np.ndarray, type_name: str) -> np.ndarray:
    """float32 (rows, cols) -> what gguf's writer stores for that type."""
    w = np.ascontiguousarray(w, dtype=np.float32)
    if type_name == "F32":
        return w
    if type_name == "F16":
        return w.astype(np.float16)
    return gguf.quants.quantize(w, QT[type_name])
