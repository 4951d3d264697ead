"""llmrt's logits against the numpy reference forward on tiny random models:
both architectures, every tensor type, GQA ratios 1 and 3, odd sizes, tied and
untied heads, long prompts crossing the internal chunking, and incremental
decoding through the KV cache."""

import numpy as np
import pytest
from testutil import INT8_TYPES, reference_logits, write_model

import llmrt

# Tolerances relative to max|logit| (O(50..150) for these random models).
# llmrt computes in float32, the reference in float64 with the same
# (dequantized) weights and, for quantized weights with int8 activations, the
# same 8-bit activation rule. Float: float32 rounding through the layers, up
# to 3e-6 relative seen; every position must be within RTOL. int8: the same,
# except where an activation lands within float32 rounding of a .5 step and
# rounds the other way in one of the two: that moves its position, and through
# its key and value every later one (up to 5e-3 relative seen). So int8
# checks the mean over positions against MEAN and every position against
# LOOSE; the kernels themselves are checked tightly in test_kernels.py. A
# real error (a wrong rope pair, mask, scale or nibble order) moves logits by
# O(1) relative.
# A half-precision KV cache is emulated by the reference (values rounded to
# f16 as stored), but float32 -> f16 can round the other way where float32
# arithmetic differs in the last bit: 1e-4. A q8_0 cache is emulated too,
# with the same .5-step caveat as int8 activations: MEAN / LOOSE.
RTOL = {"float": 1e-5, "f16": 1e-4}
MEAN = 5e-3
LOOSE = 0.02


def _check(tmp_path, tokens=None, n_tokens=29, threads=2, activations="int8", kv="f32", **kw):
    path = str(tmp_path / "m.gguf")
    W, cfg = write_model(path, **kw)
    m = llmrt.Model(path, threads=threads, activations=activations, kv_cache_dtype=kv)
    if tokens is None:
        tokens = np.random.default_rng(5).integers(0, cfg["n_vocab"], n_tokens)
    got = m.logits(tokens)
    int8 = activations == "int8" and any(t in INT8_TYPES for t in m.tensor_types.values())
    ref = reference_logits(W, cfg, tokens, m.tensor_types if int8 else None, kv_dtype=kv)
    assert got.shape == ref.shape and got.dtype == np.float32
    scale = np.abs(ref).max()
    per_pos = np.abs(got - ref).max(axis=-1)
    if int8 or kv == "q8_0":
        assert per_pos.mean() < MEAN * scale, per_pos / scale
        assert per_pos.max() < LOOSE * scale, per_pos / scale
    else:
        tol = RTOL["f16"] if kv == "f16" else RTOL["float"]
        assert per_pos.max() < tol * scale, f"max |diff| {per_pos.max()}"
    return m, W, cfg, tokens, got


@pytest.mark.parametrize("activations", ["int8", "f32"])
@pytest.mark.parametrize("arch", ["llama", "qwen2", "qwen3"])
@pytest.mark.parametrize("wtype", ["F32", "F16", "BF16", "Q8_0", "Q4_0", "Q4_1", "Q5_0", "Q5_1"])
def test_types_and_archs(tmp_path, arch, wtype, activations):
    _check(tmp_path, arch=arch, wtype=wtype, activations=activations)


@pytest.mark.parametrize("kv", ["f16", "q8_0"])
@pytest.mark.parametrize("activations", ["int8", "f32"])
@pytest.mark.parametrize("n_head,n_head_kv,head_dim", [(4, 2, 32), (6, 2, 64), (3, 3, 32)])
def test_kv_cache_types(tmp_path, kv, activations, n_head, n_head_kv, head_dim):
    # 77 tokens: three cache blocks of 32, the last one partial
    _check(tmp_path, kv=kv, activations=activations, n_tokens=77, n_head=n_head,
           n_head_kv=n_head_kv, head_dim=head_dim, n_embd=96)


@pytest.mark.parametrize("activations", ["int8", "f32"])
@pytest.mark.parametrize("wtype", ["Q4_K", "Q5_K", "Q6_K"])
def test_kquant_models(tmp_path, wtype, activations):
    # K-quant rows are 256 wide: n_embd and n_ff multiples of 256; a prompt
    # long enough for several token blocks of the tile kernels
    _check(tmp_path, wtype=wtype, emb_type="Q8_0", n_embd=256, n_ff=512, n_head=4,
           n_head_kv=2, n_layer=1, activations=activations, n_tokens=93)


@pytest.mark.parametrize("wtype", ["Q4_K", "Q6_K"])
def test_kquant_head(tmp_path, wtype):
    # the K-quant output head of llama.cpp's files (Q6_K under Q4_K_M), untied
    _check(tmp_path, wtype=wtype, emb_type="Q6_K", n_embd=256, n_ff=512, n_head=4,
           n_head_kv=2, n_layer=2, tied=False)


@pytest.mark.parametrize("activations", ["int8", "f32"])
@pytest.mark.parametrize("n_head,n_head_kv", [(3, 3), (4, 2), (6, 2), (4, 1)])
@pytest.mark.parametrize("head_dim", [None, 32, 64])
def test_gqa_ratios(tmp_path, n_head, n_head_kv, head_dim, activations):
    # head_dim 32 / 64: the vectorized attention (groups of 1, 2 and 3 rows
    # sharing keys); None gives 96 / n_head, partly the plain kernel. 70
    # tokens: more than one 64-key chunk.
    _check(tmp_path, n_head=n_head, n_head_kv=n_head_kv, n_embd=96, head_dim=head_dim,
           wtype="Q8_0", n_tokens=70, activations=activations)


def test_odd_sizes_float_weights(tmp_path):
    # nothing a multiple of 8 or 16: exercises every kernel tail
    _check(tmp_path, wtype="F32", n_embd=36, n_head=3, n_head_kv=1, n_ff=50, extra_tokens=2,
           head_dim=14)


def test_untied_output_and_mixed_types(tmp_path):
    _check(tmp_path, wtype="Q4_0", emb_type="Q8_0", tied=False, n_ff=160, extra_tokens=5)


def test_f16_norms_and_qwen2_bias(tmp_path):
    _check(tmp_path, arch="qwen2", wtype="Q4_1", norm_type="F16")


def test_rope_freq_base(tmp_path):
    _check(tmp_path, wtype="F32", rope_base=500000.0, n_tokens=40)


def test_long_prompt_crosses_chunks(tmp_path):
    # 300 tokens: more than one internal prompt chunk (256)
    _check(tmp_path, wtype="Q8_0", n_tokens=300, n_layer=1)


@pytest.mark.parametrize("activations", ["f32", "int8"])
def test_incremental_decode_matches_full_forward(tmp_path, activations):
    m, W, cfg, tokens, full = _check(tmp_path, wtype="Q4_1", n_tokens=24, activations=activations)
    eng = m.engine
    seq = eng.new_sequence()
    # prompt of 10, then one token at a time through the cache
    out = [eng.forward(seq, tokens[:10], "all")]
    for i in range(10, len(tokens)):
        out.append(eng.forward(seq, tokens[i:i + 1], "all"))
    step = np.concatenate(out)
    per_pos = np.abs(step - full).max(axis=-1) / np.abs(full).max()
    if activations == "f32":
        assert per_pos.max() < 2e-6
    else:
        # one token at a time runs other kernels (other summation orders)
        # than a batch: 8-bit rounding flips, as in _check
        assert per_pos.mean() < MEAN and per_pos.max() < LOOSE


def test_thread_counts_identical_logits(tmp_path):
    path = str(tmp_path / "m.gguf")
    W, cfg = write_model(path, wtype="Q4_1", n_head=6, n_head_kv=2, n_embd=96)
    tokens = np.random.default_rng(2).integers(0, cfg["n_vocab"], 33)
    res = [llmrt.Model(path, threads=t).logits(tokens) for t in (1, 2, 3)]
    assert np.array_equal(res[0], res[1]) and np.array_equal(res[0], res[2])


def test_bad_token_ids_and_positions(tmp_path):
    path = str(tmp_path / "m.gguf")
    _, cfg = write_model(path, ctx=64)
    m = llmrt.Model(path, threads=1)
    with pytest.raises(ValueError, match="token ids"):
        m.logits([1, cfg["n_vocab"]])
    with pytest.raises(ValueError, match="token ids"):
        m.logits([-1])
    with pytest.raises(ValueError, match="context length"):
        m.logits([1] * 65)
    with pytest.raises(ValueError):
        m.logits([])
    eng = m.engine
    seq = eng.new_sequence()
    with pytest.raises(ValueError, match="outside the vocabulary"):
        eng.forward(seq, [cfg["n_vocab"] + 5])
    eng.forward(seq, np.ones(63, np.int32))
    with pytest.raises(ValueError, match="exceed the context"):
        eng.forward(seq, [1, 2])
    with pytest.raises(ValueError, match="past the sequence"):
        eng.truncate(seq, 64)


@pytest.mark.parametrize("activations", ["int8", "f32"])
@pytest.mark.parametrize("wtype", ["F32", "Q8_0", "Q4_1"])
@pytest.mark.parametrize("n_expert,used", [(4, 2), (8, 2), (3, 1), (4, 4)])
def test_mixture_of_experts(tmp_path, wtype, n_expert, used, activations):
    # Mixtral-style FFN: router, top-k experts renormalised; 29 tokens spread
    # over the experts, so each expert's tokens run as one batched matmul
    _check(tmp_path, wtype=wtype, n_embd=64, n_ff=96, n_layer=2, n_expert=n_expert,
           n_expert_used=used, tied=False, activations=activations)


def test_bad_expert_counts_are_clear_errors(tmp_path):
    path = str(tmp_path / "bad.gguf")
    write_model(path, n_expert=4, n_expert_used=5, n_layer=1)
    with pytest.raises(llmrt.GGUFError, match="expert counts"):
        llmrt.Model(path)
