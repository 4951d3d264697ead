"""A Qwen3-30B-A3B-shaped mixture of experts, scaled to fit this machine,
against llama-cpp-python on the same files and against a dense model of the
same active size, in one run; or (--shape gpt-oss) a gpt-oss-20b-shaped one:

    python bench/moe.py [--types q4_0,q4_k_m,mxfp4_moe] [--dir /tmp/llmrt-shapes] [--runs 3]
    python bench/moe.py --shape gpt-oss [--types mxfp4_moe,q8_0]

Qwen3-30B-A3B: 48 layers of width 2048, 32 query / 4 key-value heads of 128,
128 experts of width 768 with 8 chosen per token, a 151936-token vocabulary.
The scaled shape keeps the head size, the expert width and the ratio of
chosen to all experts (1/16): width 1024, 8 / 2 heads, 64 experts of which 4,
16 layers. The dense twin has the same attention and an FFN as wide as the
chosen experts together (4 x 768), so both read the same weights per token
outside the experts' choice.

Files are random F16 written tensor by tensor and quantized by llama.cpp's
own quantizer (bench/real_shapes.py), so both engines read files llama.cpp
wrote; they are kept in --dir. mxfp4_moe is llama.cpp's gpt-oss type: the
experts MXFP4, every other matrix Q8_0 (so the dense twin is all Q8_0). Prints, per type, decode and prompt tok/s of
each engine on each file, the ratios, and the resident memory of llmrt after
loading the MoE file and after decoding with it.

gpt-oss-20b: 24 layers of width 2880, 64 query / 8 key-value heads of 64,
32 experts of width 2880 with 4 chosen (biases on every projection, the
router and the experts; attention sinks; sliding-window layers of 128
alternating with full ones; YaRN), a 201088-token vocabulary. Scaled: width
1408 (experts as wide; an even number of 32-weight blocks a row, as 2880
has), 32 / 4 heads of 64, 32 experts of which 4, 12 layers, the vocabulary
halved with the width. Its widths are not whole
256-weight super-blocks, so its files are MXFP4 experts with Q8_0 (as
released) or all Q8_0; there is no dense twin.
"""

from __future__ import annotations

import argparse
import os
import sys
import time

import numpy as np
from compare import compare_model
from memory import rss_mb
from real_shapes import add_sizes, add_tokenizer, attention_tensors, quantize, write_random

# (width, layers, heads, kv heads, head size, vocabulary, experts, chosen, expert width)
SHAPES = {"qwen3": (1024, 16, 8, 2, 128, 151936, 64, 4, 768),
          "gpt-oss": (1408, 12, 32, 4, 64, 100544, 32, 4, 1408)}
SHAPE = SHAPES["qwen3"]
NAMES = {"qwen3": "qwen3-a3b-scaled", "gpt-oss": "gpt-oss-20b-scaled"}


def _gpt_oss_tensors() -> list[tuple[str, tuple[int, ...], type]]:
    D, L, H, KV, hd, V, E, K, Fe = SHAPES["gpt-oss"]
    out: list[tuple[str, tuple[int, ...], type]] = [("token_embd.weight", (V, D), np.float16)]
    for i in range(L):
        p = f"blk.{i}."
        out += attention_tensors(p, D, H, KV, hd)
        out += [(p + "attn_q.bias", (H * hd,), np.float32),
                (p + "attn_k.bias", (KV * hd,), np.float32),
                (p + "attn_v.bias", (KV * hd,), np.float32),
                (p + "attn_output.bias", (D,), np.float32),
                (p + "attn_sinks.weight", (H,), np.float32),
                (p + "post_attention_norm.weight", (D,), np.float32),
                (p + "ffn_gate_inp.weight", (E, D), np.float32),
                (p + "ffn_gate_inp.bias", (E,), np.float32),
                (p + "ffn_gate_exps.weight", (E, Fe, D), np.float16),
                (p + "ffn_up_exps.weight", (E, Fe, D), np.float16),
                (p + "ffn_down_exps.weight", (E, D, Fe), np.float16),
                (p + "ffn_gate_exps.bias", (E, Fe), np.float32),
                (p + "ffn_up_exps.bias", (E, Fe), np.float32),
                (p + "ffn_down_exps.bias", (E, D), np.float32)]
    out += [("output_norm.weight", (D,), np.float32), ("output.weight", (V, D), np.float16)]
    return out


def _write_gpt_oss(path: str, seed: int = 0) -> None:
    import gguf
    D, L, H, KV, hd, V, E, K, Fe = SHAPES["gpt-oss"]
    w = gguf.GGUFWriter(path, "gpt-oss")
    add_sizes(w, "random gpt-oss (gpt-oss-20b scaled)", L, 131072, D, Fe, H, KV, hd, hd)
    w.add_rope_freq_base(150000.0)
    w.add_rope_scaling_type(gguf.RopeScalingType.YARN)
    w.add_rope_scaling_factor(32.0)
    w.add_rope_scaling_orig_ctx_len(4096)
    w.add_sliding_window(128)
    w.add_layer_norm_rms_eps(1e-5)
    w.add_vocab_size(V)
    w.add_file_type(1)
    w.add_expert_count(E)
    w.add_expert_used_count(K)
    w.add_expert_feed_forward_length(Fe)
    add_tokenizer(w, V)
    write_random(w, _gpt_oss_tensors(), seed)


def _tensors(moe: bool) -> list[tuple[str, tuple[int, ...], type]]:
    D, L, H, KV, hd, V, E, K, Fe = SHAPE
    out: list[tuple[str, tuple[int, ...], type]] = [("token_embd.weight", (V, D), np.float16)]
    for i in range(L):
        p = f"blk.{i}."
        out += attention_tensors(p, D, H, KV, hd)
        out += [(p + "attn_q_norm.weight", (hd,), np.float32),
                (p + "attn_k_norm.weight", (hd,), np.float32),
                (p + "ffn_norm.weight", (D,), np.float32)]
        if moe:
            out += [(p + "ffn_gate_inp.weight", (E, D), np.float32),
                    (p + "ffn_gate_exps.weight", (E, Fe, D), np.float16),
                    (p + "ffn_up_exps.weight", (E, Fe, D), np.float16),
                    (p + "ffn_down_exps.weight", (E, D, Fe), np.float16)]
        else:
            out += [(p + "ffn_gate.weight", (K * Fe, D), np.float16),
                    (p + "ffn_up.weight", (K * Fe, D), np.float16),
                    (p + "ffn_down.weight", (D, K * Fe), np.float16)]
    out += [("output_norm.weight", (D,), np.float32), ("output.weight", (V, D), np.float16)]
    return out


def write_f16(path: str, moe: bool, seed: int = 0) -> None:
    import gguf
    D, L, H, KV, hd, V, E, K, Fe = SHAPE
    arch = "qwen3moe" if moe else "qwen3"
    w = gguf.GGUFWriter(path, arch)
    add_sizes(w, f"random {arch} (Qwen3-30B-A3B scaled)", L, 4096, D, K * Fe, H, KV, hd, hd)
    w.add_rope_freq_base(1000000.0)
    w.add_layer_norm_rms_eps(1e-6)
    w.add_vocab_size(V)
    w.add_file_type(1)
    if moe:
        w.add_expert_count(E)
        w.add_expert_used_count(K)
        w.add_expert_feed_forward_length(Fe)
    add_tokenizer(w, V)
    write_random(w, _tensors(moe), seed)


def ensure(kind: str, types: list[str], out_dir: str, threads: int,
           shape: str = "qwen3") -> dict[str, str]:
    os.makedirs(out_dir, exist_ok=True)
    name = NAMES[shape]
    f16 = os.path.join(out_dir, f"{name}-{kind}.f16.gguf")
    if not os.path.exists(f16):
        t = time.perf_counter()
        if shape == "gpt-oss":
            _write_gpt_oss(f16 + ".part")
        else:
            write_f16(f16 + ".part", kind == "moe")
        os.replace(f16 + ".part", f16)
        print(f"wrote {f16} ({os.path.getsize(f16) / 1e9:.2f} GB, "
              f"{time.perf_counter() - t:.0f} s)", file=sys.stderr)
    paths = {}
    for ty in types:
        dst = os.path.join(out_dir, f"{name}-{kind}.{ty}.gguf")
        if not os.path.exists(dst):
            quantize(f16, dst + ".part", ty, threads)
            os.replace(dst + ".part", dst)
        paths[ty] = dst
    return paths


def memory(path: str, threads: int) -> tuple[float, float, float]:
    """llmrt's resident MB in a fresh process (freed memory of earlier models
    in this one would hide growth): before, after loading the file, after 32
    new tokens."""
    import subprocess
    out = subprocess.run([sys.executable, os.path.abspath(__file__), "--memory-of", path,
                          "--threads", str(threads)],
                         capture_output=True, text=True, check=True).stdout.split()
    before, loaded, used = map(float, out[-3:])
    return before, loaded, used


def _measure_memory(path: str, threads: int) -> None:
    import llmrt
    before = rss_mb()
    m = llmrt.Model(path, threads=threads, context_length=1024)
    loaded = rss_mb()
    m.generate("The capital of France is", max_new_tokens=32, ignore_eos=True)
    print(before, loaded, rss_mb())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--shape", choices=sorted(SHAPES), default="qwen3")
    ap.add_argument("--types", default=None,
                    help="default: q4_0,q4_k_m,mxfp4_moe (qwen3), mxfp4_moe,q8_0 (gpt-oss)")
    ap.add_argument("--dir", default=os.path.join(os.environ.get("TMPDIR", "/tmp"), "llmrt-shapes"))
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--decode-tokens", type=int, default=64)
    ap.add_argument("--prompt-tokens", type=int, default=256)
    ap.add_argument("--memory-of", default=None, help=argparse.SUPPRESS)  # the child of memory()
    a = ap.parse_args()
    if a.memory_of:
        _measure_memory(a.memory_of, a.threads)
        return
    oss = a.shape == "gpt-oss"
    types = [t for t in (a.types or ("mxfp4_moe,q8_0" if oss else "q4_0,q4_k_m,mxfp4_moe"))
             .split(",") if t]
    moe = ensure("moe", types, a.dir, a.threads, a.shape)
    dense = {} if oss else ensure("dense", types, a.dir, a.threads, a.shape)
    import llmrt
    rows = []
    for ty in types:
        print(f"== {ty}: the mixture of experts")
        rm = compare_model(moe[ty], a)
        rd = None
        if not oss:
            print(f"== {ty}: the dense model of the same active size")
            rd = compare_model(dense[ty], a)["med"]
        rows.append((ty, rm["med"], rd, memory(moe[ty], a.threads),
                     os.path.getsize(moe[ty]) / 1e6))
        print()
    D, L, H, KV, hd, V, E, K, Fe = SHAPES[a.shape]
    title = "gpt-oss-20b" if oss else "Qwen3-30B-A3B"
    print(f"{title} scaled: {L} layers x {E} experts ({K} chosen, width {Fe}), width {D}; "
          f"{a.threads} threads, {llmrt.build_info()['cpu_isa']}, medians of {a.runs}")
    print("| type | MoE decode llmrt / llama.cpp | ratio | dense decode llmrt | MoE / dense | "
          "MoE prompt llmrt / llama.cpp | ratio | llmrt RSS loaded / after decode (file) |")
    print("|---|---|---|---|---|---|---|---|")
    for ty, m, d, (b, loaded, used), size in rows:
        lm, lc = m["llmrt"], m.get("llama.cpp")
        dec = f"{lm['decode']:.1f} / {lc['decode']:.1f}" if lc else f"{lm['decode']:.1f} / -"
        pr = f"{lm['prompt']:.1f} / {lc['prompt']:.1f}" if lc else f"{lm['prompt']:.1f} / -"
        r_dec = f"{lm['decode'] / lc['decode']:.2f}x" if lc else "-"
        r_pr = f"{lm['prompt'] / lc['prompt']:.2f}x" if lc else "-"
        dd = f"{d['llmrt']['decode']:.1f}" if d else "-"
        r_dd = f"{lm['decode'] / d['llmrt']['decode']:.2f}x" if d else "-"
        print(f"| {ty} | {dec} | {r_dec} | {dd} | {r_dd} | {pr} | {r_pr} | "
              f"{loaded - b:.0f} / {used - b:.0f} MB ({size:.0f} MB) |")


if __name__ == "__main__":
    main()
