"""What quantization costs: the default model requantized to each type by
`llmrt quantize`, its file size and perplexity on a text (llama.cpp's
method: 512-token windows, second halves scored), next to the original.

    python bench/quant_quality.py [--model PATH] [--file TEXT] [--windows 16]
        [--types f16,q8_0,q6_k,q4_k,q4_1,q4_0]

The default model is itself Q4_1: every row starts from its Q4_1 weights
(dequantized), so "f16" reproduces them exactly and each other type adds its
own rounding on top of Q4_1's.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time

import llmrt

DEFAULT_TEXT = "/usr/share/common-licenses/GPL-3"


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default=None)
    ap.add_argument("--file", default=DEFAULT_TEXT)
    ap.add_argument("--windows", type=int, default=16)
    ap.add_argument("--window", type=int, default=512)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--types", default="f16,q8_0,q6_k,q4_k,q4_1,q4_0")
    a = ap.parse_args()
    src = a.model or llmrt.default_model_path()
    with open(a.file, encoding="utf-8") as f:
        text = f.read()
    d = tempfile.mkdtemp(prefix="llmrt_qq_")
    rows = [("original", src, None)]
    for t in a.types.split(","):
        out = os.path.join(d, f"model.{t}.gguf")
        t0 = time.perf_counter()
        chosen = llmrt.quantize(src, out, t, progress=False)
        kinds = {}
        for v in chosen.values():
            kinds[v] = kinds.get(v, 0) + 1
        rows.append((t, out, (time.perf_counter() - t0, kinds)))
    print(f"source {os.path.basename(src)}, text {a.file}, {a.windows} windows of {a.window}, "
          f"{a.threads} threads")
    print(f"{'type':9s} {'size MB':>8s} {'bits/w':>7s} {'perplexity':>11s} {'vs orig':>8s}  tensors")
    base = None
    n_params = None
    for name, path, info in rows:
        m = llmrt.Model(path, threads=a.threads, context_length=max(a.window, 16))
        if n_params is None:
            from gguf import GGUFReader
            n_params = sum(int(t.n_elements) for t in GGUFReader(path).tensors)
        r = m.perplexity(text, window=a.window, max_windows=a.windows, progress=False)
        base = base or r.perplexity
        size = os.path.getsize(path)
        extra = "" if info is None else (f"{', '.join(f'{n} {t}' for t, n in sorted(info[1].items()))}"
                                         f" ({info[0]:.1f} s to write)")
        print(f"{name:9s} {size / 1e6:8.1f} {8 * size / n_params:7.2f} {r.perplexity:11.4f} "
              f"{100 * (r.perplexity / base - 1):+7.2f}%  {extra}")
        if name == "original":
            cross_check(m, path, text, a)
        del m


def cross_check(m: llmrt.Model, path: str, text: str, a) -> None:
    """The same windows, BOS and scoring through llama-cpp-python's logits,
    when it is installed: an independent check of the perplexity code."""
    try:
        from llama_cpp import Llama
    except ImportError:
        print("          (llama-cpp-python not installed: no cross-check)")
        return
    import numpy as np
    lc = Llama(path, n_threads=a.threads, n_ctx=a.window, n_batch=a.window, logits_all=True,
               verbose=False)
    ids = m.tokenize(text, add_special=False)
    bos = m.tokenizer.bos_id if m.tokenizer.add_bos else None
    half, nll, count = a.window // 2, 0.0, 0
    for w in range(min(len(ids) // a.window, a.windows)):
        chunk = list(ids[w * a.window:(w + 1) * a.window])
        if bos is not None:
            chunk[0] = bos
        lc.reset()
        lc.eval(chunk)
        lg = np.array(lc.scores[half:a.window - 1], np.float64)
        mx = lg.max(1)
        lse = mx + np.log(np.exp(lg - mx[:, None]).sum(1))
        tgt = np.asarray(chunk[half + 1:])
        nll += float((lse - lg[np.arange(len(tgt)), tgt]).sum())
        count += len(tgt)
    print(f"{'llama.cpp':9s} {'':8s} {'':7s} {np.exp(nll / count):11.4f}           the original "
          f"file through llama-cpp-python, same windows and scoring")


if __name__ == "__main__":
    main()
