"""Continuous batching throughput: generated tokens/s with 1, 4, 16 and 64
concurrent requests (distinct chat prompts, a fixed number of new tokens
each), the ratio to one request, and the compute rate achieved against the
rate the same kernels reach on one 128-token prompt in the same run.

    python bench/batching.py [--model PATH] [--threads 2] [--runs 3]
        [--concurrency 1,4,16,64] [--new-tokens 64] [--batch-invariant]
        [--sampled] [--callers list|threads] [--json]

--sampled draws with llama.cpp's default chain (top-k 40, top-p 0.95,
min-p 0.05, temperature 0.8) instead of greedily. --callers threads sends
each request from its own thread (one generate() call each, joining the one
batch) instead of one generate() over the list.
"""

from __future__ import annotations

import argparse
import json
import statistics
import threading
import time

import llmrt

TOPICS = ["the ocean", "volcanoes", "the moon", "bread", "bicycles", "rain", "libraries",
          "chess", "honey bees", "glaciers", "trains", "coffee", "owls", "deserts", "music",
          "bridges", "the internet", "gardens", "whales", "mountains", "clocks", "paper",
          "lightning", "forests", "salt", "maps", "kites", "islands", "snow", "rivers",
          "castles", "cheese"]
STYLES = ["Write a short poem about", "Explain to a child", "Give three facts about",
          "Describe a day spent studying"]


def prompts(m: llmrt.Model, n: int) -> list[str]:
    out = []
    for i in range(n):
        q = f"{STYLES[(i // len(TOPICS)) % len(STYLES)]} {TOPICS[i % len(TOPICS)]}."
        out.append(m.apply_chat_template([{"role": "user", "content": q}]))
    return out


def matmul_flops_per_token(cfg: dict) -> float:
    d, hd = cfg["n_embd"], cfg["head_dim"]
    q, kv = cfg["n_head"] * hd, cfg["n_head_kv"] * hd
    layer = d * q * 2 + d * kv * 2 + 3 * d * cfg["n_ff"]
    return 2.0 * (cfg["n_layer"] * layer + cfg["n_vocab"] * d)


def run_threads(m: llmrt.Model, ps: list[str], kw: dict) -> list:
    """Each prompt from its own thread, released together."""
    out = [None] * len(ps)
    go = threading.Barrier(len(ps))

    def one(i):
        go.wait()
        out[i] = m.generate(ps[i], **kw)
    ts = [threading.Thread(target=one, args=(i,)) for i in range(len(ps))]
    for t in ts:
        t.start()
    for t in ts:
        t.join()
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default=None)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--concurrency", default="1,4,16,64")
    ap.add_argument("--new-tokens", type=int, default=64)
    ap.add_argument("--batch-invariant", action="store_true")
    ap.add_argument("--sampled", action="store_true")
    ap.add_argument("--callers", choices=("list", "threads"), default="list")
    ap.add_argument("--json", action="store_true", help="one JSON line: tok/s per level")
    a = ap.parse_args()
    levels = [int(x) for x in a.concurrency.split(",")]
    m = llmrt.Model(a.model, threads=a.threads, context_length=1024,
                    kv_cache_tokens=max(levels) * 256, batch_invariant=a.batch_invariant)
    flops = matmul_flops_per_token(m.config)
    kw = dict(max_new_tokens=a.new_tokens, ignore_eos=True, add_special=False)
    if a.sampled:
        kw.update(temperature=0.8, top_k=40, top_p=0.95, min_p=0.05, seed=1)

    # the kernels' compute ceiling in this run: one 128-token prompt (the
    # tile kernels at full width, little attention)
    long_ids = m.tokenize(" ".join(TOPICS) * 40, add_special=False)[:128]
    m.generate(long_ids[:64], max_new_tokens=1)  # warm-up
    pf = []
    for _ in range(max(5, a.runs)):
        m.clear_prefix_cache()
        t = time.perf_counter()
        m.logits(long_ids)
        pf.append(len(long_ids) / (time.perf_counter() - t))
    prefill = max(pf)  # the best the kernels did

    if not a.json:
        print(f"{m!r}, {a.new_tokens} new tokens a request, batch_invariant="
              f"{a.batch_invariant}, {'sampled' if a.sampled else 'greedy'}, callers: {a.callers}")
        print(f"ceiling: one 128-token prompt at best {prefill:.0f} tok/s = "
              f"{prefill * flops / 1e9:.1f} GFLOP/s of matmuls")
    base = None
    summary = {}
    for n in levels:
        ps = prompts(m, n)
        rates, ptoks = [], 0
        for _ in range(a.runs):
            m.clear_prefix_cache()
            t = time.perf_counter()
            res = m.generate(ps, **kw) if a.callers == "list" else run_threads(m, ps, kw)
            dt = time.perf_counter() - t
            gen = sum(len(r.token_ids) for r in res)
            ptoks = sum(r.prompt_tokens for r in res)
            rates.append(gen / dt)
        r = statistics.median(rates)
        base = base or r
        gflops = (r + r * ptoks / (n * a.new_tokens)) * flops / 1e9
        summary[f"c{n}"] = r
        if a.json:
            continue
        print(f"{n:3d} concurrent: {r:7.1f} generated tok/s  {r / base:5.2f}x of one   "
              f"{gflops:5.1f} GFLOP/s ({100 * gflops / (prefill * flops / 1e9):3.0f}% of "
              f"ceiling)   [runs {' '.join(f'{x:.0f}' for x in rates)}]")
    if a.json:
        print(json.dumps(summary))


if __name__ == "__main__":
    main()
