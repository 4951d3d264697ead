"""Microbenchmarks of the CPU matmul kernels (pytest-benchmark).

    python -m pytest bench/bench_kernels.py [--benchmark-min-rounds 20]

Each weight type is timed as matrix-vector (decode: one token, read against
memory bandwidth in GB/s) and matrix-matrix (prompt: 128 tokens, in GOP/s,
2 operations a multiply-add), on 2048 x 2048 weights prepared as a model
would (repacked where the backend does so), with the default thread count.
The throughput of each case is printed after the run.
"""


import numpy as np
import pytest

import llmrt
from llmrt import _core
from llmrt.ggml_types import TYPES as GGML_TYPES
from llmrt.testing.blocks import encode_tensor, random_kquant

TYPES = {name: t.id for name, t in GGML_TYPES.items() if name != "F32"}
ROWS = COLS = 2048
THREADS = llmrt.physical_cores()
RESULTS = []


def _prepared(type_name):
    rng = np.random.default_rng(0)
    if type_name.endswith("_K"):
        raw = random_kquant(type_name, ROWS, COLS, rng)
    else:
        w = rng.standard_normal((ROWS, COLS)).astype(np.float32)
        raw = np.ascontiguousarray(np.asarray(encode_tensor(w, type_name))).view(np.uint8)
    return _core.testing.PreparedMatmul(TYPES[type_name], raw.reshape(ROWS, -1), ROWS, COLS, THREADS)


@pytest.mark.parametrize("type_name", list(TYPES))
def test_matvec(benchmark, type_name):
    pm = _prepared(type_name)
    x = np.random.default_rng(1).standard_normal((1, COLS)).astype(np.float32)
    benchmark(pm, x)
    gbs = pm.nbytes / benchmark.stats.stats.median / 1e9
    benchmark.extra_info["GB/s"] = round(gbs, 2)
    RESULTS.append(f"matvec {type_name:5s} ({pm.layout:5s}) {ROWS}x{COLS}: {gbs:6.2f} GB/s")


@pytest.mark.parametrize("type_name", list(TYPES))
def test_matmul_128_tokens(benchmark, type_name):
    pm = _prepared(type_name)
    x = np.random.default_rng(1).standard_normal((128, COLS)).astype(np.float32)
    benchmark(pm, x)
    gops = 2 * 128 * ROWS * COLS / benchmark.stats.stats.median / 1e9
    benchmark.extra_info["GOP/s"] = round(gops, 1)
    RESULTS.append(f"matmul {type_name:5s} ({pm.layout:5s}) {ROWS}x{COLS} x 128 tokens: "
                   f"{gops:6.1f} GOP/s")


