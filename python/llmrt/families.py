"""One description per model family: what the loader, convert, LoRA and
the tokenizer writer need to know about it, as flags. No other module tests
an architecture's name; a family that differs from another only in flags is
one entry here (and its tests).

The C++ model never sees a name either: the loader turns these flags into
the config it hands over (rope_neox, embd_scale, ffn_gelu, soft-caps, the
sliding pattern) and the tensors present (q/k norms, post-norms, fused
tensors, biases)."""

from __future__ import annotations

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
)}

# Hugging Face architecture -> family
BY_HF_CLASS: dict[str, Family] = {c: f for f in FAMILIES.values() for c in f.hf_classes}


def family(arch: str) -> Family:
    """The family of a GGUF architecture name (KeyError if unsupported)."""
    return FAMILIES[arch]
