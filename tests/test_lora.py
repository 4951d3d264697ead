"""LoRA adapters: logits through an adapter equal the model whose weights
were merged (W + alpha / r * B A, computed here in numpy on the Hugging Face
checkpoint, then converted), for PEFT and GGUF forms of the same adapter; a
batch mixing two adapters and none equals each alone; mismatched adapters
are clear errors."""

import json
import os
import shutil

import gguf
import numpy as np
import pytest
from test_convert import _bpe_dir, _llama_dir, _save, sp_model  # noqa: F401 (fixture)

import llmrt
from llmrt.convert import convert
from llmrt.lora import AdapterError

safetensors_numpy = pytest.importorskip("safetensors.numpy")

MODULES = {"q_proj": "self_attn", "k_proj": "self_attn", "v_proj": "self_attn",
           "o_proj": "self_attn", "gate_proj": "mlp", "up_proj": "mlp", "down_proj": "mlp"}


def _adapter(w, c, rng, r=4, modules=tuple(MODULES)):
    """Random A (r, in), B (out, r) for each layer's modules."""
    ad = {}
    for i in range(c["num_hidden_layers"]):
        for mod in modules:
            out, inp = w[f"model.layers.{i}.{MODULES[mod]}.{mod}.weight"].shape
            ad[(i, mod)] = (rng.standard_normal((r, inp)).astype(np.float32) / np.sqrt(inp),
                            rng.standard_normal((out, r)).astype(np.float32) * 0.3)
    return ad


def _write_peft(d, ad, r, alpha):
    os.makedirs(d, exist_ok=True)
    with open(os.path.join(d, "adapter_config.json"), "w") as f:
        json.dump({"r": r, "lora_alpha": alpha, "peft_type": "LORA",
                   "target_modules": sorted({m for _, m in ad})}, f)
    t = {}
    for (i, mod), (a, b) in ad.items():
        p = f"base_model.model.model.layers.{i}.{MODULES[mod]}.{mod}"
        t[p + ".lora_A.weight"], t[p + ".lora_B.weight"] = a, b
    safetensors_numpy.save_file(t, os.path.join(d, "adapter_model.safetensors"))


def _merged(d_src, d_dst, c, w, ad, s):
    """The checkpoint with every adapted weight merged: W + s B A."""
    m = dict(w)
    for (i, mod), (a, b) in ad.items():
        k = f"model.layers.{i}.{MODULES[mod]}.{mod}.weight"
        m[k] = (m[k].astype(np.float64) + s * b.astype(np.float64) @ a).astype(np.float32)
    shutil.copytree(d_src, d_dst)
    for f in os.listdir(d_dst):
        if f.endswith(".safetensors"):
            os.remove(os.path.join(d_dst, f))
    _save(d_dst, c, m, shards=1)


@pytest.fixture(params=["llama", "qwen2"])
def base(request, tmp_path, sp_model):  # noqa: F811
    if request.param == "llama":  # GGUF llama: q / k rows permuted for RoPE
        d, c, w = _llama_dir(tmp_path, sp_model)
    else:
        _, c, w = _bpe_dir(tmp_path / "hf", arch="Qwen2ForCausalLM", qwen_bias=True)
        d = str(tmp_path / "hf")
    out = str(tmp_path / "base.gguf")
    convert(d, out, "f32", progress=False)
    return d, c, w, out


def test_adapter_equals_merged_weights(tmp_path, base):
    d, c, w, path = base
    r, alpha = 4, 8.0
    ad = _adapter(w, c, np.random.default_rng(3), r)
    _write_peft(str(tmp_path / "peft"), ad, r, alpha)
    _merged(d, str(tmp_path / "merged"), c, w, ad, alpha / r)
    convert(str(tmp_path / "merged"), str(tmp_path / "merged.gguf"), "f32", progress=False)
    kw = dict(threads=2, activations="f32", kv_cache_dtype="f32")
    m = llmrt.Model(path, lora=[str(tmp_path / "peft")], **kw)
    merged = llmrt.Model(str(tmp_path / "merged.gguf"), **kw)
    ids = list(range(5, 45))
    ref = merged.logits(ids)
    # stored as float32: the merged model's logits within float32 sums' rounding
    f32 = m.load_lora(str(tmp_path / "peft"), dtype="f32")
    got = m.logits(ids, lora=f32)
    assert np.abs(got - ref).max() <= 1e-4 * np.abs(ref).max()
    # stored as float16 (the default): A and B rounded to 11 significant bits,
    # a few 1e-4 of the adapter's update; this random adapter's update is a
    # large part of the logits (a trained one's is small): 1.3e-3 and 1.9e-3
    # measured for the two bases
    err16 = np.abs(m.logits(ids, lora=1) - ref).max() / np.abs(ref).max()
    assert err16 <= 4e-3, err16
    base_logits = m.logits(ids)  # without the adapter: the base model, far from merged
    assert np.abs(base_logits - ref).max() > 1e-2 * np.abs(ref).max()
    # scale: half the adapter is half the update
    half = m.load_lora(str(tmp_path / "peft"), scale=0.5, dtype="f32")
    _merged(d, str(tmp_path / "merged_half"), c, w, ad, 0.5 * alpha / r)
    convert(str(tmp_path / "merged_half"), str(tmp_path / "mh.gguf"), "f32", progress=False)
    ref_half = llmrt.Model(str(tmp_path / "mh.gguf"), **kw).logits(ids)
    assert np.abs(m.logits(ids, lora=half) - ref_half).max() <= 1e-4 * np.abs(ref_half).max()


def test_batch_mixing_adapters_and_none_equals_each_alone(tmp_path, base):
    _, c, w, path = base
    rng = np.random.default_rng(5)
    for name, r in (("one", 4), ("two", 8)):
        _write_peft(str(tmp_path / name), _adapter(w, c, rng, r, ("q_proj", "v_proj", "down_proj")),
                    r, 16.0)
    m = llmrt.Model(path, threads=2, kv_cache_tokens=4096, batch_invariant=True)
    one, two = m.load_lora(str(tmp_path / "one")), m.load_lora(str(tmp_path / "two"))
    prompts = [list(range(3, 30)), list(range(40, 52)), list(range(3, 30)), list(range(60, 99))]
    params = [llmrt.SamplingParams(max_new_tokens=12, ignore_eos=True, lora=x)
              for x in (one, None, two, one)]
    alone = [m.generate(p, q).token_ids for p, q in zip(prompts, params)]
    batch = [r.token_ids for r in m.generate(prompts, params)]
    assert batch == alone
    # the same prompt through different adapters: different continuations,
    # and the prefix cache never hands one adapter's blocks to another
    assert alone[0] != alone[2]
    again = m.generate(prompts[0], params[2]).token_ids
    assert again == alone[2]
    assert m.cache_stats()["blocks_in_use"] == 0


def test_gguf_adapter_equals_peft(tmp_path, base):
    d, c, w, path = base
    r, alpha = 4, 8.0
    ad = _adapter(w, c, np.random.default_rng(9), r, ("q_proj", "k_proj", "up_proj", "o_proj"))
    _write_peft(str(tmp_path / "peft"), ad, r, alpha)
    m = llmrt.Model(path, threads=2, activations="f32", kv_cache_dtype="f32")
    # llama.cpp's GGUF adapter: the model's tensor names, q / k B rows in the
    # file's (permuted) order, alpha in the metadata
    from llmrt.arrays import permute_qk
    names = {"q_proj": "attn_q", "k_proj": "attn_k", "up_proj": "ffn_up", "o_proj": "attn_output"}
    gw = gguf.GGUFWriter(str(tmp_path / "lora.gguf"), m.arch)
    gw.add_string("general.type", "adapter")
    gw.add_string("adapter.type", "lora")
    gw.add_float32("adapter.lora.alpha", alpha)
    for (i, mod), (a, b) in ad.items():
        if m.arch == "llama" and mod in ("q_proj", "k_proj"):
            b = permute_qk(b, c["num_attention_heads"] if mod == "q_proj" else c["num_key_value_heads"])
        gw.add_tensor(f"blk.{i}.{names[mod]}.weight.lora_a", np.ascontiguousarray(a, np.float32))
        gw.add_tensor(f"blk.{i}.{names[mod]}.weight.lora_b", np.ascontiguousarray(b, np.float32))
    gw.write_header_to_file()
    gw.write_kv_data_to_file()
    gw.write_tensors_to_file()
    gw.close()
    p_id = m.load_lora(str(tmp_path / "peft"))
    g_id = m.load_lora(str(tmp_path / "lora.gguf"))
    ids = list(range(7, 40))
    a, b = m.logits(ids, lora=p_id), m.logits(ids, lora=g_id)
    assert np.abs(a - b).max() <= 1e-5 * np.abs(a).max()


def test_adapter_dtype_is_checked(tmp_path, base):
    _, c, w, path = base
    ad = _adapter(w, c, np.random.default_rng(3), 4)
    _write_peft(str(tmp_path / "peft"), ad, 4, 8.0)
    m = llmrt.Model(path, threads=2)
    with pytest.raises(AdapterError, match="dtype"):
        m.load_lora(str(tmp_path / "peft"), dtype="bf16")
    with pytest.raises(AdapterError, match="float16's range"):
        m.load_lora(str(tmp_path / "peft"), scale=1e12)
    assert m.load_lora(str(tmp_path / "peft"), scale=1e12, dtype="f32") == 1
    # a small scale stays out of float16's subnormals (the factor is split
    # between A and B): the update within 1% of float32's
    ids = list(range(5, 30))
    base_l = m.logits(ids)
    small16 = m.load_lora(str(tmp_path / "peft"), scale=0.005)
    small32 = m.load_lora(str(tmp_path / "peft"), scale=0.005, dtype="f32")
    d16, d32 = m.logits(ids, lora=small16) - base_l, m.logits(ids, lora=small32) - base_l
    assert np.abs(d16 - d32).max() <= 1e-2 * np.abs(d32).max()
    bad = {k: (a.copy(), b) for k, (a, b) in ad.items()}
    next(iter(bad.values()))[0][0, 0] = np.nan
    _write_peft(str(tmp_path / "nan"), bad, 4, 8.0)
    with pytest.raises(AdapterError, match="NaN"):
        m.load_lora(str(tmp_path / "nan"))


def test_mismatched_adapters_are_errors(tmp_path, base):
    _, c, w, path = base
    m = llmrt.Model(path, threads=1)
    rng = np.random.default_rng(1)
    ad = _adapter(w, c, rng, 4, ("q_proj",))
    (i, mod), (a, b) = next(iter(ad.items()))
    _write_peft(str(tmp_path / "wide"), {(i, mod): (np.zeros((4, a.shape[1] + 32), np.float32), b)},
                4, 8)
    with pytest.raises(AdapterError, match="do not fit"):
        m.load_lora(str(tmp_path / "wide"))
    _write_peft(str(tmp_path / "far"), {(7, mod): (a, b)}, 4, 8)
    with pytest.raises(AdapterError, match="outside"):
        m.load_lora(str(tmp_path / "far"))
    os.makedirs(tmp_path / "unknown")
    with open(tmp_path / "unknown" / "adapter_config.json", "w") as f:
        json.dump({"r": 4, "lora_alpha": 8}, f)
    safetensors_numpy.save_file(
        {"base_model.model.model.layers.0.mlp.fc1.lora_A.weight": a},
        str(tmp_path / "unknown" / "adapter_model.safetensors"))
    with pytest.raises(AdapterError, match="unknown target module 'fc1'"):
        m.load_lora(str(tmp_path / "unknown"))
    with pytest.raises(ValueError, match="lora: no adapter 3"):
        m.generate([1, 2, 3], lora=3)
    with pytest.raises(FileNotFoundError):
        m.load_lora(str(tmp_path / "nope"))
