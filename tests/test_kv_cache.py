"""The paged KV cache: prefix caching, copy-on-write forks, eviction under a
small budget, budget errors, and the pool's memory per cache type."""

import numpy as np
import pytest
from testutil import write_model

import llmrt


@pytest.fixture(scope="module")
def path(tmp_path_factory):
    p = str(tmp_path_factory.mktemp("kv") / "tiny.gguf")
    write_model(p, wtype="Q8_0", n_layer=2, ctx=512, tied=False, n_embd=128, n_head=4,
                n_head_kv=2)  # head_dim 32
    return p


def model(path, **kw):
    kw.setdefault("threads", 2)
    return llmrt.Model(path, **kw)


def ids(seed, n, vocab=256):
    return np.random.default_rng(seed).integers(3, vocab, n).tolist()


def test_prefix_caching_is_token_identical_to_no_caching(path):
    on, off = model(path), model(path, prefix_caching=False)
    system = ids(1, 150)
    for q in range(4):
        prompt = system + ids(10 + q, 7 + 5 * q)
        a = on.generate(prompt, max_new_tokens=12, ignore_eos=True).token_ids
        b = off.generate(prompt, max_new_tokens=12, ignore_eos=True).token_ids
        assert a == b
    s_on, s_off = on.cache_stats(), off.cache_stats()
    assert s_on["tokens_reused"] == 3 * 128  # 4 blocks of 32 of the 150, three times
    assert s_off["tokens_reused"] == 0 and s_off["hits"] == 0


def test_second_request_computes_only_new_tokens(path):
    m = model(path)
    prompt = ids(2, 300)
    m.generate(prompt, max_new_tokens=1)
    before = m.cache_stats()["tokens_computed"]
    m.generate(prompt + ids(3, 20), max_new_tokens=1)
    s = m.cache_stats()
    # 300 cached -> 9 full blocks (288) reused; 12 + 20 computed
    assert s["tokens_computed"] - before == 320 - 288
    assert s["hits"] == 9 and s["tokens_reused"] == 288


def test_logits_equal_with_reused_prefix(path):
    m = model(path, kv_cache_dtype="f32")
    prompt = ids(4, 100)
    full = m.logits(prompt)[-1]
    m.generate(prompt[:70] + [9, 9, 9], max_new_tokens=1)  # caches 2 blocks of prompt
    eng = m.engine
    seq = eng.new_sequence()
    reused = eng.reuse_prefix(seq, np.asarray(prompt, np.int32))
    assert reused == 96  # 3 blocks: the logits() call cached them too
    got = eng.forward(seq, np.asarray(prompt[reused:], np.int32))
    # the rows of a block do not depend on the batch they were computed in
    np.testing.assert_allclose(got, full, rtol=0, atol=1e-4 * np.abs(full).max())


def test_fork_copies_on_write(path):
    m = model(path, kv_cache_dtype="f32")
    eng = m.engine
    base = ids(5, 45)  # one full block and a partial one
    a = eng.new_sequence()
    eng.forward(a, np.asarray(base, np.int32))
    b = eng.fork(a)
    assert eng.block_table(a) == eng.block_table(b)
    la = eng.forward(a, np.asarray([7, 8], np.int32))
    lb = eng.forward(b, np.asarray([9], np.int32))
    s = m.cache_stats()
    assert s["copies"] == 1  # the shared partial block, copied once
    assert eng.block_table(a)[0] == eng.block_table(b)[0]  # the full block stays shared
    assert eng.block_table(a)[1] != eng.block_table(b)[1]
    ref = model(path, kv_cache_dtype="f32", prefix_caching=False)
    # (other batch shapes: float32 rounding only)
    for want, got in [(ref.logits(base + [7, 8])[-1], la), (ref.logits(base + [9])[-1], lb)]:
        np.testing.assert_allclose(got, want, rtol=0, atol=1e-5 * np.abs(want).max())


def test_truncating_into_a_cached_block_does_not_corrupt_it(path):
    m = model(path, kv_cache_dtype="f32")
    prompt = ids(6, 70)
    first = model(path, kv_cache_dtype="f32", prefix_caching=False).generate(
        prompt, max_new_tokens=5, ignore_eos=True).token_ids
    eng = m.engine
    seq = eng.new_sequence()
    eng.forward(seq, np.asarray(prompt, np.int32))
    eng.release(seq)  # its two full blocks stay cached, unreferenced
    # a sequence holding them alone rewrites positions 40..: the cached
    # block must be copied, not written
    seq = eng.new_sequence()
    assert eng.reuse_prefix(seq, np.asarray(prompt, np.int32)) == 64
    eng.truncate(seq, 40)
    eng.forward(seq, np.asarray(ids(7, 30), np.int32))
    eng.release(seq)
    assert m.cache_stats()["copies"] == 1
    assert m.generate(prompt, max_new_tokens=5, ignore_eos=True).token_ids == first


def test_eviction_under_a_small_budget_keeps_results_correct(path):
    small = model(path, kv_cache_tokens=128)  # 4 blocks
    ref = model(path, prefix_caching=False)
    prompts = [ids(20 + i, 70 + 9 * i) for i in range(4)]
    for p in prompts + prompts[::-1] + [prompts[0][:64] + ids(30, 10)]:
        a = small.generate(p, max_new_tokens=20, ignore_eos=True).token_ids
        assert a == ref.generate(p, max_new_tokens=20, ignore_eos=True).token_ids
    s = small.cache_stats()
    assert s["evictions"] > 0 and s["hits"] > 0
    assert s["blocks_total"] == 4


def test_budget_errors(path):
    m = model(path, kv_cache_tokens=64)
    with pytest.raises(ValueError, match="KV-cache positions"):
        m.generate(ids(8, 50), max_new_tokens=20)
    eng = m.engine
    a, b = eng.new_sequence(), eng.new_sequence()
    eng.forward(a, np.asarray(ids(9, 64), np.int32))
    with pytest.raises(llmrt.KVCacheFullError, match="KV cache full"):
        eng.forward(b, np.asarray(ids(9, 10), np.int32))
    assert eng.length(b) == 0  # unchanged
    eng.release(a)
    eng.forward(b, np.asarray(ids(9, 10), np.int32))  # fits now
    with pytest.raises(ValueError, match="no sequence"):
        eng.forward(99, np.asarray([1], np.int32))


def test_invalid_cache_options(path):
    for kw, msg in [({"kv_cache_dtype": "bf16"}, "kv_cache_dtype"),
                    ({"kv_block_tokens": 12}, "kv_block_tokens"),
                    ({"kv_block_tokens": 128}, "kv_block_tokens"),
                    ({"kv_cache_tokens": 0}, "kv_cache_tokens"),
                    ({"kv_cache_tokens": 64, "kv_cache_bytes": 10**6}, "not both"),
                    ({"kv_cache_bytes": 100}, "less than one block")]:
        with pytest.raises(ValueError, match=msg):
            model(path, **kw)


def test_pool_bytes_per_type(path):
    sizes = {t: model(path, kv_cache_tokens=256, kv_cache_dtype=t).cache_stats()["pool_bytes"]
             for t in ("f32", "f16", "q8_0")}
    # 2 layers x (K, V) x 256 positions x 2 kv heads x 32 (head_dim)
    assert sizes["f32"] == 2 * 2 * 256 * 64 * 4
    assert sizes["q8_0"] == sizes["f32"] // 4 // 32 * 34
    assert sizes["f16"] * 2 == sizes["f32"]
    m = model(path, kv_cache_bytes=sizes["f16"])
    assert m.cache_stats()["capacity_tokens"] == 256


def test_block_sizes_agree(path):
    outs = [model(path, kv_block_tokens=bt).generate(ids(11, 90), max_new_tokens=10,
                                                     ignore_eos=True).token_ids
            for bt in (8, 16, 32, 64)]
    assert all(o == outs[0] for o in outs)


def test_a_half_read_stream_and_a_later_generation_run_together(path):
    # a stream left half-read keeps its sequence; a later generate() joins
    # its batch instead of touching it: both give what they give alone
    m = model(path, batch_invariant=True)
    alone = model(path, batch_invariant=True)
    want_a = alone.generate(ids(12, 40), max_new_tokens=50, ignore_eos=True).token_ids
    want_b = alone.generate(ids(13, 40), max_new_tokens=8, ignore_eos=True).token_ids
    stream = m.generate(ids(12, 40), max_new_tokens=50, ignore_eos=True, stream=True)
    next(stream)
    assert m.generate(ids(13, 40), max_new_tokens=8, ignore_eos=True).token_ids == want_b
    list(stream)
    assert stream.result.token_ids == want_a
    assert m.cache_stats()["blocks_in_use"] == 0


def test_a_closed_or_dropped_stream_frees_its_blocks(path):
    m = model(path)
    stream = m.generate(ids(14, 40), max_new_tokens=50, ignore_eos=True, stream=True)
    next(stream)
    assert m.cache_stats()["blocks_in_use"] > 0
    stream.close()
    assert m.cache_stats()["blocks_in_use"] == 0
    assert list(stream) == []
    with pytest.raises(RuntimeError, match="read to the end"):
        stream.result
    stream = m.generate(ids(14, 40), max_new_tokens=50, ignore_eos=True, stream=True)
    next(stream)
    del stream  # dropped: cancelled at once
    assert m.cache_stats()["blocks_in_use"] == 0
