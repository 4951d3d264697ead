"""Hugging Face checkpoint -> GGUF: ``llmrt convert HF_DIR -o model.gguf --type f16``.

Reads config.json, the *.safetensors files (lazily: one tensor in memory at
a time, so a checkpoint larger than RAM converts), the tokenizer
(tokenizer.model for SentencePiece vocabularies, tokenizer.json for
byte-level BPE) and the chat template, and writes a GGUF file with the
standard key and tensor names (llama.cpp reads the same layout).
Architectures: Llama (3.x too), Mistral, Mixtral, Qwen2, Qwen3, Phi-3, Gemma 2 and
Gemma 3 (the text model; of a multimodal checkpoint, its language model).
"""

from __future__ import annotations

import json
import math
import os
from typing import Any

import numpy as np

from .convert_plan import Tensors, tensor_plan
from .convert_tokenizer import write_tokenizer
from .convert_vision import projector_of, write_mmproj
from .errors import CheckpointError, UnsupportedModelError
from .families import BY_HF_CLASS
from .ggml_types import FILE_TYPES, writable
from .gguf_loader import sliding_period
from .quantization import tensor_type, write_or_remove, write_tensors
from .utils import progress_bar

ARCHS = {c: f.arch for c, f in BY_HF_CLASS.items()}  # Hugging Face class -> GGUF architecture

# Gemma 3's multimodal checkpoints (4B and up): the text model's config is
# text_config, listing only what differs from these defaults (transformers'
# Gemma3TextConfig), and its tensors sit under a prefix; the vision tower and
# projector are left out.
_GEMMA3_TEXT_DEFAULTS = dict(
    hidden_size=2304, intermediate_size=9216, num_hidden_layers=26, num_attention_heads=8,
    num_key_value_heads=4, head_dim=256, vocab_size=262208, max_position_embeddings=131072,
    rms_norm_eps=1e-6, rope_theta=1000000.0, rope_local_base_freq=10000.0,
    query_pre_attn_scalar=256, sliding_window=4096, sliding_window_pattern=6,
    hidden_activation="gelu_pytorch_tanh", tie_word_embeddings=True)


def _text_config(cfg: dict, d: str) -> dict:
    """A multimodal config -> its text model's: Gemma 3's as Gemma3ForCausalLM,
    Idefics3 / SmolVLM's as LlamaForCausalLM."""
    hf = (cfg.get("architectures") or ["?"])[0]
    if projector_of(hf) == "idefics3":
        t = dict(cfg.get("text_config") or {})
        t["architectures"] = ["LlamaForCausalLM"]
        t["tie_word_embeddings"] = cfg.get("tie_word_embeddings",
                                           t.get("tie_word_embeddings", False))
        t["multimodal"] = True
        return t
    if hf != "Gemma3ForConditionalGeneration":
        return cfg
    t = dict(_GEMMA3_TEXT_DEFAULTS)
    t.update(cfg.get("text_config") or {})
    t["architectures"] = ["Gemma3ForCausalLM"]
    t["multimodal"] = True
    return t


def _json(path: str) -> dict:
    with open(path, encoding="utf-8") as f:
        return json.load(f)


def _rope_legacy(cfg: dict) -> dict:
    """transformers 5 writes RoPE settings as rope_parameters (rope_theta, the
    scaling type and its values, partial_rotary_factor, the original
    context), where older configs have top-level keys and rope_scaling: the
    flat form -> the older keys. (Gemma 3's per-layer-type form is read by
    _gemma_hparams.)"""
    rp = cfg.get("rope_parameters")
    if not isinstance(rp, dict) or "full_attention" in rp or "sliding_attention" in rp:
        return cfg
    cfg = dict(cfg)
    for k in ("rope_theta", "partial_rotary_factor", "original_max_position_embeddings"):
        if k in rp:
            cfg[k] = rp[k]
    if rp.get("rope_type", rp.get("type")) not in (None, "default"):
        cfg["rope_scaling"] = rp
    return cfg


def _sliding_flags(cfg: dict, hf: str, n_layer: int, d: str) -> list[bool]:
    """Which layers attend over config.json's sliding window (non-gemma):
    layer_types where given; Qwen2's use_sliding_window and the layers from
    max_window_layers on; every layer otherwise (Mistral, Phi-3)."""
    types = cfg.get("layer_types")
    if types:
        return _layer_type_flags(types, n_layer, d)
    if not cfg.get("sliding_window"):
        return [False] * n_layer
    if "use_sliding_window" in cfg or hf.startswith("Qwen"):
        if not cfg.get("use_sliding_window", False):
            return [False] * n_layer
        first = int(cfg.get("max_window_layers") or 0)
        return [i >= first for i in range(n_layer)]
    return [True] * n_layer


def _layer_type_flags(types: Any, n_layer: int, d: str) -> list[bool]:
    if not isinstance(types, list) or len(types) != n_layer or \
            any(t not in ("sliding_attention", "full_attention") for t in types):
        raise CheckpointError(f"{d}/config.json: layer_types must name each of the {n_layer} "
                              "layers 'sliding_attention' or 'full_attention'")
    return [t == "sliding_attention" for t in types]


def _pattern(flags: list[bool], d: str) -> int:
    """Flags -> the period P of llmrt's rule (layer l slides unless (l + 1) %
    P == 0; 0: every layer; 1: none)."""
    p = sliding_period(flags)
    if p is None:
        raise UnsupportedModelError(f"{d}: sliding layers in an irregular pattern are not "
                                    "supported (config.json layer_types / max_window_layers)")
    return p


def _hparams(cfg: dict, d: str) -> dict[str, Any]:
    cfg = _rope_legacy(cfg)
    arch_names = cfg.get("architectures") or []
    hf = arch_names[0] if arch_names else "?"
    if hf not in ARCHS:
        raise UnsupportedModelError(f"{d}: architecture {hf!r} is not supported "
                                    f"(supported: {', '.join(sorted(ARCHS))})")

    def need(k: str) -> Any:
        if k not in cfg:
            raise CheckpointError(f"{d}/config.json: missing {k!r}")
        return cfg[k]
    n_embd, n_head = int(need("hidden_size")), int(need("num_attention_heads"))
    fam = BY_HF_CLASS[hf]
    hp: dict[str, Any] = dict(hf=hf, arch=fam.arch, family=fam, n_embd=n_embd, n_layer=int(need("num_hidden_layers")),
              multimodal=bool(cfg.get("multimodal")), prefix="model.",
              n_head=n_head, n_head_kv=int(cfg.get("num_key_value_heads") or n_head),
              n_ff=int(need("intermediate_size")), n_vocab=int(need("vocab_size")),
              eps=float(cfg.get("rms_norm_eps", 1e-6)),
              rope_theta=float(cfg.get("rope_theta", 10000.0)),
              ctx=int(cfg.get("max_position_embeddings", 4096)),
              head_dim=int(cfg.get("head_dim") or n_embd // n_head),
              tied=bool(cfg.get("tie_word_embeddings", fam.tied_default)),
              n_expert=int(cfg.get("num_local_experts") or cfg.get("num_experts") or 0),
              n_expert_used=int(cfg.get("num_experts_per_tok", 0)), rope_linear=None,
              rope_factors=None, sliding_window=int(cfg.get("sliding_window") or 0),
              longrope=None, yarn=None)
    if hp["n_expert"]:
        _moe_hparams(cfg, d, hp)
    if not fam.gemma:  # the layers the window applies to: all of them, or none
        hp["swa_pattern"] = _pattern(_sliding_flags(cfg, hf, hp["n_layer"], d), d)
        if hp["swa_pattern"] == 1:
            hp["sliding_window"] = 0
        elif hp["swa_pattern"] not in (0, fam.swa_period):
            raise UnsupportedModelError(f"{d}: sliding-window layers in this pattern are not "
                                        f"supported for {hf} (config.json layer_types)")
    if fam.swiglu_limit:  # the experts' clamped SwiGLU: the family's constants
        got = (float(cfg.get("swiglu_limit", fam.swiglu_limit)),
               float(cfg.get("swiglu_alpha", fam.swiglu_alpha)))
        if got != (fam.swiglu_limit, fam.swiglu_alpha):
            raise UnsupportedModelError(f"{d}: swiglu_limit / swiglu_alpha {got} differ from "
                                        f"{hf}'s ({fam.swiglu_limit}, {fam.swiglu_alpha})")
    # partial rotary (phi3 family): RoPE on the first n_rot values of a head
    hp["n_rot"] = int(hp["head_dim"] * float(cfg.get("partial_rotary_factor", 1.0))) // 2 * 2
    rs = cfg.get("rope_scaling")
    if fam.gemma:
        rs = _gemma_hparams(cfg, d, hp)
    if rs:
        kind = rs.get("rope_type", rs.get("type"))
        if kind == "linear":
            hp["rope_linear"] = float(rs["factor"])
        elif kind == "llama3":
            hp["rope_factors"] = _llama3_factors(rs, hp["n_rot"], hp["rope_theta"])
        elif kind in ("longrope", "su") and fam.longrope:
            hp["longrope"] = _longrope(cfg, rs, hp, d)
        elif kind == "yarn":
            hp["yarn"] = _yarn(rs, hp, d)
        elif kind not in (None, "default"):
            raise UnsupportedModelError(f"{d}: RoPE scaling {kind!r} is not supported "
                                        "(linear, llama3 and yarn are; config.json "
                                        "rope_scaling)")
    return hp


def _yarn(rs: dict, hp: dict, d: str) -> dict:
    """YaRN's factor, original context, ramp ends and attention factor (as
    the GGUF keys llama.cpp reads: the attention factor relative to
    0.1 ln(factor) + 1)."""
    factor = float(rs.get("factor") or 0)
    # (older configs leave the original context to max_position_embeddings)
    orig = int(rs.get("original_max_position_embeddings") or hp["ctx"])
    if not factor > 0 or orig <= 0:
        raise CheckpointError(f"{d}/config.json: YaRN needs a positive factor and "
                              "original_max_position_embeddings")
    if rs.get("mscale") or rs.get("mscale_all_dim"):
        raise UnsupportedModelError(f"{d}: YaRN with mscale / mscale_all_dim is not supported")
    if bool(rs.get("truncate", True)) != hp["family"].yarn_truncate:
        raise UnsupportedModelError(f"{d}: YaRN truncate={rs.get('truncate', True)} is not "
                                    f"supported for {hp['hf']}")
    default = 0.1 * math.log(factor) + 1.0 if factor > 1 else 1.0
    attn = rs.get("attention_factor")
    return dict(factor=factor, orig=orig, fast=float(rs.get("beta_fast") or 32.0),
                slow=float(rs.get("beta_slow") or 1.0),
                attn=1.0 if attn is None else float(attn) / default)


def _moe_hparams(cfg: dict, d: str, hp: dict) -> None:
    """A mixture of experts' widths and weighting (into hp); every layer sparse."""
    if int(cfg.get("decoder_sparse_step", 1)) != 1 or cfg.get("mlp_only_layers"):
        raise UnsupportedModelError(f"{d}: dense layers among the sparse ones are not supported "
                                    "(config.json decoder_sparse_step / mlp_only_layers)")
    if not 0 < hp["n_expert_used"] <= hp["n_expert"]:
        raise CheckpointError(f"{d}/config.json: num_experts_per_tok must be in "
                              f"[1, {hp['n_expert']}]")
    hp["n_ff_exp"] = int(cfg.get("moe_intermediate_size") or hp["n_ff"])
    hp["n_ff_shexp"] = int(cfg.get("shared_expert_intermediate_size") or hp["n_ff"])
    hp["expert_norm"] = bool(cfg.get("norm_topk_prob", hp["family"].expert_norm))


def _gemma_hparams(cfg: dict, d: str, hp: dict) -> dict | None:
    """Gemma 2 / 3 settings (into hp); returns the global layers' RoPE
    scaling. Reads both config.json forms: the published one (rope_theta,
    rope_local_base_freq, sliding_window_pattern, rope_scaling) and
    transformers' newer one (rope_parameters and layer_types)."""
    gemma2 = hp["family"].gemma2
    act = cfg.get("hidden_activation") or cfg.get("hidden_act") or "gelu_pytorch_tanh"
    if act not in ("gelu_pytorch_tanh", "gelu_new"):
        raise UnsupportedModelError(f"{d}: hidden_activation {act!r} is not supported "
                                    "(GELU's tanh form is)")
    hp["query_scale"] = float(cfg.get("query_pre_attn_scalar") or hp["head_dim"]) ** -0.5
    soft = {"attn_softcap": cfg.get("attn_logit_softcapping"),
            "final_softcap": cfg.get("final_logit_softcapping")}
    hp.update({k: float(v) if v else 0.0 for k, v in soft.items()})
    if min(hp["attn_softcap"], hp["final_softcap"]) < 0:
        raise CheckpointError(f"{d}/config.json: logit soft-capping must not be negative")
    L = hp["n_layer"]
    types = cfg.get("layer_types")
    if types:
        flags = _layer_type_flags(types, L, d)
    else:
        period = int(cfg.get("sliding_window_pattern") or (2 if gemma2 else 6))
        flags = [(l + 1) % period != 0 for l in range(L)]
    hp["swa_pattern"] = _pattern(flags, d)
    if not hp["sliding_window"] or hp["swa_pattern"] == 1:
        # no sliding layer: said in the file (a gemma2 file without the keys
        # would get the published models' 4096 window)
        hp["sliding_window"], hp["swa_pattern"] = 0, 1
    rp = cfg.get("rope_parameters") or {}
    full, local = rp.get("full_attention") or {}, rp.get("sliding_attention") or {}
    if "rope_theta" in full:
        hp["rope_theta"] = float(full["rope_theta"])
    hp["rope_theta_swa"] = float(local.get("rope_theta") or cfg.get("rope_local_base_freq")
                                 or (hp["rope_theta"] if gemma2 else 10000.0))
    for part in (local,):  # the sliding layers' RoPE must be plain
        if part.get("rope_type", "default") != "default":
            raise UnsupportedModelError(f"{d}: RoPE scaling on the sliding layers is not "
                                        "supported")
    rs = cfg.get("rope_scaling")
    if full:
        rs = full
    elif isinstance(rs, dict) and "full_attention" in rs:
        rs = rs["full_attention"]
    return rs


def _longrope(cfg: dict, rs: dict, hp: dict, d: str) -> dict:
    """Phi-3's LongRoPE: per-frequency divisors for contexts past the
    original one (long) and within it (short), and the attention factor that
    scales cos and sin (sqrt(1 + ln(ratio) / ln(original)) by default)."""
    orig = int(cfg.get("original_max_position_embeddings")
               or rs.get("original_max_position_embeddings") or 0)
    if orig <= 0:
        raise CheckpointError(f"{d}/config.json: LongRoPE without "
                              "original_max_position_embeddings")
    out: dict[str, Any] = {"orig": orig}
    for k in ("long_factor", "short_factor"):
        f = np.asarray(rs.get(k) or [], np.float32)
        if f.shape != (hp["n_rot"] // 2,) or not np.all(f > 0):
            raise CheckpointError(f"{d}/config.json: rope_scaling {k} must hold "
                                  f"{hp['n_rot'] // 2} positive values")
        out[k] = f
    ratio = float(rs.get("factor") or hp["ctx"] / orig)
    attn = rs.get("attention_factor")
    out["attn"] = float(attn) if attn else (
        float(np.sqrt(1 + np.log(ratio) / np.log(orig))) if ratio > 1 else 1.0)
    return out


def _llama3_factors(rs: dict, head_dim: int, theta: float) -> np.ndarray:
    """Llama 3.1's RoPE scaling as per-frequency divisors (GGUF's
    rope_freqs.weight): wavelengths longer than the original context divided
    by `factor`, shorter than original / high_freq_factor kept, a smooth
    blend between."""
    factor, lo, hi = float(rs["factor"]), float(rs["low_freq_factor"]), float(rs["high_freq_factor"])
    old_ctx = float(rs["original_max_position_embeddings"])
    inv = 1.0 / theta ** (np.arange(0, head_dim, 2, dtype=np.float64) / head_dim)
    wavelen = 2 * np.pi / inv
    smooth = (old_ctx / wavelen - lo) / (hi - lo)
    div = np.where(wavelen < old_ctx / hi, 1.0,
                   np.where(wavelen > old_ctx / lo, factor,
                            1.0 / ((1 - smooth) / factor + smooth)))
    return div.astype(np.float32)


# ---- the file --------------------------------------------------------------------------

def mmproj_path(out: str | os.PathLike) -> str:
    """Where convert writes a multimodal checkpoint's vision half by default:
    mmproj-<name>.gguf beside the model (where Model() looks for it)."""
    o = os.fspath(out)
    return os.path.join(os.path.dirname(o), "mmproj-" + os.path.basename(o))


def convert(hf_dir: str | os.PathLike, out: str | os.PathLike, type_name: str = "f16",
            progress: bool | None = None,
            mmproj: str | os.PathLike | bool | None = None) -> dict[str, Any]:
    """Convert a Hugging Face checkpoint directory to a GGUF file; returns a
    summary (arch, tensors, vocab, types). A multimodal checkpoint's vision
    tower and projector go to an mmproj file (llama.cpp's layout): at
    `mmproj`, or mmproj_path(out) by default; mmproj=False: text only."""
    d = os.fspath(hf_dir)
    writable(type_name)
    if not os.path.isfile(os.path.join(d, "config.json")):
        raise CheckpointError(f"{d}: no config.json (not a Hugging Face checkpoint directory)")
    top = _json(os.path.join(d, "config.json"))
    from .convert_encoder import convert_encoder, is_encoder_checkpoint
    if is_encoder_checkpoint(top):  # an embedder or reranker (BERT, XLM-R, nomic-bert)
        return convert_encoder(d, top, out, type_name, progress)
    info = _convert_text(d, top, out, type_name, progress)
    if info["multimodal"] and mmproj is not False:
        path = mmproj_path(out) if mmproj in (None, True) else os.fspath(mmproj)  # type: ignore[arg-type]
        info["mmproj"] = path
        info["vision"] = write_mmproj(d, top, info.pop("n_embd"), path, type_name, progress)
    info.pop("n_embd", None)
    return info


def _convert_text(d: str, top: dict, out: str | os.PathLike, type_name: str,
                  progress: bool | None) -> dict[str, Any]:
    from gguf import GGUFWriter
    hp = _hparams(_text_config(top, d), d)
    ts = Tensors(d)
    plan = tensor_plan(hp, ts)
    a = hp["arch"]
    w = GGUFWriter(os.fspath(out), a)
    w.add_name(os.path.basename(os.path.normpath(d)))
    w.add_context_length(hp["ctx"])
    w.add_embedding_length(hp["n_embd"])
    w.add_block_count(hp["n_layer"])
    w.add_feed_forward_length(hp["n_ff"])
    w.add_head_count(hp["n_head"])
    w.add_head_count_kv(hp["n_head_kv"])
    w.add_layer_norm_rms_eps(hp["eps"])
    w.add_rope_freq_base(hp["rope_theta"])
    w.add_rope_dimension_count(hp["n_rot"])
    if hp["sliding_window"]:
        w.add_sliding_window(hp["sliding_window"])
    if hp["family"].gemma:
        w.add_sliding_window_pattern(hp["swa_pattern"])  # 1: none
        w.add_rope_freq_base_swa(hp["rope_theta_swa"])
        w.add_attention_scale(hp["query_scale"])
        w.add_attn_logit_softcapping(hp["attn_softcap"])  # 0: none
        w.add_final_logit_softcapping(hp["final_softcap"])
    if hp["head_dim"] != hp["n_embd"] // hp["n_head"]:
        w.add_key_length(hp["head_dim"])
        w.add_value_length(hp["head_dim"])
    if hp["longrope"] is not None:
        w.add_rope_scaling_attn_factors(hp["longrope"]["attn"])
        w.add_rope_scaling_orig_ctx_len(hp["longrope"]["orig"])
    if hp["rope_linear"]:
        from gguf import RopeScalingType
        w.add_rope_scaling_type(RopeScalingType.LINEAR)
        w.add_rope_scaling_factor(hp["rope_linear"])
    if hp["yarn"]:
        from gguf import RopeScalingType
        y = hp["yarn"]
        w.add_rope_scaling_type(RopeScalingType.YARN)
        w.add_rope_scaling_factor(y["factor"])
        w.add_rope_scaling_orig_ctx_len(y["orig"])
        if (y["fast"], y["slow"]) != (32.0, 1.0):
            w.add_rope_scaling_yarn_beta_fast(y["fast"])
            w.add_rope_scaling_yarn_beta_slow(y["slow"])
        if y["attn"] != 1.0:
            w.add_rope_scaling_yarn_attn_factor(y["attn"])
    if hp["n_expert"]:
        w.add_expert_count(hp["n_expert"])
        w.add_expert_used_count(hp["n_expert_used"])
        w.add_expert_feed_forward_length(hp["n_ff_exp"])
        if hp["family"].shared_expert:
            w.add_expert_shared_feed_forward_length(hp["n_ff_shexp"])
        if hp["expert_norm"] != hp["family"].expert_norm:
            w.add_expert_weights_norm(hp["expert_norm"])
    w.add_vocab_size(hp["n_vocab"])
    w.add_file_type(FILE_TYPES[type_name])
    write_tokenizer(d, hp, w)
    chosen = {name: tensor_type(name, shape, type_name, hp["tied"]) for name, shape, _ in plan}
    write_or_remove(os.fspath(out), lambda: write_tensors(
        w, [(name, shape, chosen[name], load) for name, shape, load in plan],
        progress_bar(sum(int(np.prod(shape)) for _, shape, _ in plan), f"convert {type_name}",
                     progress)))
    return dict(arch=hp["hf"] if not hp["multimodal"] else top["architectures"][0],
                tensors=len(plan), vocab=hp["n_vocab"], types=chosen,
                multimodal=hp["multimodal"], n_embd=hp["n_embd"])
