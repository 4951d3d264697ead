"""Decode and prompt throughput of llmrt on one model, read against the
machine's memory bandwidth.

    python bench/bench_generate.py [--model PATH] [--threads N] [--runs 5] [--json]

Decode: 128 tokens after a short prompt, batch 1, greedy and sampled
(llama.cpp's default chain: top-k 40, top-p 0.95, min-p 0.05, temperature
0.8). Prompt: a 512-token prompt processed from scratch. Each is the median
of --runs, runs of the two decode kinds alternating. Decode reads every
weight once per token, so weight bytes x tokens/s is the bandwidth it
achieves; the limit printed next to it is a measured multi-threaded read of
a large buffer (numpy, in a thread pool). Only the public API is used, so
the script measures any build (bench/ab.py runs two side by side).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np

import llmrt

TEXT = ("The history of the city begins in antiquity, when traders settled on the river bank. "
        "Over the centuries it grew into a centre of commerce, learning and the arts. ")


SAMPLED = dict(temperature=0.8, top_k=40, top_p=0.95, min_p=0.05)


def weight_bytes_per_token(m: llmrt.Model) -> int:
    """Weight bytes one decode step reads: every matrix once, the embedding
    table one row (but all of it when it is also the output head), and of a
    mixture of experts' stacked tensors the chosen experts' share."""
    from gguf import GGUFReader
    t = {x.name: int(x.n_bytes) for x in GGUFReader(m.path).tensors}
    E, K = m.config.get("n_expert", 0), m.config.get("n_expert_used", 0)
    total = sum(v * K // E if E and k.endswith("_exps.weight") else v
                for k, v in t.items() if k != "token_embd.weight")
    if "output.weight" not in t:
        total += t["token_embd.weight"]
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


def numpy_gemm_gflops(m: int, k: int, n: int, threads: int) -> float | None:
    """The machine's own float32 GEMM figure: OpenBLAS through numpy, (m x k)
    by (k x n), best of 5, limited to `threads` (None without threadpoolctl)."""
    try:
        from threadpoolctl import threadpool_limits
    except ImportError:
        return None
    rng = np.random.default_rng(0)
    a = rng.standard_normal((m, k), dtype=np.float32)
    b = rng.standard_normal((k, n), dtype=np.float32)
    best = float("inf")
    with threadpool_limits(limits=threads):
        for _ in range(5):
            t0 = time.perf_counter()
            a @ b
            best = min(best, time.perf_counter() - t0)
    return 2 * m * k * n / best / 1e9


def cpu_model() -> str:
    """The CPU's name, from /proc/cpuinfo where there is one."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    import platform
    return platform.processor() or "?"


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default=None)
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--decode-tokens", type=int, default=128)
    ap.add_argument("--prompt-tokens", type=int, default=512)
    ap.add_argument("--json", action="store_true", help="print one JSON line of the medians")
    a = ap.parse_args()

    m = llmrt.Model(a.model, threads=a.threads)
    per_token = weight_bytes_per_token(m)
    if not a.json:
        print(f"model: {os.path.basename(m.path)}  {m!r}")
        print(f"build: {llmrt.build_info()}")

    short = m.tokenize("The capital of France is")
    m.generate(short, max_new_tokens=8, ignore_eos=True)  # warm up
    dec, sam = [], []
    for i in range(a.runs):
        for kind, out in (("greedy", dec), ("sampled", sam)):
            m.clear_prefix_cache()
            kw = SAMPLED if kind == "sampled" else {}
            r = m.generate(short, max_new_tokens=a.decode_tokens, ignore_eos=True, seed=i, **kw)
            out.append(r.timings["decode_tokens_per_s"])
    long_ids = (m.tokenize(TEXT * 64, add_special=False))[: a.prompt_tokens]
    pre = []
    for _ in range(a.runs):
        m.clear_prefix_cache()
        r = m.generate(long_ids, max_new_tokens=1)
        pre.append(r.timings["prompt_tokens_per_s"])

    d, s_, p = statistics.median(dec), statistics.median(sam), statistics.median(pre)
    if a.json:
        print(json.dumps({"decode_greedy": d, "decode_sampled": s_, "prompt": p}))
        return
    bw = read_bandwidth(m.threads)
    gbs = d * per_token / 1e9
    print(f"decode  ({a.decode_tokens} tokens, batch 1): {d:8.1f} tok/s  "
          f"(runs: {', '.join(f'{x:.1f}' for x in dec)})")
    print(f"        sampled (top-k 40, top-p 0.95, min-p 0.05, T 0.8): {s_:8.1f} tok/s  "
          f"({s_ / d:.2f}x of greedy; runs: {', '.join(f'{x:.1f}' for x in sam)})")
    print(f"        weights read per token {per_token / 1e6:.1f} MB -> {gbs:.2f} GB/s achieved, "
          f"{bw:.1f} GB/s measured read bandwidth ({100 * gbs / bw:.0f}%), "
          f"bandwidth bound {bw * 1e9 / per_token:.0f} tok/s")
    print(f"prompt  ({len(long_ids)} tokens):         {p:8.1f} tok/s  "
          f"(runs: {', '.join(f'{x:.1f}' for x in pre)})")


if __name__ == "__main__":
    sys.exit(main())
