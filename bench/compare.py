"""llmrt next to llama-cpp-python on the same GGUF, same thread count, in one
run: decode tokens/s (128 tokens after a short prompt, batch 1, greedy) and
prompt tokens/s (a 512-token prompt from scratch), the ratio llmrt/llama.cpp,
and the fraction of the machine's measured read bandwidth that decode uses.

    python bench/compare.py [--model PATH] [--threads 2] [--runs 5]
    python bench/compare.py --shape smollm2-1.7b --types q4_0,q4_k_m,q5_k_m,q6_k,q8_0

--shape writes random-weight files of a real model's shape quantized by
llama.cpp's own quantizer (bench/real_shapes.py; needs llama-cpp-python),
runs every type in turn and ends with a table of all of them.

Both engines are driven the same way: one native call per token with the
argmax taken in Python, so the numbers compare the engines, not samplers.
Runs alternate between the engines and the medians are reported, as these
machines are noisy. llama-cpp-python is optional: without it only llmrt runs.
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

import numpy as np
from bench_generate import TEXT, read_bandwidth, weight_bytes_per_token

import llmrt


class Runner:
    """Greedy decode and prompt timing, the same loop for every engine:
    fill() processes ids from an empty cache and keeps the last logits,
    step(token, pos) runs one token and returns its logits."""

    def decode_from(self, n_past, n):
        """Greedy decode of n tokens after the first n_past cached positions."""
        logits = self.logits
        t0 = time.perf_counter()
        for pos in range(n_past, n_past + n):
            logits = self.step(int(np.argmax(logits)), pos)
        return n / (time.perf_counter() - t0)

    def decode(self, prompt, n):
        self.fill(prompt)
        return self.decode_from(len(prompt), n)

    def prompt(self, ids):
        return len(ids) / self.fill(ids)


class LlmrtRunner(Runner):
    name = "llmrt"

    def __init__(self, path, threads, n_ctx, **kw):
        self.m = llmrt.Model(path, threads=threads, context_length=n_ctx, **kw)
        self.eng = self.m.engine
        self.seq = self.eng.new_sequence()

    def fill(self, ids):
        """Process ids from an empty cache (no prefix reuse); returns seconds."""
        self.eng.truncate(self.seq, 0)
        t0 = time.perf_counter()
        self.logits = self.eng.forward(self.seq, ids)
        return time.perf_counter() - t0

    def step(self, tok, pos):
        self.eng.truncate(self.seq, pos)
        return self.eng.forward(self.seq, [tok])

    def reset(self):
        """Gives the sequence's blocks back to the pool."""
        self.eng.truncate(self.seq, 0)


class LlamaCppRunner(Runner):
    name = "llama.cpp"

    def __init__(self, path, threads, n_ctx, **kw):
        from llama_cpp import Llama
        self.llm = Llama(path, n_threads=threads, n_threads_batch=threads, n_ctx=n_ctx,
                         n_batch=512, n_ubatch=512, verbose=False, **kw)
        self.n_vocab = self.llm.n_vocab()

    def _last_logits(self):
        # the last token's logits (scores are only kept with logits_all)
        return np.ctypeslib.as_array(self.llm._ctx.get_logits(), shape=(self.n_vocab,))

    def fill(self, ids):
        self.llm.reset()
        t0 = time.perf_counter()
        self.llm.eval(ids)
        dt = time.perf_counter() - t0
        self.logits = self._last_logits().copy()
        return dt

    def step(self, tok, pos):
        self.llm.n_tokens = pos  # eval() drops the cache from n_tokens on
        self.llm.eval([tok])
        return self._last_logits()


def compare_model(path: str, a: argparse.Namespace) -> dict:
    """One file through both engines (alternating runs); prints its block and
    returns the medians."""
    n_ctx = 1024
    runners = [LlmrtRunner(path, a.threads, n_ctx)]
    try:
        runners.append(LlamaCppRunner(path, a.threads, n_ctx))
    except ImportError:
        print("llama-cpp-python not installed: llmrt only")
    tok = runners[0].m
    short = tok.tokenize("The capital of France is")
    long_ids = tok.tokenize(TEXT * 64, add_special=False)[: a.prompt_tokens]
    per_token = weight_bytes_per_token(tok)

    res = {r.name: {"decode": [], "prompt": []} for r in runners}
    for r in runners:  # warm-up
        r.decode(short, 8)
        r.prompt(long_ids[:64])
    for _ in range(a.runs):
        for r in runners:
            res[r.name]["decode"].append(r.decode(short, a.decode_tokens))
            res[r.name]["prompt"].append(r.prompt(long_ids))
    bw = read_bandwidth(a.threads)

    print(f"model {os.path.basename(path)}, {a.threads} threads, llmrt {llmrt.__version__} "
          f"({llmrt.build_info()['cpu_isa']}), {per_token / 1e6:.1f} MB of weights per token, "
          f"measured read bandwidth {bw:.1f} GB/s (bound {bw * 1e9 / per_token:.0f} tok/s)")
    med = {n: {k: statistics.median(v) for k, v in d.items()} for n, d in res.items()}
    for name, d in med.items():
        runs = res[name]
        print(f"{name:10s} decode {d['decode']:7.1f} tok/s ({d['decode'] * per_token / 1e9:5.1f} GB/s, "
              f"{100 * d['decode'] * per_token / 1e9 / bw:3.0f}% of measured)   "
              f"prompt {d['prompt']:7.1f} tok/s   "
              f"[decode runs {' '.join(f'{x:.1f}' for x in runs['decode'])}; "
              f"prompt runs {' '.join(f'{x:.1f}' for x in runs['prompt'])}]")
    if len(med) == 2:
        a_, b_ = med["llmrt"], med["llama.cpp"]
        print(f"ratio llmrt/llama.cpp: decode {a_['decode'] / b_['decode']:.2f}x, "
              f"prompt {a_['prompt'] / b_['prompt']:.2f}x", flush=True)
    del runners
    return {"med": med, "bw": bw, "per_token": per_token}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default=None)
    ap.add_argument("--shape", default=None, help="a shape of bench/real_shapes.py")
    ap.add_argument("--types", default="q4_0,q4_k_m,q5_k_m,q6_k,q8_0",
                    help="with --shape: the llama.cpp file types to run")
    ap.add_argument("--dir", default=os.path.join(os.environ.get("TMPDIR", "/tmp"), "llmrt-shapes"),
                    help="with --shape: where the files are kept")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--decode-tokens", type=int, default=128)
    ap.add_argument("--prompt-tokens", type=int, default=512)
    a = ap.parse_args()
    if a.shape is None:
        compare_model(a.model or llmrt.default_model_path(), a)
        return
    from real_shapes import ensure
    files = ensure(a.shape, [t for t in a.types.split(",") if t], a.dir)
    rows = []
    for ty, path in files.items():
        r = compare_model(path, a)
        rows.append((ty, r))
        print()
    print(f"{a.shape}, {a.threads} threads, {llmrt.build_info()['cpu_isa']}, medians of {a.runs}; "
          "decode tok/s (GB/s of weights, % of the measured read bandwidth) | prompt tok/s")
    print("| type | llmrt decode | llama.cpp decode | ratio | llmrt prompt | llama.cpp prompt | ratio |")
    print("|---|---|---|---|---|---|---|")
    for ty, r in rows:
        m, pt, bw = r["med"], r["per_token"], r["bw"]
        lm, lc = m["llmrt"], m.get("llama.cpp")

        def dec(d):
            gb = d["decode"] * pt / 1e9
            return f"{d['decode']:.1f} ({gb:.1f} GB/s, {100 * gb / bw:.0f}%)"
        if lc:
            print(f"| {ty} | {dec(lm)} | {dec(lc)} | {lm['decode'] / lc['decode']:.2f}x | "
                  f"{lm['prompt']:.1f} | {lc['prompt']:.1f} | {lm['prompt'] / lc['prompt']:.2f}x |")
        else:
            print(f"| {ty} | {dec(lm)} | | | {lm['prompt']:.1f} | | |")


if __name__ == "__main__":
    main()
