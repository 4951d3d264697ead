"""The CUDA backend against the numpy reference and the CPU backend (the
oracle): every weight type and KV-cache type on tiny random models, the
default model's logits and greedy tokens, batching, prefix caching and
speculative decoding. Skipped where no GPU (or no CUDA build) is present."""

import numpy as np
import pytest

import llmrt
from testutil import reference_logits, write_model

pytestmark = pytest.mark.skipif(not llmrt.cuda_available(),
                                reason="no CUDA device or CUDA build")

# The GPU computes in float32 with float32 activations (weights dequantised
# in registers), like the CPU backend with activations="f32", but sums in
# another order (lanes, warps): float32 rounding through the layers, ~1e-5
# of max|logit| (the CPU's float path is held to the same RTOL against the
# float64 reference in tests/cpu/test_forward.py). An f16 cache rounds keys
# and values the same way on both (round to nearest even) except where the
# float32 inputs differ in their last bit: 1e-4. q8_0 caches round x / d to
# integers, where a last-bit difference can move a value by one step: the
# mean over positions within MEAN, every position within LOOSE.
RTOL = {"f32": 1e-5, "f16": 1e-4}
MEAN, LOOSE = 5e-3, 0.02
TYPES = ["F32", "F16", "BF16", "Q8_0", "Q4_0", "Q4_1"]


def _model(tmp_path, **kw):
    path = str(tmp_path / "m.gguf")
    W, cfg = write_model(path, **kw)
    return path, W, cfg


@pytest.mark.parametrize("wtype", TYPES)
def test_logits_match_reference_every_type(tmp_path, wtype):
    path, W, cfg = _model(tmp_path, wtype=wtype, n_embd=64, n_ff=96, tied=False)
    tokens = np.random.default_rng(1).integers(0, cfg["n_vocab"], 37)
    gpu = llmrt.Model(path, device="cuda", kv_cache_dtype="f32").logits(tokens)
    ref = reference_logits(W, cfg, tokens)
    assert np.abs(gpu - ref).max() <= RTOL["f32"] * np.abs(ref).max() * 10


@pytest.mark.parametrize("wtype", ["Q4_K", "Q5_K", "Q6_K"])
def test_k_quants_match_cpu(tmp_path, wtype):
    # K-quant rows are 256 wide: n_embd and n_ff multiples of 256
    path, W, cfg = _model(tmp_path, wtype=wtype, emb_type="Q8_0", n_embd=256, n_head=4,
                          n_head_kv=2, n_ff=512, n_layer=1, tied=False)
    tokens = np.random.default_rng(2).integers(0, cfg["n_vocab"], 21)
    gpu = llmrt.Model(path, device="cuda", kv_cache_dtype="f32").logits(tokens)
    cpu = llmrt.Model(path, activations="f32", kv_cache_dtype="f32").logits(tokens)
    assert np.abs(gpu - cpu).max() <= 1e-4 * np.abs(cpu).max()


@pytest.mark.parametrize("kv", ["f32", "f16", "q8_0"])
@pytest.mark.parametrize("arch", ["llama", "qwen2"])
def test_kv_cache_types_match_cpu(tmp_path, kv, arch):
    path, W, cfg = _model(tmp_path, arch=arch, wtype="Q8_0", n_embd=128, n_head=4, n_head_kv=2,
                          n_ff=256, tied=True)
    tokens = np.random.default_rng(3).integers(0, cfg["n_vocab"], 300)  # crosses 256-token pieces
    gpu = llmrt.Model(path, device="cuda", kv_cache_dtype=kv, kv_block_tokens=16).logits(tokens)
    cpu = llmrt.Model(path, activations="f32", kv_cache_dtype=kv,
                      kv_block_tokens=16).logits(tokens)
    err = np.abs(gpu - cpu).max(axis=1) / np.abs(cpu).max()
    if kv == "q8_0":
        assert err.mean() <= MEAN and err.max() <= LOOSE
    else:
        assert err.max() <= RTOL[kv] * 10


def test_incremental_decoding_equals_one_pass(tmp_path):
    path, W, cfg = _model(tmp_path, wtype="Q4_1", n_embd=64, tied=False)
    m = llmrt.Model(path, device="cuda", kv_cache_dtype="f32")
    tokens = np.random.default_rng(4).integers(0, cfg["n_vocab"], 40).astype(np.int32)
    full = m.logits(tokens)
    eng = m.engine
    s = eng.new_sequence()
    rows = [eng.forward(s, tokens[:25], "all")]
    for t in tokens[25:]:
        rows.append(eng.forward(s, np.asarray([t], np.int32), "all"))
    np.testing.assert_allclose(np.concatenate(rows), full, rtol=0, atol=1e-4 * np.abs(full).max())


def test_batched_generation_equals_one_at_a_time(tmp_path):
    # a GPU row's sums never depend on the other rows of its launch
    path, W, cfg = _model(tmp_path, wtype="Q8_0", n_embd=64, tied=False, ctx=256)
    m = llmrt.Model(path, device="cuda", kv_cache_tokens=4096)
    prompts = [[1, 5, 9], list(range(30, 70)), [7, 8], list(range(100, 110))]
    alone = [m.generate(p, max_new_tokens=20, ignore_eos=True).token_ids for p in prompts]
    batch = m.generate(prompts, max_new_tokens=20, ignore_eos=True, max_batch_size=2)
    assert [r.token_ids for r in batch] == alone
    assert m.cache_stats()["blocks_in_use"] == 0


def test_prefix_cache_and_copy_on_write(tmp_path):
    path, W, cfg = _model(tmp_path, wtype="Q8_0", n_embd=64, tied=False, ctx=512)
    m = llmrt.Model(path, device="cuda", kv_cache_tokens=2048, kv_block_tokens=16)
    base = list(range(3, 100))
    a = m.generate(base + [5, 6], max_new_tokens=10, ignore_eos=True)
    b = m.generate(base + [5, 6], max_new_tokens=10, ignore_eos=True)
    assert a.token_ids == b.token_ids and m.cache_stats()["hits"] > 0
    # n samples fork the prompt's blocks (copied on write on the device)
    r = m.generate(base, n=3, temperature=1.0, seed=4, max_new_tokens=8, ignore_eos=True)
    for j in range(3):
        assert r[j].token_ids == m.generate(base, temperature=1.0, seed=4 + j, max_new_tokens=8,
                                            ignore_eos=True).token_ids


def test_speculative_decoding_equals_plain(tmp_path):
    path, W, cfg = _model(tmp_path, wtype="Q4_0", n_embd=64, tied=False)
    m = llmrt.Model(path, device="cuda")
    p = [1, 2, 3, 4, 5, 6, 7, 8] * 4
    plain = m.generate(p, max_new_tokens=30, ignore_eos=True)
    spec = m.generate(p, max_new_tokens=30, ignore_eos=True, draft="prompt_lookup")
    assert spec.token_ids == plain.token_ids


def test_sampling_distribution_matches_cpu(tmp_path):
    # the sampler is shared; what reaches it are the GPU's logits
    path, W, cfg = _model(tmp_path, wtype="F16", n_embd=64, tied=False)
    tokens = [4, 9, 20]
    gpu = llmrt.Model(path, device="cuda", kv_cache_dtype="f32").logits(tokens)[-1]
    cpu = llmrt.Model(path, activations="f32", kv_cache_dtype="f32").logits(tokens)[-1]
    from llmrt.sampling import Sampler
    s = Sampler(llmrt.SamplingParams(temperature=0.8, top_p=0.9), len(cpu))
    np.testing.assert_allclose(s.distribution(gpu), s.distribution(cpu), atol=1e-5)


def test_default_model_matches_cpu(default_model_path):
    gpu = llmrt.Model(default_model_path, device="cuda", context_length=1024)
    cpu = llmrt.Model(default_model_path, activations="f32", kv_cache_dtype="f16",
                      context_length=1024)
    ids = cpu.tokenize("The capital of France is")
    g, c = gpu.logits(ids), cpu.logits(ids)
    assert (g.argmax(-1) == c.argmax(-1)).all()
    assert np.abs(g - c).max() <= 1e-3 * np.abs(c).max()
    # the golden greedy continuation
    assert gpu.generate("The capital of France is", max_new_tokens=3).text.startswith(" Paris")


def test_graph_replay_survives_buffer_changes(tmp_path):
    # decode steps replay a captured graph; a long prompt in between
    # reallocates the activation buffers, which must drop the graph
    path, W, cfg = _model(tmp_path, wtype="Q8_0", n_embd=64, tied=False, ctx=1024)
    ref_model = llmrt.Model(path, activations="f32", kv_cache_dtype="f32")
    m = llmrt.Model(path, device="cuda", kv_cache_dtype="f32", kv_cache_tokens=4096)
    eng, rn = m.engine, ref_model.engine
    a, ra = eng.new_sequence(), rn.new_sequence()
    p = np.arange(1, 9, dtype=np.int32)
    eng.forward(a, p)
    rn.forward(ra, p)
    for step in range(12):
        t = np.asarray([10 + step], np.int32)
        g, c = eng.forward(a, t), rn.forward(ra, t)
        assert np.abs(g - c).max() <= 1e-4 * np.abs(c).max(), step
        if step == 5:  # 600 prompt rows in another sequence: bigger buffers
            b = eng.new_sequence()
            eng.forward(b, np.arange(600, dtype=np.int32) % 200 + 3)
            eng.release(b)
