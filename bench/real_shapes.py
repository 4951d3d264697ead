"""Random-weight GGUF files of real model shapes (1-8B), written as F16 and
quantized by llama.cpp's own quantizer, so llmrt and llama.cpp read files
llama.cpp wrote, of the types people download:

    python bench/real_shapes.py --shape smollm2-1.7b --types q4_0,q4_k_m,q5_k_m,q6_k,q8_0 \\
        [--dir /tmp/llmrt-shapes]
    python bench/compare.py --model /tmp/llmrt-shapes/smollm2-1.7b.q4_k_m.gguf

The F16 file is written once and kept; each type is quantized from it by
`llama_cpp.llama_model_quantize` (llama-cpp-python must be installed; it is
not a dependency of llmrt), which chooses the per-tensor types of the mixed
types (Q4_K_M: Q6_K for the head and for part of attn_v / ffn_down) exactly
as for a real download. Files that exist are kept.

The tokenizer is SmolLM2's (from the default model), its vocabulary padded
with unused control tokens up to the shape's; the weights are N(0, 0.02)
with unit norms, so only speed means anything, not the text.
"""

from __future__ import annotations

import argparse
import os
import sys
import time

import numpy as np

# name -> (architecture, width, layers, heads, kv heads, FFN, vocabulary, tied head, qkv bias)
SHAPES = {
    "llama3.2-1b": ("llama", 2048, 16, 32, 8, 8192, 128256, True, False),
    "smollm2-1.7b": ("llama", 2048, 24, 32, 32, 8192, 49152, True, False),
    "qwen2.5-3b": ("qwen2", 2048, 36, 16, 2, 11008, 151936, True, True),
    "llama3.1-8b": ("llama", 4096, 32, 32, 8, 14336, 128256, False, False),
    # the default model's shape: 576-wide rows are no whole super-blocks, so
    # llama.cpp's K types fall back to Q5_0 / Q5_1 / Q8_0 on most tensors
    "smollm2-135m": ("llama", 576, 30, 9, 3, 1536, 49152, True, False),
    # small enough for tests and a quick look
    "tiny": ("llama", 512, 2, 8, 4, 1024, 49152, True, False),
}

# llama.cpp's file types (enum llama_ftype)
FTYPES = {"f16": 1, "q4_0": 2, "q4_1": 3, "q8_0": 7, "q5_0": 8, "q5_1": 9, "q4_k_s": 14,
          "q4_k_m": 15, "q5_k_s": 16, "q5_k_m": 17, "q6_k": 18, "iq4_nl": 25, "iq4_xs": 30,
          "mxfp4_moe": 38}  # mxfp4_moe: experts MXFP4, the other matrices Q8_0


def _tokenizer_fields():
    """The tokenizer.* metadata of the default model: (key, value, type) triples."""
    import gguf

    import llmrt
    r = gguf.GGUFReader(llmrt.default_model_path())
    out = []
    for k, f in r.fields.items():
        if k.startswith("tokenizer."):
            out.append((k, f.contents(), f.types))
    return out


def add_tokenizer(w, V: int) -> None:
    """The default model's tokenizer, its vocabulary padded to V with unused
    control tokens."""
    import gguf
    for k, v, types in _tokenizer_fields():
        if k == "tokenizer.ggml.tokens":
            w.add_token_list(list(v) + [f"<|unused_{i}|>" for i in range(V - len(v))])
        elif k == "tokenizer.ggml.token_type":
            w.add_token_types(list(v) + [3] * (V - len(v)))  # control tokens
        elif k == "tokenizer.ggml.merges":
            w.add_token_merges(list(v))
        elif types[0] == gguf.GGUFValueType.STRING:
            w.add_string(k, v)
        elif types[0] == gguf.GGUFValueType.BOOL:
            w.add_bool(k, bool(v))
        elif types[0] == gguf.GGUFValueType.UINT32:
            w.add_uint32(k, int(v))


def write_random(w, tensors, seed: int) -> None:
    """Writes the header and the tensors (name, shape, dtype) one at a time:
    unit norms, N(0, 0.02) other vectors and F16 matrices (any rank, rows in
    chunks), F32 matrices (routers) at N(0, 1 / cols), so their logits are of
    a few units."""
    for name, shp, dt in tensors:
        n = int(np.prod(shp))
        w.add_tensor_info(name, shp, np.dtype(dt), n * np.dtype(dt).itemsize)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_ti_data_to_file()
    rng = np.random.default_rng(seed)
    for name, shp, dt in tensors:
        if len(shp) == 1:
            a = (np.ones(shp, np.float32) if name.endswith("norm.weight")
                 else (0.02 * rng.standard_normal(shp)).astype(np.float32))
        elif dt is np.float32:
            a = (rng.standard_normal(shp) / np.sqrt(shp[-1])).astype(np.float32)
        else:
            a = np.empty(shp, np.float16)
            flat = a.reshape(-1, shp[-1])
            step = max(1, (1 << 24) // shp[-1])
            for r in range(0, flat.shape[0], step):
                flat[r:r + step] = 0.02 * rng.standard_normal(
                    (min(step, flat.shape[0] - r), shp[-1]), dtype=np.float32)
        w.write_tensor_data(a)
    w.close()


def add_sizes(w, name: str, L: int, ctx: int, D: int, F: int, H: int, KV: int, rot: int,
              head_dim: int | None = None) -> None:
    """A random model's name and sizes (the key and value length where the
    head size is not D / H)."""
    w.add_name(name)
    w.add_block_count(L)
    w.add_context_length(ctx)
    w.add_embedding_length(D)
    w.add_feed_forward_length(F)
    w.add_head_count(H)
    w.add_head_count_kv(KV)
    if head_dim is not None:
        w.add_key_length(head_dim)
        w.add_value_length(head_dim)
    w.add_rope_dimension_count(rot)


def attention_tensors(p: str, D: int, H: int, KV: int, hd: int) -> list:
    """A layer's attention norm and q / k / v / o matrices (F16), prefix p."""
    return [(p + "attn_norm.weight", (D,), np.float32),
            (p + "attn_q.weight", (H * hd, D), np.float16),
            (p + "attn_k.weight", (KV * hd, D), np.float16),
            (p + "attn_v.weight", (KV * hd, D), np.float16),
            (p + "attn_output.weight", (D, H * hd), np.float16)]


def write_f16(path: str, shape: str, seed: int = 0) -> None:
    """The F16 file of a shape, tensor by tensor (never the whole model in memory)."""
    import gguf
    arch, D, L, H, KV, F, V, tied, bias = SHAPES[shape]
    hd = D // H
    w = gguf.GGUFWriter(path, arch)
    add_sizes(w, f"random {shape}", L, 4096, D, F, H, KV, hd)
    w.add_rope_freq_base(100000.0 if arch == "llama" else 1000000.0)
    w.add_layer_norm_rms_eps(1e-5 if arch == "llama" else 1e-6)
    w.add_vocab_size(V)
    w.add_file_type(1)
    add_tokenizer(w, V)

    tensors = []  # (name, shape (rows, cols) or (n,), dtype)
    tensors.append(("token_embd.weight", (V, D), np.float16))
    for i in range(L):
        p = f"blk.{i}."
        tensors += attention_tensors(p, D, H, KV, hd)
        tensors += [(p + "ffn_norm.weight", (D,), np.float32),
                    (p + "ffn_gate.weight", (F, D), np.float16),
                    (p + "ffn_up.weight", (F, D), np.float16),
                    (p + "ffn_down.weight", (D, F), np.float16)]
        if bias:
            tensors += [(p + "attn_q.bias", (H * hd,), np.float32),
                        (p + "attn_k.bias", (KV * hd,), np.float32),
                        (p + "attn_v.bias", (KV * hd,), np.float32)]
    tensors.append(("output_norm.weight", (D,), np.float32))
    if not tied:
        tensors.append(("output.weight", (V, D), np.float16))
    write_random(w, tensors, seed)


def quantize(src: str, dst: str, ftype: str, threads: int) -> None:
    import llama_cpp
    p = llama_cpp.llama_model_quantize_default_params()
    p.ftype = FTYPES[ftype]
    p.nthread = threads
    rc = llama_cpp.llama_model_quantize(src.encode(), dst.encode(), p)
    if rc != 0:
        raise RuntimeError(f"llama_model_quantize failed ({rc}) for {dst}")


def ensure(shape: str, types: list[str], out_dir: str, threads: int = 2) -> dict[str, str]:
    """The files of a shape for each type (written where missing): type -> path."""
    os.makedirs(out_dir, exist_ok=True)
    f16 = os.path.join(out_dir, f"{shape}.f16.gguf")
    if not os.path.exists(f16):
        t = time.perf_counter()
        write_f16(f16 + ".part", shape)
        os.replace(f16 + ".part", f16)
        print(f"wrote {f16} ({os.path.getsize(f16) / 1e9:.2f} GB, {time.perf_counter() - t:.0f} s)",
              file=sys.stderr)
    paths = {}
    for ty in types:
        if ty == "f16":
            paths[ty] = f16
            continue
        dst = os.path.join(out_dir, f"{shape}.{ty}.gguf")
        if not os.path.exists(dst):
            t = time.perf_counter()
            quantize(f16, dst + ".part", ty, threads)
            os.replace(dst + ".part", dst)
            print(f"quantized {dst} ({os.path.getsize(dst) / 1e9:.2f} GB, "
                  f"{time.perf_counter() - t:.0f} s)", file=sys.stderr)
        paths[ty] = dst
    return paths


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--shape", default="smollm2-1.7b", choices=sorted(SHAPES))
    ap.add_argument("--types", default="q4_0,q4_k_m,q5_k_m,q6_k,q8_0")
    ap.add_argument("--dir", default=os.path.join(os.environ.get("TMPDIR", "/tmp"), "llmrt-shapes"))
    ap.add_argument("--threads", type=int, default=os.cpu_count() or 2)
    a = ap.parse_args()
    types = [t for t in a.types.split(",") if t]
    unknown = [t for t in types if t not in FTYPES]
    if unknown:
        ap.error(f"unknown type(s) {unknown}: one of {', '.join(FTYPES)}")
    for ty, p in ensure(a.shape, types, a.dir, a.threads).items():
        print(ty, p)


if __name__ == "__main__":
    main()
