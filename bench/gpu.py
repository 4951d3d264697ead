"""llmrt on a GPU: decode tokens/s at batch 1 and 64, prompt tokens/s, and
the achieved fraction of the GPU's memory bandwidth (weight bytes read per
step), with the CPU backend's figures for the same model in the same run and
llama-cpp-python (built with CUDA) when it is installed.

    python bench/gpu.py [--model PATH] [--peak-gbs 4800] [--steps 256]

Without --model it uses the default model when installed, else writes a
random model of the default model's shapes (SmolLM2-135M: 30 layers, 576
wide, 9/3 heads, FFN 1536, vocabulary 49152; Q4_1 with a Q8_0 embedding),
which runs at the same speed.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time

import numpy as np

import llmrt
from llmrt.sampling import Sampler


def shaped_model(path: str) -> str:
    sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests"))
    from testutil import write_model
    write_model(path, wtype="Q4_1", emb_type="Q8_0", n_embd=576, n_layer=30, n_head=9,
                n_head_kv=3, n_ff=1536, tied=True, extra_tokens=49152 - 269, ctx=2048)
    return path


def weight_bytes(m: llmrt.Model) -> int:
    # every tensor but the embedding is read per step; a tied embedding is
    # read as the output head
    from gguf import GGUFReader
    t = {x.name: int(x.n_bytes) for x in GGUFReader(m.path).tensors}
    return sum(n for name, n in t.items() if name != "token_embd.weight" or "output.weight" not in t)


def decode_rate(m: llmrt.Model, batch: int, steps: int) -> float:
    """Native decode steps of `batch` sequences, each drawing its next token
    greedily inside the step (the argmax on the device)."""
    eng = m.engine
    seqs = [eng.new_sequence() for _ in range(batch)]
    greedy = [Sampler(llmrt.SamplingParams(), m.vocab_size) for _ in seqs]
    prompt = np.arange(1, 17, dtype=np.int32)
    eng.step([(s, prompt, "last") for s in seqs])
    tok = np.asarray([5], np.int32)

    def step():
        eng.step([(s, tok, "last", [g], 1) for s, g in zip(seqs, greedy)])
    for _ in range(4):  # warm-up
        step()
    t = time.perf_counter()
    for _ in range(steps):
        step()
    dt = time.perf_counter() - t
    for s in seqs:
        eng.release(s)
    return batch * steps / dt


def prompt_rate(m: llmrt.Model, n: int, runs: int = 3) -> float:
    ids = (np.arange(n) * 7 % 1000 + 3).astype(np.int32)
    m.clear_prefix_cache()
    m.logits(ids[:32])
    out = []
    for _ in range(runs):
        m.clear_prefix_cache()
        t = time.perf_counter()
        eng = m.engine
        s = eng.new_sequence()
        eng.forward(s, ids)
        out.append(n / (time.perf_counter() - t))
        eng.release(s)
    return statistics.median(out)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default=None)
    ap.add_argument("--peak-gbs", type=float, default=4800.0,
                    help="the GPU's memory bandwidth (H200: 4800 GB/s)")
    ap.add_argument("--steps", type=int, default=256)
    ap.add_argument("--no-cpu", action="store_true")
    a = ap.parse_args()
    path = a.model
    if path is None:
        try:
            path = llmrt.default_model_path()
        except FileNotFoundError:
            path = shaped_model(os.path.join(tempfile.gettempdir(), "llmrt_shaped_135m.gguf"))
    info = llmrt.build_info()
    print(f"llmrt {llmrt.__version__}, GPU: {', '.join(info['cuda_devices']) or 'none'}")
    if not llmrt.cuda_available():
        print("no CUDA device: nothing to measure")
        return
    gpu = llmrt.Model(path, device="cuda", context_length=2048, kv_cache_tokens=64 * 512)
    wb = weight_bytes(gpu)
    print(f"model {os.path.basename(path)}: {wb / 1e6:.1f} MB of weights per step")
    rows = []
    for name, m in [("llmrt cuda", gpu)] + ([] if a.no_cpu else [
            ("llmrt cpu", llmrt.Model(path, context_length=2048, kv_cache_tokens=64 * 512))]):
        steps = a.steps if "cuda" in name else max(16, a.steps // 16)
        d1 = decode_rate(m, 1, steps)
        d64 = decode_rate(m, 64, max(8, steps // 8))
        p = prompt_rate(m, 512)
        rows.append((name, d1, d64, p))
        gbs = d1 * wb / 1e9
        print(f"{name:12s} decode batch 1 {d1:8.1f} tok/s ({gbs:7.1f} GB/s"
              + (f", {100 * gbs / a.peak_gbs:4.1f}% of {a.peak_gbs:.0f} GB/s" if "cuda" in name
                 else "") + f")   batch 64 {d64:9.1f} tok/s   prompt 512 {p:9.1f} tok/s")
    try:
        from llama_cpp import Llama
        llm = Llama(model_path=path, n_ctx=2048, n_gpu_layers=-1, verbose=False)
        ids = llm.tokenize(b"The capital of France is")
        llm.eval(ids)
        t = time.perf_counter()
        for _ in range(a.steps):
            llm.eval([ids[-1]])
        d = a.steps / (time.perf_counter() - t)
        print(f"{'llama.cpp':12s} decode batch 1 {d:8.1f} tok/s   llmrt/llama.cpp {rows[0][1] / d:.2f}x")
    except ImportError:
        print("llama-cpp-python not installed: no peer in this run")


if __name__ == "__main__":
    main()
