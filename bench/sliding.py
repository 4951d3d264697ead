"""Sliding-window layers at long context: decode tokens/s and the KV cache
held, for a Gemma-3-shaped model (random Q8_0 weights: 640 wide, 18 layers,
4 query heads and 1 KV head of 256, FFN 2048, five sliding layers of every
six with a window of 512), against the same model with every layer global.

    python bench/sliding.py [--context 4096] [--threads 2] [--runs 3]

Each run decodes --tokens tokens after a prompt that fills the context up to
--context minus those tokens; the two models alternate. The KV figures are
the blocks each pool holds at the end of the prompt, in MiB.
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time

import numpy as np

import llmrt
from llmrt.testing.models import write_model


def build(d: str, window: int) -> str:
    path = os.path.join(d, f"gemma3_w{window}.gguf")
    write_model(path, arch="gemma3", wtype="Q8_0", n_embd=640, n_layer=18, n_head=4,
                n_head_kv=1, head_dim=256, n_ff=2048, ctx=32768, window=window, tied=True)
    return path


def held_mib(m: llmrt.Model, window: int) -> float:
    """KV bytes the live sequence holds: the main pool's blocks plus the
    sliding pool's."""
    s = m.cache_stats()
    per_layer = s["block_bytes"] / m.config["n_layer"]  # one layer's K and V of a block
    n_sliding = sum((l + 1) % 6 != 0 for l in range(m.config["n_layer"])) if window else 0
    main = s["blocks_in_use"] * per_layer * (m.config["n_layer"] - n_sliding)
    sliding = s.get("sliding_blocks_in_use", 0) * per_layer * n_sliding
    return (main + sliding) / 2 ** 20


def run(m: llmrt.Model, prompt: list[int], tokens: int, window: int) -> tuple[float, float]:
    eng = m.engine
    seq = eng.new_sequence()
    try:
        eng.forward(seq, np.asarray(prompt, np.int32))
        mib = held_mib(m, window)
        tok = prompt[-1]
        t0 = time.perf_counter()
        for _ in range(tokens):
            lg = eng.forward(seq, [tok])
            tok = int(np.argmax(lg))
        return tokens / (time.perf_counter() - t0), mib
    finally:
        eng.release(seq)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--context", type=int, default=4096)
    ap.add_argument("--tokens", type=int, default=64)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--runs", type=int, default=3)
    a = ap.parse_args()
    with tempfile.TemporaryDirectory() as d:
        models = {w: llmrt.Model(build(d, w), threads=a.threads, context_length=a.context,
                                 prefix_caching=False) for w in (512, 0)}
        print(f"llmrt {llmrt.build_info()['cpu_isa']}, {a.threads} threads; Gemma-3-shaped, "
              f"18 layers, context {a.context}")
        prompt = np.random.default_rng(0).integers(
            3, models[0].vocab_size, a.context - a.tokens - 1).tolist()
        tps = {w: [] for w in models}
        mib = {}
        for _ in range(a.runs):
            for w, m in models.items():
                t, mib[w] = run(m, prompt, a.tokens, w)
                tps[w].append(t)
        for w in models:
            name = f"window {w}" if w else "all global"
            print(f"{name:>12}: decode {statistics.median(tps[w]):7.1f} tok/s (median of "
                  f"{a.runs}), KV held {mib[w]:6.1f} MiB")
        print(f"sliding / global: decode {statistics.median(tps[512]) / statistics.median(tps[0]):.2f}x, "
              f"KV {mib[512] / mib[0]:.2f}x")


if __name__ == "__main__":
    main()
