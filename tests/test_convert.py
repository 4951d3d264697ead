"""`llmrt convert`: tiny random Hugging Face checkpoints written here (config,
safetensors shards, a SentencePiece tokenizer trained here or a byte-level
BPE tokenizer.json built here) convert, load, tokenize like their source
tokenizers, and give the logits of a numpy forward written from the Hugging
Face conventions (rotate-half RoPE on the unpermuted q/k weights)."""
import json
import os
import subprocess
import sys

import gguf
import numpy as np
import pytest

import llmrt
from llmrt.convert import CheckpointError, convert
from llmrt.quantization import quantize_file

safetensors_numpy = pytest.importorskip("safetensors.numpy")

TEXT = ("The quick brown fox jumps over the lazy dog. A stitch in time saves nine. "
        "Numbers like 12345 and 678 appear here; so do symbols: #, $, %, &!\n") * 20
TEMPLATE = "{% for m in messages %}<|{{ m['role'] }}|>{{ m['content'] }}\n{% endfor %}"


def _hf_config(arch, V, **kw):
    c = dict(architectures=[arch], hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
             num_key_value_heads=2, intermediate_size=96, vocab_size=V, rms_norm_eps=1e-5,
             rope_theta=10000.0, max_position_embeddings=256, tie_word_embeddings=False)
    c.update(kw)
    return c


def _hf_weights(c, rng, qwen_bias=False):
    D, L, F, V = c["hidden_size"], c["num_hidden_layers"], c["intermediate_size"], c["vocab_size"]
    H, KV = c["num_attention_heads"], c["num_key_value_heads"]
    hd = c.get("head_dim") or D // H
    w = {"model.embed_tokens.weight": rng.standard_normal((V, D)),
         "model.norm.weight": 1 + 0.1 * rng.standard_normal(D)}
    if not c["tie_word_embeddings"]:
        w["lm_head.weight"] = rng.standard_normal((V, D)) / np.sqrt(D)
    for i in range(L):
        p = f"model.layers.{i}."
        w[p + "input_layernorm.weight"] = 1 + 0.1 * rng.standard_normal(D)
        w[p + "post_attention_layernorm.weight"] = 1 + 0.1 * rng.standard_normal(D)
        w[p + "self_attn.q_proj.weight"] = rng.standard_normal((H * hd, D)) / np.sqrt(D)
        w[p + "self_attn.k_proj.weight"] = rng.standard_normal((KV * hd, D)) / np.sqrt(D)
        w[p + "self_attn.v_proj.weight"] = rng.standard_normal((KV * hd, D)) / np.sqrt(D)
        w[p + "self_attn.o_proj.weight"] = rng.standard_normal((D, H * hd)) / np.sqrt(H * hd)
        if qwen_bias:
            for n, rows in (("q", H * hd), ("k", KV * hd), ("v", KV * hd)):
                w[p + f"self_attn.{n}_proj.bias"] = 0.1 * rng.standard_normal(rows)
        if c["architectures"][0] in ("Qwen3ForCausalLM", "Qwen3MoeForCausalLM"):  # per-head norms
            w[p + "self_attn.q_norm.weight"] = 1 + 0.3 * rng.standard_normal(hd)
            w[p + "self_attn.k_norm.weight"] = 1 + 0.3 * rng.standard_normal(hd)
        E = c.get("num_local_experts", 0)
        if E:
            m = p + "block_sparse_moe."
            w[m + "gate.weight"] = rng.standard_normal((E, D))
            for e in range(E):
                w[m + f"experts.{e}.w1.weight"] = rng.standard_normal((F, D)) / np.sqrt(D)
                w[m + f"experts.{e}.w3.weight"] = rng.standard_normal((F, D)) / np.sqrt(D)
                w[m + f"experts.{e}.w2.weight"] = rng.standard_normal((D, F)) / np.sqrt(F)
        elif c.get("num_experts"):  # Qwen's MoE: mlp.gate, mlp.experts.N.*, a shared expert
            w.update(_qwen_moe_weights(c, p + "mlp.", rng))
        else:
            w[p + "mlp.gate_proj.weight"] = rng.standard_normal((F, D)) / np.sqrt(D)
            w[p + "mlp.up_proj.weight"] = rng.standard_normal((F, D)) / np.sqrt(D)
            w[p + "mlp.down_proj.weight"] = rng.standard_normal((D, F)) / np.sqrt(F)
        if c["architectures"][0] == "Phi3ForCausalLM":  # fused q/k/v and gate/up
            w[p + "self_attn.qkv_proj.weight"] = np.concatenate(
                [w.pop(p + f"self_attn.{n}_proj.weight") for n in "qkv"])
            w[p + "mlp.gate_up_proj.weight"] = np.concatenate(
                [w.pop(p + "mlp.gate_proj.weight"), w.pop(p + "mlp.up_proj.weight")])
    return {k: v.astype(np.float32) for k, v in w.items()}


def _qwen_moe_weights(c, m, rng):
    D, E, Fe = c["hidden_size"], c["num_experts"], c["moe_intermediate_size"]
    w = {m + "gate.weight": rng.standard_normal((E, D))}
    for e in range(E):
        w[m + f"experts.{e}.gate_proj.weight"] = rng.standard_normal((Fe, D)) / np.sqrt(D)
        w[m + f"experts.{e}.up_proj.weight"] = rng.standard_normal((Fe, D)) / np.sqrt(D)
        w[m + f"experts.{e}.down_proj.weight"] = rng.standard_normal((D, Fe)) / np.sqrt(Fe)
    Fs = c.get("shared_expert_intermediate_size")
    if Fs:
        w[m + "shared_expert_gate.weight"] = rng.standard_normal((1, D)) / np.sqrt(D)
        w[m + "shared_expert.gate_proj.weight"] = rng.standard_normal((Fs, D)) / np.sqrt(D)
        w[m + "shared_expert.up_proj.weight"] = rng.standard_normal((Fs, D)) / np.sqrt(D)
        w[m + "shared_expert.down_proj.weight"] = rng.standard_normal((D, Fs)) / np.sqrt(Fs)
    return w


def _save(d, c, w, shards=2):
    os.makedirs(d, exist_ok=True)
    with open(os.path.join(d, "config.json"), "w") as f:
        json.dump(c, f)
    names = sorted(w)
    for s in range(shards):
        part = {k: w[k] for k in names[s::shards]}
        safetensors_numpy.save_file(part, os.path.join(d, f"model-{s + 1:05d}-of-{shards:05d}"
                                                          ".safetensors"))


def _rmsnorm(x, w, eps):
    return x / np.sqrt((x * x).mean(-1, keepdims=True) + eps) * w


def hf_reference(c, w, ids):
    """float64 forward with Hugging Face's conventions."""
    D, H, KV = c["hidden_size"], c["num_attention_heads"], c["num_key_value_heads"]
    hd, eps, n = c.get("head_dim") or D // H, c["rms_norm_eps"], len(ids)
    W = {k: v.astype(np.float64) for k, v in w.items()}
    for k in [k for k in W if k.endswith("qkv_proj.weight")]:  # phi3's fused tensors
        q_, k_, v_ = np.split(W.pop(k), [H * hd, (H + KV) * hd])
        W[k.replace("qkv_proj", "q_proj")], W[k.replace("qkv_proj", "k_proj")] = q_, k_
        W[k.replace("qkv_proj", "v_proj")] = v_
    for k in [k for k in W if k.endswith("gate_up_proj.weight")]:
        W[k.replace("gate_up_proj", "gate_proj")], W[k.replace("gate_up_proj", "up_proj")] = \
            np.split(W.pop(k), 2)
    rd = int(hd * c.get("partial_rotary_factor", 1.0)) // 2 * 2  # rotated values of a head
    inv = 1.0 / c["rope_theta"] ** (np.arange(0, rd, 2) / rd)
    rs = c.get("rope_scaling")
    if rs and rs.get("rope_type") == "llama3":  # Hugging Face's formulation
        old, lo, hi, f = (rs["original_max_position_embeddings"], rs["low_freq_factor"],
                          rs["high_freq_factor"], rs["factor"])
        wl = 2 * np.pi / inv
        scaled = np.where(wl > old / lo, inv / f, inv)
        sm = (old / wl - lo) / (hi - lo)
        medium = ~(wl < old / hi) & ~(wl > old / lo)
        inv = np.where(medium, (1 - sm) * scaled / f + sm * scaled, scaled)
    mscale = 1.0
    if rs and rs.get("type") == "longrope":  # one pass: long factors past the original context
        orig = c["original_max_position_embeddings"]
        inv = inv / np.asarray(rs["long_factor"] if n > orig else rs["short_factor"])
        ratio = c["max_position_embeddings"] / orig
        mscale = np.sqrt(1 + np.log(ratio) / np.log(orig))
    ang = np.arange(n)[:, None] * inv[None, :]
    cos, sin = np.concatenate([np.cos(ang)] * 2, -1), np.concatenate([np.sin(ang)] * 2, -1)
    cos, sin = cos * mscale, sin * mscale

    def rope(x):  # (n, heads, hd): x * cos + rotate_half(x) * sin on the first rd values
        r, rest = x[..., :rd], x[..., rd:]
        half = rd // 2
        rot = np.concatenate([-r[..., half:], r[..., :half]], -1)
        return np.concatenate([r * cos[:, None] + rot * sin[:, None], rest], -1)

    x = W["model.embed_tokens.weight"][ids]
    mask = np.triu(np.full((n, n), -np.inf), 1)
    for i in range(c["num_hidden_layers"]):
        p = f"model.layers.{i}."
        h = _rmsnorm(x, W[p + "input_layernorm.weight"], eps)
        q = h @ W[p + "self_attn.q_proj.weight"].T + W.get(p + "self_attn.q_proj.bias", 0)
        k = h @ W[p + "self_attn.k_proj.weight"].T + W.get(p + "self_attn.k_proj.bias", 0)
        v = h @ W[p + "self_attn.v_proj.weight"].T + W.get(p + "self_attn.v_proj.bias", 0)
        q, k, v = q.reshape(n, H, hd), k.reshape(n, KV, hd), v.reshape(n, KV, hd)
        if p + "self_attn.q_norm.weight" in W:  # qwen3: each head normed before RoPE
            q = _rmsnorm(q, W[p + "self_attn.q_norm.weight"], eps)
            k = _rmsnorm(k, W[p + "self_attn.k_norm.weight"], eps)
        q, k = rope(q), rope(k)
        out = np.empty((n, H, hd))
        for hh in range(H):
            s = q[:, hh] @ k[:, hh // (H // KV)].T / np.sqrt(hd) + mask
            s = np.exp(s - s.max(-1, keepdims=True))
            out[:, hh] = (s / s.sum(-1, keepdims=True)) @ v[:, hh // (H // KV)]
        x = x + out.reshape(n, -1) @ W[p + "self_attn.o_proj.weight"].T
        h = _rmsnorm(x, W[p + "post_attention_layernorm.weight"], eps)
        if c.get("num_local_experts") or c.get("num_experts"):
            x = x + _moe_reference(c, W, p, h)
        else:
            g = h @ W[p + "mlp.gate_proj.weight"].T
            u = h @ W[p + "mlp.up_proj.weight"].T
            x = x + (g / (1 + np.exp(-g)) * u) @ W[p + "mlp.down_proj.weight"].T
    x = _rmsnorm(x, W["model.norm.weight"], eps)
    head = W["lm_head.weight"] if "lm_head.weight" in W else W["model.embed_tokens.weight"]
    return x @ head.T


def _moe_reference(c, W, p, h):
    """A sparse layer with Hugging Face's conventions: softmax over every
    expert, the top k (renormalised where norm_topk_prob, always for Mixtral),
    and Qwen2-MoE's shared expert scaled by the sigmoid of its gate."""
    mixtral = "num_local_experts" in c
    m = p + ("block_sparse_moe." if mixtral else "mlp.")
    names = ("w1", "w3", "w2") if mixtral else ("gate_proj", "up_proj", "down_proj")
    norm = mixtral or c.get("norm_topk_prob", False)
    logits = h @ W[m + "gate.weight"].T
    pr = np.exp(logits - logits.max(-1, keepdims=True))
    pr /= pr.sum(-1, keepdims=True)

    def ffn(x, pre):
        g, u = x @ W[pre + names[0] + ".weight"].T, x @ W[pre + names[1] + ".weight"].T
        return (g / (1 + np.exp(-g)) * u) @ W[pre + names[2] + ".weight"].T

    y = np.zeros_like(h)
    for t in range(len(h)):
        top = np.argsort(-pr[t], kind="stable")[:c["num_experts_per_tok"]]
        for e in top:
            y[t] += pr[t, e] / (pr[t, top].sum() if norm else 1.0) * ffn(h[t], f"{m}experts.{e}.")
    if m + "shared_expert_gate.weight" in W:
        names = ("gate_proj", "up_proj", "down_proj")
        gate = 1 / (1 + np.exp(-(h @ W[m + "shared_expert_gate.weight"].T)))
        y += gate * ffn(h, m + "shared_expert.")
    return y


@pytest.fixture(scope="module")
def sp_model(tmp_path_factory):
    spm = pytest.importorskip("sentencepiece")
    d = tmp_path_factory.mktemp("sp")
    txt = d / "corpus.txt"
    txt.write_text(TEXT)
    spm.SentencePieceTrainer.train(input=str(txt), model_prefix=str(d / "tok"), vocab_size=400,
                                   model_type="bpe", byte_fallback=True, minloglevel=2)
    return str(d / "tok.model")


def _llama_dir(root, sp_model, **kw):
    import sentencepiece as spm
    V = spm.SentencePieceProcessor(model_file=sp_model).get_piece_size()
    c = _hf_config(kw.pop("arch", "LlamaForCausalLM"), V, **kw)
    w = _hf_weights(c, np.random.default_rng(0))
    d = str(root / "hf")
    _save(d, c, w)
    with open(sp_model, "rb") as f, open(os.path.join(d, "tokenizer.model"), "wb") as g:
        g.write(f.read())
    with open(os.path.join(d, "tokenizer_config.json"), "w") as f:
        json.dump({"add_bos_token": True, "chat_template": TEMPLATE}, f)
    return d, c, w


@pytest.mark.parametrize("arch", ["LlamaForCausalLM", "MistralForCausalLM"])
def test_llama_checkpoint_converts_and_matches_hf_reference(tmp_path, sp_model, arch):
    d, c, w = _llama_dir(tmp_path, sp_model, arch=arch)
    out = str(tmp_path / "m.gguf")
    info = convert(d, out, "f32", progress=False)
    assert info["arch"] == arch and info["vocab"] == c["vocab_size"]
    # standard GGUF: gguf-py reads the expected keys
    r = gguf.GGUFReader(out)
    f = {k: r.fields[k].contents() for k in ("general.architecture", "llama.block_count",
                                               "llama.embedding_length", "tokenizer.ggml.model",
                                               "tokenizer.chat_template")}
    assert f == {"general.architecture": "llama", "llama.block_count": 2,
                 "llama.embedding_length": 64, "tokenizer.ggml.model": "llama",
                 "tokenizer.chat_template": TEMPLATE}
    m = llmrt.Model(out, threads=2, activations="f32", kv_cache_dtype="f32")
    import sentencepiece as spm
    sp = spm.SentencePieceProcessor(model_file=sp_model)
    text = "The lazy fox saves 678 stitches!"
    ids = m.tokenize(text)
    assert ids == [sp.bos_id()] + sp.encode(text)
    ref = hf_reference(c, w, ids)
    got = m.logits(ids)
    assert np.abs(got - ref).max() <= 1e-4 * np.abs(ref).max()


def _bf16(x: np.ndarray) -> np.ndarray:
    """float32 -> bfloat16 bits, rounded to nearest even."""
    u = np.ascontiguousarray(x, np.float32).view(np.uint32).astype(np.uint64)
    return ((u + 0x7FFF + ((u >> 16) & 1)) >> 16).astype("<u2")


def _write_bf16_safetensors(path, w: dict) -> None:
    """A safetensors file of BF16 tensors, byte by byte (numpy cannot write
    them), in the layout the format documents."""
    head, blobs, at = {}, [], 0
    for k in sorted(w):
        b = _bf16(w[k]).tobytes()
        head[k] = {"dtype": "BF16", "shape": list(w[k].shape), "data_offsets": [at, at + len(b)]}
        blobs.append(b)
        at += len(b)
    h = json.dumps(head).encode()
    h += b" " * (-len(h) % 8)
    with open(path, "wb") as f:
        f.write(len(h).to_bytes(8, "little") + h + b"".join(blobs))


def test_bfloat16_checkpoint_converts_as_its_values(tmp_path, sp_model):
    # released checkpoints are bfloat16: read exactly (widened to float32),
    # the logits those of the bf16-rounded weights
    d, c, w = _llama_dir(tmp_path, sp_model)
    for f in os.listdir(d):
        if f.endswith(".safetensors"):
            os.remove(os.path.join(d, f))
    _write_bf16_safetensors(os.path.join(d, "model.safetensors"), w)
    wb = {k: (_bf16(v).astype(np.uint32) << 16).view(np.float32).reshape(v.shape) for k, v in w.items()}
    out = str(tmp_path / "b.gguf")
    convert(d, out, "f32", progress=False)
    r = gguf.GGUFReader(out)
    emb = next(t for t in r.tensors if t.name == "token_embd.weight")
    assert np.array_equal(np.asarray(emb.data).reshape(wb["model.embed_tokens.weight"].shape),
                          wb["model.embed_tokens.weight"])
    m = llmrt.Model(out, threads=2, activations="f32", kv_cache_dtype="f32")
    ids = m.tokenize("The lazy fox saves 678 stitches!")
    ref = hf_reference(c, wb, ids)
    assert np.abs(m.logits(ids) - ref).max() <= 1e-4 * np.abs(ref).max()
    del m
    # bf16 out of a bf16 checkpoint: the same bits
    out16 = str(tmp_path / "b16.gguf")
    convert(d, out16, "bf16", progress=False)
    t = next(t for t in gguf.GGUFReader(out16).tensors if t.name == "blk.0.ffn_down.weight")
    assert np.array_equal(np.asarray(t.data).view("<u2").ravel(),
                          _bf16(w["model.layers.0.mlp.down_proj.weight"]).ravel())


@pytest.mark.parametrize("damage", ["length", "extent", "json"])
def test_damaged_safetensors_header_is_a_clear_error(tmp_path, sp_model, damage):
    d, c, w = _llama_dir(tmp_path, sp_model)
    f = sorted(x for x in os.listdir(d) if x.endswith(".safetensors"))[0]
    data = bytearray(open(os.path.join(d, f), "rb").read())
    n = int.from_bytes(data[:8], "little")
    if damage == "length":
        data[:8] = (len(data) * 2).to_bytes(8, "little")
    elif damage == "extent":
        head = json.loads(data[8:8 + n])
        k = next(k for k in head if k != "__metadata__")
        head[k]["data_offsets"][1] += 1 << 30
        h = json.dumps(head).encode()
        h += b" " * (-len(h) % 8)
        data = bytearray(len(h).to_bytes(8, "little") + h + bytes(data[8 + n:]))
    else:
        data[8:8 + n] = b"{" * n
    open(os.path.join(d, f), "wb").write(bytes(data))
    with pytest.raises(CheckpointError, match="not a readable safetensors file"):
        convert(d, str(tmp_path / "x.gguf"), "f32", progress=False)


def _bpe_dir(d, tie=True, **kw):
    """A Qwen-style checkpoint directory with a byte-level BPE tokenizer."""
    tokenizers = pytest.importorskip("tokenizers")
    from tokenizers import decoders, models, pre_tokenizers, trainers
    tk = tokenizers.Tokenizer(models.BPE())
    tk.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tk.decoder = decoders.ByteLevel()
    tk.train_from_iterator([TEXT], trainers.BpeTrainer(
        vocab_size=400, special_tokens=["<|endoftext|>", "<|im_start|>", "<|im_end|>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    d.mkdir()
    tk.save(str(d / "tokenizer.json"))
    qwen_bias = kw.pop("qwen_bias", False)
    c = _hf_config(kw.pop("arch"), tk.get_vocab_size(), tie_word_embeddings=tie, **kw)
    w = _hf_weights(c, np.random.default_rng(1), qwen_bias=qwen_bias)
    _save(str(d), c, w, shards=1)
    with open(d / "tokenizer_config.json", "w") as f:
        json.dump({"eos_token": "<|im_end|>", "chat_template": TEMPLATE}, f)
    return tk, c, w


def test_qwen2_checkpoint_with_bpe_tokenizer(tmp_path):
    tk, c, w = _bpe_dir(tmp_path / "qwen", arch="Qwen2ForCausalLM", qwen_bias=True)
    out = str(tmp_path / "q.gguf")
    convert(str(tmp_path / "qwen"), out, "f32", progress=False)
    m = llmrt.Model(out, threads=2, activations="f32", kv_cache_dtype="f32")
    assert m.arch == "qwen2"
    text = "Numbers like 12345 jump over symbols: #, $!"
    assert m.tokenize(text) == tk.encode(text).ids
    assert m.tokenizer.eos_id == tk.token_to_id("<|im_end|>")
    ids = tk.encode(text).ids
    ref = hf_reference(c, w, ids)
    assert np.abs(m.logits(ids) - ref).max() <= 1e-4 * np.abs(ref).max()


def test_qwen3_checkpoint(tmp_path):
    # q/k RMSNorm per head, no biases, a head size that is not hidden / heads
    # (32 against 64 / 4), tied embeddings
    tk, c, w = _bpe_dir(tmp_path / "qwen3", arch="Qwen3ForCausalLM", head_dim=32)
    out = str(tmp_path / "q3.gguf")
    convert(str(tmp_path / "qwen3"), out, "f32", progress=False)
    r = gguf.GGUFReader(out)
    assert r.fields["general.architecture"].contents() == "qwen3"
    assert {t.name: list(t.shape) for t in r.tensors}["blk.1.attn_k_norm.weight"] == [32]
    m = llmrt.Model(out, threads=2, activations="f32", kv_cache_dtype="f32")
    assert m.arch == "qwen3" and m.config["head_dim"] == 32
    ids = tk.encode("Numbers like 12345 jump over symbols: #, $! " * 3).ids
    ref = hf_reference(c, w, ids)
    got = m.logits(ids)
    assert np.abs(got - ref).max() <= 1e-4 * np.abs(ref).max()
    # without the per-head norms the logits would be far off: the check can fail
    w0 = {k: v for k, v in w.items() if "_norm" not in k or "layernorm" in k}
    assert np.abs(got - hf_reference(c, w0, ids)).max() > 1e-2 * np.abs(ref).max()
    # batched, chunked and alone agree; greedy decoding runs through the cache
    alone = m.generate(ids[:20], max_new_tokens=8, ignore_eos=True).token_ids
    both = m.generate([ids[:20], ids[5:30]], max_new_tokens=8, ignore_eos=True)
    assert both[0].token_ids == alone
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    if not hasattr(transformers, "Qwen3ForCausalLM"):
        pytest.skip("transformers without Qwen3")
    hf = transformers.Qwen3ForCausalLM(transformers.Qwen3Config(**{
        k: v for k, v in c.items() if k != "architectures"})).eval()
    hf.load_state_dict({k: torch.from_numpy(v) for k, v in w.items()}, strict=False)
    with torch.no_grad():
        t = hf(torch.tensor([ids])).logits[0].numpy()
    assert np.abs(got - t).max() <= 1e-4 * np.abs(t).max()


def test_phi3_checkpoint(tmp_path, sp_model):
    # fused q/k/v and gate/up tensors (kept fused in the file, as llama.cpp's
    # converter writes them), RoPE on half of each head, a sliding window
    d, c, w = _llama_dir(tmp_path, sp_model, arch="Phi3ForCausalLM", partial_rotary_factor=0.5,
                         sliding_window=200, max_position_embeddings=256)
    out = str(tmp_path / "phi3.gguf")
    convert(d, out, "f32", progress=False)
    r = gguf.GGUFReader(out)
    shapes = {t.name: list(t.shape) for t in r.tensors}
    assert shapes["blk.0.attn_qkv.weight"] == [64, 128] and shapes["blk.0.ffn_up.weight"] == [64, 192]
    assert r.fields["phi3.rope.dimension_count"].contents() == 8
    m = llmrt.Model(out, threads=2, activations="f32", kv_cache_dtype="f32")
    assert m.arch == "phi3"
    assert m.context_length == 256  # every layer attends over the window of 200
    assert m.cache_stats()["sliding_window"] == 200
    ids = m.tokenize(TEXT[:300])[:70]
    ref = hf_reference(c, w, ids)
    got = m.logits(ids)
    assert np.abs(got - ref).max() <= 1e-4 * np.abs(ref).max()
    c0 = dict(c, partial_rotary_factor=1.0)  # full rotary would be far off: the check can fail
    assert np.abs(got - hf_reference(c0, w, ids)).max() > 1e-2 * np.abs(ref).max()
    q = str(tmp_path / "phi3_q8.gguf")
    convert(d, q, "q8_0", progress=False)  # fused tensors quantized, sliced at load
    qm = llmrt.Model(q, threads=2)
    assert np.abs(qm.logits(ids) - ref).max() <= 0.1 * np.abs(ref).max()
    alone = qm.generate(ids[:20], max_new_tokens=8, ignore_eos=True).token_ids
    assert qm.generate([ids[:20], ids[3:33]], max_new_tokens=8, ignore_eos=True)[0].token_ids \
        == alone
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    hf = transformers.Phi3ForCausalLM(transformers.Phi3Config(**{
        k: v for k, v in c.items() if k != "architectures"}, pad_token_id=0, bos_token_id=1,
        eos_token_id=2)).eval()
    missing = hf.load_state_dict({k: torch.from_numpy(v) for k, v in w.items()}, strict=False)
    assert not missing.missing_keys or all("rotary" in k for k in missing.missing_keys)
    with torch.no_grad():
        t = hf(torch.tensor([ids])).logits[0].numpy()
    assert np.abs(got - t).max() <= 1e-4 * np.abs(t).max()


def test_phi3_longrope(tmp_path, sp_model):
    # Phi-3.5's LongRoPE on a tiny scale: an original context of 64 in a
    # context of 256; the long factors where the model's context runs past
    # 64 (as llama.cpp picks them), the short ones otherwise; cos and sin
    # scaled by the attention factor
    rng = np.random.default_rng(5)
    half = 8  # rotated pairs of a 16-wide head
    rs = {"type": "longrope", "long_factor": (1 + 3 * rng.random(half)).tolist(),
          "short_factor": (1 + 0.5 * rng.random(half)).tolist()}
    d, c, w = _llama_dir(tmp_path, sp_model, arch="Phi3ForCausalLM", rope_scaling=rs,
                         original_max_position_embeddings=64, max_position_embeddings=256)
    out = str(tmp_path / "lr.gguf")
    convert(d, out, "f32", progress=False)
    r = gguf.GGUFReader(out)
    shapes = {t.name: list(t.shape) for t in r.tensors}
    assert shapes["rope_factors_long.weight"] == [half]
    assert r.fields["phi3.rope.scaling.original_context_length"].contents() == 64
    assert abs(r.fields["phi3.rope.scaling.attn_factor"].contents()
               - np.sqrt(1 + np.log(4) / np.log(64))) < 1e-6
    ids = _llama_ids(sp_model, 90)
    m = llmrt.Model(out, threads=2, activations="f32", kv_cache_dtype="f32")
    assert m.context_length == 256
    ref = hf_reference(c, w, ids)  # 90 > 64: long factors
    got = m.logits(ids)
    assert np.abs(got - ref).max() <= 1e-4 * np.abs(ref).max()
    plain = dict(c, rope_scaling=None)  # the check can fail: without LongRoPE it differs
    assert np.abs(got - hf_reference(plain, w, ids)).max() > 1e-2 * np.abs(ref).max()
    short = llmrt.Model(out, threads=2, activations="f32", kv_cache_dtype="f32",
                        context_length=64)  # within the original context: short factors
    assert np.abs(short.logits(ids[:50]) - hf_reference(c, w, ids[:50])).max() \
        <= 1e-4 * np.abs(ref).max()
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    hf = transformers.Phi3ForCausalLM(transformers.Phi3Config(**{
        k: v for k, v in c.items() if k != "architectures"}, pad_token_id=0, bos_token_id=1,
        eos_token_id=2)).eval()
    hf.load_state_dict({k: torch.from_numpy(v) for k, v in w.items()}, strict=False)
    with torch.no_grad():
        t = hf(torch.tensor([ids])).logits[0].numpy()
    assert np.abs(got - t).max() <= 1e-4 * np.abs(t).max()


def test_transformers5_rope_parameters(tmp_path, sp_model):
    # transformers 5 saves RoPE settings as rope_parameters, not rope_scaling
    # and top-level keys: a Phi-3.5 re-saved so converts as its published form
    rng = np.random.default_rng(5)
    rs = {"type": "longrope", "long_factor": (1 + 3 * rng.random(8)).tolist(),
          "short_factor": (1 + 0.5 * rng.random(8)).tolist()}
    d, c, w = _llama_dir(tmp_path, sp_model, arch="Phi3ForCausalLM", rope_scaling=rs,
                         original_max_position_embeddings=64, max_position_embeddings=256,
                         rope_theta=20000.0)
    new = {k: v for k, v in c.items()
           if k not in ("rope_scaling", "rope_theta", "original_max_position_embeddings")}
    new["rope_parameters"] = dict(rs, rope_type="longrope", rope_theta=20000.0,
                                  original_max_position_embeddings=64)
    new["rope_parameters"].pop("type")
    with open(os.path.join(d, "config.json"), "w") as f:
        json.dump(new, f)
    out = str(tmp_path / "t5.gguf")
    convert(d, out, "f32", progress=False)
    m = llmrt.Model(out, threads=2, activations="f32", kv_cache_dtype="f32")
    ids = _llama_ids(sp_model, 90)
    ref = hf_reference(c, w, ids)
    assert np.abs(m.logits(ids) - ref).max() <= 1e-4 * np.abs(ref).max()


def test_qwen2_sliding_window_flags(tmp_path):
    # Qwen2's window applies from max_window_layers on, and only with
    # use_sliding_window: none of the layers -> no window in the file; some
    # of them -> a clear error (llmrt slides all layers or a gemma pattern)
    for extra, want in ((dict(use_sliding_window=False, sliding_window=16), None),
                        (dict(use_sliding_window=True, sliding_window=16, max_window_layers=2),
                         None),
                        (dict(use_sliding_window=True, sliding_window=16, max_window_layers=0),
                         16)):
        d = tmp_path / f"q{len(list(tmp_path.iterdir()))}"
        _bpe_dir(d, arch="Qwen2ForCausalLM", qwen_bias=True, **extra)
        out = str(d / "q.gguf")
        convert(str(d), out, "f32", progress=False)
        r = gguf.GGUFReader(out)
        got = r.fields["qwen2.attention.sliding_window"].contents() \
            if "qwen2.attention.sliding_window" in r.fields else None
        assert got == want, extra
    d = tmp_path / "partial"
    _bpe_dir(d, arch="Qwen2ForCausalLM", qwen_bias=True, use_sliding_window=True, sliding_window=16,
             max_window_layers=1)
    with pytest.raises(llmrt.UnsupportedModelError, match="sliding"):
        convert(str(d), str(d / "q.gguf"), "f32", progress=False)


def _llama_ids(sp_model, n):
    import sentencepiece as spm
    sp = spm.SentencePieceProcessor(model_file=sp_model)
    return ([sp.bos_id()] + sp.encode(TEXT))[:n]


def test_mixtral_checkpoint(tmp_path, sp_model):
    d, c, w = _llama_dir(tmp_path, sp_model, arch="MixtralForCausalLM", num_local_experts=4,
                         num_experts_per_tok=2)
    out = str(tmp_path / "x.gguf")
    convert(d, out, "f32", progress=False)
    r = gguf.GGUFReader(out)
    assert r.fields["llama.expert_count"].contents() == 4
    shapes = {t.name: list(t.shape) for t in r.tensors}
    assert shapes["blk.0.ffn_gate_exps.weight"] == [64, 96, 4]
    m = llmrt.Model(out, threads=2, activations="f32", kv_cache_dtype="f32")
    ids = m.tokenize("A stitch in time saves nine foxes.")
    ref = hf_reference(c, w, ids)
    assert np.abs(m.logits(ids) - ref).max() <= 1e-4 * np.abs(ref).max()


def test_quantized_mixtral_keeps_its_routers_in_f32(tmp_path, sp_model):
    """Routers stay F32 (as llama.cpp keeps them): a q8_0 Mixtral's logits
    then move against the original about as much as a q8_0 Llama's."""
    errs = {}
    for arch, kw in (("LlamaForCausalLM", {}),
                     ("MixtralForCausalLM", dict(num_local_experts=4, num_experts_per_tok=2))):
        d, c, w = _llama_dir(tmp_path / arch, sp_model, arch=arch, **kw)
        out = str(tmp_path / f"{arch}.gguf")
        convert(d, out, "q8_0", progress=False)
        types = {t.name: t.tensor_type.name for t in gguf.GGUFReader(out).tensors}
        if kw:
            assert types["blk.0.ffn_gate_inp.weight"] == "F32"
            assert types["blk.0.ffn_gate_exps.weight"] == "Q8_0"
            requant = str(tmp_path / "requant.gguf")
            chosen = quantize_file(out, requant, "q4_0", progress=False)
            assert chosen["blk.1.ffn_gate_inp.weight"] == "f32"
        m = llmrt.Model(out, threads=2, activations="f32", kv_cache_dtype="f32")
        ids = m.tokenize(TEXT[:300])[:48]
        ref = hf_reference(c, w, ids)
        errs[arch] = float(np.abs(m.logits(ids) - ref).max() / np.abs(ref).max())
    assert errs["MixtralForCausalLM"] <= max(3 * errs["LlamaForCausalLM"], 0.02), errs


@pytest.mark.parametrize("tied", [False, True])
def test_llama3_rope_scaling(tmp_path, sp_model, tied):
    # Llama 3.1's scaling becomes rope_freqs.weight; head size 32 spans
    # wavelengths on both sides of the original context (64) and between.
    # Tied: Llama 3.2's small models (the embedding is also the head)
    rs = {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
          "original_max_position_embeddings": 64}
    d, c, w = _llama_dir(tmp_path, sp_model, num_attention_heads=2, num_key_value_heads=1,
                         rope_scaling=rs, tie_word_embeddings=tied)
    out = str(tmp_path / "l3.gguf")
    convert(d, out, "f32", progress=False)
    r = gguf.GGUFReader(out)
    f = {t.name: np.asarray(t.data) for t in r.tensors}["rope_freqs.weight"]
    assert f.shape == (16,) and f.min() == 1.0 and f.max() == 8.0 and ((f > 1) & (f < 8)).any()
    m = llmrt.Model(out, threads=2, activations="f32", kv_cache_dtype="f32")
    ids = m.tokenize(TEXT[:200])[:60]
    ref = hf_reference(c, w, ids)
    assert np.abs(m.logits(ids) - ref).max() <= 1e-4 * np.abs(ref).max()
    # without the factors the logits would be far off: the check can fail
    c0 = dict(c)
    del c0["rope_scaling"]
    assert np.abs(m.logits(ids) - hf_reference(c0, w, ids)).max() > 1e-2 * np.abs(ref).max()


@pytest.mark.parametrize("type_name,bound", [("f16", 2e-3), ("q8_0", 0.03), ("q4_0", 0.25)])
def test_convert_to_quantized_types(tmp_path, sp_model, type_name, bound):
    d, c, w = _llama_dir(tmp_path, sp_model)
    out = str(tmp_path / f"m.{type_name}.gguf")
    info = convert(d, out, type_name, progress=False)
    assert info["types"]["blk.0.ffn_down.weight"] == type_name
    assert info["types"]["blk.0.attn_norm.weight"] == "f32"
    m = llmrt.Model(out, threads=2)
    ids = m.tokenize("The quick brown fox")
    ref = hf_reference(c, w, ids)
    err = np.abs(m.logits(ids) - ref).max(axis=1).mean() / np.abs(ref).max()
    assert err <= bound, err


def test_bad_checkpoints(tmp_path, sp_model):
    d, c, w = _llama_dir(tmp_path, sp_model)
    out = str(tmp_path / "o.gguf")
    # a missing tensor
    w2 = dict(w)
    del w2["model.layers.1.mlp.up_proj.weight"]
    bad = tmp_path / "missing"
    _save(str(bad), c, w2, shards=1)
    with pytest.raises(CheckpointError, match="model.layers.1.mlp.up_proj.weight"):
        convert(str(bad), out)
    # a tensor whose shape disagrees with the config
    w3 = dict(w)
    w3["model.layers.0.self_attn.k_proj.weight"] = np.zeros((48, 64), np.float32)
    bad = tmp_path / "shape"
    _save(str(bad), c, w3, shards=1)
    with pytest.raises(CheckpointError, match=r"k_proj.weight.*\(48, 64\).*\(32, 64\)"):
        convert(str(bad), out)
    # no tokenizer, an unsupported architecture, not a checkpoint
    notok = tmp_path / "notok"
    _save(str(notok), c, w, shards=1)
    with pytest.raises(CheckpointError, match="tokenizer"):
        convert(str(notok), out)
    other = tmp_path / "gpt"
    _save(str(other), dict(c, architectures=["GPTNeoXForCausalLM"]), w, shards=1)
    with pytest.raises(llmrt.UnsupportedModelError, match="GPTNeoXForCausalLM"):
        convert(str(other), out)
    dyn = tmp_path / "dynamic"
    _save(str(dyn), dict(c, rope_scaling={"rope_type": "dynamic", "factor": 4.0}), w, shards=1)
    with pytest.raises(llmrt.UnsupportedModelError, match="dynamic"):
        convert(str(dyn), out)
    with pytest.raises(CheckpointError, match="config.json"):
        convert(str(tmp_path), out)


def test_convert_cli(tmp_path, sp_model):
    d, c, w = _llama_dir(tmp_path, sp_model)
    out = str(tmp_path / "cli.gguf")
    r = subprocess.run([sys.executable, "-m", "llmrt", "convert", d, "-o", out, "--type", "q8_0"],
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    assert "LlamaForCausalLM" in r.stdout and os.path.exists(out)
    r = subprocess.run([sys.executable, "-m", "llmrt", "convert", str(tmp_path / "nope"), "-o",
                        out], capture_output=True, text=True, timeout=300)
    assert r.returncode == 2 and "config.json" in r.stderr


def test_yarn_rope_scaling_matches_transformers(tmp_path):
    # Qwen2.5's long-context setting: YaRN with its ramp's ends rounded to
    # whole dimensions (transformers' truncate default), positions past the
    # original context; against transformers' own forward
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    rs = {"rope_type": "yarn", "factor": 4.0, "original_max_position_embeddings": 32}
    tk, c, w = _bpe_dir(tmp_path / "q", arch="Qwen2ForCausalLM", qwen_bias=True,
                        rope_scaling=rs, max_position_embeddings=128)
    out = str(tmp_path / "q.gguf")
    convert(str(tmp_path / "q"), out, "f32", progress=False)
    r = gguf.GGUFReader(out)
    assert r.fields["qwen2.rope.scaling.type"].contents() == "yarn"
    ids = tk.encode(TEXT * 2).ids[:100]
    m = llmrt.Model(out, threads=2, activations="f32", kv_cache_dtype="f32")
    from safetensors.numpy import save_file
    d = tmp_path / "one"
    d.mkdir()
    save_file(w, str(d / "model.safetensors"))
    (d / "config.json").write_text(json.dumps(c))
    hf = transformers.Qwen2ForCausalLM.from_pretrained(str(d), dtype=torch.float32).eval()
    with torch.no_grad():
        t = hf(torch.tensor([ids])).logits[0].double().numpy()
    got = m.logits(ids)
    assert np.abs(got - t).max() <= 1e-4 * np.abs(t).max()
    # without the scaling the logits past the start move well beyond that
    plain = tmp_path / "plain.gguf"
    convert(str(tmp_path / "q"), str(plain), "f32", progress=False)
    from testutil import rewrite_gguf
    p2 = rewrite_gguf(str(plain), str(tmp_path / "noyarn.gguf"),
                      {"qwen2.rope.scaling.type": ("none", gguf.GGUFValueType.STRING)})
    far = llmrt.Model(p2, threads=2, activations="f32", kv_cache_dtype="f32").logits(ids)
    assert np.abs(far - t).max() > 1e-2 * np.abs(t).max()
