"""What the runtime costs per generated token outside the model's matmuls:
generate() on a model too narrow for its forward pass to matter (SmolLM2's
49152-token vocabulary, 64 wide, one layer, random Q8_0 weights), greedy and
sampled (llama.cpp's default chain), one request and 16 / 64 batched.
Whatever a step does besides the few small matmuls (the output head's
logits, sampling, detokenizing, stop checks, the scheduler's Python) shows
up here; on the real model it hides behind the weights.

    python bench/engine_overhead.py [--threads 2] [--runs 5] [--json]

Only the public API is used: bench/ab.py compares two builds with it.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import time

import llmrt

SAMPLED = dict(temperature=0.8, top_k=40, top_p=0.95, min_p=0.05)


def narrow_model(path: str) -> str:
    if not os.path.exists(path):
        from llmrt.testing.models import write_model
        write_model(path + ".tmp", wtype="Q8_0", n_embd=64, n_layer=1, n_head=2, n_head_kv=1,
                    n_ff=128, tied=True, extra_tokens=49152 - 269, ctx=1024)
        os.replace(path + ".tmp", path)
    return path


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--new-tokens", type=int, default=128)
    ap.add_argument("--json", action="store_true")
    a = ap.parse_args()
    path = narrow_model(os.path.join(tempfile.gettempdir(), "llmrt_narrow_49152.gguf"))
    m = llmrt.Model(path, threads=a.threads, kv_cache_tokens=64 * 256)
    prompts = [[(7 * i + j) % 200 + 3 for j in range(12)] for i in range(64)]
    out = {}
    for batch in (1, 16, 64):
        for kind in ("greedy", "sampled"):
            kw = dict(max_new_tokens=a.new_tokens, ignore_eos=True, seed=1,
                      **(SAMPLED if kind == "sampled" else {}))
            rates = []
            for _ in range(a.runs):
                m.clear_prefix_cache()
                t = time.perf_counter()
                if batch == 1:
                    r = m.generate(prompts[0], **kw)
                    n = len(r.token_ids)
                else:
                    n = sum(len(r.token_ids) for r in m.generate(prompts[:batch], **kw))
                rates.append(n / (time.perf_counter() - t))
            out[f"{kind}_b{batch}"] = statistics.median(rates)
    if a.json:
        print(json.dumps(out))
        return
    print(f"{m!r}: generated tokens/s (medians of {a.runs}), and microseconds per token")
    for k, v in out.items():
        print(f"  {k:12s} {v:9.0f} tok/s   {1e6 / v:7.1f} us/token")


if __name__ == "__main__":
    main()
