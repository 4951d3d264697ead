"""Long contexts and prefix caching, llmrt next to llama-cpp-python (flash
attention on, F16 KV cache on both) on the same GGUF, same threads, one run:

- decode tokens/s at context 0.5k / 2k / 8k (32 greedy tokens after a prompt
  of that length; the prompt is processed once and each run restarts from it)
- prompt tokens/s for a 2k-token prompt from an empty cache
- time to first token of a 2k-token prompt sent twice through generate():
  the second time llmrt finds its blocks in the prefix cache

    python bench/long_context.py [--model PATH] [--threads 2] [--runs 3]
        [--contexts 512,2048,8192]

Medians of --runs alternating runs. The KV cache is also read against the
memory it takes: bytes read per decode step at each context.
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

import numpy as np
from bench_generate import TEXT, weight_bytes_per_token
from compare import LlamaCppRunner, LlmrtRunner

import llmrt


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default=None)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--decode-tokens", type=int, default=32)
    ap.add_argument("--contexts", default="512,2048,8192")
    ap.add_argument("--no-llama-cpp", action="store_true")
    a = ap.parse_args()
    path = a.model or llmrt.default_model_path()
    n_train = llmrt.Model(path, threads=1, context_length=64).config["n_ctx_train"]
    # room for the longest context and for the 2k prompt tests
    n_ctx = min(max([int(c) for c in a.contexts.split(",")] + [2048]) + a.decode_tokens + 8,
                n_train)
    # a context at the model's limit leaves room for the decoded tokens
    contexts = [min(int(c), n_ctx - a.decode_tokens - 8) for c in a.contexts.split(",")]

    runners = [LlmrtRunner(path, a.threads, n_ctx)]
    if not a.no_llama_cpp:
        try:
            runners.append(LlamaCppRunner(path, a.threads, n_ctx, flash_attn=True))
        except ImportError:
            print("llama-cpp-python not installed: llmrt only")
    m = runners[0].m
    text = m.tokenize(TEXT * 600, add_special=False)
    assert len(text) >= n_ctx, "not enough text"
    res = {r.name: {} for r in runners}

    def record(name, key, value):
        res[name].setdefault(key, []).append(value)

    for r in runners:  # warm-up
        r.fill(text[:64])
        r.decode_from(64, 4)
    # decode at each context: fill once, then every run restarts from it
    for c in contexts:
        for r in runners:
            r.fill(text[:c])
            r.decode_from(c, 4)
            r.saved = r.logits
        for _ in range(a.runs):
            for r in runners:
                r.logits = r.saved
                record(r.name, f"decode@{c}", r.decode_from(c, a.decode_tokens))
    # prompt processing, 2k from empty
    for _ in range(a.runs):
        for r in runners:
            record(r.name, "prompt@2048", 2048 / r.fill(text[:2048]))
    # time to first token, the same 2k prompt twice
    prompt = text[5000:7048]
    runners[0].reset()  # give the fills' blocks back to the pool
    for _ in range(a.runs):
        m.clear_prefix_cache()
        for i in (1, 2):
            t = m.generate(prompt, max_new_tokens=1).timings["time_to_first_token_ms"]
            record("llmrt", f"ttft{i}", t)
        if len(runners) > 1:
            r = runners[1]
            t0 = time.perf_counter()
            r.fill(prompt)
            int(np.argmax(r.logits))
            record(r.name, "ttft1", (time.perf_counter() - t0) * 1e3)

    per_w = weight_bytes_per_token(m)
    st = m.cache_stats()  # F16 cache: bytes of one position, every layer's keys and values
    per_kv = st["block_bytes"] // st["block_tokens"]
    print(f"model {os.path.basename(path)}, {a.threads} threads, llmrt {llmrt.__version__} "
          f"({llmrt.build_info()['cpu_isa']}), weights {per_w / 1e6:.1f} MB/token, "
          f"F16 KV cache {per_kv / 1e3:.1f} kB/position; medians of {a.runs} runs")
    med = {n: {k: statistics.median(v) for k, v in d.items()} for n, d in res.items()}
    other = "llama.cpp" if "llama.cpp" in med else None

    def row(key, label, unit, fmt="{:8.1f}", extra=""):
        a_ = med["llmrt"].get(key)
        line = f"{label:28s} llmrt {fmt.format(a_)} {unit}"
        if other and key in med[other]:
            b_ = med[other][key]
            line += f"   llama.cpp {fmt.format(b_)} {unit}   ratio {a_ / b_:.2f}x"
            if unit == "ms":
                line += f" (llama.cpp / llmrt {b_ / a_:.2f}x)"
        runs = " ".join(f"{x:.0f}" for x in res["llmrt"][key])
        print(line + extra + f"   [llmrt runs {runs}]")

    for c in contexts:
        kv_mb = c * per_kv / 1e6
        rate = med["llmrt"][f"decode@{c}"]
        row(f"decode@{c}", f"decode at context {c}", "tok/s",
            extra=f"   (reads {(per_w + c * per_kv) / 1e6:.0f} MB/token: "
                  f"{rate * (per_w + c * per_kv) / 1e9:.1f} GB/s; KV {kv_mb:.0f} MB)")
    row("prompt@2048", "prompt, 2048 tokens", "tok/s")
    row("ttft1", "time to first token, 2k", "ms")
    t1, t2 = med["llmrt"]["ttft1"], med["llmrt"]["ttft2"]
    print(f"{'... the same 2k prompt again':28s} llmrt {t2:8.1f} ms   "
          f"({t1 / t2:.0f}x faster: prefix cache, "
          f"{m.cache_stats()['tokens_reused'] // a.runs} positions reused a run)")


if __name__ == "__main__":
    main()
