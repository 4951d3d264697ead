"""Gemma 2 and Gemma 3 (text): tiny random Hugging Face checkpoints with the
family's quirks switched on (soft-capping strong enough to bend the scores,
a sliding window much shorter than the prompts, a query scale that is not
1 / sqrt(head_dim), Gemma 3's two RoPE bases and q/k norms) convert, load,
and give the logits of an independent float64 numpy forward written here
from the Hugging Face conventions ((1 + w) norms, GELU-tanh, post-norms);
and those of transformers where it is installed. Greedy tokens follow the
reference; batched equals alone; prompts run past the window and across
prefill chunks."""
import json
import os

import gguf
import numpy as np
import pytest

import llmrt
from llmrt.convert import convert
from llmrt.gguf_loader import sliding_pattern

safetensors_numpy = pytest.importorskip("safetensors.numpy")
spm = pytest.importorskip("sentencepiece")

TEXT = ("The quick brown fox jumps over the lazy dog. A stitch in time saves nine. "
        "Numbers like 12345 and 678 appear here; so do symbols: #, $, %, &!\n") * 20


@pytest.fixture(scope="module")
def sp_model(tmp_path_factory):
    d = tmp_path_factory.mktemp("gemma_sp")
    (d / "corpus.txt").write_text(TEXT)
    # as Gemma's: byte fallback, no space added before the text, spaces kept
    spm.SentencePieceTrainer.train(input=str(d / "corpus.txt"), model_prefix=str(d / "tok"),
                                   vocab_size=400, model_type="bpe", byte_fallback=True,
                                   add_dummy_prefix=False, remove_extra_whitespaces=False,
                                   minloglevel=2)
    return str(d / "tok.model")


def _config(arch, V, **kw):
    c = dict(architectures=[arch], hidden_size=64, num_hidden_layers=3, num_attention_heads=4,
             num_key_value_heads=2, head_dim=16, intermediate_size=96, vocab_size=V,
             rms_norm_eps=1e-6, max_position_embeddings=512, query_pre_attn_scalar=24,
             hidden_activation="gelu_pytorch_tanh", sliding_window=12,
             tie_word_embeddings=True, pad_token_id=0, bos_token_id=1, eos_token_id=2)
    if arch == "Gemma2ForCausalLM":
        # scores of a few units: caps of 2 and 5 bend them (the published 50 / 30 barely would)
        c.update(rope_theta=10000.0, attn_logit_softcapping=2.0, final_logit_softcapping=5.0)
    else:  # the published config.json form: two bases, a period of sliding layers
        c.update(rope_theta=1000000.0, rope_local_base_freq=10000.0, sliding_window_pattern=3,
                 num_hidden_layers=4, attn_logit_softcapping=None, final_logit_softcapping=None)
    c.update(kw)
    return c


def _sliding(c):
    L = c["num_hidden_layers"]
    if c.get("layer_types"):
        return [t == "sliding_attention" for t in c["layer_types"]]
    period = c.get("sliding_window_pattern") or (
        2 if c["architectures"][0] == "Gemma2ForCausalLM" else 6)
    return [(i + 1) % period != 0 for i in range(L)]


def _weights(c, rng):
    D, F, V = c["hidden_size"], c["intermediate_size"], c["vocab_size"]
    H, KV, hd = c["num_attention_heads"], c["num_key_value_heads"], c["head_dim"]
    w = {"model.embed_tokens.weight": rng.standard_normal((V, D)) / np.sqrt(D),
         "model.norm.weight": 0.2 * rng.standard_normal(D)}
    for i in range(c["num_hidden_layers"]):
        p = f"model.layers.{i}."
        for n in ("input_layernorm", "post_attention_layernorm", "pre_feedforward_layernorm",
                  "post_feedforward_layernorm"):
            w[p + n + ".weight"] = 0.2 * rng.standard_normal(D)  # the norm is (1 + w)
        w[p + "self_attn.q_proj.weight"] = 1.5 * rng.standard_normal((H * hd, D)) / np.sqrt(D)
        w[p + "self_attn.k_proj.weight"] = 1.5 * rng.standard_normal((KV * hd, D)) / np.sqrt(D)
        w[p + "self_attn.v_proj.weight"] = rng.standard_normal((KV * hd, D)) / np.sqrt(D)
        w[p + "self_attn.o_proj.weight"] = rng.standard_normal((D, H * hd)) / np.sqrt(H * hd)
        if c["architectures"][0] == "Gemma3ForCausalLM":
            w[p + "self_attn.q_norm.weight"] = 0.3 * rng.standard_normal(hd)
            w[p + "self_attn.k_norm.weight"] = 0.3 * rng.standard_normal(hd)
        w[p + "mlp.gate_proj.weight"] = rng.standard_normal((F, D)) / np.sqrt(D)
        w[p + "mlp.up_proj.weight"] = rng.standard_normal((F, D)) / np.sqrt(D)
        w[p + "mlp.down_proj.weight"] = rng.standard_normal((D, F)) / np.sqrt(F)
    return {k: v.astype(np.float32) for k, v in w.items()}


def _norm(x, w, eps):  # Gemma's RMSNorm: x / rms(x) * (1 + w)
    return x / np.sqrt((x * x).mean(-1, keepdims=True) + eps) * (1.0 + w)


def reference(c, w, ids, softcap=True, window=True, two_bases=True):
    """float64 forward with Hugging Face's Gemma 2 / 3 conventions; the flags
    switch quirks off to show that the checks can fail."""
    D, H, KV, hd = (c["hidden_size"], c["num_attention_heads"], c["num_key_value_heads"],
                    c["head_dim"])
    eps, n = c["rms_norm_eps"], len(ids)
    W = {k: v.astype(np.float64) for k, v in w.items()}
    gemma3 = c["architectures"][0] == "Gemma3ForCausalLM"
    sliding = _sliding(c)

    def rope(x, theta):  # rotate-half RoPE on the whole head
        inv = 1.0 / theta ** (np.arange(0, hd, 2) / hd)
        ang = np.arange(n)[:, None] * inv[None, :]
        cos, sin = np.concatenate([np.cos(ang)] * 2, -1), np.concatenate([np.sin(ang)] * 2, -1)
        rot = np.concatenate([-x[..., hd // 2:], x[..., :hd // 2]], -1)
        return x * cos[:, None] + rot * sin[:, None]

    pos = np.arange(n)
    causal = np.where(pos[None, :] > pos[:, None], -np.inf, 0.0)
    local = causal.copy()
    local[pos[:, None] - pos[None, :] >= c["sliding_window"]] = -np.inf
    x = W["model.embed_tokens.weight"][ids] * np.sqrt(D)
    for i in range(c["num_hidden_layers"]):
        p = f"model.layers.{i}."
        h = _norm(x, W[p + "input_layernorm.weight"], eps)
        q = (h @ W[p + "self_attn.q_proj.weight"].T).reshape(n, H, hd)
        k = (h @ W[p + "self_attn.k_proj.weight"].T).reshape(n, KV, hd)
        v = (h @ W[p + "self_attn.v_proj.weight"].T).reshape(n, KV, hd)
        if gemma3:
            q = _norm(q, W[p + "self_attn.q_norm.weight"], eps)
            k = _norm(k, W[p + "self_attn.k_norm.weight"], eps)
        theta = c["rope_theta"]
        if gemma3 and sliding[i] and two_bases:
            theta = c["rope_local_base_freq"]
        q, k = rope(q, theta), rope(k, theta)
        mask = local if sliding[i] and window else causal
        out = np.empty((n, H, hd))
        for hh in range(H):
            s = q[:, hh] @ k[:, hh // (H // KV)].T * c["query_pre_attn_scalar"] ** -0.5
            cap = c.get("attn_logit_softcapping")
            if cap and softcap:
                s = cap * np.tanh(s / cap)
            s = s + mask
            s = np.exp(s - s.max(-1, keepdims=True))
            out[:, hh] = (s / s.sum(-1, keepdims=True)) @ v[:, hh // (H // KV)]
        o = out.reshape(n, -1) @ W[p + "self_attn.o_proj.weight"].T
        x = x + _norm(o, W[p + "post_attention_layernorm.weight"], eps)
        h = _norm(x, W[p + "pre_feedforward_layernorm.weight"], eps)
        g = h @ W[p + "mlp.gate_proj.weight"].T
        g = 0.5 * g * (1 + np.tanh(np.sqrt(2 / np.pi) * (g + 0.044715 * g ** 3)))
        y = (g * (h @ W[p + "mlp.up_proj.weight"].T)) @ W[p + "mlp.down_proj.weight"].T
        x = x + _norm(y, W[p + "post_feedforward_layernorm.weight"], eps)
    logits = _norm(x, W["model.norm.weight"], eps) @ W["model.embed_tokens.weight"].T
    cap = c.get("final_logit_softcapping")
    if cap and softcap:
        logits = cap * np.tanh(logits / cap)
    return logits


def _checkpoint(root, sp_model, arch, **kw):
    V = spm.SentencePieceProcessor(model_file=sp_model).get_piece_size()
    c = _config(arch, V, **kw)
    w = _weights(c, np.random.default_rng(7))
    d = root / arch
    d.mkdir()
    with open(d / "config.json", "w") as f:
        json.dump(c, f)
    safetensors_numpy.save_file(w, str(d / "model.safetensors"))
    with open(sp_model, "rb") as f, open(d / "tokenizer.model", "wb") as g:
        g.write(f.read())
    with open(d / "tokenizer_config.json", "w") as f:
        json.dump({"add_bos_token": True, "chat_template": "{{ messages[0]['content'] }}"}, f)
    return str(d), c, w


@pytest.fixture(scope="module", params=["Gemma2ForCausalLM", "Gemma3ForCausalLM"])
def gemma(request, tmp_path_factory, sp_model):
    root = tmp_path_factory.mktemp("gemma")
    d, c, w = _checkpoint(root, sp_model, request.param)
    out = str(root / "m.gguf")
    convert(d, out, "f32", progress=False)
    m = llmrt.Model(out, threads=2, activations="f32", kv_cache_dtype="f32")
    return dict(dir=d, config=c, weights=w, path=out, model=m, root=root)


def _close(got, ref, tol=1e-4):
    return np.abs(got - ref).max() <= tol * np.abs(ref).max()


def test_file_keys_and_layout(gemma):
    c = gemma["config"]
    r = gguf.GGUFReader(gemma["path"])
    a = r.fields["general.architecture"].contents()
    assert a == {"Gemma2ForCausalLM": "gemma2", "Gemma3ForCausalLM": "gemma3"}[
        c["architectures"][0]]
    f = {k: r.fields[k].contents() for k in r.fields if k.startswith(a + ".")}
    assert f[a + ".attention.sliding_window"] == 12
    assert abs(f[a + ".attention.scale"] - 24 ** -0.5) < 1e-7
    assert r.fields["tokenizer.ggml.add_space_prefix"].contents() is False
    names = {t.name for t in r.tensors}
    assert "output.weight" not in names  # tied
    assert {"blk.0.post_attention_norm.weight", "blk.0.post_ffw_norm.weight"} <= names
    # the file holds 1 + w, as llama.cpp's converter writes Gemma's norms
    t = {t.name: t for t in r.tensors}["blk.1.ffn_norm.weight"]
    assert np.allclose(t.data, 1 + gemma["weights"]["model.layers.1.pre_feedforward_layernorm.weight"])
    m = gemma["model"]
    assert m.arch == a
    assert m.config["swa_pattern"] == (2 if a == "gemma2" else 3)
    assert m.context_length == 512  # a sliding window does not cap the context


def test_logits_match_numpy_reference(gemma):
    m, c, w = gemma["model"], gemma["config"], gemma["weights"]
    text = "The lazy fox saves 678 stitches! " * 2
    ids = m.tokenize(text)
    sp = spm.SentencePieceProcessor(model_file=os.path.join(gemma["dir"], "tokenizer.model"))
    assert ids == [sp.bos_id()] + sp.encode(text)
    assert len(ids) > 2 * c["sliding_window"]  # the prompt runs well past the window
    ref = reference(c, w, ids)
    got = m.logits(ids)
    assert _close(got, ref)
    # each quirk matters at this tolerance: the checks can fail
    assert not _close(got, reference(c, w, ids, window=False), 1e-2)
    if c.get("attn_logit_softcapping"):
        assert not _close(got, reference(c, w, ids, softcap=False), 1e-2)
    else:
        assert not _close(got, reference(c, w, ids, two_bases=False), 1e-2)


def test_long_prompt_across_prefill_chunks(gemma):
    # 300 tokens: two prefill chunks (256 + 44), sliding layers far past their window
    m, c, w = gemma["model"], gemma["config"], gemma["weights"]
    ids = m.tokenize(TEXT)[:300]
    assert len(ids) == 300
    ref = reference(c, w, ids)
    assert _close(m.logits(ids), ref)


def test_greedy_batched_and_alone(gemma):
    m, c, w = gemma["model"], gemma["config"], gemma["weights"]
    ids = m.tokenize(TEXT[:200])[:40]
    alone = m.generate(ids, max_new_tokens=10, temperature=0, ignore_eos=True).token_ids
    # the reference's argmax, step by step
    seq = list(ids)
    for _ in range(10):
        seq.append(int(np.argmax(reference(c, w, seq)[-1])))
    assert alone == seq[len(ids):]
    both = m.generate([ids, ids[3:25]], max_new_tokens=10, temperature=0, ignore_eos=True)
    assert both[0].token_ids == alone
    assert both[1].token_ids == m.generate(ids[3:25], max_new_tokens=10, temperature=0,
                                           ignore_eos=True).token_ids


def test_quantized(gemma):
    out = str(gemma["root"] / "q8.gguf")
    convert(gemma["dir"], out, "q8_0", progress=False)
    q = llmrt.Model(out, threads=2)
    ids = q.tokenize(TEXT[:150])
    ref = reference(gemma["config"], gemma["weights"], ids)
    assert _close(q.logits(ids), ref, 0.1)


def test_matches_transformers(gemma):
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    c, w, m = gemma["config"], gemma["weights"], gemma["model"]
    cls = getattr(transformers, c["architectures"][0], None)
    if cls is None:
        pytest.skip("transformers without this architecture")
    kw = {k: v for k, v in c.items() if k != "architectures"}
    kw["layer_types"] = ["sliding_attention" if s else "full_attention" for s in _sliding(c)]
    if cls.__name__ == "Gemma3ForCausalLM":
        kw["rope_parameters"] = {
            "sliding_attention": {"rope_type": "default", "rope_theta": 10000.0},
            "full_attention": {"rope_type": "default", "rope_theta": 1000000.0}}
        conf = transformers.Gemma3TextConfig(**kw)
    else:
        conf = transformers.Gemma2Config(**kw)
    conf._attn_implementation = "eager"  # soft-capping needs the eager attention
    hf = cls(conf).eval()
    res = hf.load_state_dict({k: torch.from_numpy(v) for k, v in w.items()}, strict=False)
    assert all("lm_head" in k or "rotary" in k for k in res.missing_keys)
    ids = m.tokenize(TEXT[:150])
    with torch.no_grad():
        t = hf(torch.tensor([ids])).logits[0].double().numpy()
    got = m.logits(ids)
    assert _close(got, t)
    assert _close(reference(c, w, ids), t)


def test_new_config_form_converts_alike(tmp_path, sp_model):
    # transformers' newer config.json (layer_types, rope_parameters) gives the same file
    d, c, w = _checkpoint(tmp_path, sp_model, "Gemma3ForCausalLM")
    cfg = dict(c)
    for k in ("rope_theta", "rope_local_base_freq", "sliding_window_pattern"):
        cfg.pop(k)
    cfg["layer_types"] = ["sliding_attention" if s else "full_attention" for s in _sliding(c)]
    cfg["rope_parameters"] = {
        "sliding_attention": {"rope_type": "default", "rope_theta": 10000.0},
        "full_attention": {"rope_type": "default", "rope_theta": 1000000.0}}
    with open(os.path.join(d, "config.json"), "w") as f:
        json.dump(cfg, f)
    out = str(tmp_path / "n.gguf")
    convert(d, out, "f32", progress=False)
    m = llmrt.Model(out, threads=2, activations="f32", kv_cache_dtype="f32")
    ids = m.tokenize(TEXT[:120])
    assert _close(m.logits(ids), reference(c, w, ids))


def test_gemma2_without_a_window(tmp_path, sp_model):
    # sliding_window null: no sliding layer, said in the file (a gemma2 file
    # without the keys at all gets the published models' 4096)
    d, c, w = _checkpoint(tmp_path, sp_model, "Gemma2ForCausalLM", sliding_window=None)
    out = str(tmp_path / "nw.gguf")
    convert(d, out, "f32", progress=False)
    m = llmrt.Model(out, threads=2, activations="f32", kv_cache_dtype="f32")
    assert "sliding_window" not in m.cache_stats()
    ids = m.tokenize(TEXT[:150])
    assert _close(m.logits(ids), reference(dict(c, sliding_window=12), w, ids, window=False))


def test_sliding_pattern_forms():
    assert sliding_pattern(6, 12, "m", "gemma3") == 6
    assert sliding_pattern([True, False] * 3, 6, "m", "gemma2") == 2
    assert sliding_pattern([True] * 5 + [False], 6, "m", "gemma3") == 6
    assert sliding_pattern([True] * 4, 4, "m", "gemma3") == 0
    with pytest.raises(llmrt.UnsupportedModelError, match="irregular"):
        sliding_pattern([True, False, False, True], 4, "m", "gemma3")
    with pytest.raises(llmrt.GGUFError, match="sliding_window_pattern"):
        sliding_pattern("x", 4, "m", "gemma3")


def test_unsupported_activation_is_a_clear_error(tmp_path, sp_model):
    d, c, w = _checkpoint(tmp_path, sp_model, "Gemma2ForCausalLM", hidden_activation="relu")
    with pytest.raises(llmrt.UnsupportedModelError, match="hidden_activation"):
        convert(d, str(tmp_path / "x.gguf"), "f32", progress=False)


@pytest.mark.parametrize("arch", ["Gemma2ForCausalLM", "Gemma3ForCausalLM"])
def test_llama_cpp_reads_the_converted_file(tmp_path, sp_model, arch):
    # llama.cpp (where installed) loads the converted file and computes the
    # same logits (its f16 KV cache and products round at ~1e-3). It takes
    # the query scale from the model's size, not the file: 1 / sqrt(head_dim)
    llama_cpp = pytest.importorskip("llama_cpp")
    d, c, w = _checkpoint(tmp_path, sp_model, arch, query_pre_attn_scalar=16)
    out = str(tmp_path / "m.gguf")
    convert(d, out, "f32", progress=False)
    m = llmrt.Model(out, threads=2, activations="f32", kv_cache_dtype="f32")
    ids = m.tokenize(TEXT[:200])
    lc = llama_cpp.Llama(out, n_ctx=512, logits_all=True, verbose=False, n_threads=2)
    lc.eval(ids)
    theirs = np.array(lc.scores[:len(ids)])
    ref = reference(c, w, ids)
    assert _close(theirs, ref, 3e-3)
    assert _close(m.logits(ids), ref)


@pytest.mark.parametrize("prefix", ["language_model.model.", "model.language_model."])
def test_multimodal_checkpoint_converts_its_language_model(tmp_path, sp_model, prefix):
    # Gemma 3 4B and up ship as Gemma3ForConditionalGeneration: the text
    # model's config under text_config (only what differs from the defaults
    # listed), its tensors under a prefix (two spellings across transformers
    # versions), a vision tower beside it, left out
    d, c, w = _checkpoint(tmp_path, sp_model, "Gemma3ForCausalLM")
    text = {k: v for k, v in c.items() if k != "architectures"}
    text.pop("tie_word_embeddings")  # a default of the text config
    cfg = {"architectures": ["Gemma3ForConditionalGeneration"], "text_config": text,
           "vision_config": {"hidden_size": 32, "model_type": "siglip_vision_model"},
           "mm_tokens_per_image": 4}
    with open(os.path.join(d, "config.json"), "w") as f:
        json.dump(cfg, f)
    mm = {prefix + k[len("model."):]: v for k, v in w.items()}
    mm["vision_tower.vision_model.embeddings.patch_embedding.weight"] = np.ones((32, 3, 2, 2),
                                                                               np.float32)
    mm["multi_modal_projector.mm_input_projection_weight"] = np.ones((32, 64), np.float32)
    os.remove(os.path.join(d, "model.safetensors"))
    safetensors_numpy.save_file(mm, os.path.join(d, "model.safetensors"))
    out = str(tmp_path / "mm.gguf")
    info = convert(d, out, "f32", progress=False, mmproj=False)  # the tower is a stub here
    assert info["arch"] == "Gemma3ForConditionalGeneration"
    names = {t.name for t in gguf.GGUFReader(out).tensors}
    assert not any("vision" in n or "projector" in n for n in names)
    m = llmrt.Model(out, threads=2, activations="f32", kv_cache_dtype="f32")
    assert m.arch == "gemma3"
    ids = m.tokenize(TEXT[:150])
    assert _close(m.logits(ids), reference(c, w, ids))


def test_end_of_turn_defined_by_the_sentencepiece_model_ends_generation(tmp_path):
    # Gemma's tokenizer.model defines <start_of_turn> / <end_of_turn> as
    # user-defined pieces (not control ones): the turn's end still stops
    # generation, and the template's markers encode as one token each
    (tmp_path / "corpus.txt").write_text(TEXT)
    spm.SentencePieceTrainer.train(input=str(tmp_path / "corpus.txt"),
                                   model_prefix=str(tmp_path / "tok"), vocab_size=400,
                                   model_type="bpe", byte_fallback=True, add_dummy_prefix=False,
                                   remove_extra_whitespaces=False, minloglevel=2,
                                   user_defined_symbols=["<start_of_turn>", "<end_of_turn>"])
    d, c, w = _checkpoint(tmp_path, str(tmp_path / "tok.model"), "Gemma2ForCausalLM")
    out = str(tmp_path / "t.gguf")
    convert(d, out, "f32", progress=False)
    m = llmrt.Model(out, threads=2)
    sp = spm.SentencePieceProcessor(model_file=str(tmp_path / "tok.model"))
    eot = sp.piece_to_id("<end_of_turn>")
    assert eot in m._end_tokens()
    assert m.tokenize("<start_of_turn>user\nhi<end_of_turn>", add_special=False)[-1] == eot


@pytest.mark.parametrize("arch", ["Gemma2ForCausalLM", "Gemma3ForCausalLM"])
def test_lora_on_gemma_equals_merged_weights(tmp_path, sp_model, arch):
    # the adapters' o-proj and down products join before gemma's post-norms
    from test_lora import _adapter, _merged, _write_peft
    d, c, w = _checkpoint(tmp_path, sp_model, arch)
    ad = _adapter(w, c, np.random.default_rng(4), 4)
    _write_peft(str(tmp_path / "peft"), ad, 4, 8.0)
    _merged(d, str(tmp_path / "merged"), c, w, ad, 2.0)
    out, merged = str(tmp_path / "base.gguf"), str(tmp_path / "merged.gguf")
    convert(d, out, "f32", progress=False)
    convert(str(tmp_path / "merged"), merged, "f32", progress=False)
    kw = dict(threads=2, activations="f32", kv_cache_dtype="f32")
    m = llmrt.Model(out, **kw)
    aid = m.load_lora(str(tmp_path / "peft"), dtype="f32")
    ids = m.tokenize(TEXT[:150])
    ref = llmrt.Model(merged, **kw).logits(ids)
    assert _close(m.logits(ids, lora=aid), ref)
    assert not _close(m.logits(ids), ref, 1e-2)
