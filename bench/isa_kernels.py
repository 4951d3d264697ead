"""The integer-dot matmul kernels of every ISA variant this CPU runs, side by
side in one process (the variants alternate, so a noisy machine slows them
alike): SmolLM2-135M's shapes, prepared as a model prepares them (repacked
Q4_1 / Q8_0), for 1 token (decode: GB/s of weights against the measured
read bandwidth), 16 tokens (a batch) and 128 tokens (a prompt chunk), in
GOP/s (2 operations a multiply-add). Ratios are against the first variant.

    [SHAPES=Q4_1x12288x576,...] python bench/isa_kernels.py [--isas avx2,avx512,avx512_vnni] [--threads 1]
        [--runs 15]
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

import numpy as np
from bench_generate import read_bandwidth

import llmrt
from llmrt import _core
from llmrt.ggml_types import TYPES
from llmrt.testing.blocks import encode_tensor

# (type, rows, cols): q/o and gate/up (576-wide rows: 2 groups of 8 blocks and
# a pair), down (1536-wide: 6 groups), the tied Q8_0 head (a slice of it)
SHAPES = [("Q4_1", 1536, 576), ("Q4_1", 576, 1536), ("Q8_0", 8192, 576)]
if os.environ.get("SHAPES"):  # e.g. SHAPES=Q4_1x12288x576,Q8_0x8192x576
    SHAPES = [(t, int(r), int(c)) for t, r, c in (s.split("x") for s in os.environ["SHAPES"].split(","))]


def main() -> None:
    ap = argparse.ArgumentParser()
    runnable = [i for i in llmrt.build_info()["cpu_isa_supported"] if i != "generic"]
    ap.add_argument("--isas", default=",".join(runnable))
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--runs", type=int, default=15)
    a = ap.parse_args()
    isas = a.isas.split(",")
    bw = read_bandwidth(a.threads)
    print(f"{a.threads} thread(s), variants {', '.join(isas)}, read bandwidth {bw:.1f} GB/s, "
          f"medians of {a.runs} alternating runs")
    rng = np.random.default_rng(0)
    for tname, rows, cols in SHAPES:
        w = rng.standard_normal((rows, cols)).astype(np.float32)
        raw = np.ascontiguousarray(np.asarray(encode_tensor(w, tname))).view(np.uint8)
        raw = raw.reshape(rows, -1)
        pms = {i: _core.testing.PreparedMatmul(TYPES[tname].id, raw, rows, cols, a.threads, True, i)
               for i in isas}
        for n in (1, 16, 128):
            x = rng.standard_normal((n, cols)).astype(np.float32)
            ts: dict[str, list[float]] = {i: [] for i in isas}
            reps = max(1, 64 // n)
            for _ in range(a.runs):
                for i in isas:
                    t = time.perf_counter()
                    for _ in range(reps):
                        pms[i](x)
                    ts[i].append((time.perf_counter() - t) / reps)
            med = {i: statistics.median(ts[i]) for i in isas}
            cells = []
            for i in isas:
                if n == 1:
                    fig = f"{pms[i].nbytes / med[i] / 1e9:5.1f} GB/s ({pms[i].nbytes / med[i] / 1e9 / bw:4.0%})"
                else:
                    fig = f"{2 * n * rows * cols / med[i] / 1e9:6.1f} GOP/s"
                cells.append(f"{i} {med[i] * 1e6:7.0f} us {fig} {med[isas[0]] / med[i]:4.2f}x")
            print(f"{tname} {pms[isas[0]].layout:5s} {rows}x{cols} n={n:3d}: " + " | ".join(cells))


if __name__ == "__main__":
    main()
