"""One description per model family: what the loader, convert, LoRA and
the tokenizer writer need to know about it, as flags. No other module tests
an architecture's name; a family that differs from another only in flags is
one entry here (and its tests).

The tensors every family's GGUF files may hold are listed once, below
(GLOBAL_TENSORS, LAYER_TENSORS): each under its GGUF name and the role the
native model gives it (a field of its LlamaWeights / LayerWeights), with its
shape and when it is required. The C++ model never sees a GGUF name or an
architecture: the loader turns the flags into the config it hands over
(rope_neox, embd_scale, ffn_gelu, soft-caps, the sliding pattern) and the
tensors present into a table by role."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass


@dataclass(frozen=True)
class Family:
    arch: str                        # GGUF general.architecture
    hf_classes: tuple[str, ...]      # Hugging Face architectures that convert to it
    qk_norm: bool = False            # RMSNorm of each head of q and k (tensors attn_q/k_norm)
    post_norms: bool = False         # norms after attention and after the FFN
    fused_qkv: bool = False          # q/k/v rows in one tensor (attn_qkv), gate/up in ffn_up
    qkv_bias: bool = False           # q/k/v biases always present
    rope_neox: bool = False          # rotates (i, i + n_rot/2), Hugging Face's order
    permute_qk: bool = False         # GGUF stores q/k rows permuted for adjacent pairs
    gemma: bool = False              # sqrt(width) embeddings, GeGLU, soft-caps, the query
    #                                  scale, alternating sliding layers, norms stored as 1 + w
    gemma2: bool = False             # (gemma 2's defaults: soft-caps, sliding period 2)
    longrope: bool = False           # Phi-3's LongRoPE factors may be present
    sentencepiece: bool = False      # convert: a tokenizer.model is a SentencePiece vocabulary
    tied_default: bool = False       # convert: tie_word_embeddings when the config is silent
    # a mixture of experts (where the file has expert_count > 0):
    expert_norm: bool = True         # the chosen experts' softmax weights renormalised to 1
    shared_expert: bool = False      # a dense shared expert beside them, sigmoid-gated
    # gpt-oss: biases on q/k/v/o, the router and the experts; attention sinks;
    # the FFN's norm stored as post_attention_norm; the experts' clamped
    # SwiGLU (limit, alpha); sliding-window layers every swa_period-th
    # layer excepted (0: every layer, where the file gives a window); YaRN
    # without rounding its ramp's ends (Hugging Face's truncate=False)
    biases: bool = False
    sinks: bool = False
    ffn_norm_post_attn: bool = False
    swiglu_limit: float = 0.0
    swiglu_alpha: float = 1.0
    swa_period: int = 0
    yarn_truncate: bool = True


FAMILIES: dict[str, Family] = {f.arch: f for f in (
    Family("llama", ("LlamaForCausalLM", "MistralForCausalLM", "MixtralForCausalLM"),
           permute_qk=True, sentencepiece=True),
    Family("qwen2", ("Qwen2ForCausalLM",), qkv_bias=True, rope_neox=True),
    Family("qwen3", ("Qwen3ForCausalLM",), qk_norm=True, rope_neox=True),
    Family("phi3", ("Phi3ForCausalLM",), fused_qkv=True, rope_neox=True, longrope=True,
           sentencepiece=True),
    Family("gemma2", ("Gemma2ForCausalLM",), post_norms=True, rope_neox=True, gemma=True,
           gemma2=True, sentencepiece=True, tied_default=True),
    Family("gemma3", ("Gemma3ForCausalLM",), qk_norm=True, post_norms=True, rope_neox=True,
           gemma=True, sentencepiece=True, tied_default=True),
    Family("qwen2moe", ("Qwen2MoeForCausalLM",), qkv_bias=True, rope_neox=True,
           expert_norm=False, shared_expert=True),
    Family("qwen3moe", ("Qwen3MoeForCausalLM",), qk_norm=True, rope_neox=True),
    Family("gpt-oss", ("GptOssForCausalLM",), qkv_bias=True, rope_neox=True, biases=True,
           sinks=True, ffn_norm_post_attn=True, swiglu_limit=7.0, swiglu_alpha=1.702,
           swa_period=2, yarn_truncate=False),
)}

# Hugging Face architecture -> family
BY_HF_CLASS: dict[str, Family] = {c: f for f in FAMILIES.values() for c in f.hf_classes}


def family(arch: str) -> Family:
    """The family of a GGUF architecture name (KeyError if unsupported)."""
    return FAMILIES[arch]


# ---- tensors -------------------------------------------------------------------------------


@dataclass(frozen=True)
class Sizes:
    """The widths a model's tensor shapes are made of."""

    D: int     # n_embd
    V: int     # n_vocab
    qd: int    # n_head * head_dim
    kvd: int   # n_head_kv * head_dim
    F: int     # n_ff
    E: int     # experts (0: dense)
    Fe: int    # an expert's n_ff
    Fs: int    # the shared expert's n_ff
    hd: int    # head_dim
    rot: int   # n_rot
    nh: int    # n_head

    @staticmethod
    def of(cfg: dict) -> Sizes:
        hd = cfg["head_dim"]
        F = cfg["n_ff"]
        return Sizes(cfg["n_embd"], cfg["n_vocab"], cfg["n_head"] * hd, cfg["n_head_kv"] * hd,
                     F, cfg.get("n_expert", 0), cfg.get("n_ff_exp") or F,
                     cfg.get("n_ff_shexp") or F, hd, cfg["n_rot"], cfg["n_head"])


Shape = Callable[[Sizes], list[int]]
When = Callable[[Family, Sizes], bool]


def _always(f: Family, z: Sizes) -> bool:
    return True


def _never(f: Family, z: Sizes) -> bool:
    return False


@dataclass(frozen=True)
class TensorSpec:
    role: str          # the native model's name (a LlamaWeights / LayerWeights field)
    gguf: str          # the GGUF name (after "blk.N." for a layer's)
    shape: Shape       # GGUF shape [ne0 = cols, ne1 = rows, ne2 = experts]
    required: When = _never
    present: When = _always  # whether the family's layout has it at all


def _dense(f: Family, z: Sizes) -> bool:
    return z.E == 0


def _moe(f: Family, z: Sizes) -> bool:
    return z.E > 0


def _shexp(f: Family, z: Sizes) -> bool:
    return z.E > 0 and f.shared_expert


def _post_norms(f: Family, z: Sizes) -> bool:
    return f.post_norms


def _biases(f: Family, z: Sizes) -> bool:
    return f.biases


def _moe_biases(f: Family, z: Sizes) -> bool:
    return z.E > 0 and f.biases


def _split(f: Family, z: Sizes) -> bool:
    return not f.fused_qkv


def _fused(f: Family, z: Sizes) -> bool:
    return f.fused_qkv


GLOBAL_TENSORS: tuple[TensorSpec, ...] = (
    TensorSpec("tok_embd", "token_embd.weight", lambda z: [z.D, z.V], _always),
    TensorSpec("output_norm", "output_norm.weight", lambda z: [z.D], _always),
    TensorSpec("output", "output.weight", lambda z: [z.D, z.V]),  # absent: tied to tok_embd
    TensorSpec("rope_freqs", "rope_freqs.weight", lambda z: [z.rot // 2]),
    # LongRoPE: frequency divisors past the original context and within it
    # (the short ones are required beside the long ones: see expected_tensors)
    TensorSpec("rope_factors_long", "rope_factors_long.weight", lambda z: [z.rot // 2]),
    TensorSpec("rope_factors_short", "rope_factors_short.weight", lambda z: [z.rot // 2]),
)

LAYER_TENSORS: tuple[TensorSpec, ...] = (
    TensorSpec("attn_norm", "attn_norm.weight", lambda z: [z.D], _always),
    # q, k and v rows in one tensor (phi3), else one each
    TensorSpec("wqkv", "attn_qkv.weight", lambda z: [z.D, z.qd + 2 * z.kvd], _always, _fused),
    TensorSpec("wq", "attn_q.weight", lambda z: [z.D, z.qd], _always, _split),
    TensorSpec("wk", "attn_k.weight", lambda z: [z.D, z.kvd], _always, _split),
    TensorSpec("wv", "attn_v.weight", lambda z: [z.D, z.kvd], _always, _split),
    TensorSpec("wo", "attn_output.weight", lambda z: [z.qd, z.D], _always),
    TensorSpec("bq", "attn_q.bias", lambda z: [z.qd], _biases),
    TensorSpec("bk", "attn_k.bias", lambda z: [z.kvd], _biases),
    TensorSpec("bv", "attn_v.bias", lambda z: [z.kvd], _biases),
    TensorSpec("bo", "attn_output.bias", lambda z: [z.D], _biases, _biases),
    # a logit per head in the softmax's denominator (gpt-oss)
    TensorSpec("sinks", "attn_sinks.weight", lambda z: [z.nh], _always, lambda f, z: f.sinks),
    # RMSNorm of each head of q and k (qwen3, gemma 3)
    TensorSpec("q_norm", "attn_q_norm.weight", lambda z: [z.hd], lambda f, z: f.qk_norm),
    TensorSpec("k_norm", "attn_k_norm.weight", lambda z: [z.hd], lambda f, z: f.qk_norm),
    TensorSpec("ffn_norm", "ffn_norm.weight", lambda z: [z.D], _always,
               lambda f, z: not f.ffn_norm_post_attn),
    TensorSpec("ffn_norm", "post_attention_norm.weight", lambda z: [z.D], _always,
               lambda f, z: f.ffn_norm_post_attn),
    # RMSNorm of the attention's and the FFN's outputs (gemma)
    TensorSpec("post_attn_norm", "post_attention_norm.weight", lambda z: [z.D],
               _post_norms, _post_norms),
    TensorSpec("post_ffn_norm", "post_ffw_norm.weight", lambda z: [z.D],
               _post_norms, _post_norms),
    # a mixture of experts: the router and the experts stacked
    TensorSpec("router", "ffn_gate_inp.weight", lambda z: [z.D, z.E], _always, _moe),
    TensorSpec("e_gate", "ffn_gate_exps.weight", lambda z: [z.D, z.Fe, z.E], _always, _moe),
    TensorSpec("e_up", "ffn_up_exps.weight", lambda z: [z.D, z.Fe, z.E], _always, _moe),
    TensorSpec("e_down", "ffn_down_exps.weight", lambda z: [z.Fe, z.D, z.E], _always, _moe),
    TensorSpec("router_b", "ffn_gate_inp.bias", lambda z: [z.E], _always, _moe_biases),
    TensorSpec("e_gate_b", "ffn_gate_exps.bias", lambda z: [z.Fe, z.E], _always, _moe_biases),
    TensorSpec("e_up_b", "ffn_up_exps.bias", lambda z: [z.Fe, z.E], _always, _moe_biases),
    TensorSpec("e_down_b", "ffn_down_exps.bias", lambda z: [z.D, z.E], _always, _moe_biases),
    # the shared expert (qwen2moe): a dense FFN and its sigmoid gate's weights
    TensorSpec("s_gate_inp", "ffn_gate_inp_shexp.weight", lambda z: [z.D], _always, _shexp),
    TensorSpec("s_gate", "ffn_gate_shexp.weight", lambda z: [z.D, z.Fs], _always, _shexp),
    TensorSpec("s_up", "ffn_up_shexp.weight", lambda z: [z.D, z.Fs], _always, _shexp),
    TensorSpec("s_down", "ffn_down_shexp.weight", lambda z: [z.Fs, z.D], _always, _shexp),
    # a dense FFN; phi3 holds the gate's and the up rows in ffn_up, gate first
    TensorSpec("w_gate", "ffn_gate.weight", lambda z: [z.D, z.F], _always,
               lambda f, z: _dense(f, z) and not f.fused_qkv),
    TensorSpec("w_up", "ffn_up.weight", lambda z: [z.D, z.F], _always,
               lambda f, z: _dense(f, z) and not f.fused_qkv),
    TensorSpec("w_gate_up", "ffn_up.weight", lambda z: [z.D, 2 * z.F], _always,
               lambda f, z: _dense(f, z) and f.fused_qkv),
    TensorSpec("w_down", "ffn_down.weight", lambda z: [z.F, z.D], _always, _dense),
)


@dataclass(frozen=True)
class Expected:
    role: str          # the native model's key: "tok_embd", "layers.3.wq", ...
    shape: list[int]
    required: bool


def expected_tensors(fam: Family, cfg: dict, longrope: bool) -> dict[str, Expected]:
    """Every tensor a model of this family and size may hold, by GGUF name."""
    z = Sizes.of(cfg)
    out: dict[str, Expected] = {}
    for t in GLOBAL_TENSORS:
        req = t.required(fam, z) or (t.role == "rope_factors_short" and longrope)
        out[t.gguf] = Expected(t.role, t.shape(z), req)
    for i in range(cfg["n_layer"]):
        for t in LAYER_TENSORS:
            if t.present(fam, z):
                assert f"blk.{i}.{t.gguf}" not in out, t.gguf  # one role a name
                out[f"blk.{i}.{t.gguf}"] = Expected(f"layers.{i}.{t.role}", t.shape(z),
                                                    t.required(fam, z))
    return out


# ---- vision: an mmproj file (llama.cpp's `clip` layout) beside a decoder -------------------


@dataclass(frozen=True)
class Projector:
    """How a vision tower's patches become a decoder's input embeddings."""

    name: str                    # clip.projector_type
    hf_classes: tuple[str, ...]  # Hugging Face architectures that convert to it
    text_archs: tuple[str, ...]  # decoder families it feeds
    marker: str                  # what the chat template writes where an image goes
    image_token: str             # the token each embedding row stands in for
    pool: bool = False           # gemma 3: average pooling of the patch grid (n_merge^2)
    #                              idefics3: pixel shuffle (n_merge^2 patches a row) instead
    norm: bool = False           # RMSNorm (weight stored as 1 + w) before the projection
    bidirectional: bool = False  # an image's rows attend to each other in the decoder
    tiles: bool = False          # large images split into tiles plus a global view
    default_merge: int = 0       # n_merge when the file does not say (0: it must)


PROJECTORS: dict[str, Projector] = {p.name: p for p in (
    Projector("gemma3", ("Gemma3ForConditionalGeneration",), ("gemma3",),
              "<start_of_image>", "<image_soft_token>", pool=True, norm=True,
              bidirectional=True, default_merge=4),
    Projector("idefics3", ("Idefics3ForConditionalGeneration",
                           "SmolVLMForConditionalGeneration"), ("llama",),
              "<image>", "<image>", tiles=True),
)}

# The tower's tensors: (role, GGUF name after "v.", or "mm." for the
# projector's, GGUF shape from (D, F, patch, P, proj_in, proj_out), required).
VisionShape = Callable[[int, int, int, int, int, int], list[int]]
VISION_TENSORS: tuple[tuple[str, str, VisionShape, bool], ...] = (
    ("patch", "v.patch_embd.weight", lambda D, F, p, P, i, o: [p, p, 3, D], True),
    ("patch_b", "v.patch_embd.bias", lambda D, F, p, P, i, o: [D], True),
    ("pos", "v.position_embd.weight", lambda D, F, p, P, i, o: [D, P], True),
    ("post_w", "v.post_ln.weight", lambda D, F, p, P, i, o: [D], True),
    ("post_b", "v.post_ln.bias", lambda D, F, p, P, i, o: [D], True),
)
VISION_LAYER_TENSORS: tuple[tuple[str, str, VisionShape], ...] = (
    ("ln1_w", "ln1.weight", lambda D, F, p, P, i, o: [D]),
    ("ln1_b", "ln1.bias", lambda D, F, p, P, i, o: [D]),
    ("wq", "attn_q.weight", lambda D, F, p, P, i, o: [D, D]),
    ("bq", "attn_q.bias", lambda D, F, p, P, i, o: [D]),
    ("wk", "attn_k.weight", lambda D, F, p, P, i, o: [D, D]),
    ("bk", "attn_k.bias", lambda D, F, p, P, i, o: [D]),
    ("wv", "attn_v.weight", lambda D, F, p, P, i, o: [D, D]),
    ("bv", "attn_v.bias", lambda D, F, p, P, i, o: [D]),
    ("wo", "attn_out.weight", lambda D, F, p, P, i, o: [D, D]),
    ("bo", "attn_out.bias", lambda D, F, p, P, i, o: [D]),
    ("ln2_w", "ln2.weight", lambda D, F, p, P, i, o: [D]),
    ("ln2_b", "ln2.bias", lambda D, F, p, P, i, o: [D]),
    ("up", "ffn_up.weight", lambda D, F, p, P, i, o: [D, F]),
    ("b_up", "ffn_up.bias", lambda D, F, p, P, i, o: [F]),
    ("down", "ffn_down.weight", lambda D, F, p, P, i, o: [F, D]),
    ("b_down", "ffn_down.bias", lambda D, F, p, P, i, o: [D]),
)
# the projector's: gemma 3's input projection is stored as Hugging Face's
# (vision, text) parameter, GGUF shape [text, vision] (transposed on load)
PROJECTOR_TENSORS: dict[str, tuple[tuple[str, str, VisionShape], ...]] = {
    "gemma3": (("proj_t", "mm.input_projection.weight", lambda D, F, p, P, i, o: [o, i]),
               ("proj_norm", "mm.soft_emb_norm.weight", lambda D, F, p, P, i, o: [i])),
    "idefics3": (("proj", "mm.model.fc.weight", lambda D, F, p, P, i, o: [i, o]),),
}


# ---- encoders: embedders and rerankers (llama.cpp's `bert` and `nomic-bert`) ----------------


@dataclass(frozen=True)
class EncoderFamily:
    """A bidirectional text encoder: post-LayerNorm blocks, pooled outputs."""

    arch: str                    # GGUF general.architecture
    hf_classes: tuple[str, ...]  # Hugging Face architectures that convert to it
    rotary: bool = False         # rotary positions (neox pairs over whole heads), no table
    swiglu: bool = False         # up * silu(gate); else gelu(up), the exact form
    fused_qkv: bool = False      # q, k and v rows in one tensor (attn_qkv)
    biases: bool = True          # biases on every product


ENCODER_FAMILIES: dict[str, EncoderFamily] = {f.arch: f for f in (
    # XLM-RoBERTa is `bert` with a SentencePiece vocabulary (tokenizer.ggml.model "t5")
    # and its position table from padding_idx + 1 on
    EncoderFamily("bert", ("BertModel", "BertForSequenceClassification", "XLMRobertaModel",
                           "XLMRobertaForSequenceClassification", "RobertaModel")),
    EncoderFamily("nomic-bert", ("NomicBertModel",), rotary=True, swiglu=True, fused_qkv=True,
                  biases=False),
)}

# (role, GGUF name after "blk.N." for a layer's, GGUF shape from (D, F, V, P,
# T, O): width, FFN, vocabulary, positions, token types, classifier outputs)
EncShape = Callable[[int, int, int, int, int, int], list[int]]
ENCODER_TENSORS: tuple[tuple[str, str, EncShape], ...] = (
    ("tok", "token_embd.weight", lambda D, F, V, P, T, O: [D, V]),
    ("pos", "position_embd.weight", lambda D, F, V, P, T, O: [D, P]),
    ("types", "token_types.weight", lambda D, F, V, P, T, O: [D, T]),
    ("embd_norm_w", "token_embd_norm.weight", lambda D, F, V, P, T, O: [D]),
    ("embd_norm_b", "token_embd_norm.bias", lambda D, F, V, P, T, O: [D]),
    # a cross-encoder's head on the first token: out(tanh(cls(h)))
    ("cls_w", "cls.weight", lambda D, F, V, P, T, O: [D, D]),
    ("cls_b", "cls.bias", lambda D, F, V, P, T, O: [D]),
    ("out_w", "cls.output.weight", lambda D, F, V, P, T, O: [D, O]),
    ("out_b", "cls.output.bias", lambda D, F, V, P, T, O: [O]),
)
ENCODER_LAYER_TENSORS: tuple[tuple[str, str, EncShape], ...] = (
    ("wq", "attn_q.weight", lambda D, F, V, P, T, O: [D, D]),
    ("bq", "attn_q.bias", lambda D, F, V, P, T, O: [D]),
    ("wk", "attn_k.weight", lambda D, F, V, P, T, O: [D, D]),
    ("bk", "attn_k.bias", lambda D, F, V, P, T, O: [D]),
    ("wv", "attn_v.weight", lambda D, F, V, P, T, O: [D, D]),
    ("bv", "attn_v.bias", lambda D, F, V, P, T, O: [D]),
    ("wqkv", "attn_qkv.weight", lambda D, F, V, P, T, O: [D, 3 * D]),
    ("bqkv", "attn_qkv.bias", lambda D, F, V, P, T, O: [3 * D]),
    ("wo", "attn_output.weight", lambda D, F, V, P, T, O: [D, D]),
    ("bo", "attn_output.bias", lambda D, F, V, P, T, O: [D]),
    ("ln1_w", "attn_output_norm.weight", lambda D, F, V, P, T, O: [D]),
    ("ln1_b", "attn_output_norm.bias", lambda D, F, V, P, T, O: [D]),
    ("up", "ffn_up.weight", lambda D, F, V, P, T, O: [D, F]),
    ("b_up", "ffn_up.bias", lambda D, F, V, P, T, O: [F]),
    ("gate", "ffn_gate.weight", lambda D, F, V, P, T, O: [D, F]),
    ("down", "ffn_down.weight", lambda D, F, V, P, T, O: [F, D]),
    ("b_down", "ffn_down.bias", lambda D, F, V, P, T, O: [D]),
    ("ln2_w", "layer_output_norm.weight", lambda D, F, V, P, T, O: [D]),
    ("ln2_b", "layer_output_norm.bias", lambda D, F, V, P, T, O: [D]),
)


def encoder_roles_required(fam: EncoderFamily) -> set[str]:
    """The roles an encoder file of this family must hold (per layer: after
    "blk.N."); the rest are optional (biases where a family may drop them,
    the position or type tables, the classifier)."""
    need = {"tok", "embd_norm_w", "embd_norm_b", "wo", "ln1_w", "ln1_b", "up", "down",
            "ln2_w", "ln2_b"}
    need |= {"wqkv"} if fam.fused_qkv else {"wq", "wk", "wv"}
    if fam.swiglu:
        need.add("gate")
    if not fam.rotary:
        need.add("pos")
    return need
