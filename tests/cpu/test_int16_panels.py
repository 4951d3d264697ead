"""F16 weights as 14-bit integer panels (an encoder's weights with 8-bit
activations): the product against a numpy twin of its arithmetic, bit for
bit, on every ISA variant, thread count, batch and band split."""

import numpy as np
import pytest
from test_kernels import ISAS, TYPE_IDS, _weights

from llmrt import _core

BLOCK, WMAX, XMAX = 64, 8191, 4095


def _quantize(x, qmax):
    """Rows of float32 -> int64 values in whole blocks of 64, float32 scales."""
    m, cols = x.shape
    nb = -(-cols // BLOCK)
    padded = np.zeros((m, nb * BLOCK), np.float32)
    padded[:, :cols] = x
    blocks = padded.reshape(m, nb, BLOCK)
    amax = np.abs(blocks).max(-1)
    scale = amax / np.float32(qmax)
    with np.errstate(divide="ignore"):
        inv = np.where(amax > 0, np.float32(qmax) / amax, np.float32(0)).astype(np.float32)
    return np.rint(blocks * inv[..., None]).astype(np.int64), scale.astype(np.float32)


def _fma32(a, b, c):
    # a * b is exact in float64 for float32 operands; one rounding to float64
    # then to float32 equals the fused one but for ties too rare to meet here
    return (a.astype(np.float64) * b + c).astype(np.float32)


def twin(w, x):
    qw, sw = _quantize(w, WMAX)
    qx, sx = _quantize(x, XMAX)
    sums = np.einsum("rbk,tbk->trb", qw, qx)  # exact integers
    assert np.abs(sums).max() < 2**31
    tot = np.zeros((x.shape[0], w.shape[0]), np.float32)
    for b in range(qw.shape[1]):
        scale = (sx[:, b][:, None] * sw[:, b][None, :]).astype(np.float32)
        tot = _fma32(sums[:, :, b].astype(np.float32), scale, tot)
    return tot


def _run(raw, rows, cols, x, isa, threads, **kw):
    return _core.testing.matmul(TYPE_IDS["F16"], raw, rows, cols, x, isa, threads, True,
                                batch_invariant=True, panels=True, **kw)


@pytest.mark.parametrize("isa", ISAS)
@pytest.mark.parametrize("rows,cols,n", [(7, 33, 3), (75, 2085, 40), (130, 544, 9), (48, 384, 1),
                                         (33, 64, 13), (200, 96, 7), (16, 128, 6)])
def test_matches_its_twin_bit_for_bit(isa, rows, cols, n):
    rng = np.random.default_rng(rows * 7 + cols)
    raw, w = _weights("F16", rows, cols, rng)
    x = rng.standard_normal((n, cols)).astype(np.float32)
    x[0, :5] *= 40  # an outlier block
    want = twin(w, x)
    for threads in (1, 2, 3):
        assert np.array_equal(_run(raw, rows, cols, x, isa, threads), want), threads
    # later jobs of one call (their rows after the first job's): the same values
    both = _run(raw, rows, cols, x, isa, 2, jobs=3)
    for j in range(3):
        assert np.array_equal(both[j], want), j
    for lo, hi in ((0, 1), (1, n), (n // 2, n)):
        if lo < hi:
            assert np.array_equal(_run(raw, rows, cols, x[lo:hi], isa, 1), want[lo:hi])
    # and within the rounding of 14-bit weights and 13-bit activations of
    # the float product
    exact = x.astype(np.float64) @ w.T.astype(np.float64)
    bound = 4 * np.sqrt(cols) * np.abs(w).max() * np.abs(x).max() * (1 / 16382 + 1 / 8190)
    assert np.abs(want - exact).max() <= bound


@pytest.mark.parametrize("isa", ISAS)
def test_non_finite_activations_give_nan_not_garbage(isa):
    rng = np.random.default_rng(5)
    rows, cols = 40, 200
    raw, w = _weights("F16", rows, cols, rng)
    x = rng.standard_normal((4, cols)).astype(np.float32)
    x[1, 70] = np.inf
    x[2, 3] = np.nan
    got = _run(raw, rows, cols, x, isa, 2)
    assert np.isnan(got[1]).all() and np.isnan(got[2]).all()
    assert np.array_equal(got[[0, 3]], twin(w, x[[0, 3]]))


def test_zero_rows_and_tokens():
    rows, cols = 20, 130
    raw, w = _weights("F16", rows, cols, np.random.default_rng(1))
    x = np.zeros((3, cols), np.float32)
    assert not _run(raw, rows, cols, x, ISAS[-1], 1).any()
