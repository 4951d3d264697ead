"""Resident memory of llmrt while loading and generating with the default
model (Linux: VmRSS and the peak, ru_maxrss), next to file size + KV cache.

    python bench/memory.py [--model PATH]
"""

import argparse
import os
import resource
import time

import llmrt


def rss_mb() -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS"):
                return int(line.split()[1]) / 1024
    return float("nan")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default=None)
    a = ap.parse_args()
    print(f"after import: {rss_mb():.1f} MB")
    t = time.perf_counter()
    m = llmrt.Model(a.model, threads=2, context_length=8192)
    print(f"load {time.perf_counter() - t:.2f} s, after load: {rss_mb():.1f} MB")
    cfg = m.config
    kv_per_token = 2 * cfg["n_layer"] * cfg["n_head_kv"] * cfg["head_dim"] * 4
    m.generate("The capital of France is", max_new_tokens=128, ignore_eos=True)
    print(f"after 128 tokens: {rss_mb():.1f} MB")
    prompt = m.tokenize("Once upon a time " * 500)[:2000]
    m.generate(prompt, max_new_tokens=16, ignore_eos=True)
    kv = kv_per_token * 2016 / 1e6
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    size = os.path.getsize(m.path) / 1e6
    print(f"after a 2000-token prompt: {rss_mb():.1f} MB; peak {peak:.1f} MB "
          f"(file {size:.1f} MB + KV cache in use {kv:.1f} MB + 100 MB = {size + kv + 100:.1f} MB)")


if __name__ == "__main__":
    main()
