"""Fused attention over the paged KV cache against numpy: softmax(q k^T /
sqrt(hd)) v with a causal mask, for every ISA variant, cache type, block
size, GQA ratio and head size, at lengths that straddle block edges; decode
(one query, split-KV) and prefill (many queries)."""

import numpy as np
import pytest

from llmrt import _core
from testutil import kv_round

ISAS = [i for i in ("generic", "avx2", "avx512", "avx512_vnni") if _core.testing.isa_available(i)]


def reference(q, k, v, kv_dtype):
    """float64 causal attention; the queries are the last n positions."""
    n, H, hd = q.shape
    T, KV, _ = k.shape
    k, v = kv_round(k, kv_dtype), kv_round(v, kv_dtype)
    out = np.empty((n, H, hd))
    for h in range(H):
        g = h // (H // KV)
        s = q[:, h].astype(np.float64) @ k[:, g].T / np.sqrt(hd)
        s += np.triu(np.full((n, T), -np.inf), T - n + 1)  # row t sees keys <= T - n + t
        p = np.exp(s - s.max(-1, keepdims=True))
        out[:, h] = (p / p.sum(-1, keepdims=True)) @ v[:, g]
    return out


def run(n, T, H, KV, hd, bt, kv, isa, threads=2, contiguous=False, seed=0):
    rng = np.random.default_rng(seed)
    q = rng.standard_normal((n, H, hd)).astype(np.float32)
    k = rng.standard_normal((T, KV, hd)).astype(np.float32)
    v = rng.standard_normal((T, KV, hd)).astype(np.float32)
    got = _core.testing.attention_paged(q, k, v, bt, kv, isa, threads, contiguous)
    return got, reference(q, k, v, kv)


# float32 sums over <= 200 keys: ~1e-6 of |v| (O(1) here); the reference
# rounds the cached keys and values exactly as the cache stores them.
TOL = 2e-5


@pytest.mark.parametrize("isa", ISAS)
@pytest.mark.parametrize("kv", ["f32", "f16", "q8_0"])
@pytest.mark.parametrize("bt", [16, 32, 64])
@pytest.mark.parametrize("T", [1, 15, 16, 17, 33, 64, 65, 200])
def test_decode(isa, kv, bt, T):
    got, ref = run(1, T, 6, 2, 64, bt, kv, isa)
    assert np.abs(got - ref).max() < TOL


@pytest.mark.parametrize("isa", ISAS)
@pytest.mark.parametrize("kv", ["f32", "f16", "q8_0"])
@pytest.mark.parametrize("n,T", [(5, 5), (7, 40), (33, 33), (40, 97), (130, 130)])
@pytest.mark.parametrize("bt", [16, 32])
def test_prefill(isa, kv, n, T, bt):
    got, ref = run(n, T, 4, 2, 32, bt, kv, isa)
    assert np.abs(got - ref).max() < TOL


@pytest.mark.parametrize("isa", ISAS)
@pytest.mark.parametrize("H,KV", [(1, 1), (3, 3), (4, 1), (6, 2), (9, 3), (8, 4)])
@pytest.mark.parametrize("hd", [32, 64, 128, 96])  # 96: no SIMD kernel, the plain one
@pytest.mark.parametrize("n,T", [(1, 50), (9, 50)])
def test_gqa_and_head_sizes(isa, H, KV, hd, n, T):
    got, ref = run(n, T, H, KV, hd, 16, "f16", isa)
    assert np.abs(got - ref).max() < TOL


@pytest.mark.parametrize("kv", ["f32", "f16", "q8_0"])
@pytest.mark.parametrize("n,T", [(1, 300), (20, 300)])
def test_paged_equals_contiguous_and_threads_agree(kv, n, T):
    # the block table's order and the thread count change nothing, bit for bit
    base, _ = run(n, T, 6, 2, 64, 32, kv, "", threads=1, contiguous=True)
    for threads, contiguous in [(1, False), (2, False), (3, True), (4, False)]:
        got, _ = run(n, T, 6, 2, 64, 32, kv, "", threads=threads, contiguous=contiguous)
        assert np.array_equal(got, base), (threads, contiguous)


def test_isa_variants_agree():
    outs = [run(3, 150, 9, 3, 64, 32, "f16", isa)[0] for isa in ISAS]
    for o in outs[1:]:
        assert np.abs(o - outs[0]).max() < 1e-5


def test_large_scores_do_not_overflow():
    # keys aligned with the query: scores ~ 1e3, exp would overflow without
    # the running max
    rng = np.random.default_rng(3)
    q = np.full((1, 2, 32), 6.0, np.float32)
    k = (rng.standard_normal((70, 1, 32)) + 6).astype(np.float32)
    v = rng.standard_normal((70, 1, 32)).astype(np.float32)
    for isa in ISAS:
        got = _core.testing.attention_paged(q, k, v, 16, "f32", isa, 2, False)
        assert np.isfinite(got).all()
        assert np.abs(got - reference(q, k, v, "f32")).max() < 1e-4
