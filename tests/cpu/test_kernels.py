"""Each CPU kernel against the numpy reference, for every ISA variant this
machine can run, on random data of awkward shapes."""

import numpy as np
import pytest
from testutil import INT8_TYPES, dequantize_ref, encode_tensor, quantize_act_ref, random_kquant

from llmrt import _core
from llmrt.ggml_types import TYPES

TYPE_IDS = {name: t.id for name, t in TYPES.items()}
ISAS = [i for i in ("generic", "avx2", "avx512", "avx512_vnni") if _core.testing.isa_available(i)]
# (rows, cols): row counts not multiples of the 2-row tiles, 16-row grains or
# thread splits; lengths that are odd multiples of the block
SHAPES = [(1, 32), (7, 96), (13, 160), (33, 288), (130, 544),
          # even block counts: the repacked Q4 layouts (full groups of 8 blocks, tail pairs)
          (5, 64), (11, 576), (9, 384), (3, 512)]
# K-quants: rows that fill no tile or several, 1 to 9 super-blocks a row
K_SHAPES = [(1, 256), (7, 768), (19, 512), (10, 1280), (37, 2304)]
FLOAT_SHAPES = [(3, 5), (9, 33), (17, 71)]

# Tolerance relative to sqrt(cols) * max|w| * max|x| (the scale of a dot
# product): every variant accumulates in float32 in its own order (lanes,
# FMA contraction, per-block int32 sums scaled in float), so it differs from
# the float64 reference by float32 rounding over ~cols terms; ~1e-6 seen.
REL_TOL = 1e-5


def _weights(type_name, rows, cols, rng):
    if type_name in ("Q4_K", "Q5_K", "Q6_K"):
        raw = random_kquant(type_name, rows, cols, rng)
    else:
        w = rng.standard_normal((rows, cols)).astype(np.float32)
        raw = np.ascontiguousarray(np.asarray(encode_tensor(w, type_name))).view(np.uint8)
    raw = raw.reshape(rows, -1)
    return raw, dequantize_ref(raw, type_name, rows, cols)


def _cases():
    for t in TYPE_IDS:
        if t.endswith("_K"):
            shapes = K_SHAPES
        else:
            shapes = SHAPES + (FLOAT_SHAPES if t in ("F32", "F16", "BF16") else [])
        for rows, cols in shapes:
            yield t, rows, cols


@pytest.mark.parametrize("isa", ISAS)
@pytest.mark.parametrize("type_name,rows,cols", list(_cases()))
def test_dequantize_matches_numpy(isa, type_name, rows, cols):
    rng = np.random.default_rng(rows * 1000 + cols)
    raw, ref = _weights(type_name, rows, cols, rng)
    got = _core.dequantize(TYPE_IDS[type_name], raw, rows, cols, isa)
    # dequantization is a float multiply(-add) of exact values: float32 rounding only
    np.testing.assert_allclose(got, ref, rtol=1e-6, atol=1e-6 * np.abs(ref).max())


# int8 with the layout a model uses (Q4_0 / Q4_1 / Q8_0 repacked), int8 on the
# layout as stored in the file (the kernels for rows that are not repacked),
# and float activations
MODES = {"int8": (True, True), "int8-stored": (True, False), "f32": (False, False)}


MATMUL_CASES = [(mode, *case) for mode in MODES for case in _cases()
                if mode != "int8-stored" or case[0] in ("Q4_0", "Q4_1", "Q8_0", "Q4_K", "Q5_K",
                                                        "Q6_K", "MXFP4")]


@pytest.mark.parametrize("isa", ISAS)
@pytest.mark.parametrize("n", [1, 2, 5, 9])
@pytest.mark.parametrize("mode,type_name,rows,cols", MATMUL_CASES)
def test_matmul_matches_numpy(isa, n, type_name, rows, cols, mode):
    int8, repack = MODES[mode]
    rng = np.random.default_rng(rows * 7 + cols + n)
    raw, w = _weights(type_name, rows, cols, rng)
    x = rng.standard_normal((n, cols)).astype(np.float32)
    quantized = int8 and type_name in INT8_TYPES
    xr = quantize_act_ref(x) if quantized else x.astype(np.float64)
    ref = xr @ w.T
    got = _core.testing.matmul(TYPE_IDS[type_name], raw, rows, cols, x, isa, 1, int8, repack)
    scale = np.sqrt(cols) * np.abs(w).max() * np.abs(x).max()
    assert np.abs(got - ref).max() <= REL_TOL * scale


@pytest.mark.parametrize("isa", ISAS)
@pytest.mark.parametrize("type_name", ["F32", "F16", "BF16"])
def test_float_product_across_cache_blocks(isa, type_name):
    # the float product works in blocks of packed weight rows and of tokens
    # (64 rows and 32 tokens at 2085 columns, panels of 16 rows, sums in
    # blocks of 64 columns): rows, tokens and columns that end in
    # part blocks, on one thread and split across threads, equal numpy, and
    # a token's results are the same bits in whatever block it falls
    rng = np.random.default_rng(11)
    rows, cols, n = 75, 2085, 40
    raw, w = _weights(type_name, rows, cols, rng)
    x = rng.standard_normal((n, cols)).astype(np.float32)
    t = TYPE_IDS[type_name]
    got = _core.testing.matmul(t, raw, rows, cols, x, isa, 1, False)
    ref = x.astype(np.float64) @ w.T
    scale = np.sqrt(cols) * np.abs(w).max() * np.abs(x).max()
    assert np.abs(got - ref).max() <= REL_TOL * scale
    assert np.array_equal(_core.testing.matmul(t, raw, rows, cols, x, isa, 2, False), got)
    for lo, hi in ((7, 31), (14, 16), (30, 40)):
        assert np.array_equal(_core.testing.matmul(t, raw, rows, cols, x[lo:hi], isa, 1, False),
                              got[lo:hi]), (lo, hi)


@pytest.mark.parametrize("isa", ISAS)
@pytest.mark.parametrize("rows,cols,n", [(7, 33, 3), (75, 2085, 40), (130, 544, 9), (48, 384, 1)])
def test_f16_panels_kept_from_load_give_the_same_bits(isa, rows, cols, n):
    # an encoder's F16 weights kept as panels of halves: the same products as
    # widened and packed per call, at 1-3 threads and with the weight as the
    # later jobs of one call
    rng = np.random.default_rng(rows)
    raw, w = _weights("F16", rows, cols, rng)
    x = rng.standard_normal((n, cols)).astype(np.float32)
    t = TYPE_IDS["F16"]
    base = _core.testing.matmul(t, raw, rows, cols, x, isa, 1, False, batch_invariant=True)
    ref = x.astype(np.float64) @ w.T
    assert np.abs(base - ref).max() <= REL_TOL * np.sqrt(cols) * np.abs(w).max() * np.abs(x).max()
    for threads in (1, 2, 3):
        got = _core.testing.matmul(t, raw, rows, cols, x, isa, threads, False, batch_invariant=True,
                                   panels=True)
        assert np.array_equal(got, base), threads
    jobs = _core.testing.matmul(t, raw, rows, cols, x, isa, 2, False, batch_invariant=True,
                                panels=True, jobs=3)
    for j in range(3):
        assert np.array_equal(jobs[j], base), j


@pytest.mark.parametrize("type_name", INT8_TYPES)
def test_activation_quantization_error_is_bounded(type_name):
    # against the unquantized product: the 8-bit activations cost at most
    # half a step (max|x|/254) per element, ~sqrt(cols) of them in a sum
    rng = np.random.default_rng(1)
    rows, cols = 17, 512
    raw, w = _weights(type_name, rows, cols, rng)
    x = rng.standard_normal((3, cols)).astype(np.float32)
    got = _core.testing.matmul(TYPE_IDS[type_name], raw, rows, cols, x)
    exact = x.astype(np.float64) @ w.T
    bound = 4 * np.sqrt(cols) * np.abs(w).max() * np.abs(x).max() / 254
    assert np.abs(got - exact).max() < bound


@pytest.mark.parametrize("isa", ISAS)
def test_quantize_act_matches_rule(isa):
    rng = np.random.default_rng(4)
    x = rng.standard_normal(32 * 37).astype(np.float32) * rng.random(32 * 37).astype(np.float32) * 5
    x[:32] = 0.0  # an all-zero block: d = 0, q = 0
    x[32:64] = 0.5  # exact .5 steps after scaling: round half to even
    d, s, qs, qa, qt, s16 = _core.testing.quantize_act(x, isa)
    np.testing.assert_array_equal(qa, np.abs(qs))
    # the sums of each 16 values (Q6_KR's offset term)
    np.testing.assert_array_equal(s16, qs.reshape(-1, 16).astype(np.int64).sum(axis=1))
    # whole groups of 8 blocks interleaved 4 values at a time (the Q4_0R /
    # Q4_1R group order), then pairs of the 5 blocks after them likewise, the
    # last block as it is
    g = qs[:32].reshape(4, 8, 8, 4).transpose(0, 2, 1, 3).reshape(-1)
    np.testing.assert_array_equal(qt[:32 * 32], g)
    pairs = qs[32:36].reshape(2, 2, 8, 4).transpose(0, 2, 1, 3).reshape(-1)
    np.testing.assert_array_equal(qt[32 * 32:36 * 32], pairs)
    np.testing.assert_array_equal(qt[36 * 32:], qs[36])
    b = x.reshape(-1, 32)
    amax = np.abs(b).max(axis=1)
    np.testing.assert_array_equal(d, amax / np.float32(127))
    inv = np.where(amax > 0, np.float32(127) / np.maximum(amax, 1e-30), 0).astype(np.float32)
    np.testing.assert_array_equal(qs, np.rint(b * inv[:, None]).astype(np.int8))
    np.testing.assert_allclose(s, d * qs.astype(np.int64).sum(axis=1), rtol=1e-6)


@pytest.mark.parametrize("type_name", list(TYPE_IDS))
@pytest.mark.parametrize("n", [1, 6])
def test_thread_counts_give_identical_results(type_name, n):
    rng = np.random.default_rng(3)
    rows, cols = 203, 512
    raw, _ = _weights(type_name, rows, cols, rng)
    x = rng.standard_normal((n, cols)).astype(np.float32)
    t = TYPE_IDS[type_name]
    one = _core.testing.matmul(t, raw, rows, cols, x, "", 1)
    for threads in (2, 3):
        assert np.array_equal(one, _core.testing.matmul(t, raw, rows, cols, x, "", threads))


@pytest.mark.parametrize("isa", ISAS)
@pytest.mark.parametrize("cols", [64, 96, 256, 384, 544, 576])
def test_q8_0_decode_equals_its_tile(isa, cols):
    # repacked Q8_0: one token alone (decode's matrix-vector kernel) gets the
    # same bits as in a tile of several, over groups of 8 blocks, pairs and
    # an odd last block, so n sampled continuations equal their separate runs
    rng = np.random.default_rng(cols)
    rows = 21
    raw, _ = _weights("Q8_0", rows, cols, rng)
    x = rng.standard_normal((7, cols)).astype(np.float32)
    t = TYPE_IDS["Q8_0"]
    full = _core.testing.matmul(t, raw, rows, cols, x, isa, 1, True, True)
    for i in range(7):
        one = _core.testing.matmul(t, raw, rows, cols, x[i:i + 1], isa, 1, True, True)
        assert np.array_equal(one[0], full[i]), i


@pytest.mark.parametrize("isa", ISAS)
@pytest.mark.parametrize("int8", [True, False])
@pytest.mark.parametrize("type_name", list(TYPE_IDS))
def test_token_results_do_not_depend_on_the_batch(isa, int8, type_name):
    # a token's outputs are the same bits whichever tokens share the call and
    # whatever tile it falls in (several tokens); with batch_invariant, also
    # when it is alone
    rng = np.random.default_rng(5)
    rows, cols = 37, 512
    raw, _ = _weights(type_name, rows, cols, rng)
    x = rng.standard_normal((11, cols)).astype(np.float32)
    t = TYPE_IDS[type_name]
    full = _core.testing.matmul(t, raw, rows, cols, x, isa, 1, int8)
    for lo, hi in ((0, 2), (3, 7), (6, 11), (4, 9)):
        assert np.array_equal(_core.testing.matmul(t, raw, rows, cols, x[lo:hi], isa, 1, int8),
                              full[lo:hi]), (lo, hi)
    for i in (0, 5, 10):
        one = _core.testing.matmul(t, raw, rows, cols, x[i:i + 1], isa, 1, int8, batch_invariant=True)
        assert np.array_equal(one[0], full[i]), i


@pytest.mark.parametrize("type_name", list(TYPE_IDS))
def test_isa_variants_agree_with_generic(type_name):
    rng = np.random.default_rng(11)
    rows, cols = 37, 512
    raw, w = _weights(type_name, rows, cols, rng)
    x = rng.standard_normal((3, cols)).astype(np.float32)
    t = TYPE_IDS[type_name]
    scale = np.sqrt(cols) * np.abs(w).max() * np.abs(x).max()
    for n in (1, 3):
        base = _core.testing.matmul(t, raw, rows, cols, x[:n], "generic", 1)
        for isa in ISAS[1:]:
            got = _core.testing.matmul(t, raw, rows, cols, x[:n], isa, 1)
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
        _core.testing.matmul(2, raw, 2, 32, np.zeros((1, 31), np.float32))
    with pytest.raises(ValueError, match="unknown ISA"):
        _core.testing.matmul(2, raw, 2, 32, np.zeros((1, 32), np.float32), "sse9")
    with pytest.raises(ValueError, match="multiple of 32"):
        _core.testing.quantize_act(np.zeros(33, np.float32))


def test_q8_0_minus_128_is_read_as_minus_127():
    # Quantizers emit [-127, 127]; the integer kernels negate weights by the
    # activation's sign, so a file holding -128 is read as -127 there.
    rows, cols = 3, 64
    raw = np.zeros((rows, cols // 32, 34), np.uint8)
    raw[..., 0:2] = np.frombuffer(np.float16(0.5).tobytes(), np.uint8)
    q = np.full((rows, cols // 32, 32), -128, np.int8)
    raw[..., 2:] = q.view(np.uint8)
    raw = raw.reshape(rows, -1)
    x = -np.abs(np.random.default_rng(0).standard_normal((2, cols))).astype(np.float32)
    got = _core.testing.matmul(8, raw, rows, cols, x)
    ref = quantize_act_ref(x) @ np.full((rows, cols), -127 * 0.5).T
    assert np.allclose(got, ref, rtol=1e-5)


@pytest.mark.parametrize("isa", ISAS)
@pytest.mark.parametrize("type_name", ["Q4_K", "Q5_K", "Q6_K"])
@pytest.mark.parametrize("n", [1, 4, 7])
def test_kquant_extreme_values(isa, type_name, n):
    # every weight at its largest code and every activation at +-127: the
    # SIMD kernels add int16 pair sums before widening them, which must not
    # overflow; Q6_K's scales at both ends of int8
    rows, cols = 9, 512
    size = {"Q4_K": 144, "Q5_K": 176, "Q6_K": 210}[type_name]
    raw = np.full((rows, cols // 256, size), 0xFF, np.uint8)
    d = np.array([1e-3], np.float16).view(np.uint8)
    if type_name == "Q6_K":
        raw[..., 192:208] = np.array([127, 0x80] * 8, np.uint8)  # scales 127, -128
        raw[..., 208:210] = d
    else:
        raw[..., 0:2] = d
        raw[..., 2:4] = np.array([5e-4], np.float16).view(np.uint8)  # dmin
    raw = raw.reshape(rows, -1)
    w = dequantize_ref(raw, type_name, rows, cols)
    x = np.ones((n, cols), np.float32)
    x[:, 1::3] = -1.0  # mixed signs: |q| = 127 throughout
    if n > 1:
        x[1] = 1.0    # one row all +127: the largest same-sign sums
    got = _core.testing.matmul(TYPE_IDS[type_name], raw, rows, cols, x, isa)
    ref = quantize_act_ref(x) @ w.T
    scale = np.sqrt(cols) * np.abs(w).max() * np.abs(x).max()
    assert np.abs(got - ref).max() <= REL_TOL * scale


@pytest.mark.parametrize("type_name", ["Q4_K", "Q5_K", "Q6_K"])
def test_kquant_repacked_equals_stored(type_name):
    # the repacked layout against the kernels of the layout as stored (generic
    # twins of each): the same weights, so the same products up to float order
    rng = np.random.default_rng(8)
    rows, cols = 23, 1024
    raw, w = _weights(type_name, rows, cols, rng)
    x = rng.standard_normal((3, cols)).astype(np.float32)
    t = TYPE_IDS[type_name]
    stored = _core.testing.matmul(t, raw, rows, cols, x, "generic", 1, True, False)
    for isa in ISAS:
        packed = _core.testing.matmul(t, raw, rows, cols, x, isa, 1, True, True)
        np.testing.assert_allclose(packed, stored, rtol=1e-5,
                                   atol=1e-5 * np.abs(stored).max())


@pytest.mark.parametrize("isa", ISAS)
@pytest.mark.parametrize("type_name", ["Q8_0", "Q4_1", "Q6_K", "Q4_K", "Q5_0"])
@pytest.mark.parametrize("n", [1, 2, 5])
def test_precise_product_is_near_the_float_one(isa, type_name, n):
    # the output head's product: activations as two 8-bit rows (the second the
    # rounding of the first) stay within ~2^-15 of the exact activations, so
    # the product is far nearer the float one than one 8-bit row is
    rows, cols = 37, 768 if type_name.endswith("_K") else 576
    rng = np.random.default_rng(11 + n)
    raw, w = _weights(type_name, rows, cols, rng)
    x = rng.standard_normal((n, cols)).astype(np.float32)
    t = TYPE_IDS[type_name]
    exact = x.astype(np.float64) @ w.T
    one = _core.testing.matmul(t, raw, rows, cols, x, isa, 1, True)
    two = _core.testing.matmul(t, raw, rows, cols, x, isa, 2, True, precise=True)
    scale = np.sqrt(cols) * np.abs(w).max() * np.abs(x).max()
    err_one, err_two = np.abs(one - exact).max(), np.abs(two - exact).max()
    assert err_two <= 4 * scale / (254 * 254) + 1e-5 * scale
    assert err_two < err_one / 20
    # and a token's result does not depend on the others in the call
    if n > 1:
        alone = _core.testing.matmul(t, raw, rows, cols, x[1:2], isa, 1, True, precise=True)
        np.testing.assert_array_equal(alone[0], two[1])


@pytest.mark.parametrize("isa", ISAS)
@pytest.mark.parametrize("type_name", ["Q8_0", "Q6_K", "Q4_K"])
@pytest.mark.parametrize("n", [1, 4])
def test_precise_product_refines_the_rows_that_can_lead(isa, type_name, n):
    # with the rows' L1 norms (a head prepared by the CPU backend) only the
    # rows whose 8-bit result is within the rounding bound of the leader are
    # recomputed: each row equals either the 8-bit product or the full
    # precise one, and the largest value and its row are the precise ones
    rows, cols = 301, 512
    rng = np.random.default_rng(21 + n)
    raw, w = _weights(type_name, rows, cols, rng)
    x = rng.standard_normal((n, cols)).astype(np.float32)
    t = TYPE_IDS[type_name]
    plain = _core.testing.matmul(t, raw, rows, cols, x, isa, 2, True)
    full = _core.testing.matmul(t, raw, rows, cols, x, isa, 2, True, precise=True)
    ref = _core.testing.matmul(t, raw, rows, cols, x, isa, 2, True, precise=True, row_norms=True)
    assert np.all((ref == plain) | (ref == full))
    np.testing.assert_array_equal(ref.argmax(-1), full.argmax(-1))
    np.testing.assert_array_equal(ref.max(-1), full.max(-1))
    assert (ref == full).sum() < rows * n  # not every row: the bound selects


@pytest.mark.parametrize("isa", ISAS)
@pytest.mark.parametrize("scale", [1e-9, 3e4, 1.0])
def test_mxfp4_repacked_where_fp16_holds_its_scales(isa, scale):
    # MXFP4R keeps half of each block's power-of-two scale as fp16: blocks
    # whose scales fp16 cannot hold exactly (tiny or huge weights) stay in
    # the stored layout; either way the product is the stored weights'
    rng = np.random.default_rng(3)
    rows, cols = 19, 576  # two groups of 8 blocks and a tail pair
    w = (scale * rng.standard_normal((rows, cols))).astype(np.float32)
    raw = np.ascontiguousarray(np.asarray(encode_tensor(w, "MXFP4"))).view(np.uint8).reshape(rows, -1)
    ref_w = dequantize_ref(raw, "MXFP4", rows, cols)
    x = rng.standard_normal((5, cols)).astype(np.float32)
    for n in (1, 5):
        got = _core.testing.matmul(TYPE_IDS["MXFP4"], raw, rows, cols, x[:n], isa, 1, True, True)
        stored = _core.testing.matmul(TYPE_IDS["MXFP4"], raw, rows, cols, x[:n], isa, 1, True,
                                      False)
        ref = quantize_act_ref(x[:n]) @ ref_w.T
        tol = REL_TOL * np.sqrt(cols) * np.abs(ref_w).max() * np.abs(x).max()
        assert np.abs(got - ref).max() <= tol and np.abs(stored - ref).max() <= tol


@pytest.mark.parametrize("type_name", ["Q4_K", "Q5_K", "Q6_K"])
def test_kquant_tiles_give_the_same_bits_on_every_simd_isa(type_name):
    # the 512-bit tiles (two rows a register) take each lane's integer and
    # float steps in the 256-bit tiles' order: the same bits, alone or batched
    isas = [i for i in ISAS if i != "generic"]
    if len(isas) < 2:
        pytest.skip("one SIMD variant on this CPU")
    rng = np.random.default_rng(11)
    rows, cols = 37, 1280
    raw, _ = _weights(type_name, rows, cols, rng)
    x = rng.standard_normal((11, cols)).astype(np.float32)
    t = TYPE_IDS[type_name]
    want = _core.testing.matmul(t, raw, rows, cols, x, isas[0], 2)
    for isa in isas[1:]:
        assert np.array_equal(_core.testing.matmul(t, raw, rows, cols, x, isa, 2), want), isa
        for i in (0, 5, 10):
            one = _core.testing.matmul(t, raw, rows, cols, x[i:i + 1], isa, 1, batch_invariant=True)
            assert np.array_equal(one, want[i:i + 1]), (isa, i)
