"""Resident memory of llmrt while loading and generating with the default
model (Linux: VmRSS and the peak, ru_maxrss), next to file size + KV cache.

    python bench/memory.py [--model PATH] [--kv-dtype f16]
    python bench/memory.py --kv-compare    # f32 / f16 / q8_0 caches, one process each

--kv-compare fills 4096 positions of the cache in a fresh process per cache
type and prints the resident memory that added next to the bytes of the
pool's blocks in use: the cache's memory is what the block pool holds.
"""

import argparse
import os
import resource
import subprocess
import sys
import time

import llmrt


def rss_mb() -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS"):
                return int(line.split()[1]) / 1024
    return float("nan")


def kv_fill(path, dtype: str, n: int = 4096) -> None:
    m = llmrt.Model(path, threads=2, context_length=8192, kv_cache_dtype=dtype)
    m.generate("warm up", max_new_tokens=2)
    before = rss_mb()
    prompt = m.tokenize("Once upon a time " * 2000, add_special=False)[:n]
    m.generate(prompt, max_new_tokens=1)
    s = m.cache_stats()
    used = (s["blocks_in_use"] + s["blocks_cached"]) * s["block_bytes"] / 2**20
    print(f"{dtype:5s} cache: {n} positions added {rss_mb() - before:6.1f} MB resident; "
          f"blocks holding them {used:6.1f} MB; whole pool ({s['capacity_tokens']} positions) "
          f"{s['pool_bytes'] / 2**20:6.1f} MB", flush=True)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default=None)
    ap.add_argument("--kv-dtype", default="f16")
    ap.add_argument("--kv-compare", action="store_true")
    ap.add_argument("--kv-fill", default=None, help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.kv_fill:
        kv_fill(a.model, a.kv_fill)
        return
    if a.kv_compare:
        for dtype in ("f32", "f16", "q8_0"):
            cmd = [sys.executable, __file__, "--kv-fill", dtype]
            if a.model:
                cmd += ["--model", a.model]
            subprocess.run(cmd, check=True)
        return
    print(f"after import: {rss_mb():.1f} MB")
    t = time.perf_counter()
    from llmrt.gguf_loader import load_gguf
    from llmrt.utils import default_model_path
    ctx = min(8192, load_gguf(a.model or default_model_path()).config["n_ctx_train"])
    m = llmrt.Model(a.model, threads=2, context_length=ctx, kv_cache_dtype=a.kv_dtype)
    print(f"load {time.perf_counter() - t:.2f} s, after load: {rss_mb():.1f} MB")
    m.generate("The capital of France is", max_new_tokens=128, ignore_eos=True)
    print(f"after 128 tokens: {rss_mb():.1f} MB")
    prompt = m.tokenize("Once upon a time " * 500)[:2000]
    m.generate(prompt, max_new_tokens=16, ignore_eos=True)
    s = m.cache_stats()
    kv = (s["blocks_in_use"] + s["blocks_cached"]) * s["block_bytes"] / 1e6
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    size = os.path.getsize(m.path) / 1e6
    print(f"after a 2000-token prompt: {rss_mb():.1f} MB; peak {peak:.1f} MB "
          f"(file {size:.1f} MB + KV cache blocks written {kv:.1f} MB + 100 MB = "
          f"{size + kv + 100:.1f} MB)")


if __name__ == "__main__":
    main()
