"""gpt-oss (GptOssForCausalLM): attention sinks, sliding-window layers
alternating with full ones, YaRN RoPE, biases on q/k/v/o, the router and the
experts, the clamped SwiGLU over interleaved gate / up rows, top-4 routing
with a softmax over the chosen experts. Tiny random Hugging Face checkpoints
written here (float, and the released MXFP4 block form) convert and match a
numpy forward written from Hugging Face's conventions and transformers; each
quirk, switched off in the reference, moves the logits past the tolerance."""

import json

import gguf
import numpy as np
import pytest
from test_convert import _save
from testutil import (
    check_batched_equals_alone,
    check_speculative_and_structured,
    fuzz_gguf,
    rewrite_gguf,
)

import llmrt
from llmrt import GGUFError
from llmrt.convert import convert
from llmrt.convert_plan import mxfp4_dequantize

TEXT = "Numbers like 12345 jump over symbols: #, $! The lazy dog sleeps. " * 3
SPECIALS = ["<|endoftext|>", "<|start|>", "<|message|>", "<|end|>", "<|return|>"]


def _tokenizer(d):
    tokenizers = pytest.importorskip("tokenizers")
    from tokenizers import decoders, models, pre_tokenizers, trainers
    tk = tokenizers.Tokenizer(models.BPE())
    tk.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tk.decoder = decoders.ByteLevel()
    tk.train_from_iterator([TEXT], trainers.BpeTrainer(
        vocab_size=400, special_tokens=SPECIALS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    d.mkdir(parents=True)
    tk.save(str(d / "tokenizer.json"))
    with open(d / "tokenizer_config.json", "w") as f:
        json.dump({"eos_token": "<|return|>"}, f)
    return tk


def _config(V, **kw):
    c = dict(architectures=["GptOssForCausalLM"], model_type="gpt_oss", hidden_size=64,
             num_hidden_layers=4, num_attention_heads=4, num_key_value_heads=2, head_dim=16,
             intermediate_size=32, num_local_experts=8, num_experts_per_tok=4, vocab_size=V,
             rms_norm_eps=1e-5, sliding_window=8, max_position_embeddings=131072,
             layer_types=["sliding_attention", "full_attention"] * 2, attention_bias=True,
             swiglu_limit=7.0, tie_word_embeddings=False,
             rope_parameters=dict(rope_type="yarn", rope_theta=150000.0, factor=32.0,
                                  beta_fast=32.0, beta_slow=1.0, truncate=False,
                                  original_max_position_embeddings=4096))
    c.update(kw)
    return c


def _weights(c, rng):
    D, V, E, F = c["hidden_size"], c["vocab_size"], c["num_local_experts"], c["intermediate_size"]
    H, KV, hd = c["num_attention_heads"], c["num_key_value_heads"], c["head_dim"]
    n = rng.standard_normal
    w = {"model.embed_tokens.weight": n((V, D)), "model.norm.weight": 1 + 0.1 * n(D),
         "lm_head.weight": n((V, D)) / np.sqrt(D)}
    for i in range(c["num_hidden_layers"]):
        p = f"model.layers.{i}."
        w[p + "input_layernorm.weight"] = 1 + 0.1 * n(D)
        w[p + "post_attention_layernorm.weight"] = 1 + 0.1 * n(D)
        for name, rows, cols in (("q", H * hd, D), ("k", KV * hd, D), ("v", KV * hd, D),
                                 ("o", D, H * hd)):
            w[p + f"self_attn.{name}_proj.weight"] = n((rows, cols)) / np.sqrt(cols)
            w[p + f"self_attn.{name}_proj.bias"] = 0.3 * n(rows)
        w[p + "self_attn.sinks"] = 1.0 + n(H)  # strong enough to take a share of the weight
        w[p + "mlp.router.weight"] = n((E, D)) / np.sqrt(D)
        w[p + "mlp.router.bias"] = 0.5 * n(E)
        # gate / up values of a few units, so that the clamp at 7 bites now and then
        w[p + "mlp.experts.gate_up_proj"] = 4 * n((E, D, 2 * F)) / np.sqrt(D)
        w[p + "mlp.experts.gate_up_proj_bias"] = 0.5 * n((E, 2 * F))
        w[p + "mlp.experts.down_proj"] = n((E, F, D)) / np.sqrt(F)
        w[p + "mlp.experts.down_proj_bias"] = 0.3 * n((E, D))
    return {k: v.astype(np.float32) for k, v in w.items()}


def checkpoint(d, seed=1, **kw):
    tk = _tokenizer(d)
    c = _config(tk.get_vocab_size(), **kw)
    w = _weights(c, np.random.default_rng(seed))
    _save(str(d), c, w, shards=1)
    return tk, c, w


# ---- the numpy reference ---------------------------------------------------------------

def _rmsnorm(x, w, eps):
    return x / np.sqrt((x * x).mean(-1, keepdims=True) + eps) * w


def _yarn(c, hd, yarn=True):
    """inv_freq and the cos / sin scale (Hugging Face's _compute_yarn_parameters)."""
    rp = c["rope_parameters"]
    base = rp["rope_theta"]
    inv = 1.0 / base ** (np.arange(0, hd, 2) / hd)
    if not yarn:
        return inv, 1.0
    f, orig = rp["factor"], rp["original_max_position_embeddings"]

    def dim(rot):
        return hd * np.log(orig / (rot * 2 * np.pi)) / (2 * np.log(base))
    lo, hi = dim(rp["beta_fast"]), dim(rp["beta_slow"])
    if rp.get("truncate", True):
        lo, hi = np.floor(lo), np.ceil(hi)
    lo, hi = max(lo, 0), min(hi, hd - 1)
    ramp = np.clip((np.arange(hd // 2) - lo) / (hi - lo), 0, 1)
    extrap = 1 - ramp
    return inv / f * (1 - extrap) + inv * extrap, 0.1 * np.log(f) + 1


def reference(c, w, ids, sinks=True, window=True, yarn=True, clamp=True, interleaved=True,
              top_softmax=True):
    """float64 forward with Hugging Face's conventions; each flag switches a
    quirk off."""
    H, KV, hd = c["num_attention_heads"], c["num_key_value_heads"], c["head_dim"]
    eps, n, K, F = c["rms_norm_eps"], len(ids), c["num_experts_per_tok"], c["intermediate_size"]
    W = {k: v.astype(np.float64) for k, v in w.items()}
    inv, mscale = _yarn(c, hd, yarn)
    ang = np.arange(n)[:, None] * inv[None, :]
    cos = np.concatenate([np.cos(ang)] * 2, -1) * mscale
    sin = np.concatenate([np.sin(ang)] * 2, -1) * mscale

    def rope(x):
        rot = np.concatenate([-x[..., hd // 2:], x[..., :hd // 2]], -1)
        return x * cos[:, None] + rot * sin[:, None]

    i_, j_ = np.arange(n)[:, None], np.arange(n)[None, :]
    x = W["model.embed_tokens.weight"][ids]
    for li in range(c["num_hidden_layers"]):
        p = f"model.layers.{li}."
        h = _rmsnorm(x, W[p + "input_layernorm.weight"], eps)
        proj = {t: h @ W[p + f"self_attn.{t}_proj.weight"].T + W[p + f"self_attn.{t}_proj.bias"]
                for t in "qkv"}
        q, k = rope(proj["q"].reshape(n, H, hd)), rope(proj["k"].reshape(n, KV, hd))
        v = proj["v"].reshape(n, KV, hd)
        allowed = j_ <= i_
        if window and c["layer_types"][li] == "sliding_attention":
            allowed &= i_ - j_ < c["sliding_window"]
        out = np.empty((n, H, hd))
        for hh in range(H):
            s = np.where(allowed, q[:, hh] @ k[:, hh // (H // KV)].T / np.sqrt(hd), -np.inf)
            sk = W[p + "self_attn.sinks"][hh] if sinks else -np.inf
            m = np.maximum(s.max(-1, keepdims=True), sk)
            e = np.exp(s - m)
            out[:, hh] = e / (e.sum(-1, keepdims=True) + np.exp(sk - m)) @ v[:, hh // (H // KV)]
        x = x + out.reshape(n, -1) @ W[p + "self_attn.o_proj.weight"].T + \
            W[p + "self_attn.o_proj.bias"]
        h = _rmsnorm(x, W[p + "post_attention_layernorm.weight"], eps)
        x = x + _experts(W, p + "mlp.", h, K, F, c, clamp, interleaved, top_softmax)
    x = _rmsnorm(x, W["model.norm.weight"], eps)
    return x @ W["lm_head.weight"].T


def _experts(W, m, h, K, F, c, clamp, interleaved, top_softmax):
    logits = h @ W[m + "router.weight"].T + W[m + "router.bias"]
    gu, gub = W[m + "experts.gate_up_proj"], W[m + "experts.gate_up_proj_bias"]
    limit, alpha = c["swiglu_limit"], 1.702
    y = np.zeros_like(h)
    for t in range(len(h)):
        top = np.argsort(-logits[t], kind="stable")[:K]
        if top_softmax:
            p = np.exp(logits[t, top] - logits[t, top].max())
            p /= p.sum()
        else:  # the softmax over every expert, not renormalised
            a = np.exp(logits[t] - logits[t].max())
            p = (a / a.sum())[top]
        for e, pe in zip(top, p):
            z = h[t] @ gu[e] + gub[e]
            g, u = (z[0::2], z[1::2]) if interleaved else (z[:F], z[F:])
            if clamp:
                g, u = np.minimum(g, limit), np.clip(u, -limit, limit)
            a = g / (1 + np.exp(-alpha * g)) * (u + 1)
            y[t] += pe * (a @ W[m + "experts.down_proj"][e] + W[m + "experts.down_proj_bias"][e])
    return y


def _close(got, ref, tol=1e-4):
    return np.abs(got - ref).max() <= tol * np.abs(ref).max()


@pytest.fixture(scope="module")
def oss(tmp_path_factory):
    root = tmp_path_factory.mktemp("gpt-oss")
    tk, c, w = checkpoint(root / "hf")
    out = str(root / "m.gguf")
    convert(str(root / "hf"), out, "f32", progress=False)
    m = llmrt.Model(out, threads=2, activations="f32", kv_cache_dtype="f32")
    return dict(tk=tk, c=c, w=w, dir=str(root / "hf"), path=out, model=m, ids=tk.encode(TEXT).ids)


def test_file_keys_and_layout(oss):
    c = oss["c"]
    r = gguf.GGUFReader(oss["path"])
    f = {k: r.fields[k].contents() for k in r.fields if k.startswith("gpt-oss.")}
    assert r.fields["general.architecture"].contents() == "gpt-oss"
    assert f["gpt-oss.expert_count"] == 8 and f["gpt-oss.expert_used_count"] == 4
    assert f["gpt-oss.attention.sliding_window"] == 8
    assert r.fields["gpt-oss.rope.scaling.type"].contents() == "yarn"
    assert f["gpt-oss.rope.scaling.factor"] == 32.0
    assert f["gpt-oss.rope.scaling.original_context_length"] == 4096
    t = {t.name: (list(t.shape), t.tensor_type.name) for t in r.tensors}
    E, F, D, H = 8, c["intermediate_size"], c["hidden_size"], c["num_attention_heads"]
    assert t["blk.0.attn_sinks.weight"] == ([H], "F32")
    assert t["blk.0.attn_output.bias"] == ([D], "F32")
    assert t["blk.0.post_attention_norm.weight"][0] == [D]  # the FFN's norm, llama.cpp's name
    assert "blk.0.ffn_norm.weight" not in t
    assert t["blk.1.ffn_gate_exps.weight"][0] == [D, F, E]
    assert t["blk.1.ffn_down_exps.weight"][0] == [F, D, E]
    assert t["blk.1.ffn_gate_exps.bias"] == ([F, E], "F32")
    assert t["blk.1.ffn_down_exps.bias"] == ([D, E], "F32")
    assert t["blk.0.ffn_gate_inp.bias"] == ([E], "F32")
    # the converted experts are the interleaved rows, de-interleaved and transposed
    g = np.asarray(next(x for x in r.tensors if x.name == "blk.2.ffn_up_exps.weight").data)
    assert np.array_equal(g, oss["w"]["model.layers.2.mlp.experts.gate_up_proj"][:, :, 1::2]
                          .transpose(0, 2, 1))


def test_logits_match_the_reference_and_each_quirk_matters(oss):
    c, w, ids, m = oss["c"], oss["w"], oss["ids"], oss["model"]
    assert len(ids) > 3 * c["sliding_window"]
    ref = reference(c, w, ids)
    got = m.logits(ids)
    assert _close(got, ref)
    far = 1e-3 * np.abs(ref).max()  # ten times the tolerance
    for quirk in ("sinks", "window", "yarn", "clamp", "interleaved", "top_softmax"):
        assert np.abs(got - reference(c, w, ids, **{quirk: False})).max() > far, quirk
    for bias in ("self_attn.o_proj.bias", "mlp.router.bias", "mlp.experts.down_proj_bias"):
        w0 = dict(w)
        for i in range(c["num_hidden_layers"]):
            w0[f"model.layers.{i}.{bias}"] = 0 * w0[f"model.layers.{i}.{bias}"]
        assert np.abs(got - reference(c, w0, ids)).max() > far, bias


def test_matches_transformers(oss, tmp_path):
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    if not hasattr(transformers, "GptOssForCausalLM"):
        pytest.skip("transformers without gpt-oss")
    from safetensors.numpy import save_file
    d = tmp_path / "hf"  # the checkpoint as one model.safetensors, the form from_pretrained reads
    d.mkdir()
    save_file(oss["w"], str(d / "model.safetensors"))
    (d / "config.json").write_text(json.dumps(oss["c"]))
    hf = transformers.GptOssForCausalLM.from_pretrained(str(d), dtype=torch.float32).eval()
    with torch.no_grad():
        t = hf(torch.tensor([oss["ids"]])).logits[0].double().numpy()
    assert _close(oss["model"].logits(oss["ids"]), t)


def test_mxfp4_checkpoint_converts_as_its_values(tmp_path, oss):
    # the released checkpoints hold the experts as MXFP4 blocks (two 4-bit
    # codes a byte, the low nibble first) and power-of-two scales
    c, w = oss["c"], dict(oss["w"])
    rng = np.random.default_rng(7)
    E, F, D = c["num_local_experts"], c["intermediate_size"], c["hidden_size"]
    for i in range(c["num_hidden_layers"]):
        m = f"model.layers.{i}.mlp.experts."
        for name, rows, cols in (("gate_up_proj", 2 * F, D), ("down_proj", D, F)):
            blocks = rng.integers(0, 256, (E, rows, cols // 32, 16), dtype=np.uint8)
            scales = rng.integers(122, 126, (E, rows, cols // 32), dtype=np.uint8)
            del w[m + name]
            w[m + name + "_blocks"], w[m + name + "_scales"] = blocks, scales
    d = tmp_path / "mx"
    d.mkdir()
    _save(str(d), c, w, shards=2)
    for f in ("tokenizer.json", "tokenizer_config.json"):
        (d / f).write_bytes(open(f"{oss['dir']}/{f}", "rb").read())
    # the reference sees the dequantized weights in transformers' layout
    wf = {k: v for k, v in w.items() if not k.endswith(("_blocks", "_scales"))}
    for i in range(c["num_hidden_layers"]):
        m = f"model.layers.{i}.mlp.experts."
        for name in ("gate_up_proj", "down_proj"):
            wf[m + name] = mxfp4_dequantize(w[m + name + "_blocks"],
                                            w[m + name + "_scales"]).transpose(0, 2, 1)
    out = str(tmp_path / "mx.gguf")
    convert(str(d), out, "f32", progress=False)
    ids = oss["ids"][:40]
    m = llmrt.Model(out, threads=2, activations="f32", kv_cache_dtype="f32")
    assert _close(m.logits(ids), reference(c, wf, ids))
    # to MXFP4 the experts go without loss: the same values, re-blocked
    out4 = str(tmp_path / "mx4.gguf")
    info = convert(str(d), out4, "mxfp4", progress=False)
    assert info["types"]["blk.0.ffn_gate_exps.weight"] == "mxfp4"
    assert info["types"]["blk.0.ffn_gate_exps.bias"] == "f32"
    f32 = {t.name: np.asarray(t.data) for t in gguf.GGUFReader(out).tensors}
    for t in gguf.GGUFReader(out4).tensors:
        if t.name.endswith("_exps.weight"):
            got = llmrt._core.dequantize(39, np.asarray(t.data).reshape(-1), f32[t.name].size // D
                                         if "down" not in t.name else f32[t.name].size // F,
                                         D if "down" not in t.name else F)
            assert np.array_equal(got.reshape(f32[t.name].shape), f32[t.name]), t.name


def test_batched_equals_alone_and_prompt_chunks(oss):
    m, ids = oss["model"], oss["ids"]
    check_batched_equals_alone(m, ids, 40)
    # decoding one token at a time, far past the window (8): each greedy
    # token is the argmax of the logits one pass over the same tokens gives
    # (decode's split-KV merge with the sinks against the prompt path's)
    gen = m.generate(ids[:5], max_new_tokens=30, ignore_eos=True).token_ids
    seq = list(ids[:5]) + gen
    assert m.logits(seq[:-1])[4:].argmax(-1).tolist() == gen


def test_speculative_and_structured_output(oss):
    check_speculative_and_structured(oss["model"], oss["ids"], 12)


def weights_from_gguf(path, c):
    """A GGUF file's tensors, dequantized, back in the checkpoint's names and
    layout: the model that file stores."""
    D, F = c["hidden_size"], c["intermediate_size"]
    t = {}
    for x in gguf.GGUFReader(path).tensors:
        shape = [int(v) for v in reversed(x.shape.tolist())]
        cols = shape[-1]
        rows = int(np.prod(shape[:-1]))
        raw = np.asarray(x.data)
        if x.tensor_type.name in ("F32", "F16"):
            v = raw.astype(np.float32)
        else:
            v = llmrt._core.dequantize(int(x.tensor_type), raw.reshape(-1).view(np.uint8), rows, cols)
        t[x.name] = np.asarray(v, np.float32).reshape(shape)
    w = {"model.embed_tokens.weight": t["token_embd.weight"],
         "model.norm.weight": t["output_norm.weight"], "lm_head.weight": t["output.weight"]}
    for i in range(c["num_hidden_layers"]):
        p, b = f"model.layers.{i}.", f"blk.{i}."
        w[p + "input_layernorm.weight"] = t[b + "attn_norm.weight"]
        w[p + "post_attention_layernorm.weight"] = t[b + "post_attention_norm.weight"]
        for n, g in (("q", "attn_q"), ("k", "attn_k"), ("v", "attn_v"), ("o", "attn_output")):
            w[p + f"self_attn.{n}_proj.weight"] = t[b + g + ".weight"]
            w[p + f"self_attn.{n}_proj.bias"] = t[b + g + ".bias"]
        w[p + "self_attn.sinks"] = t[b + "attn_sinks.weight"]
        w[p + "mlp.router.weight"] = t[b + "ffn_gate_inp.weight"]
        w[p + "mlp.router.bias"] = t[b + "ffn_gate_inp.bias"]
        E = t[b + "ffn_gate_exps.weight"].shape[0]
        gu, gub = np.empty((E, D, 2 * F), np.float32), np.empty((E, 2 * F), np.float32)
        gu[:, :, 0::2] = t[b + "ffn_gate_exps.weight"].transpose(0, 2, 1)
        gu[:, :, 1::2] = t[b + "ffn_up_exps.weight"].transpose(0, 2, 1)
        gub[:, 0::2], gub[:, 1::2] = t[b + "ffn_gate_exps.bias"], t[b + "ffn_up_exps.bias"]
        w[p + "mlp.experts.gate_up_proj"], w[p + "mlp.experts.gate_up_proj_bias"] = gu, gub
        w[p + "mlp.experts.down_proj"] = t[b + "ffn_down_exps.weight"].transpose(0, 2, 1)
        w[p + "mlp.experts.down_proj_bias"] = t[b + "ffn_down_exps.bias"]
    return w


@pytest.mark.parametrize("wtype, bound", [("q8_0", 0.008), ("q4_0", 0.11), ("mxfp4", 0.15)])
def test_quantized_conversions(oss, tmp_path, wtype, bound):
    # This tiny random model is chaotic (a weight moved by 1e-3 flips some
    # tokens' choice of experts), so its logits are no measure of a
    # conversion: the file must store each weight within the type's rounding
    # (relative RMS error below `bound`; measured on these Gaussian weights:
    # 0.0054, 0.086, 0.115) and llmrt must run exactly the
    # model it stores (float activations: within 1e-4 of the numpy forward of
    # the file's own dequantized weights).
    out = str(tmp_path / f"{wtype}.gguf")
    info = convert(oss["dir"], out, wtype, progress=False)
    assert all(t == "f32" for n, t in info["types"].items()
               if "gate_inp" in n or n.endswith((".bias", "attn_sinks.weight")))
    assert info["types"]["blk.0.ffn_up_exps.weight"] == wtype
    c, w = oss["c"], oss["w"]
    stored = weights_from_gguf(out, c)
    for name in ("model.layers.1.mlp.experts.gate_up_proj", "model.layers.1.mlp.experts.down_proj",
                 "model.layers.1.self_attn.q_proj.weight"):
        rel = np.sqrt(((stored[name] - w[name]) ** 2).mean() / (w[name] ** 2).mean())
        assert 0 < rel <= bound, (name, rel)
    ids = oss["ids"]
    m = llmrt.Model(out, threads=2, activations="f32", kv_cache_dtype="f32")
    assert _close(m.logits(ids), reference(c, stored, ids))


def test_mxfp4_files_requantize(oss, tmp_path):
    # `llmrt quantize` reads gpt-oss's MXFP4 experts: to mxfp4 again without
    # loss, to q8_0 within its rounding
    from llmrt.quantization import quantize_file
    src = str(tmp_path / "mx.gguf")
    convert(oss["dir"], src, "mxfp4", progress=False)
    c = oss["c"]
    before = weights_from_gguf(src, c)
    same = str(tmp_path / "again.gguf")
    quantize_file(src, same, "mxfp4", progress=False)
    again = weights_from_gguf(same, c)
    name = "model.layers.2.mlp.experts.gate_up_proj"
    assert np.array_equal(again[name], before[name])
    q8 = str(tmp_path / "q8.gguf")
    types = quantize_file(src, q8, "q8_0", progress=False)
    assert types["blk.2.ffn_gate_exps.weight"] == "q8_0"
    w8 = weights_from_gguf(q8, c)
    rel = np.sqrt(((w8[name] - before[name]) ** 2).mean() / (before[name] ** 2).mean())
    assert 0 < rel < 0.01
    m = llmrt.Model(q8, threads=2, activations="f32", kv_cache_dtype="f32")
    assert _close(m.logits(oss["ids"][:30]), reference(c, w8, oss["ids"][:30]))


def test_thread_counts_give_identical_results(oss, tmp_path):
    out = str(tmp_path / "q8.gguf")
    convert(oss["dir"], out, "q8_0", progress=False)
    ids = oss["ids"][:50]
    one = llmrt.Model(out, threads=1).logits(ids)
    for threads in (2, 3):
        assert np.array_equal(one, llmrt.Model(out, threads=threads).logits(ids))


def test_bad_files_fail_clearly(oss, tmp_path):
    src = oss["path"]
    U32 = gguf.GGUFValueType.UINT32
    STR = gguf.GGUFValueType.STRING
    F32 = gguf.GGUFValueType.FLOAT32
    cases = [
        (None, ("blk.1.attn_sinks.weight",), "missing tensor 'blk.1.attn_sinks.weight'"),
        (None, ("blk.0.ffn_down_exps.bias",), "missing tensor 'blk.0.ffn_down_exps.bias'"),
        (None, ("blk.0.attn_output.bias",), "missing tensor 'blk.0.attn_output.bias'"),
        ({"gpt-oss.expert_used_count": (9, U32)}, (), "expert counts out of range"),
        ({"gpt-oss.rope.scaling.type": ("ntk-by-parts", STR)}, (), "not supported"),
        ({"gpt-oss.rope.freq_base": (1.0, F32)}, (), "above 1 for YaRN"),
        ({"gpt-oss.rope.scaling.factor": (-2.0, F32)}, (), "out of range"),
    ]
    for i, (keys, drop, msg) in enumerate(cases):
        p = rewrite_gguf(src, str(tmp_path / f"bad{i}.gguf"), keys, drop)
        with pytest.raises((GGUFError, llmrt.UnsupportedModelError), match=msg):
            llmrt.Model(p)


def test_unsupported_checkpoint_settings_are_refused(tmp_path):
    for i, kw in enumerate([dict(swiglu_limit=5.0),
                            dict(layer_types=["sliding_attention"] * 3 + ["full_attention"])]):
        d = tmp_path / f"c{i}"
        checkpoint(d, **kw)
        with pytest.raises(llmrt.UnsupportedModelError):
            convert(str(d), str(tmp_path / f"c{i}.gguf"), "f32", progress=False)


def test_fuzzed_files_never_crash(oss, tmp_path):
    out = str(tmp_path / "q8.gguf")
    convert(oss["dir"], out, "q8_0", progress=False)
    ok, err = fuzz_gguf(out, 11, 60, tmp_path / "fuzz.gguf")
    assert err > 0


def test_llama_cpp_reads_the_converted_file(oss, monkeypatch):
    # llama.cpp rounds YaRN's ramp ends to whole dimensions, which gpt-oss's
    # reference (and transformers, truncate=False) does not: with llmrt
    # rounding them too, the two read the file alike (float KV caches)
    llama_cpp = pytest.importorskip("llama_cpp")
    import dataclasses

    from llmrt import gguf_loader
    ids = oss["ids"][:40]
    lm = llama_cpp.Llama(oss["path"], n_ctx=64, logits_all=True, verbose=False, n_threads=2,
                         type_k=0, type_v=0, flash_attn=False)
    lm.eval(ids)
    theirs = np.asarray(lm.scores[:len(ids)], np.float64)
    monkeypatch.setitem(gguf_loader.FAMILIES, "gpt-oss", dataclasses.replace(
        gguf_loader.FAMILIES["gpt-oss"], yarn_truncate=True))
    ours = llmrt.Model(oss["path"], threads=2, activations="f32", kv_cache_dtype="f32")
    assert _close(ours.logits(ids), theirs, 1e-5)
