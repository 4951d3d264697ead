"""Each CPU kernel against the numpy reference, for every ISA variant this
machine can run, on random data of awkward shapes."""

import numpy as np
import pytest

from llmrt import _core
from testutil import dequantize_ref, encode_tensor

TYPE_IDS = {"F32": 0, "F16": 1, "Q4_0": 2, "Q4_1": 3, "Q8_0": 8, "BF16": 30}
ISAS = [i for i in ("generic", "avx2", "avx512") if _core.isa_available(i)]
# (rows, cols): row counts not multiples of the 4-row groups or thread splits,
# lengths that are odd multiples of the 32-wide block (and odd, for the float types)
SHAPES = [(1, 32), (7, 96), (13, 160), (33, 288), (130, 544)]
FLOAT_SHAPES = [(3, 5), (9, 33), (17, 71)]

# Tolerances, relative to sqrt(cols) * max|w| * max|x| (the scale of a dot product):
# every variant computes in float32 with a different summation order (lanes,
# FMA contraction), so results differ from the float64 reference by float32
# rounding of ~cols additions; 1e-5 leaves room above the ~1e-6 seen.
REL_TOL = 1e-5


def _weights(type_name, rows, cols, rng):
    w = rng.standard_normal((rows, cols)).astype(np.float32)
    if type_name == "BF16":
        enc = encode_tensor(w, "BF16")
    else:
        enc = encode_tensor(w, type_name)
    raw = np.ascontiguousarray(np.asarray(enc)).view(np.uint8).reshape(rows, -1)
    return raw, dequantize_ref(raw, type_name, rows, cols)


def _cases():
    for t in TYPE_IDS:
        shapes = SHAPES + (FLOAT_SHAPES if t in ("F32", "F16", "BF16") else [])
        for rows, cols in shapes:
            yield t, rows, cols


@pytest.mark.parametrize("isa", ISAS)
@pytest.mark.parametrize("type_name,rows,cols", list(_cases()))
def test_dequantize_matches_numpy(isa, type_name, rows, cols):
    rng = np.random.default_rng(rows * 1000 + cols)
    raw, ref = _weights(type_name, rows, cols, rng)
    got = _core.dequantize(TYPE_IDS[type_name], raw, rows, cols, isa)
    # dequantization is exact: one float multiply(-add) of exactly representable values
    np.testing.assert_allclose(got, ref, rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("isa", ISAS)
@pytest.mark.parametrize("n", [1, 2, 5])
@pytest.mark.parametrize("type_name,rows,cols", list(_cases()))
def test_matmul_matches_numpy(isa, n, type_name, rows, cols):
    rng = np.random.default_rng(rows * 7 + cols + n)
    raw, w = _weights(type_name, rows, cols, rng)
    x = rng.standard_normal((n, cols)).astype(np.float32)
    ref = x.astype(np.float64) @ w.T
    got = _core.matmul(TYPE_IDS[type_name], raw, rows, cols, x, isa, 1)
    scale = np.sqrt(cols) * np.abs(w).max() * np.abs(x).max()
    assert np.abs(got - ref).max() <= REL_TOL * scale


@pytest.mark.parametrize("type_name", list(TYPE_IDS))
@pytest.mark.parametrize("n", [1, 6])
def test_thread_counts_give_identical_results(type_name, n):
    rng = np.random.default_rng(3)
    rows, cols = 203, 320
    raw, _ = _weights(type_name, rows, cols, rng)
    x = rng.standard_normal((n, cols)).astype(np.float32)
    t = TYPE_IDS[type_name]
    one = _core.matmul(t, raw, rows, cols, x, "", 1)
    for threads in (2, 3):
        assert np.array_equal(one, _core.matmul(t, raw, rows, cols, x, "", threads))


@pytest.mark.parametrize("type_name", list(TYPE_IDS))
def test_isa_variants_agree_with_generic(type_name):
    rng = np.random.default_rng(11)
    rows, cols = 37, 256
    raw, w = _weights(type_name, rows, cols, rng)
    x = rng.standard_normal((3, cols)).astype(np.float32)
    t = TYPE_IDS[type_name]
    base = _core.matmul(t, raw, rows, cols, x, "generic", 1)
    scale = np.sqrt(cols) * np.abs(w).max() * np.abs(x).max()
    for isa in ISAS[1:]:
        got = _core.matmul(t, raw, rows, cols, x, isa, 1)
        assert np.abs(got - base).max() <= REL_TOL * scale, isa


def test_bad_kernel_arguments_raise():
    raw = np.zeros((2, 18), np.uint8)
    with pytest.raises(ValueError, match="unsupported tensor type"):
        _core.dequantize(99, raw, 2, 32)
    with pytest.raises(ValueError, match="bytes"):
        _core.dequantize(2, raw, 3, 32)
    with pytest.raises(ValueError, match="multiple of the block"):
        _core.dequantize(2, raw, 2, 33)
    with pytest.raises(ValueError, match="shape"):
        _core.matmul(2, raw, 2, 32, np.zeros((1, 31), np.float32))
    with pytest.raises(ValueError, match="unknown ISA"):
        _core.matmul(2, raw, 2, 32, np.zeros((1, 32), np.float32), "sse9")
