"""A Gemma-3-270M-shaped GGUF with random weights, for side-by-side runs
where no published Gemma file is at hand:

    python bench/gemma_shape.py --out /tmp/gemma3-shape.q4_0.gguf [--type q4_0]
    python bench/compare.py --model /tmp/gemma3-shape.q4_0.gguf

The shape is the published model's (640 wide, 18 layers, 4 query heads and
1 KV head of 256, FFN 2048, vocabulary 262144, five sliding layers of every
six with a window of 512, two RoPE bases, q/k norms, tied embeddings); the
weights are random and the tokenizer a small SentencePiece model trained
here, so only speed means anything. The checkpoint goes through
`llmrt convert`, so llama.cpp reads the same file.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile

import numpy as np

from llmrt.convert import convert

TEXT = ("The quick brown fox jumps over the lazy dog. A stitch in time saves nine. "
        "Numbers like 12345 and 678 appear here; so do symbols: #, $, %, &!\n") * 20


def write_checkpoint(d: str) -> None:
    import sentencepiece as spm
    from safetensors.numpy import save_file
    c = dict(architectures=["Gemma3ForCausalLM"], hidden_size=640, num_hidden_layers=18,
             num_attention_heads=4, num_key_value_heads=1, head_dim=256, intermediate_size=2048,
             vocab_size=262144, rms_norm_eps=1e-6, max_position_embeddings=32768,
             query_pre_attn_scalar=256, hidden_activation="gelu_pytorch_tanh",
             sliding_window=512, sliding_window_pattern=6, rope_theta=1000000.0,
             rope_local_base_freq=10000.0, tie_word_embeddings=True)
    D, F, V, hd = 640, 2048, 262144, 256
    rng = np.random.default_rng(0)

    def mat(rows, cols):
        return (rng.standard_normal((rows, cols), np.float32) / np.sqrt(cols)).astype(np.float32)

    w = {"model.embed_tokens.weight": mat(V, D), "model.norm.weight": np.zeros(D, np.float32)}
    for i in range(18):
        p = f"model.layers.{i}."
        for n in ("input_layernorm", "post_attention_layernorm", "pre_feedforward_layernorm",
                  "post_feedforward_layernorm"):
            w[p + n + ".weight"] = np.zeros(D, np.float32)
        w[p + "self_attn.q_norm.weight"] = np.zeros(hd, np.float32)
        w[p + "self_attn.k_norm.weight"] = np.zeros(hd, np.float32)
        w[p + "self_attn.q_proj.weight"] = mat(4 * hd, D)
        w[p + "self_attn.k_proj.weight"] = mat(hd, D)
        w[p + "self_attn.v_proj.weight"] = mat(hd, D)
        w[p + "self_attn.o_proj.weight"] = mat(D, 4 * hd)
        w[p + "mlp.gate_proj.weight"] = mat(F, D)
        w[p + "mlp.up_proj.weight"] = mat(F, D)
        w[p + "mlp.down_proj.weight"] = mat(D, F)
    os.makedirs(d, exist_ok=True)
    with open(os.path.join(d, "config.json"), "w") as f:
        json.dump(c, f)
    save_file(w, os.path.join(d, "model.safetensors"))
    with open(os.path.join(d, "corpus.txt"), "w") as f:
        f.write(TEXT)
    spm.SentencePieceTrainer.train(input=os.path.join(d, "corpus.txt"),
                                   model_prefix=os.path.join(d, "tokenizer"), vocab_size=400,
                                   model_type="bpe", byte_fallback=True, add_dummy_prefix=False,
                                   remove_extra_whitespaces=False, minloglevel=2)
    with open(os.path.join(d, "tokenizer_config.json"), "w") as f:
        json.dump({"add_bos_token": True}, f)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", required=True)
    ap.add_argument("--type", default="q4_0")
    a = ap.parse_args()
    with tempfile.TemporaryDirectory() as d:
        write_checkpoint(d)
        convert(d, a.out, a.type, progress=False)
    print(a.out)


if __name__ == "__main__":
    main()
