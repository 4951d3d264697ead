"""The KV cache of sliding-window layers (gemma 2 / 3): their keys and values
live in a pool of their own, whose blocks are released once they lie wholly
behind the window (by more than the cache's slack), while the global layers
keep every position. Results equal a pass over the whole sequence; prefix
reuse, forks, speculative rollback and batching keep working; memory held by
the sliding layers stays bounded as a sequence grows."""
import numpy as np
import pytest
from testutil import write_model

import llmrt

WINDOW, BT, SLACK = 8, 8, 128  # SLACK: KVCache::kSlidingSlack


@pytest.fixture(scope="module", params=["gemma2", "gemma3"])
def gemma_path(request, tmp_path_factory):
    path = str(tmp_path_factory.mktemp("swa") / f"{request.param}.gguf")
    write_model(path, arch=request.param, n_embd=64, n_head=4, n_head_kv=2, n_ff=96,
                n_layer=3, head_dim=32, ctx=2048, window=WINDOW)
    return path


def _model(path, **kw):
    kw.setdefault("kv_block_tokens", BT)
    return llmrt.Model(path, threads=2, activations="f32", kv_cache_dtype="f32",
                       batch_invariant=True, **kw)


def _held(m):
    """Blocks each pool holds for live sequences."""
    s = m.cache_stats()
    return s["blocks_in_use"], s["sliding_blocks_in_use"]


def test_sliding_blocks_released_as_the_sequence_grows(gemma_path):
    m = _model(gemma_path, prefix_caching=False)
    assert m.cache_stats()["sliding_window"] == WINDOW
    prompt = list(np.random.default_rng(0).integers(3, m.vocab_size, 40))
    seen = []
    stream = m.generate(prompt, max_new_tokens=400, temperature=0, ignore_eos=True, stream=True)
    for i, _ in enumerate(stream):
        if i % 50 == 49:
            seen.append(_held(m))
    # the global pool grows with the sequence; the sliding one stays within
    # the window plus the slack (and the blocks being filled)
    bound = (WINDOW + SLACK) // BT + 2
    assert max(g for g, _ in seen) >= 300 // BT
    assert all(sl <= bound for _, sl in seen), seen
    assert _held(m) == (0, 0)  # all back once the request ends


def test_incremental_decoding_equals_one_pass(gemma_path):
    # a long decode (blocks released on the way) gives the logits a single
    # pass over the same tokens gives (every block present)
    m = _model(gemma_path, prefix_caching=False)
    prompt = list(np.random.default_rng(1).integers(3, m.vocab_size, 30))
    r = m.generate(prompt, max_new_tokens=300, temperature=0, ignore_eos=True, logprobs=0)
    ids = prompt + r.token_ids
    lg = m.logits(ids[:-1])
    top = np.argmax(lg[len(prompt) - 1:], axis=1)
    assert top.tolist() == r.token_ids
    lp = lg - lg.max(1, keepdims=True)
    lp = lp - np.log(np.exp(lp).sum(1, keepdims=True))
    want = lp[np.arange(len(prompt) - 1, len(ids) - 1), r.token_ids]
    got = np.array([x.logprob for x in r.logprobs])
    assert np.abs(got - want).max() < 1e-4


def test_prefix_reuse_needs_the_last_window(gemma_path):
    m = _model(gemma_path)
    rng = np.random.default_rng(2)
    long = list(rng.integers(3, m.vocab_size, 400))
    first = m.generate(long, max_new_tokens=5, temperature=0, ignore_eos=True)
    h0 = m.cache_stats()["hits"]
    again = m.generate(long, max_new_tokens=5, temperature=0, ignore_eos=True)
    assert again.token_ids == first.token_ids
    assert m.cache_stats()["hits"] - h0 == (400 - 1) // BT  # every full block reused
    # a prefix that ends far before the end: its sliding blocks were released
    # to the prefix cache and are still there (nothing evicted them)
    short = long[:200] + list(rng.integers(3, m.vocab_size, 20))
    fresh = _model(gemma_path, prefix_caching=False)
    want = fresh.generate(short, max_new_tokens=8, temperature=0, ignore_eos=True).token_ids
    h0 = m.cache_stats()["hits"]
    assert m.generate(short, max_new_tokens=8, temperature=0, ignore_eos=True).token_ids == want
    assert m.cache_stats()["hits"] - h0 == 200 // BT
    # a cache whose sliding blocks of that window are gone: fewer blocks
    # reused (only as far as the sliding layers still hold their window)
    m.clear_prefix_cache()
    assert m.generate(short, max_new_tokens=8, temperature=0, ignore_eos=True).token_ids == want


def test_truncating_behind_the_released_window_is_a_clear_error(gemma_path):
    m = _model(gemma_path, prefix_caching=False)
    eng = m.engine
    seq = eng.new_sequence()
    try:
        ids = np.random.default_rng(3).integers(3, m.vocab_size, 400).astype(np.int32)
        eng.forward(seq, ids)
        eng.truncate(seq, 400 - SLACK // 2)  # within the slack: fine
        with pytest.raises(ValueError, match="sliding-window layers no longer hold"):
            eng.truncate(seq, 100)
        assert eng.length(seq) == 400 - SLACK // 2  # nothing changed
    finally:
        eng.release(seq)


def test_speculation_batching_and_samples(gemma_path, fixed_draft_length):
    m = _model(gemma_path)
    rng = np.random.default_rng(4)
    base = list(rng.integers(3, m.vocab_size, 30))
    prompt = base * 6  # repetitive: prompt lookup drafts
    plain = m.generate(prompt, max_new_tokens=60, temperature=0, ignore_eos=True)
    spec = m.generate(prompt, max_new_tokens=60, temperature=0, ignore_eos=True,
                      draft="prompt_lookup", num_draft_tokens=6)
    assert spec.token_ids == plain.token_ids
    assert spec.timings["draft_tokens"] > 0
    other = list(rng.integers(3, m.vocab_size, 250))
    both = m.generate([prompt, other], max_new_tokens=60, temperature=0, ignore_eos=True)
    assert both[0].token_ids == plain.token_ids
    assert both[1].token_ids == m.generate(other, max_new_tokens=60, temperature=0,
                                           ignore_eos=True).token_ids
    # n samples fork one prompt's blocks, both pools' included
    s = m.generate(other, max_new_tokens=30, temperature=1.0, n=3, seed=5, ignore_eos=True)
    assert len(s) == 3 and all(len(x.token_ids) == 30 for x in s)
    assert _held(m) == (0, 0)
