"""Test helpers: the independent numpy reference forward pass to check llmrt
against, beside the random-weight model writers of llmrt.testing."""

from __future__ import annotations

import json

import numpy as np

from llmrt.families import family
from llmrt.testing.blocks import KQUANT_BYTES, dequantize_ref, encode_tensor, random_kquant
from llmrt.testing.models import (
    ADD_TOOL,
    HERMES,
    TOOL_SCHEMAS,
    TOOLS,
    WEATHER_ASK,
    WEATHER_TOOL,
    bpe_vocab,
    write_model,
    write_tools_model,
)

__all__ = ["ADD_TOOL", "HERMES", "INT8_TYPES", "KQUANT_BYTES", "TOOLS", "TOOL_SCHEMAS", "WEATHER_ASK",
           "WEATHER_TOOL", "bpe_vocab", "dequantize_ref", "encode_tensor", "kv_round",
           "quantize_act_ref", "random_kquant", "reference_logits", "write_model",
           "write_tools_model", "rewrite_gguf", "fuzz_gguf", "check_batched_equals_alone",
           "check_speculative_and_structured"]


# ---- numpy reference forward ------------------------------------------------------

def _rmsnorm(x, w, eps):
    return x / np.sqrt(np.mean(x * x, axis=-1, keepdims=True) + eps) * w


def _rope(x, pos, base, neox):
    # x (n, heads, hd); llama GGUF rotates adjacent pairs, qwen2 (neox) halves
    n, h, hd = x.shape
    half = hd // 2
    inv = base ** (-np.arange(half) * 2.0 / hd)
    ang = pos[:, None] * inv[None, :]  # (n, half)
    c, s = np.cos(ang)[:, None, :], np.sin(ang)[:, None, :]
    out = x.copy()
    if neox:
        a, b = x[..., :half], x[..., half:]
        out[..., :half] = a * c - b * s
        out[..., half:] = a * s + b * c
    else:
        a, b = x[..., 0::2], x[..., 1::2]
        out[..., 0::2] = a * c - b * s
        out[..., 1::2] = a * s + b * c
    return out


INT8_TYPES = ("Q4_0", "Q4_1", "Q5_0", "Q5_1", "Q8_0", "Q4_K", "Q5_K", "Q6_K", "MXFP4")


def quantize_act_ref(x: np.ndarray) -> np.ndarray:
    """The 8-bit activation rule of the integer kernels, as the values they
    stand for: per block of 32, d = max|x| / 127, q = round-half-even(x * 127 / max|x|)."""
    x = np.asarray(x, dtype=np.float32)
    shape = x.shape
    b = x.reshape(-1, 32)
    amax = np.abs(b).max(axis=1, keepdims=True)
    d = amax / np.float32(127)
    with np.errstate(divide="ignore"):
        inv = np.where(amax > 0, np.float32(127) / amax, np.float32(0)).astype(np.float32)
    q = np.rint(b * inv)
    return (q.astype(np.float64) * d.astype(np.float64)).reshape(shape)


def kv_round(x: np.ndarray, dtype: str) -> np.ndarray:
    """Keys / values (..., hd) as a KV cache of this dtype stores them."""
    if dtype == "f32":
        return x.astype(np.float32).astype(np.float64)
    if dtype == "f16":
        return x.astype(np.float32).astype(np.float16).astype(np.float64)
    assert dtype == "q8_0"
    b = x.astype(np.float32).reshape(*x.shape[:-1], -1, 32)
    amax = np.abs(b).max(-1, keepdims=True)
    d = amax / np.float32(127)
    with np.errstate(divide="ignore"):
        inv = np.where(d > 0, np.float32(1) / d, 0).astype(np.float32)
    q = np.clip(np.rint(b * inv), -127, 127)
    return (q * d.astype(np.float16).astype(np.float64)).reshape(x.shape)


def reference_logits(W: dict, cfg: dict, tokens, types: dict | None = None,
                     kv_dtype: str | None = None, embeds: dict | None = None) -> np.ndarray:
    """softmax attention written out in full, float64: logits (n, vocab).

    types (tensor name -> type name) makes the inputs of matmuls whose weights
    use an integer-dot type go through quantize_act_ref first, as llmrt does;
    kv_dtype rounds keys and values as a KV cache of that type stores them;
    embeds (position -> vector) gives rows as input embeddings (an image's)."""
    types = types or {}

    def mm(h, name, w=None):
        if types.get(name) in INT8_TYPES:
            h = quantize_act_ref(h)
        return h @ (W[name] if w is None else w).T

    tokens = np.asarray(tokens)
    n = len(tokens)
    H, KV, hd = cfg["n_head"], cfg["n_head_kv"], cfg["head_dim"]
    neox = family(cfg["arch"]).rope_neox
    pos = np.arange(n, dtype=np.float64)
    emb = W["token_embd.weight"]
    x = emb[np.minimum(tokens, len(emb) - 1)]
    for i, e in (embeds or {}).items():
        x[i] = e
    mask = np.triu(np.full((n, n), -np.inf), 1)
    for i in range(cfg["n_layer"]):
        p = f"blk.{i}."
        h = _rmsnorm(x, W[p + "attn_norm.weight"], cfg["eps"])
        q = mm(h, p + "attn_q.weight") + W.get(p + "attn_q.bias", 0)
        k = mm(h, p + "attn_k.weight") + W.get(p + "attn_k.bias", 0)
        v = mm(h, p + "attn_v.weight") + W.get(p + "attn_v.bias", 0)
        q, k = q.reshape(n, H, hd), k.reshape(n, KV, hd)
        if p + "attn_q_norm.weight" in W:  # qwen3
            q = _rmsnorm(q, W[p + "attn_q_norm.weight"], cfg["eps"])
            k = _rmsnorm(k, W[p + "attn_k_norm.weight"], cfg["eps"])
        q = _rope(q, pos, cfg["rope_base"], neox)
        k = _rope(k, pos, cfg["rope_base"], neox)
        v = v.reshape(n, KV, hd)
        if kv_dtype is not None and kv_dtype != "f32":
            k, v = kv_round(k, kv_dtype), kv_round(v, kv_dtype)
        out = np.empty((n, H, hd))
        for head in range(H):
            g = head // (H // KV)
            s = q[:, head] @ k[:, g].T / np.sqrt(hd) + mask
            s = np.exp(s - s.max(-1, keepdims=True))
            s /= s.sum(-1, keepdims=True)
            out[:, head] = s @ v[:, g]
        x = x + mm(out.reshape(n, H * hd), p + "attn_output.weight")
        h = _rmsnorm(x, W[p + "ffn_norm.weight"], cfg["eps"])
        if cfg.get("n_expert"):
            x = x + _moe_ref(W, p, h, cfg["n_expert_used"], mm, cfg.get("expert_norm", True))
        else:
            gate = mm(h, p + "ffn_gate.weight")
            up = mm(h, p + "ffn_up.weight")
            x = x + mm(gate / (1 + np.exp(-gate)) * up, p + "ffn_down.weight")
    x = _rmsnorm(x, W["output_norm.weight"], cfg["eps"])
    head = "output.weight" if "output.weight" in W else "token_embd.weight"
    return mm(x, head)


def _moe_ref(W: dict, p: str, h: np.ndarray, k: int, mm, norm: bool = True) -> np.ndarray:
    """A sparse FFN: softmax over the router's logits, the k largest kept (and
    renormalised with norm), the chosen experts' SwiGLU FFNs mixed; plus a
    shared expert scaled by the sigmoid of its gate where the layer has one."""
    logits = mm(h, p + "ffn_gate_inp.weight")
    probs = np.exp(logits - logits.max(-1, keepdims=True))
    probs /= probs.sum(-1, keepdims=True)
    out = np.zeros_like(h)
    for t in range(len(h)):
        top = np.argsort(-probs[t], kind="stable")[:k]
        w = probs[t, top] / (probs[t, top].sum() if norm else 1.0)
        for e, we in zip(top, w):
            ht = h[t:t + 1]
            g = mm(ht, p + "ffn_gate_exps.weight", W[p + "ffn_gate_exps.weight"][e])
            u = mm(ht, p + "ffn_up_exps.weight", W[p + "ffn_up_exps.weight"][e])
            a = g / (1 + np.exp(-g)) * u
            out[t] += we * mm(a, p + "ffn_down_exps.weight", W[p + "ffn_down_exps.weight"][e])[0]
    if p + "ffn_gate_inp_shexp.weight" in W:
        gate = 1 / (1 + np.exp(-(h @ W[p + "ffn_gate_inp_shexp.weight"])))
        g = mm(h, p + "ffn_gate_shexp.weight")
        u = mm(h, p + "ffn_up_shexp.weight")
        out += gate[:, None] * mm(g / (1 + np.exp(-g)) * u, p + "ffn_down_shexp.weight")
    return out



# A Hermes-style chat template that takes tools (written for these tests; the
# shape Qwen 2.5 and Hermes models use): tools in the system turn, calls in
# <tool_call> tags, results in <tool_response> tags.


# ---- checks shared by the families' tests -------------------------------------------

def check_batched_equals_alone(m, ids, end: int, chunk: int = 17, rtol: float = 1e-5) -> None:
    """Three prompts generated together give the tokens each gives alone;
    a prompt's first `chunk` tokens give the logits of the whole's."""
    prompts = [ids[:9], ids[3:end], ids[:1]]
    alone = [m.generate(p, max_new_tokens=6, ignore_eos=True).token_ids for p in prompts]
    both = m.generate(prompts, max_new_tokens=6, ignore_eos=True)
    assert [r.token_ids for r in both] == alone
    full = m.logits(ids)
    part = m.logits(ids[:chunk])
    assert np.abs(part - full[:chunk]).max() <= rtol * np.abs(full[:chunk]).max()


def check_speculative_and_structured(m, ids, n_new: int) -> None:
    """Prompt-lookup speculation gives plain greedy's tokens; a JSON schema
    holds where the reply ends."""
    import json
    plain = m.generate(ids[:12], max_new_tokens=n_new, ignore_eos=True).token_ids
    spec = m.generate(ids[:12], max_new_tokens=n_new, ignore_eos=True, draft="prompt_lookup",
                      num_draft_tokens=3).token_ids
    assert spec == plain
    schema = {"type": "object", "properties": {"n": {"type": "integer"}}, "required": ["n"],
              "additionalProperties": False}
    r = m.generate("Answer: ", max_new_tokens=24, temperature=0.7, seed=3,
                   response_format={"type": "json_schema", "json_schema": {"schema": schema}})
    if r.finish_reason == "stop":
        assert isinstance(json.loads(r.text)["n"], int)


# ---- corrupted and rewritten files ----------------------------------------------------

def rewrite_gguf(src, dst, keys=None, drop=()):
    """A copy of a GGUF file with keys added or replaced (name -> (value,
    GGUFValueType)) and tensors dropped."""
    import gguf

    r = gguf.GGUFReader(src)
    w = gguf.GGUFWriter(dst, r.fields["general.architecture"].contents())
    for k, f in r.fields.items():
        if k.startswith("GGUF.") or k == "general.architecture":
            continue
        if keys and k in keys:
            continue
        vt = f.types[0]
        sub = f.types[-1] if vt == gguf.GGUFValueType.ARRAY else None
        w.add_key_value(k, f.contents(), vt, sub_type=sub)
    for k, (v, vt) in (keys or {}).items():
        w.add_key_value(k, v, vt)
    for t in r.tensors:
        if t.name not in drop:
            w.add_tensor(t.name, np.asarray(t.data), raw_shape=list(reversed(t.shape.tolist())),
                         raw_dtype=t.tensor_type)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return dst


FUZZ_SCRIPT = r"""
import random, sys
import llmrt
data = open(sys.argv[1], 'rb').read()
rng = random.Random(int(sys.argv[2]))
ok = err = 0
for it in range(int(sys.argv[3])):
    d = bytearray(data)
    # corrupt the header / metadata / tensor table region mostly, where parsing happens
    limit = len(d) if rng.random() < 0.2 else min(len(d), 4096)
    for _ in range(rng.randint(1, 8)):
        d[rng.randrange(limit)] = rng.randrange(256)
    if rng.random() < 0.3:
        d = d[:rng.randrange(len(d))]
    p = sys.argv[4]
    open(p, 'wb').write(d)
    try:
        if len(sys.argv) > 5:  # the corrupted file is the mmproj of this model
            import numpy as np
            m = llmrt.Model(sys.argv[5], mmproj=p, threads=1, context_length=256)
            img = np.arange(40 * 30 * 3, dtype=np.uint8).reshape(40, 30, 3)
            m.generate("x", images=[img], max_new_tokens=2, ignore_eos=True)
        else:
            m = llmrt.Model(p, threads=1, context_length=16)
            if hasattr(m, "encoder"):  # an embedder or reranker
                m.embed([[1, 2, 3]])
            else:
                m.generate([1, 2, 3], max_new_tokens=2, ignore_eos=True)
        ok += 1
    except (llmrt.GGUFError, ValueError, FileNotFoundError, UnicodeDecodeError) as e:
        err += 1
print(ok, err)
"""



def fuzz_gguf(path, seed, runs, scratch, model=None):
    """Loads and runs `runs` corrupted copies of a GGUF file in a child
    process (a crash there fails the caller, not the test run) -> (loaded,
    refused with a clear error). With `model`, the file is an mmproj: the
    model loads with it and reads an image."""
    import subprocess
    import sys
    r = subprocess.run([sys.executable, "-c", FUZZ_SCRIPT, path, str(seed), str(runs),
                        str(scratch)] + ([model] if model else []),
                       capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, f"child died ({r.returncode}): {r.stderr[-2000:]}"
    ok, err = map(int, r.stdout.split())
    assert ok + err == runs
    return ok, err


# ---- tiny vision-language checkpoints (tests/test_vision.py, the server's tests) ------------

VISION_TEXT = ("The quick brown fox jumps over the lazy dog. A stitch in time saves nine. "
               "Numbers like 12345 and 678 appear here; so do symbols: #, $, %, &!\n") * 20
GEMMA_TEMPLATE = (  # Gemma 3's form: an image part is <start_of_image>
    "{{ bos_token }}{% for m in messages %}<start_of_turn>{{ 'model' if m['role'] == 'assistant' "
    "else m['role'] }}\n{% if m['content'] is string %}{{ m['content'] }}{% else %}"
    "{% for p in m['content'] %}{% if p['type'] == 'image' %}<start_of_image>{% else %}"
    "{{ p['text'] }}{% endif %}{% endfor %}{% endif %}<end_of_turn>\n{% endfor %}"
    "{% if add_generation_prompt %}<start_of_turn>model\n{% endif %}")


SMOLVLM_TEMPLATE = (  # SmolVLM's form: "User:<image>text<end_of_utterance>\nAssistant:"
    "<|im_start|>{% for m in messages %}{{ m['role'] | capitalize }}"
    "{% if m['content'] is string %}: {{ m['content'] }}{% else %}"
    "{% if m['content'][0]['type'] == 'image' %}:{% else %}: {% endif %}"
    "{% for p in m['content'] %}{% if p['type'] == 'image' %}<image>{% else %}{{ p['text'] }}"
    "{% endif %}{% endfor %}{% endif %}<end_of_utterance>\n{% endfor %}"
    "{% if add_generation_prompt %}Assistant:{% endif %}")
I3_SPECIALS = ["<|endoftext|>", "<|im_start|>", "<end_of_utterance>", "<fake_token_around_image>",
               "<image>", "<global-img>"] + [f"<row_{r}_col_{c}>" for r in range(1, 4)
                                             for c in range(1, 4)]


def _siglip_weights(rng, pre: str, D: int, F: int, L: int, p: int, P: int) -> dict:
    """A SigLIP tower's tensors under Hugging Face's names, at scales where
    every layer matters (vectors 0.2, matrices 1 / sqrt(fan-in))."""
    w = {pre + "embeddings.patch_embedding.weight": rng.standard_normal((D, 3, p, p)) /
         np.sqrt(3 * p * p),
         pre + "embeddings.patch_embedding.bias": 0.2 * rng.standard_normal(D),
         pre + "embeddings.position_embedding.weight": 0.5 * rng.standard_normal((P, D)),
         pre + "post_layernorm.weight": 1 + 0.2 * rng.standard_normal(D),
         pre + "post_layernorm.bias": 0.2 * rng.standard_normal(D)}
    for i in range(L):
        q = f"{pre}encoder.layers.{i}."
        for n in ("layer_norm1", "layer_norm2"):
            w[q + n + ".weight"] = 1 + 0.2 * rng.standard_normal(D)
            w[q + n + ".bias"] = 0.2 * rng.standard_normal(D)
        for n in ("q_proj", "k_proj", "v_proj", "out_proj"):
            w[q + "self_attn." + n + ".weight"] = 1.5 * rng.standard_normal((D, D)) / np.sqrt(D)
            w[q + "self_attn." + n + ".bias"] = 0.2 * rng.standard_normal(D)
        w[q + "mlp.fc1.weight"] = 1.5 * rng.standard_normal((F, D)) / np.sqrt(D)
        w[q + "mlp.fc1.bias"] = 0.2 * rng.standard_normal(F)
        w[q + "mlp.fc2.weight"] = rng.standard_normal((D, F)) / np.sqrt(F)
        w[q + "mlp.fc2.bias"] = 0.2 * rng.standard_normal(D)
    return w


def _decoder_weights(rng, pre: str, c: dict, gemma: bool) -> dict:
    D, F, V = c["hidden_size"], c["intermediate_size"], c["vocab_size"]
    H, KV = c["num_attention_heads"], c["num_key_value_heads"]
    hd = c.get("head_dim") or D // H
    w = {pre + "embed_tokens.weight": rng.standard_normal((V, D)) / np.sqrt(D),
         pre + "norm.weight": 0.2 * rng.standard_normal(D) + (0 if gemma else 1)}
    for i in range(c["num_hidden_layers"]):
        q = f"{pre}layers.{i}."
        norms = ("input_layernorm", "post_attention_layernorm") + \
            (("pre_feedforward_layernorm", "post_feedforward_layernorm") if gemma else ())
        for n in norms:  # gemma's scale by 1 + w
            w[q + n + ".weight"] = 0.2 * rng.standard_normal(D) + (0 if gemma else 1)
        w[q + "self_attn.q_proj.weight"] = 1.5 * rng.standard_normal((H * hd, D)) / np.sqrt(D)
        w[q + "self_attn.k_proj.weight"] = 1.5 * rng.standard_normal((KV * hd, D)) / np.sqrt(D)
        w[q + "self_attn.v_proj.weight"] = rng.standard_normal((KV * hd, D)) / np.sqrt(D)
        w[q + "self_attn.o_proj.weight"] = rng.standard_normal((D, H * hd)) / np.sqrt(H * hd)
        if gemma:
            w[q + "self_attn.q_norm.weight"] = 0.3 * rng.standard_normal(hd)
            w[q + "self_attn.k_norm.weight"] = 0.3 * rng.standard_normal(hd)
        w[q + "mlp.gate_proj.weight"] = rng.standard_normal((F, D)) / np.sqrt(D)
        w[q + "mlp.up_proj.weight"] = rng.standard_normal((F, D)) / np.sqrt(D)
        w[q + "mlp.down_proj.weight"] = rng.standard_normal((D, F)) / np.sqrt(F)
    return w


def _save_checkpoint(d, config: dict, weights: dict) -> dict:
    from safetensors.numpy import save_file
    d.mkdir(parents=True, exist_ok=True)
    (d / "config.json").write_text(json.dumps(config))
    w = {k: np.ascontiguousarray(v, np.float32) for k, v in weights.items()}
    save_file(w, str(d / "model.safetensors"), metadata={"format": "pt"})
    return w


def image(w, h, seed):
    rng = np.random.default_rng(seed)
    # smooth gradients plus noise: resampling filters see real structure
    y, x = np.mgrid[0:h, 0:w]
    base = np.stack([x * 255 / max(w - 1, 1), y * 255 / max(h - 1, 1),
                     (x + y) * 127 / max(w + h - 2, 1)], -1)
    img = np.clip(base + rng.normal(0, 40, (h, w, 3)), 0, 255).astype(np.uint8)
    from PIL import Image
    return Image.fromarray(img)


def tiny_gemma3_vision(root, D=64, F=80, heads=4, image=56, patch=7, tokens=16):
    """A random Gemma3ForConditionalGeneration checkpoint in root/hf, written
    with numpy under the names published checkpoints use (a SentencePiece
    vocabulary with the image tokens, a chat template, the preprocessor's
    config): by default 56-pixel images of 7-pixel patches, 16 image tokens
    -> dict(root, dir, config, weights, ids)."""
    import sentencepiece as spm
    (root / "corpus.txt").write_text(VISION_TEXT)
    spm.SentencePieceTrainer.train(
        input=str(root / "corpus.txt"), model_prefix=str(root / "tok"), vocab_size=400,
        model_type="bpe", byte_fallback=True, add_dummy_prefix=False,
        remove_extra_whitespaces=False, minloglevel=2,
        user_defined_symbols=["<start_of_turn>", "<end_of_turn>", "<start_of_image>",
                              "<end_of_image>", "<image_soft_token>"])
    sp = spm.SentencePieceProcessor(model_file=str(root / "tok.model"))
    ids = {t: sp.piece_to_id(t) for t in ("<start_of_image>", "<end_of_image>",
                                          "<image_soft_token>")}
    tc = dict(model_type="gemma3_text", hidden_size=64, intermediate_size=96,
              num_hidden_layers=4, num_attention_heads=4, num_key_value_heads=2, head_dim=16,
              vocab_size=sp.get_piece_size(), max_position_embeddings=1024, sliding_window=24,
              sliding_window_pattern=2, query_pre_attn_scalar=16, rope_theta=1000000.0,
              rope_local_base_freq=10000.0, rms_norm_eps=1e-6, bos_token_id=1, eos_token_id=2,
              pad_token_id=0, hidden_activation="gelu_pytorch_tanh")
    vc = dict(model_type="siglip_vision_model", hidden_size=D, intermediate_size=F,
              num_hidden_layers=3, num_attention_heads=heads, image_size=image,
              patch_size=patch, layer_norm_eps=1e-6, hidden_act="gelu_pytorch_tanh",
              vision_use_head=False)
    cfg = dict(architectures=["Gemma3ForConditionalGeneration"], model_type="gemma3",
               text_config=tc, vision_config=vc, mm_tokens_per_image=tokens,
               boi_token_index=ids["<start_of_image>"], eoi_token_index=ids["<end_of_image>"],
               image_token_index=ids["<image_soft_token>"], tie_word_embeddings=True)
    rng = np.random.default_rng(1)
    w = _siglip_weights(rng, "vision_tower.vision_model.", D, F, 3, patch, (image // patch) ** 2)
    w.update(_decoder_weights(rng, "language_model.model.", tc, gemma=True))
    w["multi_modal_projector.mm_input_projection_weight"] = \
        rng.standard_normal((D, 64)) / np.sqrt(D)
    w["multi_modal_projector.mm_soft_emb_norm.weight"] = 0.2 * rng.standard_normal(D)
    d = root / "hf"
    w = _save_checkpoint(d, cfg, w)
    (d / "tokenizer.model").write_bytes((root / "tok.model").read_bytes())
    (d / "tokenizer_config.json").write_text(json.dumps(
        {"add_bos_token": True, "chat_template": GEMMA_TEMPLATE}))
    (d / "preprocessor_config.json").write_text(json.dumps(
        {"image_mean": [0.5, 0.4, 0.3], "image_std": [0.2, 0.3, 0.4],
         "size": {"height": image, "width": image}}))
    return dict(root=root, dir=str(d), config=cfg, weights=w, ids=ids)


def tiny_idefics3_vision(root):
    """A random Idefics3ForConditionalGeneration checkpoint (SmolVLM's form)
    in root/hf, written with numpy: tiles of 28 pixels, images resized to a
    longest edge of 56, 4 tokens a tile -> dict(root, dir, config, weights,
    image_id)."""
    import tokenizers
    from tokenizers import decoders, models, pre_tokenizers, trainers
    tk = tokenizers.Tokenizer(models.BPE())
    tk.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tk.decoder = decoders.ByteLevel()
    tk.train_from_iterator([VISION_TEXT], trainers.BpeTrainer(
        vocab_size=400, special_tokens=I3_SPECIALS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    image_id = tk.token_to_id("<image>")
    tc = dict(model_type="llama", hidden_size=64, intermediate_size=96, num_hidden_layers=3,
              num_attention_heads=4, num_key_value_heads=2, vocab_size=tk.get_vocab_size(),
              max_position_embeddings=1024, rms_norm_eps=1e-5, rope_theta=100000.0)
    vc = dict(model_type="idefics3_vision", hidden_size=32, intermediate_size=64,
              num_hidden_layers=2, num_attention_heads=2, image_size=28, patch_size=7,
              layer_norm_eps=1e-6, hidden_act="gelu_pytorch_tanh")
    cfg = dict(architectures=["Idefics3ForConditionalGeneration"], model_type="idefics3",
               text_config=tc, vision_config=vc, scale_factor=2, image_token_id=image_id,
               tie_word_embeddings=False)
    rng = np.random.default_rng(2)
    w = _siglip_weights(rng, "model.vision_model.", 32, 64, 2, 7, 16)
    w.update(_decoder_weights(rng, "model.text_model.", tc, gemma=False))
    w["model.connector.modality_projection.proj.weight"] = rng.standard_normal((64, 128)) / 11.3
    w["lm_head.weight"] = rng.standard_normal((tc["vocab_size"], 64)) / 8.0
    d = root / "hf"
    w = _save_checkpoint(d, cfg, w)
    tk.save(str(d / "tokenizer.json"))
    (d / "tokenizer_config.json").write_text(json.dumps(
        {"eos_token": "<end_of_utterance>", "chat_template": SMOLVLM_TEMPLATE}))
    pre = {"image_mean": [0.5, 0.5, 0.5], "image_std": [0.5, 0.5, 0.5],
           "size": {"longest_edge": 56}, "max_image_size": {"longest_edge": 28}}
    (d / "preprocessor_config.json").write_text(json.dumps(pre))
    return dict(root=root, dir=str(d), config=cfg, weights=w, image_id=image_id)


# ---- a numpy SigLIP tower and projectors, from Hugging Face's weights -----------------------


def _layernorm(x, w, b, eps):
    m = x.mean(-1, keepdims=True)
    v = ((x - m) ** 2).mean(-1, keepdims=True)
    return (x - m) / np.sqrt(v + eps) * w + b


def _gelu_tanh(x):
    return 0.5 * x * (1 + np.tanh(np.sqrt(2 / np.pi) * (x + 0.044715 * x ** 3)))


def siglip_reference(w: dict, pre: str, px: np.ndarray, heads: int, eps: float) -> np.ndarray:
    """SigLIP's last hidden state (N, patches, D), float64, for pixels (N, 3,
    S, S): the patch convolution (stride = kernel), learned positions,
    pre-LayerNorm blocks of full attention and a tanh-GELU MLP, the
    post-LayerNorm."""
    W = {k: np.asarray(v, np.float64) for k, v in w.items() if k.startswith(pre)}
    k = W[pre + "embeddings.patch_embedding.weight"]
    D, p = k.shape[0], k.shape[-1]
    N, S = px.shape[0], px.shape[-1]
    G = S // p
    patches = px.reshape(N, 3, G, p, G, p).transpose(0, 2, 4, 1, 3, 5).reshape(N, G * G, -1)
    x = patches @ k.reshape(D, -1).T + W[pre + "embeddings.patch_embedding.bias"]
    x = x + W[pre + "embeddings.position_embedding.weight"]
    hd = D // heads
    i = 0
    while pre + f"encoder.layers.{i}.layer_norm1.weight" in W:
        q = f"{pre}encoder.layers.{i}."

        def lin(h, n):
            return h @ W[q + n + ".weight"].T + W[q + n + ".bias"]
        h = _layernorm(x, W[q + "layer_norm1.weight"], W[q + "layer_norm1.bias"], eps)
        Q, K, V = (lin(h, "self_attn." + n).reshape(N, -1, heads, hd).transpose(0, 2, 1, 3)
                   for n in ("q_proj", "k_proj", "v_proj"))
        s = Q @ K.transpose(0, 1, 3, 2) / np.sqrt(hd)
        s = np.exp(s - s.max(-1, keepdims=True))
        a = (s / s.sum(-1, keepdims=True)) @ V
        x = x + lin(a.transpose(0, 2, 1, 3).reshape(N, -1, D), "self_attn.out_proj")
        h = _layernorm(x, W[q + "layer_norm2.weight"], W[q + "layer_norm2.bias"], eps)
        x = x + lin(_gelu_tanh(lin(h, "mlp.fc1")), "mlp.fc2")
        i += 1
    return _layernorm(x, W[pre + "post_layernorm.weight"], W[pre + "post_layernorm.bias"], eps)


def gemma3_projection_reference(w: dict, x: np.ndarray, tokens: int, eps: float) -> np.ndarray:
    """Gemma 3's projector: average pooling of the patch grid to `tokens`
    rows, RMSNorm scaled by 1 + w, times the (vision, text) projection."""
    N, P, D = x.shape
    G, side = int(round(P ** 0.5)), int(round(tokens ** 0.5))
    k = G // side
    x = x.reshape(N, side, k, side, k, D).mean(axis=(2, 4)).reshape(N * tokens, D)
    x = x / np.sqrt((x * x).mean(-1, keepdims=True) + eps) * \
        (1 + np.asarray(w["multi_modal_projector.mm_soft_emb_norm.weight"], np.float64))
    return x @ np.asarray(w["multi_modal_projector.mm_input_projection_weight"], np.float64)


def idefics3_projection_reference(w: dict, x: np.ndarray, scale: int) -> np.ndarray:
    """Idefics3's connector: pixel shuffle (each s x s block of patches into
    one row, the block's patches in row-major order), then the linear map."""
    N, P, D = x.shape
    G = int(round(P ** 0.5))
    rows = []
    for n in range(N):
        g = x[n].reshape(G, G, D)
        for i in range(G // scale):
            for j in range(G // scale):
                rows.append(np.concatenate([g[i * scale + a, j * scale + b]
                                            for a in range(scale) for b in range(scale)]))
    return np.stack(rows) @ np.asarray(w["model.connector.modality_projection.proj.weight"],
                                       np.float64).T
