"""Test helpers: the independent numpy reference forward pass to check llmrt
against, beside the random-weight model writers of llmrt.testing."""

from __future__ import annotations

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
                     kv_dtype: str | None = None) -> np.ndarray:
    """softmax attention written out in full, float64: logits (n, vocab).

    types (tensor name -> type name) makes the inputs of matmuls whose weights
    use an integer-dot type go through quantize_act_ref first, as llmrt does;
    kv_dtype rounds keys and values as a KV cache of that type stores them."""
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
    x = W["token_embd.weight"][tokens]
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
        m = llmrt.Model(p, threads=1, context_length=16)
        m.generate([1, 2, 3], max_new_tokens=2, ignore_eos=True)
        ok += 1
    except (llmrt.GGUFError, ValueError, FileNotFoundError, UnicodeDecodeError) as e:
        err += 1
print(ok, err)
"""



def fuzz_gguf(path, seed, runs, scratch):
    """Loads and runs `runs` corrupted copies of a GGUF file in a child
    process (a crash there fails the caller, not the test run) -> (loaded,
    refused with a clear error)."""
    import subprocess
    import sys
    r = subprocess.run([sys.executable, "-c", FUZZ_SCRIPT, path, str(seed), str(runs),
                        str(scratch)], capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, f"child died ({r.returncode}): {r.stderr[-2000:]}"
    ok, err = map(int, r.stdout.split())
    assert ok + err == runs
    return ok, err
