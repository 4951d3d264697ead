"""What choosing a token costs, next to the decode step it belongs to:
the sampler chain on SmolLM2's real logits (49152-token vocabulary) for
several settings, in microseconds per token, and as a fraction of one decode
step of the same model measured in the same run.

    python bench/bench_sampler.py [--model PATH] [--threads 2] [--tokens 2000]

The cost of a generate() step outside its forward pass (sampler call, stop
checks, detokenizing, the Python loop) is printed too.
"""

from __future__ import annotations

import argparse
import statistics
import time

import numpy as np

import llmrt
from llmrt.sampling import Sampler

SETTINGS = {
    "greedy (the default)": dict(),
    "llama.cpp defaults: top-k 40, top-p 0.95, min-p 0.05, T 0.8":
        dict(temperature=0.8, top_k=40, top_p=0.95, min_p=0.05),
    "top-p 0.9, T 0.7 (no top-k)": dict(temperature=0.7, top_p=0.9),
    "every stage: penalties (64), bias, typical 0.95, top-p 0.95, min-p 0.05, T 0.8":
        dict(temperature=0.8, repetition_penalty=1.1, presence_penalty=0.1,
             frequency_penalty=0.1, logit_bias={11: -2.0, 42: 1.0}, typical_p=0.95,
             top_p=0.95, min_p=0.05),
    "mirostat v2 (tau 5)": dict(temperature=1.0, mirostat_mode=2),
}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default=None)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--tokens", type=int, default=2000)
    a = ap.parse_args()
    m = llmrt.Model(a.model, threads=a.threads, context_length=1024)
    nat = m._native
    # real logits of 64 positions of text, and the decode step's time
    ids = m.tokenize("The history of the city begins in antiquity, when traders settled "
                     "on the river bank and the town grew around its market. " * 4)[:64]
    rows = m.logits(ids)
    logits = [np.ascontiguousarray(r) for r in rows]
    hist = np.asarray(ids, np.int32)
    seq = nat.new_sequence()
    nat.forward(np.asarray(ids[:8], np.int32), -1, False, seq)
    steps = []
    for t in ids[8:40]:
        t0 = time.perf_counter()
        nat.forward(np.asarray([t], np.int32), -1, False, seq)
        steps.append(time.perf_counter() - t0)
    nat.release_sequence(seq)
    step = statistics.median(steps)
    print(f"{m!r}\ndecode step (median of {len(steps)}): {step * 1e3:.2f} ms")
    for name, kw in SETTINGS.items():
        s = Sampler(llmrt.SamplingParams(seed=1, **kw), m.vocab_size)
        times = []
        for i in range(a.tokens):
            lg = logits[i % len(logits)]
            t0 = time.perf_counter()
            s(lg, hist, i)
            times.append(time.perf_counter() - t0)
        us = statistics.median(times) * 1e6
        print(f"  {name:78s} {us:7.1f} us/token  {100 * us / 1e6 / step:5.2f}% of a step")
    # what a generate() step costs beyond its forward pass (greedy)
    orig, fwd = m._step, []

    def timed(tok, seq):
        t0 = time.perf_counter()
        out = orig(tok, seq)
        fwd.append(time.perf_counter() - t0)
        return out

    m._step = timed
    r = m.generate(ids, max_new_tokens=64, ignore_eos=True)
    n = len(fwd)
    rest = r.timings["decode_ms"] / 1e3 - sum(fwd)
    print(f"generate(), greedy: {1e6 * rest / n:.1f} us per token outside the forward pass "
          f"(sampler, stop checks, detokenizer, Python loop): "
          f"{100 * rest / sum(fwd):.2f}% of the forward passes")

if __name__ == "__main__":
    main()
