"""Mixture-of-experts families: Qwen3-MoE (per-head q/k norms, renormalised
top-k) and Qwen2-MoE (q/k/v biases, top-k weights as the softmax gives them,
a shared expert behind a sigmoid gate). Tiny random Hugging Face checkpoints
written here convert and match a numpy forward written from Hugging Face's
conventions (and transformers where it is installed); each quirk, switched
off in the reference, moves the logits past the tolerance; GGUF files
written here load, run batched as alone, and bad ones fail clearly."""

import json

import gguf
import numpy as np
import pytest
from test_convert import _bpe_dir, _save, hf_reference
from testutil import (
    check_batched_equals_alone,
    check_speculative_and_structured,
    fuzz_gguf,
    reference_logits,
    rewrite_gguf,
    write_model,
)

import llmrt
from llmrt import GGUFError
from llmrt.convert import convert

TEXT = "Numbers like 12345 jump over symbols: #, $! The lazy dog sleeps. " * 3
ARCHS = {
    "Qwen3MoeForCausalLM": dict(num_experts=8, num_experts_per_tok=2, moe_intermediate_size=32,
                                norm_topk_prob=True),
    "Qwen2MoeForCausalLM": dict(num_experts=6, num_experts_per_tok=3, moe_intermediate_size=48,
                                shared_expert_intermediate_size=80, norm_topk_prob=False,
                                qwen_bias=True, tie=False),
}


def _checkpoint(root, arch, **kw):
    return _bpe_dir(root, arch=arch, **dict(ARCHS[arch], **kw))


def _close(got, ref, tol=1e-4):
    return np.abs(got - ref).max() <= tol * np.abs(ref).max()


@pytest.fixture(scope="module", params=sorted(ARCHS))
def moe(request, tmp_path_factory):
    root = tmp_path_factory.mktemp(request.param)
    tk, c, w = _checkpoint(root / "hf", request.param)
    out = str(root / "m.gguf")
    convert(str(root / "hf"), out, "f32", progress=False)
    m = llmrt.Model(out, threads=2, activations="f32", kv_cache_dtype="f32")
    return dict(arch=request.param, tk=tk, c=c, w=w, dir=str(root / "hf"), path=out, model=m,
                ids=tk.encode(TEXT).ids)


def test_file_keys_and_layout(moe):
    c = moe["c"]
    r = gguf.GGUFReader(moe["path"])
    a = r.fields["general.architecture"].contents()
    assert a == {"Qwen3MoeForCausalLM": "qwen3moe", "Qwen2MoeForCausalLM": "qwen2moe"}[moe["arch"]]
    assert r.fields[f"{a}.expert_count"].contents() == c["num_experts"]
    assert r.fields[f"{a}.expert_used_count"].contents() == c["num_experts_per_tok"]
    assert r.fields[f"{a}.expert_feed_forward_length"].contents() == c["moe_intermediate_size"]
    t = {t.name: (list(t.shape), t.tensor_type.name) for t in r.tensors}
    E, Fe, D = c["num_experts"], c["moe_intermediate_size"], c["hidden_size"]
    assert t["blk.1.ffn_gate_exps.weight"][0] == [D, Fe, E]
    assert t["blk.1.ffn_down_exps.weight"][0] == [Fe, D, E]
    assert t["blk.0.ffn_gate_inp.weight"] == ([D, E], "F32")
    if "shared_expert_intermediate_size" in c:
        Fs = c["shared_expert_intermediate_size"]
        assert r.fields[f"{a}.expert_shared_feed_forward_length"].contents() == Fs
        assert t["blk.0.ffn_gate_inp_shexp.weight"][0] == [D]
        assert t["blk.0.ffn_up_shexp.weight"][0] == [D, Fs]
    else:
        assert not any("shexp" in n for n in t)


def test_logits_match_the_reference_and_each_quirk_matters(moe):
    c, w, ids, m = moe["c"], moe["w"], moe["ids"], moe["model"]
    ref = hf_reference(c, w, ids)
    got = m.logits(ids)
    assert _close(got, ref)
    far = 1e-3 * np.abs(ref).max()  # ten times the tolerance
    # the top-k weights renormalised or not
    flipped = dict(c, norm_topk_prob=not c["norm_topk_prob"])
    assert np.abs(got - hf_reference(flipped, w, ids)).max() > far
    # a different k
    fewer = dict(c, num_experts_per_tok=c["num_experts_per_tok"] - 1)
    assert np.abs(got - hf_reference(fewer, w, ids)).max() > far
    if "shared_expert_intermediate_size" in c:  # without the shared expert
        w0 = {k: v for k, v in w.items() if "shared_expert" not in k}
        assert np.abs(got - hf_reference(c, w0, ids)).max() > far
    else:  # without the per-head norms
        w0 = {k: v for k, v in w.items() if "_norm" not in k or "layernorm" in k}
        assert np.abs(got - hf_reference(c, w0, ids)).max() > far


def test_matches_transformers(moe, tmp_path):
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    cls = getattr(transformers, moe["arch"], None)
    if cls is None:
        pytest.skip("transformers without this architecture")
    from safetensors.numpy import save_file
    d = tmp_path / "hf"  # the checkpoint as one model.safetensors, the form from_pretrained reads
    d.mkdir()
    save_file(moe["w"], str(d / "model.safetensors"))
    (d / "config.json").write_text(json.dumps(moe["c"]))
    hf = cls.from_pretrained(str(d), dtype=torch.float32).eval()
    with torch.no_grad():
        t = hf(torch.tensor([moe["ids"]])).logits[0].double().numpy()
    assert _close(moe["model"].logits(moe["ids"]), t)


def test_fused_expert_tensors_convert_alike(moe, tmp_path):
    # transformers 5 keeps each layer's experts as two stacked tensors,
    # gate and up rows together: the same file comes out
    c, w = moe["c"], moe["w"]
    E = c["num_experts"]
    fused = {k: v for k, v in w.items() if ".experts." not in k}
    for i in range(c["num_hidden_layers"]):
        m = f"model.layers.{i}.mlp.experts."
        fused[m + "gate_up_proj"] = np.stack([np.concatenate(
            [w[f"{m}{e}.gate_proj.weight"], w[f"{m}{e}.up_proj.weight"]]) for e in range(E)])
        fused[m + "down_proj"] = np.stack([w[f"{m}{e}.down_proj.weight"] for e in range(E)])
    d = tmp_path / "fused"
    _save(str(d), c, fused, shards=1)
    for f in ("tokenizer.json", "tokenizer_config.json"):
        (d / f).write_bytes(open(f"{moe['dir']}/{f}", "rb").read())
    out = str(tmp_path / "fused.gguf")
    convert(str(d), out, "f32", progress=False)
    m2 = llmrt.Model(out, threads=2, activations="f32", kv_cache_dtype="f32")
    assert np.array_equal(m2.logits(moe["ids"]), moe["model"].logits(moe["ids"]))


def test_batched_equals_alone_and_prompt_chunks(moe):
    # decode rows run each chosen expert once for all the rows that chose it;
    # a prompt in pieces gives the logits of the whole
    check_batched_equals_alone(moe["model"], moe["ids"], 30)


def test_speculative_and_structured_output(moe):
    check_speculative_and_structured(moe["model"], moe["ids"], 10)


@pytest.mark.parametrize("wtype, bound", [("q8_0", 0.03), ("q4_0", 0.2), ("mxfp4", 0.2)])
def test_quantized_conversions(moe, tmp_path, wtype, bound):
    out = str(tmp_path / f"{wtype}.gguf")
    info = convert(moe["dir"], out, wtype, progress=False)
    # routers and the shared expert's gate stay F32, as llama.cpp keeps them
    assert all(t == "f32" for n, t in info["types"].items() if "gate_inp" in n)
    assert info["types"]["blk.0.ffn_up_exps.weight"] == wtype
    if wtype == "mxfp4":  # the other matrices Q8_0, as llama.cpp's MXFP4_MOE files
        assert info["types"]["blk.0.attn_q.weight"] == "q8_0"
    ids = moe["ids"]
    ref = moe["model"].logits(ids)
    got = llmrt.Model(out, threads=2).logits(ids)
    err = np.abs(got - ref).max(axis=1) / np.abs(ref).max()
    assert err.mean() <= bound, err.mean()


# ---- GGUF files written here ---------------------------------------------------------

@pytest.mark.parametrize("arch", ["qwen3moe", "qwen2moe"])
@pytest.mark.parametrize("wtype", ["F32", "Q8_0", "MXFP4"])
def test_gguf_file_matches_numpy_forward(tmp_path, arch, wtype):
    p = str(tmp_path / "m.gguf")
    W, cfg = write_model(p, arch=arch, wtype=wtype, n_expert=6, n_expert_used=2, n_ff_exp=32,
                         n_ff_shexp=64, seed=5)
    tokens = np.random.default_rng(1).integers(0, cfg["n_vocab"], 23)
    m = llmrt.Model(p, threads=2, activations="f32", kv_cache_dtype="f32")
    ref = reference_logits(W, cfg, tokens)
    assert _close(m.logits(tokens), ref, 1e-4)
    # int8 activations against the reference that rounds them the same way
    m8 = llmrt.Model(p, threads=2, kv_cache_dtype="f32")
    assert m8.tensor_types["blk.0.ffn_up_exps.weight"] == wtype
    ref8 = reference_logits(W, cfg, tokens, m8.tensor_types)
    # every position within 2e-2 and their mean within 5e-3 of max|logit|: an
    # activation that lands on a .5 step may round the other way in one of
    # the two (tests/cpu/test_forward.py)
    per_pos = np.abs(m8.logits(tokens) - ref8).max(axis=-1) / np.abs(ref8).max()
    assert per_pos.mean() < 5e-3 and per_pos.max() < 2e-2, per_pos


def test_mismatched_mxfp4_blocks_are_refused(tmp_path):
    import struct
    p = str(tmp_path / "m.gguf")
    write_model(p, arch="qwen3moe", wtype="Q8_0", n_expert=4, n_expert_used=2, n_ff_exp=32,
                n_layer=1)
    d = bytearray(open(p, "rb").read())
    name = b"blk.0.ffn_up_exps.weight"
    i = d.index(struct.pack("<Q", len(name)) + name) + 8 + len(name)
    (n_dims,) = struct.unpack_from("<I", d, i)
    d[i + 4 + 8 * n_dims:i + 8 + 8 * n_dims] = struct.pack("<I", 39)  # claimed MXFP4, Q8_0 bytes
    bad = tmp_path / "bad.gguf"
    bad.write_bytes(bytes(d))
    with pytest.raises(GGUFError, match="blk.0.ffn_up_exps.weight"):
        llmrt.Model(str(bad))


def test_bad_files_fail_clearly(tmp_path):
    src = str(tmp_path / "src.gguf")
    write_model(src, arch="qwen2moe", n_expert=4, n_expert_used=2, n_ff_exp=32, n_ff_shexp=64,
                n_layer=1)
    U32 = gguf.GGUFValueType.UINT32
    cases = [
        ({"qwen2moe.expert_used_count": (5, U32)}, (), "expert counts out of range"),
        ({"qwen2moe.expert_count": (300, U32)}, (), "expert counts out of range"),
        ({"qwen2moe.expert_count": (3, U32)}, (), "blk.0.ffn_gate_inp.weight"),
        ({"qwen2moe.expert_feed_forward_length": (0, U32)}, (), "n_ff_exp"),
        (None, ("blk.0.ffn_down_exps.weight",), "missing tensor 'blk.0.ffn_down_exps.weight'"),
        (None, ("blk.0.ffn_gate_inp_shexp.weight",), "ffn_gate_inp_shexp"),
    ]
    for i, (keys, drop, msg) in enumerate(cases):
        p = rewrite_gguf(src, str(tmp_path / f"bad{i}.gguf"), keys, drop)
        with pytest.raises(GGUFError, match=msg):
            llmrt.Model(p)
    # expert count 0: a dense model's tensors are expected, the experts' are not
    p = rewrite_gguf(src, str(tmp_path / "dense.gguf"), {"qwen2moe.expert_count": (0, U32)})
    with pytest.raises(GGUFError, match="missing tensor 'blk.0.ffn_gate.weight'"):
        llmrt.Model(p)


def test_fuzzed_moe_files_never_crash(tmp_path):
    p = str(tmp_path / "moe.gguf")
    write_model(p, arch="qwen2moe", wtype="Q8_0", n_layer=1, n_expert=4, n_expert_used=2,
                n_ff_exp=32, n_ff_shexp=64)
    ok, err = fuzz_gguf(p, 7, 120, tmp_path / "fuzz.gguf")
    assert err > 0


def test_llama_cpp_reads_the_converted_file(moe):
    llama_cpp = pytest.importorskip("llama_cpp")
    ids = moe["ids"][:24]
    lm = llama_cpp.Llama(moe["path"], n_ctx=64, logits_all=True, verbose=False, n_threads=2)
    lm.eval(ids)
    theirs = np.asarray(lm.scores[:len(ids)], np.float64)
    ours = moe["model"].logits(ids)
    assert np.abs(theirs - ours).max() <= 1e-3 * np.abs(ours).max()


def test_thread_counts_and_batch_shapes_give_identical_results(tmp_path):
    # the experts' products run as grouped passes whose bands move with the
    # thread count; a row's results must not
    p = str(tmp_path / "m.gguf")
    write_model(p, arch="qwen3moe", wtype="Q4_0", n_embd=128, n_head=4, n_head_kv=2,
                n_expert=8, n_expert_used=3, n_ff_exp=64, n_layer=2, seed=9)
    tokens = np.random.default_rng(3).integers(0, 250, 37)
    one = llmrt.Model(p, threads=1).logits(tokens)
    for threads in (2, 3):
        assert np.array_equal(one, llmrt.Model(p, threads=threads).logits(tokens))
