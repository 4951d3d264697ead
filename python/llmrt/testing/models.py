"""Random-weight GGUF models for tests and benchmarks: tiny ones of any
family (and real shapes for benchmarks), with the float64 values actually
stored, so an independent reference and llmrt see the same model."""

from __future__ import annotations

from typing import Any

import gguf
import numpy as np
from gguf import GGMLQuantizationType as QT

from ..families import Family, family
from .blocks import KQUANT_BYTES, dequantize_ref, encode_tensor, random_kquant

# ---- tiny tokenizers -------------------------------------------------------------

def _byte_chars() -> list[str]:
    keep = list(range(ord("!"), ord("~") + 1)) + list(range(0xA1, 0xAD)) + list(range(0xAE, 0x100))
    table: dict[int, str] = {}
    extra = 0
    for b in range(256):
        if b in keep:
            table[b] = chr(b)
        else:
            table[b] = chr(256 + extra)
            extra += 1
    return [table[b] for b in range(256)]


BPE_MERGES = ["Ġ t", "h e", "Ġ a", "i n", "Ġt he", "e r", "o n", "Ġ s", "r e", "Ġ w"]
BPE_SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]


def bpe_vocab(extra_tokens: int = 0) -> tuple[list[str], list[int], list[str]]:
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

class _Tensors:
    """Random tensors added to a writer, their stored values kept as float64."""

    def __init__(self, w: gguf.GGUFWriter, rng: np.random.Generator, norm_type: str):
        self.w, self.rng, self.norm_type = w, rng, norm_type
        self.ref: dict[str, np.ndarray] = {}

    def mat(self, name: str, rows: int, cols: int, ttype: str, scale: float) -> None:
        x = (self.rng.standard_normal((rows, cols)) * scale).astype(np.float32)
        if ttype in KQUANT_BYTES:  # gguf-py has no K-quant encoder: random blocks
            enc = random_kquant(ttype, rows, cols, self.rng, scale)
        else:
            enc = encode_tensor(x, ttype)
        if ttype == "BF16":
            self.w.add_tensor(name, enc, raw_dtype=QT.BF16)
        elif ttype in ("F32", "F16"):
            self.w.add_tensor(name, enc)
        else:
            self.w.add_tensor(name, np.ascontiguousarray(enc), raw_dtype=QT[ttype])
        self.ref[name] = dequantize_ref(np.asarray(enc).view(np.uint8), ttype, rows, cols)

    def vec(self, name: str, n: int, center: float, scale: float) -> None:
        x = (center + self.rng.standard_normal(n) * scale).astype(np.float32)
        if self.norm_type == "F16":
            x16 = x.astype(np.float16)
            self.w.add_tensor(name, x16)
            self.ref[name] = x16.astype(np.float64)
        else:
            self.w.add_tensor(name, x)
            self.ref[name] = x.astype(np.float64)

    def experts(self, name: str, n_expert: int, rows: int, cols: int, ttype: str,
                scale: float) -> None:
        """An (E, rows, cols) stacked expert tensor (Mixtral's layout)."""
        x3 = (self.rng.standard_normal((n_expert, rows, cols)) * scale).astype(np.float32)
        enc = np.stack([np.asarray(encode_tensor(x3[e], ttype)) for e in range(n_expert)])
        if ttype in ("F32", "F16"):
            self.w.add_tensor(name, enc)
        else:
            self.w.add_tensor(name, np.ascontiguousarray(enc), raw_dtype=QT[ttype])
        self.ref[name] = np.stack([
            dequantize_ref(np.asarray(enc[e]).view(np.uint8), ttype, rows, cols)
            for e in range(n_expert)])


def _hparams(w: gguf.GGUFWriter, fam: Family, n_embd: int, n_layer: int, n_head: int,
             n_head_kv: int, n_ff: int, hd: int, head_dim: int | None, ctx: int,
             rope_base: float, n_expert: int, n_expert_used: int, window: int,
             n_ff_exp: int | None, n_ff_shexp: int | None) -> None:
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
        if n_ff_exp:
            w.add_expert_feed_forward_length(n_ff_exp)
        if n_ff_shexp and fam.shared_expert:
            w.add_expert_shared_feed_forward_length(n_ff_shexp)
    if fam.gemma:  # the family's quirks at strengths a tiny model feels (llmrt's forward only)
        w.add_sliding_window(window)
        w.add_sliding_window_pattern(2 if fam.gemma2 else 3)
        w.add_attention_scale(0.7 / np.sqrt(hd))
        w.add_rope_freq_base_swa(rope_base / 7)
        if fam.gemma2:
            w.add_attn_logit_softcapping(2.0)
            w.add_final_logit_softcapping(4.0)


def _tokenizer(w: gguf.GGUFWriter, tokenizer: str, tokens: list[str], types: list[int],
               merges: list[str] | None, scores: Any, chat_template: str | None) -> None:
    if tokenizer == "bpe":
        w.add_tokenizer_model("gpt2")
        w.add_tokenizer_pre("default")
        w.add_token_list(tokens)
        w.add_token_types(types)
        w.add_token_merges(merges or [])
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


def _layer(t: _Tensors, i: int, fam: Family, wtype: str, n_embd: int, n_head: int, n_head_kv: int,
           hd: int, n_ff: int, n_expert: int, use_bias: bool, n_ff_exp: int,
           n_ff_shexp: int) -> None:
    p = f"blk.{i}."
    s_in = 1.0 / np.sqrt(n_embd)
    t.vec(p + "attn_norm.weight", n_embd, 1.0, 0.1)
    t.mat(p + "attn_q.weight", n_head * hd, n_embd, wtype, s_in)
    t.mat(p + "attn_k.weight", n_head_kv * hd, n_embd, wtype, s_in)
    t.mat(p + "attn_v.weight", n_head_kv * hd, n_embd, wtype, s_in)
    if use_bias:
        t.vec(p + "attn_q.bias", n_head * hd, 0.0, 0.1)
        t.vec(p + "attn_k.bias", n_head_kv * hd, 0.0, 0.1)
        t.vec(p + "attn_v.bias", n_head_kv * hd, 0.0, 0.1)
    if fam.qk_norm:  # RMSNorm of each head of q and k
        t.vec(p + "attn_q_norm.weight", hd, 1.0, 0.3)
        t.vec(p + "attn_k_norm.weight", hd, 1.0, 0.3)
    t.mat(p + "attn_output.weight", n_embd, n_head * hd, wtype, 1.0 / np.sqrt(n_head * hd))
    t.vec(p + "ffn_norm.weight", n_embd, 1.0, 0.1)
    if fam.post_norms:
        t.vec(p + "post_attention_norm.weight", n_embd, 1.0, 0.1)
        t.vec(p + "post_ffw_norm.weight", n_embd, 1.0, 0.1)
    if n_expert:  # a router and (E, rows, cols) expert tensors
        Fe = n_ff_exp
        t.mat(p + "ffn_gate_inp.weight", n_expert, n_embd, "F32", 1.0)
        t.experts(p + "ffn_gate_exps.weight", n_expert, Fe, n_embd, wtype, s_in)
        t.experts(p + "ffn_up_exps.weight", n_expert, Fe, n_embd, wtype, s_in)
        t.experts(p + "ffn_down_exps.weight", n_expert, n_embd, Fe, wtype, 1.0 / np.sqrt(Fe))
        if fam.shared_expert:  # and the shared one, with its gate's weights
            Fs = n_ff_shexp
            t.vec(p + "ffn_gate_inp_shexp.weight", n_embd, 0.0, 1.0 / np.sqrt(n_embd))
            t.mat(p + "ffn_gate_shexp.weight", Fs, n_embd, wtype, s_in)
            t.mat(p + "ffn_up_shexp.weight", Fs, n_embd, wtype, s_in)
            t.mat(p + "ffn_down_shexp.weight", n_embd, Fs, wtype, 1.0 / np.sqrt(Fs))
    else:
        t.mat(p + "ffn_gate.weight", n_ff, n_embd, wtype, s_in)
        t.mat(p + "ffn_up.weight", n_ff, n_embd, wtype, s_in)
        t.mat(p + "ffn_down.weight", n_embd, n_ff, wtype, 1.0 / np.sqrt(n_ff))


def write_model(path: str, *, arch: str = "llama", wtype: str = "F32", emb_type: str | None = None,
                n_embd: int = 64, n_layer: int = 2, n_head: int = 4, n_head_kv: int = 2,
                n_ff: int = 96, head_dim: int | None = None, tied: bool = True,
                extra_tokens: int = 0, ctx: int = 512, rope_base: float = 10000.0,
                seed: int = 0, tokenizer: str = "bpe", spm_vocab: Any = None,
                bias: bool | None = None, norm_type: str = "F32", n_expert: int = 0,
                n_expert_used: int = 2, n_ff_exp: int | None = None,
                n_ff_shexp: int | None = None, window: int = 8, longrope: bool = False,
                specials: tuple = (), chat_template: str | None = None,
                gguf_arch: str | None = None, control_specials: tuple = ()
                ) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    """Write a random model; returns (reference weights float64 dict, config dict).

    The reference weights are the dequantized values actually stored, so the
    numpy reference and llmrt see the same model. gguf_arch: the same model
    under another architecture name. specials: user-defined tokens added to
    the tiny BPE vocabulary; control_specials: control tokens after them."""
    rng = np.random.default_rng(seed)
    hd = head_dim or n_embd // n_head
    merges: list[str] | None = None
    scores = None
    if tokenizer == "bpe":
        tokens, types, merges = bpe_vocab(extra_tokens)
        tokens, types = tokens + list(specials), types + [4] * len(specials)  # user-defined
        tokens, types = tokens + list(control_specials), types + [3] * len(control_specials)
    else:
        tokens, scores, types = spm_vocab
    V = len(tokens)
    w = gguf.GGUFWriter(path, gguf_arch or arch)
    fam = family(arch)
    _hparams(w, fam, n_embd, n_layer, n_head, n_head_kv, n_ff, hd, head_dim, ctx, rope_base,
             n_expert, n_expert_used, window, n_ff_exp, n_ff_shexp)
    _tokenizer(w, tokenizer, tokens, types, merges, scores, chat_template)
    t = _Tensors(w, rng, norm_type)
    t.mat("token_embd.weight", V, n_embd, emb_type or wtype, 1.0)
    use_bias = fam.qkv_bias if bias is None else bias
    for i in range(n_layer):
        _layer(t, i, fam, wtype, n_embd, n_head, n_head_kv, hd, n_ff, n_expert, use_bias,
               n_ff_exp or n_ff, n_ff_shexp or n_ff)
    t.vec("output_norm.weight", n_embd, 1.0, 0.1)
    if longrope:  # phi3's LongRoPE: factors for a context past 64 positions and within
        w.add_rope_scaling_orig_ctx_len(64)
        w.add_rope_scaling_attn_factors(1.2)
        t.vec("rope_factors_long.weight", hd // 2, 3.0, 0.5)
        t.vec("rope_factors_short.weight", hd // 2, 1.2, 0.1)
    if not tied:
        t.mat("output.weight", V, n_embd, wtype, 1.0 / np.sqrt(n_embd))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    cfg = dict(arch=arch, n_vocab=V, n_embd=n_embd, n_layer=n_layer, n_head=n_head,
               n_head_kv=n_head_kv, head_dim=hd, n_ff=n_ff, rope_base=rope_base, eps=1e-5,
               n_expert=n_expert, n_expert_used=n_expert_used, expert_norm=fam.expert_norm)
    return t.ref, cfg


# ---- a model that calls tools ------------------------------------------------------

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
WEATHER_TOOL: dict[str, Any] = {"type": "function", "function": {
    "name": "get_weather", "description": "The weather in a city",
    "parameters": {"type": "object", "properties": {
        "city": {"type": "string", "maxLength": 16},
        "days": {"type": "integer", "minimum": 1, "maximum": 7}},
        "required": ["city", "days"], "additionalProperties": False}}}
ADD_TOOL: dict[str, Any] = {"type": "function", "function": {
    "name": "add", "parameters": {"type": "object", "properties": {
        "a": {"type": "integer", "minimum": 0, "maximum": 999},
        "b": {"type": "integer", "minimum": 0, "maximum": 999}},
        "required": ["a", "b"], "additionalProperties": False}}}
TOOLS = [WEATHER_TOOL, ADD_TOOL]
TOOL_SCHEMAS = {t["function"]["name"]: t["function"]["parameters"] for t in TOOLS}
WEATHER_ASK = [{"role": "user", "content": "What is the weather in Paris for 3 days?"}]


def write_tools_model(path: str, n_layer: int = 2, seed: int = 4
                      ) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    """A tiny random model whose vocabulary has <tool_call> tokens and whose
    chat template (HERMES) takes tools."""
    return write_model(path, wtype="Q8_0", n_layer=n_layer, ctx=2048, tied=False, seed=seed,
                       specials=("<tool_call>", "</tool_call>"), chat_template=HERMES)


# ---- a model that writes harmony (gpt-oss's chat format) ---------------------------

HARMONY_SPECIALS = ("<|start|>", "<|end|>", "<|message|>", "<|channel|>", "<|constrain|>",
                    "<|return|>", "<|call|>")


def write_harmony_model(path: str, chat_template: str, n_layer: int = 2, seed: int = 4
                        ) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    """A tiny random model whose vocabulary has harmony's markers as control
    tokens (as gpt-oss's o200k_harmony has; <|endoftext|> is the tiny
    vocabulary's own), with a harmony chat template."""
    return write_model(path, wtype="Q8_0", n_layer=n_layer, ctx=2048, tied=False, seed=seed,
                       control_specials=HARMONY_SPECIALS, chat_template=chat_template)
