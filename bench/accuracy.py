"""Accuracy of llmrt (8-bit and float activations) and llama.cpp against the
float32 Hugging Face transformers reference on the same GGUF: over windows of
real text, how often each engine's top-1 token equals the reference's, and
the mean KL divergence KL(reference || engine) of the next-token distributions.

    pip install torch==2.13.0 transformers accelerate    # the reference
    python bench/accuracy.py [--file text.txt] [--windows 4] [--window 512]

llama-cpp-python is optional (skipped when not installed).
"""

from __future__ import annotations

import argparse
import os

import numpy as np

import llmrt

DEFAULT_TEXT = "/usr/share/common-licenses/GPL-3"


def log_softmax(z: np.ndarray) -> np.ndarray:
    z = z.astype(np.float64)
    z = z - z.max(axis=-1, keepdims=True)
    return z - np.log(np.exp(z).sum(axis=-1, keepdims=True))


def compare(ref: np.ndarray, got: np.ndarray) -> tuple[float, float]:
    lp, lq = log_softmax(ref), log_softmax(got)
    kl = (np.exp(lp) * (lp - lq)).sum(axis=-1)
    return float((ref.argmax(-1) == got.argmax(-1)).mean()), float(kl.mean())


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default=None)
    ap.add_argument("--file", default=DEFAULT_TEXT)
    ap.add_argument("--windows", type=int, default=4)
    ap.add_argument("--window", type=int, default=512)
    ap.add_argument("--threads", type=int, default=2)
    a = ap.parse_args()
    path = a.model or llmrt.default_model_path()
    text = open(a.file, encoding="utf-8", errors="replace").read()

    m8 = llmrt.Model(path, threads=a.threads, activations="int8")
    m32 = llmrt.Model(path, threads=a.threads, activations="f32")
    ids = m8.tokenize(text, add_special=False)
    wins = [ids[i * a.window:(i + 1) * a.window] for i in range(a.windows)]
    wins = [w for w in wins if len(w) == a.window]

    import torch
    from transformers import AutoModelForCausalLM
    hf = AutoModelForCausalLM.from_pretrained(os.path.dirname(path), gguf_file=os.path.basename(path),
                                              dtype=torch.float32)
    hf.eval()
    lc = None
    try:
        from llama_cpp import Llama
        lc = Llama(path, n_threads=a.threads, n_ctx=a.window, n_batch=a.window, logits_all=True,
                   verbose=False)
    except ImportError:
        print("llama-cpp-python not installed: skipped")

    scores: dict[str, list] = {"llmrt int8": [], "llmrt f32": [], "llama.cpp": []}
    for w in wins:
        with torch.no_grad():
            ref = hf(torch.tensor([w])).logits[0].numpy()
        scores["llmrt int8"].append(compare(ref, m8.logits(w)))
        scores["llmrt f32"].append(compare(ref, m32.logits(w)))
        if lc is not None:
            lc.reset()
            lc.eval(w)
            scores["llama.cpp"].append(compare(ref, np.array(lc.scores[:len(w)])))
    n = sum(len(w) for w in wins)
    print(f"{os.path.basename(path)}: {n} positions ({len(wins)} windows of {a.window} tokens) "
          f"of {os.path.basename(a.file)}, reference transformers fp32")
    for name, s in scores.items():
        if s:
            top1 = np.mean([x[0] for x in s])
            kl = np.mean([x[1] for x in s])
            print(f"  {name:11s} top-1 agreement {100 * top1:6.2f}%   mean KL {kl:.5f}")


if __name__ == "__main__":
    main()
