"""Decode and prompt throughput of llmrt on one model, read against the
machine's memory bandwidth.

    python bench/bench_generate.py [--model PATH] [--threads N] [--runs 5]

Decode: 128 tokens after a short prompt, batch 1, greedy. Prompt: a
512-token prompt processed from scratch. Each is the median of --runs.
Decode reads every weight once per token, so weight bytes x tokens/s is the
bandwidth it achieves; the limit printed next to it is a measured
multi-threaded read of a large buffer (numpy, in a thread pool).
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np

import llmrt

TEXT = ("The history of the city begins in antiquity, when traders settled on the river bank. "
        "Over the centuries it grew into a centre of commerce, learning and the arts. ")


def weight_bytes_per_token(m: llmrt.Model) -> int:
    """Weight bytes one decode step reads: every matrix once, the embedding
    table one row (but all of it when it is also the output head)."""
    t = m._gguf.tensors
    total = sum(v[3].nbytes for k, v in t.items() if k != "token_embd.weight")
    if "output.weight" not in t:
        total += t["token_embd.weight"][3].nbytes
    return total


def read_bandwidth(threads: int, mb: int = 512) -> float:
    """GB/s of summing a buffer much larger than the caches, split over threads."""
    a = np.ones(mb * 1024 * 1024 // 8, dtype=np.float64)
    parts = np.array_split(a, threads)
    best = 0.0
    with ThreadPoolExecutor(threads) as ex:
        for _ in range(5):
            t = time.perf_counter()
            list(ex.map(np.sum, parts))
            best = max(best, a.nbytes / (time.perf_counter() - t) / 1e9)
    return best


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default=None)
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--decode-tokens", type=int, default=128)
    ap.add_argument("--prompt-tokens", type=int, default=512)
    a = ap.parse_args()

    m = llmrt.Model(a.model, threads=a.threads)
    per_token = weight_bytes_per_token(m)
    print(f"model: {os.path.basename(m.path)}  {m!r}")
    print(f"build: {llmrt.build_info()}")

    short = m.tokenize("The capital of France is")
    m.generate(short, max_new_tokens=8, ignore_eos=True)  # warm up
    dec = []
    for _ in range(a.runs):
        m.clear_prefix_cache()
        r = m.generate(short, max_new_tokens=a.decode_tokens, ignore_eos=True)
        dec.append(r.timings["decode_tokens_per_s"])
    long_ids = (m.tokenize(TEXT * 64, add_special=False))[: a.prompt_tokens]
    pre = []
    for _ in range(a.runs):
        t = time.perf_counter()
        m._native.forward(np.asarray(long_ids, np.int32), 0, False)
        pre.append(len(long_ids) / (time.perf_counter() - t))

    bw = read_bandwidth(m.threads)
    d, p = statistics.median(dec), statistics.median(pre)
    gbs = d * per_token / 1e9
    print(f"decode  ({a.decode_tokens} tokens, batch 1): {d:8.1f} tok/s  "
          f"(runs: {', '.join(f'{x:.1f}' for x in dec)})")
    print(f"        weights read per token {per_token / 1e6:.1f} MB -> {gbs:.2f} GB/s achieved, "
          f"{bw:.1f} GB/s measured read bandwidth ({100 * gbs / bw:.0f}%), "
          f"bandwidth bound {bw * 1e9 / per_token:.0f} tok/s")
    print(f"prompt  ({len(long_ids)} tokens):         {p:8.1f} tok/s  "
          f"(runs: {', '.join(f'{x:.1f}' for x in pre)})")


if __name__ == "__main__":
    sys.exit(main())
