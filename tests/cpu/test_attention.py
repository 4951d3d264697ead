"""Fused attention over the paged KV cache against numpy: softmax(q k^T /
sqrt(hd)) v with a causal mask, for every ISA variant, cache type, block
size, GQA ratio and head size, at lengths that straddle block edges; decode
(one query, split-KV) and prefill (many queries); sliding windows (with the
blocks behind them gone from the table) and soft-capped scores."""

import numpy as np
import pytest
from testutil import kv_round

from llmrt import _core

ISAS = [i for i in ("generic", "avx2", "avx512", "avx512_vnni") if _core.testing.isa_available(i)]


def reference(q, k, v, kv_dtype, softcap=0.0, window=0, sinks=None):
    """float64 causal attention; the queries are the last n positions; each
    head's sink logit (gpt-oss) joins its softmax's denominator."""
    n, H, hd = q.shape
    T, KV, _ = k.shape
    k, v = kv_round(k, kv_dtype), kv_round(v, kv_dtype)
    out = np.empty((n, H, hd))
    qpos = np.arange(T - n, T)[:, None]
    kpos = np.arange(T)[None, :]
    mask = np.where(kpos > qpos, -np.inf, 0.0)  # row t sees keys <= T - n + t
    if window:
        mask[qpos - kpos >= window] = -np.inf  # and only the last `window` of them
    for h in range(H):
        g = h // (H // KV)
        s = q[:, h].astype(np.float64) @ k[:, g].T / np.sqrt(hd)
        if softcap:
            s = softcap * np.tanh(s / softcap)
        s += mask
        sk = -np.inf if sinks is None else float(sinks[h])
        mx = np.maximum(s.max(-1, keepdims=True), sk)
        p = np.exp(s - mx)
        out[:, h] = (p / (p.sum(-1, keepdims=True) + np.exp(sk - mx))) @ v[:, g]
    return out


def run(n, T, H, KV, hd, bt, kv, isa, threads=2, contiguous=False, seed=0, softcap=0.0,
        window=0, qscale=1.0, sinks=None):
    rng = np.random.default_rng(seed)
    q = (qscale * rng.standard_normal((n, H, hd))).astype(np.float32)
    k = rng.standard_normal((T, KV, hd)).astype(np.float32)
    v = rng.standard_normal((T, KV, hd)).astype(np.float32)
    got = _core.testing.attention_paged(q, k, v, bt, kv, isa, threads, contiguous, softcap,
                                        window, sinks)
    return got, reference(q, k, v, kv, softcap, window, sinks)


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
@pytest.mark.parametrize("hd", [32, 64, 96, 128, 256, 80])  # 80: no SIMD kernel, the plain one
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


@pytest.mark.parametrize("isa", ISAS)
@pytest.mark.parametrize("kv", ["f32", "f16", "q8_0"])
@pytest.mark.parametrize("n,T,window", [(1, 200, 50), (1, 300, 64), (1, 40, 100), (1, 65, 1),
                                        (9, 200, 33), (40, 97, 16), (130, 300, 70),
                                        (20, 20, 7),
                                        # key ranges (256 positions) wholly behind the window
                                        (1, 1000, 70), (1, 1025, 257), (40, 1000, 70),
                                        (9, 600, 256)])
@pytest.mark.parametrize("bt", [16, 32])
def test_sliding_window(isa, kv, n, T, window, bt):
    # each row sees its last `window` positions; the blocks wholly behind the
    # first row's window are -1 in the table (a sliding layer's freed blocks)
    got, ref = run(n, T, 6, 2, 64, bt, kv, isa, window=window)
    assert np.abs(got - ref).max() < TOL
    # the check can fail: the full causal result differs
    _, full = run(n, T, 6, 2, 64, bt, kv, isa)
    if window < T - n + 1:
        assert np.abs(full - ref).max() > 1e-2


@pytest.mark.parametrize("isa", ISAS)
@pytest.mark.parametrize("hd", [32, 256, 80])
@pytest.mark.parametrize("n,T,window", [(1, 150, 0), (12, 150, 0), (12, 150, 40)])
def test_softcap(isa, hd, n, T, window):
    # scores of several units (q scaled up) so that tanh bends them
    got, ref = run(n, T, 4, 2, hd, 32, "f32", isa, softcap=5.0, window=window, qscale=3.0)
    assert np.abs(got - ref).max() < TOL
    _, plain = run(n, T, 4, 2, hd, 32, "f32", isa, window=window, qscale=3.0)
    assert np.abs(plain - ref).max() > 1e-2


@pytest.mark.parametrize("isa", ISAS)
@pytest.mark.parametrize("act", ["silu", "gelu"])
@pytest.mark.parametrize("n", [1, 7, 8, 9, 100, 1027])
def test_gated_activations(isa, act, n):
    # SwiGLU and GeGLU (GELU's tanh form, as Gemma's gelu_pytorch_tanh)
    rng = np.random.default_rng(n)
    g = (4 * rng.standard_normal(n)).astype(np.float32)
    g[:3] = [-90.0, 0.0, 90.0][:n] if n >= 3 else g[:3]
    u = rng.standard_normal(n).astype(np.float32)
    x = g.astype(np.float64)
    if act == "silu":
        ref = x / (1 + np.exp(-x)) * u
    else:
        ref = 0.5 * x * (1 + np.tanh(np.sqrt(2 / np.pi) * (x + 0.044715 * x ** 3))) * u
    got = _core.testing.gated(act, g, u, isa)
    # float32 exp / division: a few ulps of the result, relative to |x u|
    assert np.all(np.abs(got - ref) <= 1e-6 * (np.abs(x * u) + 1e-30) + 1e-30)


@pytest.mark.parametrize("isa", ISAS)
@pytest.mark.parametrize("n", [1, 7, 16, 17, 100, 1027])
def test_gelu_erf(isa, n):
    # GELU's exact form (BERT's): erf computed in the vector kernels through
    # erfc, so the far negative tail keeps its relative accuracy too
    import math
    rng = np.random.default_rng(n)
    x = (3 * rng.standard_normal(n)).astype(np.float32)
    x[: min(n, 6)] = [-12.0, -5.5, -0.0, 0.0, 5.5, 40.0][: min(n, 6)]
    ref = np.array([0.5 * v * math.erfc(-v / math.sqrt(2)) for v in x.astype(np.float64)])
    got = _core.testing.row_kernel("gelu_erf", x[None], isa)[0]
    # a few ulps, and in the negative tail the float32 rounding of x (and of
    # x^2 inside exp(-x^2 / 2)) alone moves the result by ~x^2 ulps
    tol = (1e-6 + 2e-7 * x.astype(np.float64) ** 2) * np.abs(ref) + 1e-37
    assert np.all(np.abs(got - ref) <= tol), np.abs(got - ref).max()
    # an element's result does not depend on where the call's range starts
    for lo in (1, 5, 9):
        assert np.array_equal(_core.testing.row_kernel("gelu_erf", x[None, lo:], isa)[0], got[lo:])


@pytest.mark.parametrize("isa", ISAS)
@pytest.mark.parametrize("dim", [1, 7, 16, 33, 384, 1000])
def test_layernorm_and_max_rows(isa, dim):
    rng = np.random.default_rng(dim)
    x = (rng.standard_normal((5, dim)) * [[1], [1e-3], [50], [1], [1]] + [[0], [0], [0], [300], [0]]).astype(np.float32)
    x[4] = -np.inf if dim == 1 else x[4]
    x = x[:4] if dim == 1 else x
    w = rng.standard_normal(dim).astype(np.float32)
    b = rng.standard_normal(dim).astype(np.float32)
    got = _core.testing.row_kernel("layernorm", x, isa, w, b, 1e-5)
    xd = x.astype(np.float64)
    mean = xd.mean(-1, keepdims=True)
    ref = (xd - mean) / np.sqrt(((xd - mean) ** 2).mean(-1, keepdims=True) + 1e-5) * w + b
    assert np.abs(got - ref).max() <= 2e-5 * (np.abs(w).max() * 4 + np.abs(b).max())
    assert np.array_equal(_core.testing.row_kernel("max", x, isa), x.max(-1))


@pytest.mark.parametrize("isa", ISAS)
@pytest.mark.parametrize("n,T", [(1, 1), (1, 17), (1, 300), (5, 5), (20, 300)])
@pytest.mark.parametrize("window", [0, 7])
def test_sinks(isa, n, T, window):
    # gpt-oss: a logit per head in the denominator, no value; large ones take
    # most of the weight, very negative ones none (the plain softmax)
    sinks = np.array([-30.0, 0.0, 2.0, 8.0, -1.0, 4.0], np.float32)
    got, ref = run(n, T, 6, 2, 64, 16, "f32", isa, window=window, sinks=sinks)
    assert np.abs(got - ref).max() < TOL
    plain, _ = run(n, T, 6, 2, 64, 16, "f32", isa, window=window)
    assert np.abs(got[:, 0] - plain[:, 0]).max() < TOL  # a sink at -30 changes nothing
    assert np.abs(got[:, 3] - plain[:, 3]).max() > 0.1  # one at 8 shrinks the output
