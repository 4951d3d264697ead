"""Quantization (llmrt.quantize, `llmrt quantize`) and perplexity."""
import os
import subprocess
import sys

import gguf
import numpy as np
import pytest
from testutil import dequantize_ref, write_model

import llmrt
from llmrt import _core
from llmrt.arrays import dequantize_array
from llmrt.ggml_types import WRITABLE, writable
from llmrt.quantization import quantize_array, tensor_type

QT = gguf.GGMLQuantizationType
# Relative RMS error bounds of one quantize -> dequantize round trip on
# Gaussian rows (measured, then rounded up ~1.5x): 4-bit types lose about 7-9%
# (16 levels over each block's range), Q6_K ~2% (64 levels), Q8_0 ~0.5%,
# F16 / BF16 their mantissa (11 / 8 bits).
# MXFP4 ~12%: 8 magnitudes (E2M1) under a power-of-two block scale.
RT_BOUND = {"f32": 0.0, "f16": 4e-4, "bf16": 3e-3, "q8_0": 8e-3, "q4_0": 0.13, "q4_1": 0.11,
            "q4_k": 0.11, "q6_k": 0.03, "mxfp4": 0.13}


def _rel_rms(a, b):
    return float(np.sqrt(((a - b) ** 2).mean() / (b ** 2).mean()))


@pytest.mark.parametrize("type_name", sorted(WRITABLE))
def test_round_trip_error_bounds(type_name):
    rng = np.random.default_rng(0)
    x = rng.standard_normal((9, 768)).astype(np.float32)
    x[1] = np.abs(x[1])          # all positive
    x[2] = -np.abs(x[2])         # all negative
    x[3, :256] = 0.0             # a zero block
    x[4] *= 1e-3                 # small values
    enc = quantize_array(x, type_name)
    raw = enc if enc.dtype in (np.float32, np.float16) else enc.view(np.uint8)
    y = dequantize_array(raw, QT[writable(type_name).name], x.shape)
    assert _rel_rms(y, x) <= RT_BOUND[type_name], _rel_rms(y, x)
    assert np.all(y[3, :256] == 0.0)
    for r in (1, 2, 4):
        assert _rel_rms(y[r], x[r]) <= RT_BOUND[type_name] * 1.5


@pytest.mark.parametrize("type_name", ["q4_k", "q6_k"])
def test_k_quant_encoding_read_by_every_decoder(type_name):
    # our Q4_K / Q6_K bytes mean the same to gguf-py, to the test suite's
    # independent dequantizer and to llmrt's matmul kernels
    rng = np.random.default_rng(1)
    x = rng.standard_normal((5, 512)).astype(np.float32)
    raw = quantize_array(x, type_name)
    g = writable(type_name).name
    a = dequantize_array(raw, QT[g], x.shape)
    b = dequantize_ref(raw, g, 5, 512)
    np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-7)
    v = rng.standard_normal((3, 512)).astype(np.float32)
    got = _core.testing.matmul(int(QT[g]), raw, 5, 512, v, "", 1, False)
    np.testing.assert_allclose(got, v.astype(np.float64) @ b.T, rtol=1e-4, atol=1e-4)


def test_bad_arguments():
    x = np.zeros((2, 100), np.float32)
    with pytest.raises(ValueError, match="whole 32-value blocks"):
        quantize_array(x, "q8_0")
    with pytest.raises(ValueError, match="unknown type"):
        quantize_array(x, "q3_k")


def test_tensor_type_exceptions():
    assert tensor_type("blk.0.attn_norm.weight", (64,), "q4_k", True) == "f32"
    assert tensor_type("blk.0.attn_q.weight", (64, 512), "q4_k", True) == "q4_k"
    assert tensor_type("token_embd.weight", (300, 512), "q4_k", True) == "q6_k"
    assert tensor_type("output.weight", (300, 512), "q4_0", False) == "q8_0"
    assert tensor_type("token_embd.weight", (300, 512), "q4_0", False) == "q8_0"
    # rows that are not whole 256-value blocks fall back
    assert tensor_type("blk.0.attn_q.weight", (64, 576), "q4_k", True) == "q4_1"
    assert tensor_type("blk.0.attn_q.weight", (64, 576), "q6_k", True) == "q8_0"
    assert tensor_type("blk.0.attn_q.weight", (64, 72), "q8_0", True) == "f16"


# Logit error bounds after quantizing a random F32 model: mean over 40
# positions of max|logit error| / max|logit|; the weights' round-trip error
# carried through two layers, plus 8-bit activations for the integer types.
# Measured: f16 4e-4, bf16 3e-3, q8_0 0.012, q4_0 0.098, q4_1 0.089, q4_k
# 0.092, q6_k 0.033; bounds ~1.5x those. (Random weights have no outliers
# for the block scales to adapt to, so the 4-bit types look alike here.)
LOGIT_BOUND = {"f32": 1e-5, "f16": 1e-3, "bf16": 5e-3, "q8_0": 0.02, "q4_0": 0.15,
               "q4_1": 0.14, "q4_k": 0.14, "q6_k": 0.05, "mxfp4": 0.02}  # mxfp4: all Q8_0 here


@pytest.fixture(scope="module")
def f32_model(tmp_path_factory):
    path = str(tmp_path_factory.mktemp("q") / "f32.gguf")
    write_model(path, wtype="F32", n_embd=256, n_ff=512, n_head=4, n_head_kv=2, n_layer=2,
                tied=False)
    return path


@pytest.mark.parametrize("type_name", sorted(WRITABLE))
def test_quantize_file_round_trip(f32_model, tmp_path, type_name):
    out = str(tmp_path / f"m.{type_name}.gguf")
    chosen = llmrt.quantize(f32_model, out, type_name, progress=False)
    # the file is standard GGUF: gguf-py reads it, with the expected keys and types
    r = gguf.GGUFReader(out)
    assert r.fields["general.architecture"].contents() == "llama"
    assert r.fields["llama.block_count"].contents() == 2
    assert "tokenizer.ggml.tokens" in r.fields
    types = {t.name: t.tensor_type.name for t in r.tensors}
    assert types["blk.0.attn_norm.weight"] == "F32"
    # mxfp4 is for a mixture's experts: a dense model's matrices go to Q8_0
    want = "q8_0" if type_name == "mxfp4" else type_name
    assert types["blk.1.ffn_down.weight"] == writable(want).name
    assert chosen["blk.1.ffn_down.weight"] == want
    if type_name in ("q4_0", "q4_1"):
        assert types["output.weight"] == "Q8_0"
    # it loads and its logits stay within the type's bound of the original's
    ids = np.random.default_rng(2).integers(0, 260, 40)
    ref = llmrt.Model(f32_model, threads=2, activations="f32").logits(ids)
    got = llmrt.Model(out, threads=2).logits(ids)
    err = (np.abs(got - ref).max(axis=1) / np.abs(ref).max()).mean()
    assert err <= LOGIT_BOUND[type_name], (type_name, err)


def test_requantize_from_a_quantized_file(f32_model, tmp_path):
    # q4_k -> q8_0 goes through dequantization: the q8_0 file holds the q4_k
    # weights to within q8_0's rounding
    a, b = str(tmp_path / "a.gguf"), str(tmp_path / "b.gguf")
    llmrt.quantize(f32_model, a, "q4_k", progress=False)
    llmrt.quantize(a, b, "q8_0", progress=False)
    ra, rb = gguf.GGUFReader(a), gguf.GGUFReader(b)
    ta = {t.name: t for t in ra.tensors}
    for t in rb.tensors:
        if len(t.shape) < 2:
            continue
        shape = tuple(int(x) for x in reversed(t.shape))
        x = dequantize_array(ta[t.name].data, ta[t.name].tensor_type, shape)
        y = dequantize_array(t.data, t.tensor_type, shape)
        assert _rel_rms(y, x) <= RT_BOUND["q8_0"]


def test_quantize_errors(f32_model, tmp_path):
    bad = tmp_path / "bad.gguf"
    bad.write_bytes(b"GGUF" + b"\0" * 20)
    with pytest.raises(llmrt.GGUFError):
        llmrt.quantize(str(bad), str(tmp_path / "o.gguf"), "q8_0")
    with pytest.raises(ValueError, match="type"):
        llmrt.quantize(f32_model, str(tmp_path / "o.gguf"), "q2_k")
    with pytest.raises(ValueError, match="differ"):
        llmrt.quantize(f32_model, f32_model, "q8_0")


def test_quantize_cli(f32_model, tmp_path):
    out = str(tmp_path / "cli.gguf")
    r = subprocess.run([sys.executable, "-m", "llmrt", "quantize", f32_model, out, "--type",
                        "q4_0"], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    assert "wrote" in r.stdout and os.path.getsize(out) < os.path.getsize(f32_model) / 4


# ---- perplexity ------------------------------------------------------------------------

def test_perplexity_equals_numpy(f32_model):
    m = llmrt.Model(f32_model, threads=2)
    ids = list(np.random.default_rng(3).integers(1, 260, 100))
    r = m.perplexity(ids, window=32)
    assert r.windows == 3 and r.tokens == 3 * 15 and r.window == 32
    nll = []
    for w in range(3):
        chunk = ids[32 * w:32 * (w + 1)]
        lg = m.logits(chunk).astype(np.float64)
        lp = lg - lg.max(1, keepdims=True)
        lp -= np.log(np.exp(lp).sum(1, keepdims=True))
        nll += [-lp[i, chunk[i + 1]] for i in range(16, 31)]
    assert r.nll == pytest.approx(np.mean(nll), rel=1e-9)
    assert r.perplexity == pytest.approx(np.exp(np.mean(nll)), rel=1e-9)
    assert m.perplexity(ids, window=32, max_windows=1).windows == 1
    with pytest.raises(ValueError, match="at least one window"):
        m.perplexity(ids[:20], window=32)
    with pytest.raises(ValueError, match="window"):
        m.perplexity(ids, window=2)


def test_perplexity_cli(f32_model, tmp_path):
    text = tmp_path / "t.txt"
    text.write_text("the quick brown fox jumps over the lazy dog. " * 40)
    r = subprocess.run([sys.executable, "-m", "llmrt", "perplexity", f32_model, "--file",
                        str(text), "--window", "64"], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    assert r.stdout.startswith("perplexity ") and "windows of 64" in r.stdout
    ppl = float(r.stdout.split()[1])
    assert ppl == pytest.approx(llmrt.perplexity(f32_model, text.read_text(),
                                                 window=64).perplexity, rel=1e-6)


def test_quantize_unreadable_type_is_a_clear_error(tmp_path):
    # a file with a tensor type llmrt cannot read: a clear error, no output left
    src, out = str(tmp_path / "iq.gguf"), str(tmp_path / "o.gguf")
    w = gguf.GGUFWriter(src, "llama")
    w.add_tensor("token_embd.weight", np.zeros((4, 72), np.uint8), raw_dtype=QT.IQ4_NL)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    with pytest.raises(llmrt.UnsupportedModelError, match="IQ4_NL"):
        llmrt.quantize(src, out, "q8_0")
    assert not os.path.exists(out)
