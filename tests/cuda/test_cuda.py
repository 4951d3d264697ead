"""The CUDA backend against the numpy reference and the CPU backend (the
oracle): every weight type and KV-cache type on tiny random models, the
default model's logits and greedy tokens, batching, prefix caching and
speculative decoding. Skipped where no GPU (or no CUDA build) is present."""

import numpy as np
import pytest
from testutil import reference_logits, write_model

import llmrt
from llmrt.step import StepEntry

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
@pytest.mark.parametrize("arch", ["llama", "qwen2", "qwen3"])
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


# ---- split-KV decode attention, graph keys, several steps a call ------------------------

@pytest.mark.parametrize("n_head,n_head_kv,head_dim", [(4, 2, 16), (6, 2, 32), (9, 3, 64),
                                                       (8, 1, 64), (4, 4, 128), (16, 2, 80)])
@pytest.mark.parametrize("kv", ["f32", "f16", "q8_0"])
def test_split_kv_decode_matches_cpu(tmp_path, n_head, n_head_kv, head_dim, kv):
    # a one-token step at context c (its keys cut into slices run by separate
    # blocks and merged) against the CPU oracle's logits of the whole prefix,
    # at slice and block edges; GQA groups of 1 to 8 (head tiles of 4),
    # head sizes that fill 1, 2 or 4 dimensions a lane
    if kv == "q8_0" and head_dim % 32:
        pytest.skip("q8_0 caches need head_dim % 32 == 0")
    path, W, cfg = _model(tmp_path, wtype="F16", n_embd=n_head * head_dim, n_head=n_head,
                          n_head_kv=n_head_kv, head_dim=head_dim, n_ff=96, n_layer=2,
                          tied=False, ctx=2048)
    gpu = llmrt.Model(path, device="cuda", kv_cache_dtype=kv, kv_cache_tokens=4096)
    cpu = llmrt.Model(path, activations="f32", kv_cache_dtype=kv, kv_cache_tokens=4096)
    tokens = np.random.default_rng(5).integers(0, cfg["n_vocab"], 2047).astype(np.int32)
    ref = cpu.logits(tokens)  # row c - 1: the logits after the first c tokens
    eng = gpu.engine
    for c in (1, 31, 32, 33, 255, 256, 257, 2047):
        s = eng.new_sequence()
        if c > 1:
            eng.forward(s, tokens[:c - 1], "none")
        got = eng.forward(s, tokens[c - 1:c])
        eng.release(s)
        want = ref[c - 1]
        err = np.abs(got - want).max() / np.abs(want).max()
        assert err <= (LOOSE if kv == "q8_0" else RTOL[kv] * 10), (c, err)


def test_decode_rows_of_different_contexts_in_one_step(tmp_path):
    # one step of four sequences at contexts 3, 40, 300 and 1500: each row's
    # slices are cut from its own context
    path, W, cfg = _model(tmp_path, wtype="Q8_0", n_embd=96, n_head=6, n_head_kv=2,
                          tied=False, ctx=2048)
    gpu = llmrt.Model(path, device="cuda", kv_cache_dtype="f32", kv_cache_tokens=8192)
    cpu = llmrt.Model(path, activations="f32", kv_cache_dtype="f32", kv_cache_tokens=8192)
    rng = np.random.default_rng(6)
    seqs = [rng.integers(0, cfg["n_vocab"], c).astype(np.int32) for c in (3, 40, 300, 1500)]
    eng = gpu.engine
    ids = [eng.new_sequence() for _ in seqs]
    for s, t in zip(ids, seqs):
        eng.forward(s, t[:-1], "none")
    out = eng.step([StepEntry(s, t[-1:], "last") for s, t in zip(ids, seqs)])[0]
    for row, t in zip(out, seqs):
        want = cpu.logits(t)[-1]
        assert np.abs(row - want).max() <= RTOL["f32"] * 10 * np.abs(want).max()


def test_graphs_keyed_by_the_rows_wanted(tmp_path):
    # decode steps that want logits, none, or some rows' (captured and
    # replayed as separate graphs) give the CPU oracle's logits
    path, W, cfg = _model(tmp_path, wtype="Q8_0", n_embd=64, tied=False, ctx=512)
    gpu = llmrt.Model(path, device="cuda", kv_cache_dtype="f32")
    cpu = llmrt.Model(path, activations="f32", kv_cache_dtype="f32")
    eng, ref = gpu.engine, cpu.engine
    a, b, ra, rb = eng.new_sequence(), eng.new_sequence(), ref.new_sequence(), ref.new_sequence()
    for e, x, y in ((eng, a, b), (ref, ra, rb)):
        e.forward(x, np.arange(1, 9, dtype=np.int32), "none")
        e.forward(y, np.arange(20, 25, dtype=np.int32), "none")
    modes = ["last", "none", "last", "none", "last", "last", "none", "none", "last"]
    for i, (ma, mb) in enumerate(zip(modes, modes[::-1])):
        t = [np.asarray([30 + i], np.int32), np.asarray([60 + i], np.int32)]
        g = eng.step([StepEntry(a, t[0], ma), StepEntry(b, t[1], mb)])[0]
        c = ref.step([StepEntry(ra, t[0], ma), StepEntry(rb, t[1], mb)])[0]
        assert g.shape == c.shape, i
        if g.size:
            assert np.abs(g - c).max() <= 1e-4 * np.abs(c).max(), i


def test_several_decode_steps_a_call_equal_single_steps(tmp_path):
    path, W, cfg = _model(tmp_path, wtype="Q4_1", n_embd=64, tied=False, ctx=512)
    m = llmrt.Model(path, device="cuda", kv_cache_tokens=4096)
    prompts = [[1, 5, 9], list(range(30, 70)), [7, 8]]
    kws = [dict(max_new_tokens=30, ignore_eos=True),
           dict(max_new_tokens=21, temperature=0.9, seed=3, logprobs=2),
           dict(max_new_tokens=17, stop_token_ids=[40, 41, 42])]
    runs = {}
    for steps in (1, 8):
        m.scheduler.decode_steps = steps
        runs[steps] = [[(r.token_ids, r.finish_reason) for r in
                        [m.generate(p, **k) for p, k in zip(prompts, kws)]],
                       [(r.token_ids, r.finish_reason) for r in
                        m.generate(prompts, [llmrt.SamplingParams(**k) for k in kws])]]
    assert runs[1] == runs[8]
    assert m.cache_stats()["blocks_in_use"] == 0


@pytest.mark.parametrize("arch", ["llama", "qwen2"])
@pytest.mark.parametrize("kv", ["f32", "q8_0"])
def test_fused_kernels_equal_the_primitives(tmp_path, monkeypatch, arch, kv):
    # norm + q/k/v (+ biases) in one launch, RoPE + KV write, o-proj and down
    # with the residual add, norm + gate/up + SwiGLU, split attention:
    # against the one-kernel-per-primitive path (LLMRT_CUDA_FUSED=0) and the
    # CPU oracle, prompt and decode rows
    path, W, cfg = _model(tmp_path, arch=arch, wtype="Q8_0", n_embd=128, n_head=4,
                          n_head_kv=2, n_ff=160, tied=False, ctx=512)
    tokens = np.random.default_rng(7).integers(0, cfg["n_vocab"], 70).astype(np.int32)

    def run(model):
        eng = model.engine
        s = eng.new_sequence()
        rows = [eng.forward(s, tokens[:60], "all")]
        for t in tokens[60:]:
            rows.append(eng.forward(s, [t], "all"))
        eng.release(s)
        return np.concatenate(rows)
    fused = run(llmrt.Model(path, device="cuda", kv_cache_dtype=kv))
    monkeypatch.setenv("LLMRT_CUDA_FUSED", "0")
    plain = run(llmrt.Model(path, device="cuda", kv_cache_dtype=kv))
    cpu = llmrt.Model(path, activations="f32", kv_cache_dtype=kv).logits(tokens)
    tol = LOOSE if kv == "q8_0" else RTOL[kv] * 10
    for got in (fused, plain):
        assert np.abs(got - cpu).max() <= tol * np.abs(cpu).max()


# the device sampler: every stage's distribution against the CPU chain's
DEVICE_CHAINS = [
    dict(temperature=0.8),                                    # temperature alone
    dict(temperature=1.0, top_k=7),
    dict(temperature=0.7, top_p=0.8),
    dict(temperature=1.2, min_p=0.1),
    dict(temperature=1.0, typical_p=0.6),
    dict(temperature=0.8, top_k=40, top_p=0.95, min_p=0.05),  # llama.cpp's defaults
    dict(temperature=0.9, top_k=20, typical_p=0.9, top_p=0.9, min_p=0.02),
    dict(temperature=1.0, repetition_penalty=1.8, presence_penalty=0.5, frequency_penalty=0.3,
         logit_bias={3: 2.0, 5: -1.0}),
    dict(temperature=1.0, min_new_tokens=4),                  # end tokens masked
]


@pytest.mark.parametrize("chain", range(len(DEVICE_CHAINS)))
def test_device_sampler_follows_the_cpu_chain(tmp_path, chain):
    from test_sampling import assert_follows

    from llmrt.sampling import Sampler
    path, W, cfg = _model(tmp_path, wtype="F16", n_embd=64, tied=False)
    m = llmrt.Model(path, device="cuda", kv_cache_dtype="f32")
    kw = DEVICE_CHAINS[chain]
    prompt = np.asarray([4, 9, 20, 9, 3, 9], np.int32)  # repeats: the penalties have counts
    eng = m.engine
    s = eng.new_sequence()
    logits = eng.forward(s, prompt)  # the row every draw below comes from
    eng.release(s)
    end = [int(np.argsort(logits)[-1])]  # the likeliest token as the end token
    p = Sampler(llmrt.SamplingParams(**kw), m.vocab_size, end_ids=end).distribution(
        logits, prompt, 0)
    counts = np.zeros(m.vocab_size)
    for rep in range(8):  # 8 x 500 draws from the same row, one step each
        samplers = [Sampler(llmrt.SamplingParams(seed=rep * 1000 + i, **kw), m.vocab_size,
                            end_ids=end) for i in range(500)]
        s = eng.new_sequence()
        ids = eng.step([StepEntry(s, prompt, "last", samplers, 0)])[1]
        eng.release(s)
        counts += np.bincount(ids, minlength=m.vocab_size)
    assert_follows(counts, p)


def test_device_sampler_greedy_with_penalties_and_bias(tmp_path):
    # greedy after penalties / bias / masks runs on the device too
    path, W, cfg = _model(tmp_path, wtype="F16", n_embd=64, tied=False)
    gpu = llmrt.Model(path, device="cuda", kv_cache_dtype="f32")
    cpu = llmrt.Model(path, activations="f32", kv_cache_dtype="f32")
    kw = dict(max_new_tokens=24, ignore_eos=True, repetition_penalty=1.6, logit_bias={7: 3.0})
    assert gpu.generate([4, 9, 20, 9], **kw).token_ids == cpu.generate([4, 9, 20, 9], **kw).token_ids


def test_embeddings_match_cpu(tmp_path):
    path, W, cfg = _model(tmp_path, wtype="Q8_0", n_embd=64, tied=False)
    texts = [[4, 9, 20], list(range(30, 300))]
    gpu = llmrt.Model(path, device="cuda", kv_cache_dtype="f32").embed(texts, normalize=False)
    cpu = llmrt.Model(path, activations="f32", kv_cache_dtype="f32").embed(texts, normalize=False)
    np.testing.assert_allclose(gpu, cpu, rtol=0, atol=1e-4 * np.abs(cpu).max())


def test_constrained_rows_beside_device_sampled_ones(tmp_path):
    # a masked draw takes its row to the host; the others stay on the device,
    # and constrained requests never go through several steps a call
    pytest.importorskip("llguidance")
    import re
    path, W, cfg = _model(tmp_path, wtype="Q8_0", n_embd=64, tied=False, ctx=256)
    m = llmrt.Model(path, device="cuda", kv_cache_tokens=4096)
    pat = "[0-9]{2}-[a-z]{2,3}"
    rf = {"type": "regex", "pattern": pat}
    prompts = [[1, 5, 9], [7, 8], list(range(30, 50)), [3, 3, 3]]
    params = [llmrt.SamplingParams(max_new_tokens=12, temperature=1.0, seed=i,
                                   response_format=rf if i % 2 == 0 else None,
                                   ignore_eos=i % 2 == 1) for i in range(4)]
    alone = [m.generate(p, q) for p, q in zip(prompts, params)]
    batch = m.generate(prompts, params)
    assert [r.token_ids for r in batch] == [r.token_ids for r in alone]
    for r in batch[::2]:
        assert re.fullmatch(pat, r.text), r.text
    assert m.cache_stats()["blocks_in_use"] == 0


# ---- tensor cores (activations="f16"): products of 16 tokens or more in f16 with f32
# sums. f16 operands round each product's inputs to 11 bits: about 1e-3 of a
# dot product's scale, through the layers; rows of fewer tokens stay float32.
TC_TOL = 2e-2


@pytest.mark.parametrize("wtype", TYPES)
@pytest.mark.parametrize("n", [1, 15, 16, 17, 255, 256, 257])
def test_tensor_core_products_match_cpu(tmp_path, wtype, n):
    # 96-wide rows and 160-wide FFN: weight tiles of 64 rows with a ragged
    # edge; token counts on both sides of the 16-token switch and of 64- and
    # 256-token tile edges
    path, W, cfg = _model(tmp_path, wtype=wtype, n_embd=96, n_head=3, n_head_kv=1, n_ff=160,
                          tied=False, ctx=512)
    tokens = np.random.default_rng(n).integers(0, cfg["n_vocab"], n)
    cpu = llmrt.Model(path, activations="f32", kv_cache_dtype="f32").logits(tokens)
    tc = llmrt.Model(path, device="cuda", activations="f16", kv_cache_dtype="f32")
    assert tc.engine.backend.endswith("/f16")
    got = tc.logits(tokens)
    tol = RTOL["f32"] * 10 if n < 16 else TC_TOL  # below 16 tokens: the float32 kernels
    assert np.abs(got - cpu).max() <= tol * np.abs(cpu).max(), (wtype, n)


@pytest.mark.parametrize("wtype", ["Q4_K", "Q6_K"])
def test_tensor_core_k_quants_match_cpu(tmp_path, wtype):
    path, W, cfg = _model(tmp_path, wtype=wtype, emb_type="Q8_0", n_embd=256, n_head=4,
                          n_head_kv=2, n_ff=512, n_layer=1, tied=False)
    tokens = np.random.default_rng(5).integers(0, cfg["n_vocab"], 70)
    cpu = llmrt.Model(path, activations="f32", kv_cache_dtype="f32").logits(tokens)
    got = llmrt.Model(path, device="cuda", activations="f16", kv_cache_dtype="f32").logits(tokens)
    assert np.abs(got - cpu).max() <= TC_TOL * np.abs(cpu).max()


def test_tensor_core_batches_and_prompts_on_the_default_model(default_model_path):
    # a long prompt and a batch of 20 decoding rows go through the tensor
    # cores; greedy tokens as the float32 GPU path's for the most part
    f32 = llmrt.Model(default_model_path, device="cuda", context_length=2048)
    f16 = llmrt.Model(default_model_path, device="cuda", context_length=2048,
                      activations="f16", kv_cache_tokens=20 * 256)
    prompt = f32.tokenize("The history of the city is long. " * 40)
    a = f32.logits(prompt)
    b = f16.logits(prompt)
    assert np.abs(a - b).max() <= TC_TOL * np.abs(a).max()
    assert (a.argmax(-1) == b.argmax(-1)).mean() > 0.95
    prompts = [f"Question {i}: what is {i} plus {i}?" for i in range(20)]
    rs = f16.generate(prompts, max_new_tokens=24, ignore_eos=True)
    assert all(len(r.token_ids) == 24 for r in rs)
    same = sum(r.token_ids[:8] == f32.generate(p, max_new_tokens=8, ignore_eos=True).token_ids
               for p, r in zip(prompts, rs))
    assert same >= 15


def test_lora_adapter_matches_cpu(tmp_path):
    # adapter pairs uploaded once; rows with and without the adapter in one
    # pass (no graph replay while an adapter runs)
    pytest.importorskip("safetensors")
    from test_lora import _write_peft
    path, W, cfg = _model(tmp_path, wtype="Q8_0", n_embd=64, n_ff=96, tied=False)
    rng = np.random.default_rng(4)
    shapes = {"q_proj": (64, 64), "k_proj": (32, 64), "o_proj": (64, 64), "up_proj": (96, 64),
              "down_proj": (64, 96)}
    ad = {(i, m): (rng.standard_normal((4, cols)).astype(np.float32) / 8,
                   rng.standard_normal((rows, 4)).astype(np.float32))
          for i in range(cfg["n_layer"]) for m, (rows, cols) in shapes.items()}
    _write_peft(str(tmp_path / "peft"), ad, 4, 8.0)
    kw = dict(kv_cache_dtype="f32", lora=[str(tmp_path / "peft")])
    cpu = llmrt.Model(path, activations="f32", **kw)
    gpu = llmrt.Model(path, device="cuda", kv_cache_tokens=4096, **kw)
    tokens = list(range(3, 40))
    want = cpu.logits(tokens, lora=1)
    assert np.abs(gpu.logits(tokens, lora=1) - want).max() <= RTOL["f32"] * 10 * np.abs(want).max()
    ps = [llmrt.SamplingParams(max_new_tokens=10, ignore_eos=True, lora=x) for x in (1, None, 1)]
    got = [r.token_ids for r in gpu.generate([tokens, tokens[:9], tokens[4:]], ps)]
    assert got == [gpu.generate(t, p).token_ids for t, p in zip([tokens, tokens[:9], tokens[4:]], ps)]


@pytest.mark.parametrize("arch", ["gemma2", "gemma3"])
@pytest.mark.parametrize("kv", ["f32", "f16"])
def test_gemma_matches_cpu(tmp_path, arch, kv):
    # GeGLU, post-norms, soft-capping (gemma2), sliding layers with a window of
    # 8 positions, two RoPE bases (gemma3), across a 256-token prefill piece
    path, W, cfg = _model(tmp_path, arch=arch, wtype="Q8_0", n_embd=128, n_head=4, n_head_kv=2,
                          n_ff=256, n_layer=3, tied=True, head_dim=64)
    tokens = np.random.default_rng(5).integers(0, cfg["n_vocab"], 300)
    gpu = llmrt.Model(path, device="cuda", kv_cache_dtype=kv, kv_block_tokens=16)
    cpu = llmrt.Model(path, activations="f32", kv_cache_dtype=kv, kv_block_tokens=16)
    g, c = gpu.logits(tokens), cpu.logits(tokens)
    assert np.abs(g - c).max() <= RTOL[kv] * 10 * np.abs(c).max()
    # decode steps (split attention over the window) and batching
    prompts = [tokens[:40].tolist(), tokens[50:63].tolist()]
    a = [r.token_ids for r in gpu.generate(prompts, max_new_tokens=12, temperature=0,
                                           ignore_eos=True)]
    b = [r.token_ids for r in cpu.generate(prompts, max_new_tokens=12, temperature=0,
                                           ignore_eos=True)]
    assert a == b


@pytest.mark.parametrize("arch", ["gemma2", "gemma3"])
def test_gemma_long_decode_releases_sliding_blocks(tmp_path, arch):
    # 300 decode steps with a window of 8: the sliding pool's blocks behind
    # the window go back on the way (the device's tables hold -1 there); the
    # log-probabilities equal those of one pass over the same tokens
    path, W, cfg = _model(tmp_path, arch=arch, wtype="F16", n_embd=128, n_head=4, n_head_kv=2,
                          n_ff=256, n_layer=3, tied=True, head_dim=64)
    m = llmrt.Model(path, device="cuda", kv_cache_dtype="f32", kv_block_tokens=16,
                    prefix_caching=False)
    prompt = np.random.default_rng(6).integers(0, cfg["n_vocab"], 30).tolist()
    r = m.generate(prompt, max_new_tokens=300, temperature=0, ignore_eos=True, logprobs=0)
    ids = prompt + r.token_ids
    lg = m.logits(ids[:-1]).astype(np.float64)
    lp = lg - lg.max(1, keepdims=True)
    lp -= np.log(np.exp(lp).sum(1, keepdims=True))
    want = lp[np.arange(len(prompt) - 1, len(ids) - 1), r.token_ids]
    assert np.abs(np.array([x.logprob for x in r.logprobs]) - want).max() < 1e-3
    assert m.cache_stats()["sliding_blocks_in_use"] == 0


def test_longrope_matches_cpu(tmp_path):
    # LongRoPE's factors (divisors of the frequencies) and attention factor
    # (cos and sin scaled) in the fused RoPE + KV write and in decoding
    path, W, cfg = _model(tmp_path, wtype="F16", n_embd=128, n_head=4, n_head_kv=2, n_ff=256,
                          tied=True, longrope=True)
    tokens = np.random.default_rng(7).integers(0, cfg["n_vocab"], 120)
    for ctx in (64, 512):  # short factors, long ones
        gpu = llmrt.Model(path, device="cuda", kv_cache_dtype="f32", context_length=ctx)
        cpu = llmrt.Model(path, activations="f32", kv_cache_dtype="f32", context_length=ctx)
        n = min(ctx, len(tokens))
        g, c = gpu.logits(tokens[:n]), cpu.logits(tokens[:n])
        assert np.abs(g - c).max() <= RTOL["f32"] * 10 * np.abs(c).max()


@pytest.mark.parametrize("arch", ["llama", "qwen3moe", "qwen2moe"])
def test_mixture_of_experts_matches_cpu(tmp_path, arch):
    # Mixtral's, Qwen3-MoE's and Qwen2-MoE's sparse layers (a shared expert,
    # unnormalised top-k weights): the experts' rows gathered, run once each
    # and scattered back on the device; prompts, batched decode rows
    path, W, cfg = _model(tmp_path, arch=arch, wtype="Q8_0", n_embd=128, n_head=4, n_head_kv=2,
                          n_ff=256, n_expert=8, n_expert_used=2, n_ff_exp=64, n_ff_shexp=192,
                          tied=False)
    tokens = np.random.default_rng(4).integers(0, cfg["n_vocab"], 45)
    gpu = llmrt.Model(path, device="cuda", kv_cache_dtype="f32")
    cpu = llmrt.Model(path, activations="f32", kv_cache_dtype="f32")
    g, c = gpu.logits(tokens), cpu.logits(tokens)
    assert np.abs(g - c).max() <= RTOL["f32"] * np.abs(c).max() * 10
    prompts = [tokens[:5].tolist(), tokens[7:30].tolist(), tokens[:1].tolist()]
    kw = dict(max_new_tokens=8, ignore_eos=True)
    assert [r.token_ids for r in gpu.generate(prompts, **kw)] == \
        [r.token_ids for r in cpu.generate(prompts, **kw)]


@pytest.mark.parametrize("n_tokens", [1, 45, 140])  # decode rows, prompts, tensor-core sizes
def test_mxfp4_experts_match_cpu(tmp_path, n_tokens):
    path, W, cfg = _model(tmp_path, arch="qwen3moe", wtype="MXFP4", emb_type="Q8_0", n_embd=128,
                          n_ff=96, n_expert=4, n_expert_used=2, n_ff_exp=64, tied=False)
    tokens = np.random.default_rng(5).integers(0, cfg["n_vocab"], n_tokens)
    g = llmrt.Model(path, device="cuda", kv_cache_dtype="f32").logits(tokens)
    c = llmrt.Model(path, activations="f32", kv_cache_dtype="f32").logits(tokens)
    assert np.abs(g - c).max() <= RTOL["f32"] * 10 * np.abs(c).max()
    tc = llmrt.Model(path, device="cuda", activations="f16", kv_cache_dtype="f32")
    tol = RTOL["f32"] * 10 if n_tokens < 16 else TC_TOL  # below 16 tokens: the float32 kernels
    assert np.abs(tc.logits(tokens) - c).max() <= tol * np.abs(c).max()


def test_gpt_oss_matches_cpu(tmp_path):
    # attention sinks (through the split-KV kernels and their combine),
    # sliding layers alternating with full ones, YaRN, biases on the
    # projections, the router and the experts, the clamped SwiGLU
    from test_gpt_oss import TEXT, checkpoint

    from llmrt.convert import convert
    tk, c, w = checkpoint(tmp_path / "hf")
    path = str(tmp_path / "oss.gguf")
    convert(str(tmp_path / "hf"), path, "q8_0", progress=False)
    tokens = tk.encode(TEXT).ids
    gpu = llmrt.Model(path, device="cuda", kv_cache_dtype="f32")
    cpu = llmrt.Model(path, activations="f32", kv_cache_dtype="f32")
    g, c_ = gpu.logits(tokens), cpu.logits(tokens)
    assert np.abs(g - c_).max() <= RTOL["f32"] * np.abs(c_).max() * 10
    prompts = [tokens[:5], tokens[7:40], tokens[:1]]
    kw = dict(max_new_tokens=12, ignore_eos=True)
    assert [r.token_ids for r in gpu.generate(prompts, **kw)] == \
        [r.token_ids for r in cpu.generate(prompts, **kw)]


@pytest.mark.parametrize("family", ["gemma3", "idefics3"])
def test_vision_tower_and_image_prompt_match_cpu(tmp_path, family):
    # the tower (LayerNorm, GELU, dense bidirectional attention) and a prompt
    # with an image's rows (gemma 3: seeing each other) on the GPU against
    # the CPU's float path
    pytest.importorskip("PIL")
    from testutil import image, tiny_gemma3_vision, tiny_idefics3_vision

    from llmrt.convert import convert
    b = (tiny_gemma3_vision if family == "gemma3" else tiny_idefics3_vision)(tmp_path)
    out = str(tmp_path / "m.gguf")
    convert(b["dir"], out, "f32", progress=False)
    cpu = llmrt.Model(out, activations="f32", kv_cache_dtype="f32")
    gpu = llmrt.Model(out, device="cuda", kv_cache_dtype="f32")
    img = image(100, 20, 5)
    px = cpu.vision.pixels(img)[0]
    ref = cpu.vision.encode_pixels(px)
    assert np.abs(gpu.vision.encode_pixels(px) - ref).max() <= 1e-4 * np.abs(ref).max()
    marker = cpu.vision.projector.marker
    ids = cpu.prompt_ids(f"Some text before {marker} and after", images=[img])
    gids = gpu.prompt_ids(f"Some text before {marker} and after", images=[img])
    assert [i < cpu.vocab_size for i in ids] == [i < gpu.vocab_size for i in gids]

    def logits(m, t):
        seq = m.engine.new_sequence()
        try:
            return m.engine.forward(seq, np.asarray(t, np.int32), "all")
        finally:
            m.engine.release(seq)
    a, g = logits(cpu, ids), logits(gpu, gids)
    assert np.abs(g - a).max() <= 1e-4 * np.abs(a).max()
    r = gpu.generate(f"{marker} The", images=[img], max_new_tokens=6, ignore_eos=True)
    assert r.token_ids == cpu.generate(f"{marker} The", images=[img], max_new_tokens=6,
                                       ignore_eos=True).token_ids


@pytest.mark.parametrize("kind", ["bert_cls", "nomic"])
def test_encoder_matches_cpu(tmp_path, kind):
    # BERT (exact GELU, biases, a classifier) and nomic-bert (rotary
    # positions outside a decoder's pass, SwiGLU): a ragged batch's hidden
    # states on the GPU against the CPU's float path
    from test_encoder import _seqs, build
    out, ck, V = build(tmp_path, kind)
    cpu = llmrt.Model(out, activations="f32")
    gpu = llmrt.Model(out, device="cuda")
    seqs = _seqs(V, kind, seed=3)
    for a, b in zip(cpu.encoder.hidden_states(seqs), gpu.encoder.hidden_states(seqs)):
        assert np.abs(a - b).max() <= 1e-4 * np.abs(a).max()
    texts = ["the quick brown fox", "Café naïve résumé 12345"]
    assert np.all(np.sum(cpu.embed(texts) * gpu.embed(texts), axis=1) >= 0.99999)
