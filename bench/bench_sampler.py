"""What choosing a token costs, next to the decode step it belongs to:
the sampler chain on SmolLM2's real logits (49152-token vocabulary) for
several settings, in microseconds per token, and as a fraction of one decode
step of the same model measured in the same run.

    python bench/bench_sampler.py [--model PATH] [--threads 2] [--tokens 2000]

The cost of a generate() step outside its forward pass (stop checks,
detokenizing, the scheduler's Python) is printed too, greedy and sampled:
the native step draws the token itself, so a step's logits never reach
Python; what a sampled step costs beyond a greedy one is the chain.
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
    eng = m.engine
    # real logits of 64 positions of text, and the decode step's time
    ids = m.tokenize("The history of the city begins in antiquity, when traders settled "
                     "on the river bank and the town grew around its market. " * 4)[:64]
    rows = m.logits(ids)
    logits = [np.ascontiguousarray(r) for r in rows]
    hist = np.asarray(ids, np.int32)
    seq = eng.new_sequence()
    eng.forward(seq, ids[:8])
    steps = []
    for t in ids[8:40]:
        t0 = time.perf_counter()
        eng.forward(seq, [t])
        steps.append(time.perf_counter() - t0)
    eng.release(seq)
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
    # what a generate() step costs beyond its native forward (which draws
    # the token): the engine counts the time spent in native steps
    for name, kw in (("greedy", {}), ("sampled (llama.cpp defaults)",
                                      SETTINGS["llama.cpp defaults: top-k 40, top-p 0.95, "
                                               "min-p 0.05, T 0.8"])):
        m.generate(ids, max_new_tokens=8, ignore_eos=True, seed=1, **kw)  # warm-up
        s0, n0 = eng.step_seconds, eng.steps
        t0 = time.perf_counter()
        m.generate(ids, max_new_tokens=64, ignore_eos=True, seed=1, **kw)
        total = time.perf_counter() - t0
        native, n = eng.step_seconds - s0, eng.steps - n0
        rest = total - native
        print(f"generate(), {name}: {1e6 * total / n:.0f} us a step, of which "
              f"{1e6 * rest / n:.1f} us outside the native step (stop checks, detokenizer, "
              f"scheduler): {100 * rest / native:.2f}% of the native steps")


if __name__ == "__main__":
    main()
