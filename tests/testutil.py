"""Test helpers: tiny random GGUF models written with gguf's writer, and an
independent numpy reference (dequantization and forward pass) to check
llmrt against."""

from __future__ import annotations

import gguf
import numpy as np
from gguf import GGMLQuantizationType as QT

from llmrt.ggml_types import TYPES as GGML_TYPES

# ---- numpy reference dequantization (GGUF block layouts) ----------------------


def dequantize_ref(raw: np.ndarray, type_name: str, rows: int, cols: int) -> np.ndarray:
    """GGUF bytes of a (rows, cols) tensor -> float64 values."""
    raw = np.ascontiguousarray(raw).view(np.uint8).reshape(rows, -1)
    if type_name == "F32":
        return raw.view(np.float32).astype(np.float64)
    if type_name == "F16":
        return raw.view(np.float16).astype(np.float64)
    if type_name == "BF16":
        return (raw.view(np.uint16).astype(np.uint32) << 16).view(np.float32).astype(np.float64)
    nb = cols // 32
    if type_name == "Q8_0":
        b = raw.reshape(rows, nb, 34)
        d = b[..., :2].copy().view(np.float16).astype(np.float64)  # (rows, nb, 1)
        q = b[..., 2:].copy().view(np.int8).astype(np.float64)
        return (d * q).reshape(rows, cols)
    if type_name in ("Q4_0", "Q4_1"):
        size = 18 if type_name == "Q4_0" else 20
        b = raw.reshape(rows, nb, size)
        d = b[..., :2].copy().view(np.float16).astype(np.float64)
        qs = b[..., size - 16:]
        q = np.concatenate([qs & 0x0F, qs >> 4], axis=-1).astype(np.float64)  # j, j+16
        if type_name == "Q4_0":
            return (d * (q - 8)).reshape(rows, cols)
        m = b[..., 2:4].copy().view(np.float16).astype(np.float64)
        return (d * q + m).reshape(rows, cols)
    if type_name in ("Q5_0", "Q5_1", "Q4_K", "Q5_K", "Q6_K"):
        # gguf-py's own dequantizer: an implementation independent of llmrt's
        return gguf.quants.dequantize(raw, QT[type_name]).astype(np.float64).reshape(rows, cols)
    raise ValueError(type_name)


KQUANT_BYTES = {n: GGML_TYPES[n].nbytes for n in ("Q4_K", "Q5_K", "Q6_K")}


def random_kquant(type_name: str, rows: int, cols: int, rng, scale: float = 1.0) -> np.ndarray:
    """Random K-quant blocks (any bit pattern is a valid block) with fp16
    super-block scales chosen so weights are O(scale); (rows, bytes per row) uint8."""
    size = KQUANT_BYTES[type_name]
    nb = cols // 256
    raw = rng.integers(0, 256, (rows, nb, size), dtype=np.uint8)
    # |w| ~ d * sub-scale (~32, up to 63; Q6_K's int8 up to 127) * q (~8..32)
    unit = scale / (32 * 8 if type_name != "Q6_K" else 64 * 16)
    d = ((rng.random((rows, nb)) + 0.5) * unit).astype(np.float16).view(np.uint8)
    if type_name == "Q6_K":
        raw[..., 208:210] = d.reshape(rows, nb, 2)
    else:
        raw[..., 0:2] = d.reshape(rows, nb, 2)
        dmin = (rng.random((rows, nb)) * unit).astype(np.float16).view(np.uint8)
        raw[..., 2:4] = dmin.reshape(rows, nb, 2)
    return raw.reshape(rows, nb * size)


def encode_tensor(w: np.ndarray, type_name: str) -> np.ndarray:
    """float32 (rows, cols) -> what gguf's writer stores for that type."""
    w = np.ascontiguousarray(w, dtype=np.float32)
    if type_name == "F32":
        return w
    if type_name == "F16":
        return w.astype(np.float16)
    return gguf.quants.quantize(w, QT[type_name])


# ---- tiny tokenizers -------------------------------------------------------------

def _byte_chars() -> list[str]:
    keep = list(range(ord("!"), ord("~") + 1)) + list(range(0xA1, 0xAD)) + list(range(0xAE, 0x100))
    table, extra = {}, 0
    for b in range(256):
        if b in keep:
            table[b] = chr(b)
        else:
            table[b] = chr(256 + extra)
            extra += 1
    return [table[b] for b in range(256)]


BPE_MERGES = ["Ġ t", "h e", "Ġ a", "i n", "Ġt he", "e r", "o n", "Ġ s", "r e", "Ġ w"]
BPE_SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]


def bpe_vocab(extra_tokens: int = 0):
    """(tokens, types, merges): 256 byte tokens, the merges' tokens, specials."""
    tokens = list(BPE_SPECIALS) + _byte_chars()
    types = [3] * len(BPE_SPECIALS) + [1] * 256
    for m in BPE_MERGES:
        tokens.append(m.replace(" ", ""))
        types.append(1)
    for i in range(extra_tokens):
        tokens.append(f"<unused{i}>")
        types.append(5)
    return tokens, types, list(BPE_MERGES)


# ---- tiny models -------------------------------------------------------------------

def write_model(path: str, *, arch: str = "llama", wtype: str = "F32", emb_type: str | None = None,
                n_embd: int = 64, n_layer: int = 2, n_head: int = 4, n_head_kv: int = 2,
                n_ff: int = 96, head_dim: int | None = None, tied: bool = True,
                extra_tokens: int = 0, ctx: int = 512, rope_base: float = 10000.0,
                seed: int = 0, tokenizer: str = "bpe", spm_vocab=None,
                bias: bool | None = None, norm_type: str = "F32", n_expert: int = 0,
                n_expert_used: int = 2, window: int = 8, longrope: bool = False,
                specials: tuple = (), chat_template: str | None = None,
                gguf_arch: str | None = None):
    """Write a random model; returns (reference weights float64 dict, config dict).

    The reference weights are the dequantized values actually stored, so the
    numpy reference and llmrt see the same model."""
    rng = np.random.default_rng(seed)
    hd = head_dim or n_embd // n_head
    if tokenizer == "bpe":
        tokens, types, merges = bpe_vocab(extra_tokens)
        tokens, types = tokens + list(specials), types + [4] * len(specials)  # user-defined
    else:
        tokens, scores, types = spm_vocab
        merges = None
    V = len(tokens)
    w = gguf.GGUFWriter(path, gguf_arch or arch)  # gguf_arch: the same model under another name
    w.add_context_length(ctx)
    w.add_embedding_length(n_embd)
    w.add_block_count(n_layer)
    w.add_feed_forward_length(n_ff)
    w.add_head_count(n_head)
    w.add_head_count_kv(n_head_kv)
    w.add_layer_norm_rms_eps(1e-5)
    w.add_rope_freq_base(rope_base)
    if head_dim is not None:
        w.add_key_length(hd)
        w.add_value_length(hd)
    w.add_rope_dimension_count(hd)
    if n_expert:
        w.add_expert_count(n_expert)
        w.add_expert_used_count(n_expert_used)
    gemma = arch in ("gemma2", "gemma3")
    if gemma:  # the family's quirks at strengths a tiny model feels (llmrt's forward only)
        w.add_sliding_window(window)
        w.add_sliding_window_pattern(2 if arch == "gemma2" else 3)
        w.add_attention_scale(0.7 / np.sqrt(hd))
        w.add_rope_freq_base_swa(rope_base / 7)
        if arch == "gemma2":
            w.add_attn_logit_softcapping(2.0)
            w.add_final_logit_softcapping(4.0)
    if tokenizer == "bpe":
        w.add_tokenizer_model("gpt2")
        w.add_tokenizer_pre("default")
        w.add_token_list(tokens)
        w.add_token_types(types)
        w.add_token_merges(merges)
        w.add_bos_token_id(0)
        w.add_eos_token_id(0)
        w.add_add_bos_token(False)
        if chat_template is not None:
            w.add_chat_template(chat_template)
    else:
        w.add_tokenizer_model("llama")
        w.add_token_list(tokens)
        w.add_token_scores(scores)
        w.add_token_types(types)
        w.add_bos_token_id(1)
        w.add_eos_token_id(2)
        w.add_unk_token_id(0)
        w.add_add_bos_token(True)

    ref: dict[str, np.ndarray] = {}

    def mat(name: str, rows: int, cols: int, ttype: str, scale: float):
        x = (rng.standard_normal((rows, cols)) * scale).astype(np.float32)
        if ttype in KQUANT_BYTES:  # gguf-py has no K-quant encoder: random blocks
            enc = random_kquant(ttype, rows, cols, rng, scale)
        else:
            enc = encode_tensor(x, ttype)
        if ttype == "BF16":
            w.add_tensor(name, enc, raw_dtype=QT.BF16)
        elif ttype in ("F32", "F16"):
            w.add_tensor(name, enc)
        else:
            w.add_tensor(name, np.ascontiguousarray(enc), raw_dtype=QT[ttype])
        ref[name] = dequantize_ref(np.asarray(enc).view(np.uint8), ttype, rows, cols)

    def vec(name: str, n: int, center: float, scale: float):
        x = (center + rng.standard_normal(n) * scale).astype(np.float32)
        if norm_type == "F16":
            x16 = x.astype(np.float16)
            w.add_tensor(name, x16)
            ref[name] = x16.astype(np.float64)
        else:
            w.add_tensor(name, x)
            ref[name] = x.astype(np.float64)

    mat("token_embd.weight", V, n_embd, emb_type or wtype, 1.0)
    use_bias = (arch == "qwen2") if bias is None else bias
    s_in = 1.0 / np.sqrt(n_embd)
    for i in range(n_layer):
        p = f"blk.{i}."
        vec(p + "attn_norm.weight", n_embd, 1.0, 0.1)
        mat(p + "attn_q.weight", n_head * hd, n_embd, wtype, s_in)
        mat(p + "attn_k.weight", n_head_kv * hd, n_embd, wtype, s_in)
        mat(p + "attn_v.weight", n_head_kv * hd, n_embd, wtype, s_in)
        if use_bias:
            vec(p + "attn_q.bias", n_head * hd, 0.0, 0.1)
            vec(p + "attn_k.bias", n_head_kv * hd, 0.0, 0.1)
            vec(p + "attn_v.bias", n_head_kv * hd, 0.0, 0.1)
        if arch in ("qwen3", "gemma3"):  # RMSNorm of each head of q and k
            vec(p + "attn_q_norm.weight", hd, 1.0, 0.3)
            vec(p + "attn_k_norm.weight", hd, 1.0, 0.3)
        mat(p + "attn_output.weight", n_embd, n_head * hd, wtype, 1.0 / np.sqrt(n_head * hd))
        vec(p + "ffn_norm.weight", n_embd, 1.0, 0.1)
        if gemma:
            vec(p + "post_attention_norm.weight", n_embd, 1.0, 0.1)
            vec(p + "post_ffw_norm.weight", n_embd, 1.0, 0.1)
        if n_expert:  # Mixtral layout: a router and (E, rows, cols) expert tensors
            mat(p + "ffn_gate_inp.weight", n_expert, n_embd, "F32", 1.0)
            for name, rows, cols, sc in (("ffn_gate_exps", n_ff, n_embd, s_in),
                                         ("ffn_up_exps", n_ff, n_embd, s_in),
                                         ("ffn_down_exps", n_embd, n_ff, 1.0 / np.sqrt(n_ff))):
                x3 = (rng.standard_normal((n_expert, rows, cols)) * sc).astype(np.float32)
                enc = np.stack([np.asarray(encode_tensor(x3[e], wtype)) for e in range(n_expert)])
                if wtype in ("F32", "F16"):
                    w.add_tensor(p + name + ".weight", enc)
                else:
                    w.add_tensor(p + name + ".weight", np.ascontiguousarray(enc),
                                 raw_dtype=QT[wtype])
                ref[p + name + ".weight"] = np.stack([
                    dequantize_ref(np.asarray(enc[e]).view(np.uint8), wtype, rows, cols)
                    for e in range(n_expert)])
        else:
            mat(p + "ffn_gate.weight", n_ff, n_embd, wtype, s_in)
            mat(p + "ffn_up.weight", n_ff, n_embd, wtype, s_in)
            mat(p + "ffn_down.weight", n_embd, n_ff, wtype, 1.0 / np.sqrt(n_ff))
    vec("output_norm.weight", n_embd, 1.0, 0.1)
    if longrope:  # phi3's LongRoPE: factors for a context past 64 positions and within
        w.add_rope_scaling_orig_ctx_len(64)
        w.add_rope_scaling_attn_factors(1.2)
        vec("rope_factors_long.weight", hd // 2, 3.0, 0.5)
        vec("rope_factors_short.weight", hd // 2, 1.2, 0.1)
    if not tied:
        mat("output.weight", V, n_embd, wtype, s_in)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    cfg = dict(arch=arch, n_vocab=V, n_embd=n_embd, n_layer=n_layer, n_head=n_head,
               n_head_kv=n_head_kv, head_dim=hd, n_ff=n_ff, rope_base=rope_base, eps=1e-5,
               n_expert=n_expert, n_expert_used=n_expert_used)
    return ref, cfg


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


INT8_TYPES = ("Q4_0", "Q4_1", "Q5_0", "Q5_1", "Q8_0", "Q4_K", "Q5_K", "Q6_K")


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
    neox = cfg["arch"] in ("qwen2", "qwen3")
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
            x = x + _moe_ref(W, p, h, cfg["n_expert_used"], mm)
        else:
            gate = mm(h, p + "ffn_gate.weight")
            up = mm(h, p + "ffn_up.weight")
            x = x + mm(gate / (1 + np.exp(-gate)) * up, p + "ffn_down.weight")
    x = _rmsnorm(x, W["output_norm.weight"], cfg["eps"])
    head = "output.weight" if "output.weight" in W else "token_embd.weight"
    return mm(x, head)


def _moe_ref(W: dict, p: str, h: np.ndarray, k: int, mm) -> np.ndarray:
    """Mixtral's sparse FFN: softmax over the router's logits, the k largest
    kept and renormalised, the chosen experts' SwiGLU FFNs mixed."""
    logits = mm(h, p + "ffn_gate_inp.weight")
    probs = np.exp(logits - logits.max(-1, keepdims=True))
    probs /= probs.sum(-1, keepdims=True)
    out = np.zeros_like(h)
    for t in range(len(h)):
        top = np.argsort(-probs[t], kind="stable")[:k]
        w = probs[t, top] / probs[t, top].sum()
        for e, we in zip(top, w):
            ht = h[t:t + 1]
            g = mm(ht, p + "ffn_gate_exps.weight", W[p + "ffn_gate_exps.weight"][e])
            u = mm(ht, p + "ffn_up_exps.weight", W[p + "ffn_up_exps.weight"][e])
            a = g / (1 + np.exp(-g)) * u
            out[t] += we * mm(a, p + "ffn_down_exps.weight", W[p + "ffn_down_exps.weight"][e])[0]
    return out



# A Hermes-style chat template that takes tools (written for these tests; the
# shape Qwen 2.5 and Hermes models use): tools in the system turn, calls in
# <tool_call> tags, results in <tool_response> tags.
HERMES = """{%- if tools %}<|im_start|>system
{% if messages[0]['role'] == 'system' %}{{ messages[0]['content'] }}

{% endif %}You may call functions. Their signatures, in <tools></tools>:
<tools>
{% for tool in tools %}{{ tool | tojson }}
{% endfor %}</tools>
Reply with each call in <tool_call></tool_call> tags:
<tool_call>
{"name": <function-name>, "arguments": <args-json-object>}
</tool_call><|im_end|>
{% elif messages[0]['role'] == 'system' %}<|im_start|>system
{{ messages[0]['content'] }}<|im_end|>
{% endif %}
{%- for m in messages %}
{%- if m['role'] == 'system' %}{% continue %}{% endif %}
{%- if m['role'] == 'tool' %}<|im_start|>user
<tool_response>
{{ m['content'] }}
</tool_response><|im_end|>
{% elif m['role'] == 'assistant' and m.get('tool_calls') %}<|im_start|>assistant
{% if m['content'] %}{{ m['content'] }}
{% endif %}{% for c in m['tool_calls'] %}<tool_call>
{"name": "{{ c['function']['name'] }}", "arguments": {{ c['function']['arguments'] | tojson }}}
</tool_call>{% if not loop.last %}
{% endif %}{% endfor %}<|im_end|>
{% else %}<|im_start|>{{ m['role'] }}
{{ m['content'] }}<|im_end|>
{% endif %}
{%- endfor %}
{%- if add_generation_prompt %}<|im_start|>assistant
{% endif %}"""


# Tools for the tool-calling tests: two functions, their schemas, a question
WEATHER_TOOL = {"type": "function", "function": {
    "name": "get_weather", "description": "The weather in a city",
    "parameters": {"type": "object", "properties": {
        "city": {"type": "string", "maxLength": 16},
        "days": {"type": "integer", "minimum": 1, "maximum": 7}},
        "required": ["city", "days"], "additionalProperties": False}}}
ADD_TOOL = {"type": "function", "function": {
    "name": "add", "parameters": {"type": "object", "properties": {
        "a": {"type": "integer", "minimum": 0, "maximum": 999},
        "b": {"type": "integer", "minimum": 0, "maximum": 999}},
        "required": ["a", "b"], "additionalProperties": False}}}
TOOLS = [WEATHER_TOOL, ADD_TOOL]
TOOL_SCHEMAS = {t["function"]["name"]: t["function"]["parameters"] for t in TOOLS}
WEATHER_ASK = [{"role": "user", "content": "What is the weather in Paris for 3 days?"}]


def write_tools_model(path: str, n_layer: int = 2, seed: int = 4):
    """A tiny random model whose vocabulary has <tool_call> tokens and whose
    chat template (HERMES) takes tools."""
    return write_model(path, wtype="Q8_0", n_layer=n_layer, ctx=2048, tied=False, seed=seed,
                       specials=("<tool_call>", "</tool_call>"), chat_template=HERMES)
