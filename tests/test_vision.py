"""Images in: Gemma 3 and Idefics3 / SmolVLM vision towers.

Tiny random checkpoints of both families (written with numpy under the
published names, at scales where every layer matters; tests/testutil.py)
convert with `llmrt convert` to a model and an mmproj file. The vision
tower's output and the projected image tokens match an independent numpy
forward from the checkpoint's weights; with transformers installed, they and
the decoder's logits with the image spliced in match transformers on the
same pixel values, and the preprocessing its image processors.
"""

from __future__ import annotations

import base64
import dataclasses
import io
import threading

import numpy as np
import pytest
from testutil import (
    gemma3_projection_reference,
    idefics3_projection_reference,
    reference_logits,
    siglip_reference,
    tiny_gemma3_vision,
    tiny_idefics3_vision,
)
from testutil import image as _image

import llmrt
from llmrt import families
from llmrt.convert import convert
from llmrt.errors import GGUFError

PIL = pytest.importorskip("PIL.Image")
pytest.importorskip("safetensors")


def _hf():
    """torch and transformers, or the test skips."""
    return pytest.importorskip("torch"), pytest.importorskip("transformers")


def _load_hf(b, cls):
    torch, transformers = _hf()
    m = getattr(transformers, cls).from_pretrained(b["dir"], torch_dtype=torch.float32)
    return m.eval()

def _close(got, ref, tol=1e-4):
    got, ref = np.asarray(got, np.float64), np.asarray(ref, np.float64)
    return float(np.abs(got - ref).max() / np.abs(ref).max()) <= tol


# ---- Gemma 3 ---------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def gemma_dir(tmp_path_factory):
    return tiny_gemma3_vision(tmp_path_factory.mktemp("gemma3_vision"))


@pytest.fixture(scope="module")
def gemma(gemma_dir):
    out = str(gemma_dir["root"] / "g3.gguf")
    info = convert(gemma_dir["dir"], out, "f32", progress=False)
    assert info["mmproj"] == str(gemma_dir["root"] / "mmproj-g3.gguf")
    m = llmrt.Model(out, threads=2, activations="f32", kv_cache_dtype="f32")
    assert m.vision is not None  # found beside the model
    return dict(gemma_dir, path=out, model=m, mmproj=info["mmproj"])


@pytest.fixture(scope="module")
def gemma_hf(gemma):
    return _load_hf(gemma, "Gemma3ForConditionalGeneration")


def _hf_pixels(img, mean, std, size):
    _, transformers = _hf()
    cls = getattr(transformers, "Gemma3ImageProcessorPil", None) or \
        transformers.Gemma3ImageProcessor
    p = cls(size={"height": size, "width": size}, image_mean=mean,
                                          image_std=std)
    return p(images=[img], return_tensors="pt")["pixel_values"]


def test_gemma3_tower_and_projection_match_transformers(gemma, gemma_hf):
    torch, _ = _hf()
    m, hf = gemma["model"], gemma_hf
    img = _image(73, 41, 0)
    px, _ = m.vision.pixels(img)
    ref_px = _hf_pixels(img, [0.5, 0.4, 0.3], [0.2, 0.3, 0.4], 56)
    assert np.abs(px - ref_px.numpy()).max() <= 1e-5
    with torch.no_grad():
        tower = hf.model.vision_tower(pixel_values=ref_px).last_hidden_state[0].numpy()
        feats = _features(hf.model.get_image_features(pixel_values=ref_px))
    v = m.vision
    G = v.mm.image_size // v.mm.patch
    patches = px.reshape(1, 3, G, 7, G, 7).transpose(0, 2, 4, 1, 3, 5).reshape(G * G, -1)
    assert _close(v.native.encode(np.ascontiguousarray(patches)), tower)
    got = v.encode_pixels(px)
    assert got.shape == (16, 64)
    assert _close(got, feats)


def _features(f):
    """get_image_features' result across transformers versions -> (rows, width)."""
    torch, _ = _hf()
    f = f.pooler_output if hasattr(f, "pooler_output") else f
    f = torch.cat([x.reshape(-1, x.shape[-1]) for x in f]) if isinstance(f, (list, tuple)) else f
    return f.reshape(-1, f.shape[-1]).numpy()


def _hf_logits(hf, ids, image_id, px):
    torch, _ = _hf()
    t = torch.tensor([ids])
    with torch.no_grad():
        return hf(input_ids=t, pixel_values=px, token_type_ids=(t == image_id).long(),
                  attention_mask=torch.ones_like(t)).logits[0].numpy()


def _llmrt_logits(m, ids):
    eng = m.engine
    seq = eng.new_sequence()
    try:
        return eng.forward(seq, np.asarray(ids, np.int32), "all")
    finally:
        eng.release(seq)


def _hf_ids(m, ids):
    """A prompt's ids with the image ids back to the image token's."""
    return [i if i < m.vocab_size else m.vision.image_token_id for i in ids]


def test_gemma3_logits_with_an_image_match_transformers(gemma, gemma_hf):
    m, hf = gemma["model"], gemma_hf
    img = _image(50, 61, 1)
    ids = m.prompt_ids("Describe <start_of_image> in words: the fox", images=[img])
    assert len(ids) > 16 and sum(i >= m.vocab_size for i in ids) == 16
    ref = _hf_logits(hf, _hf_ids(m, ids), gemma["ids"]["<image_soft_token>"],
                     _hf_pixels(img, [0.5, 0.4, 0.3], [0.2, 0.3, 0.4], 56))
    assert _close(_llmrt_logits(m, ids), ref)


def test_gemma3_image_tokens_see_each_other(gemma, gemma_hf, monkeypatch):
    # without the image's bidirectional attention the logits move far past
    # the tolerance: the test above would catch a causal-only image
    m, hf = gemma["model"], gemma_hf
    img = _image(64, 64, 2)
    ids = m.prompt_ids("<start_of_image> a picture", images=[img])
    ref = _hf_logits(hf, _hf_ids(m, ids), gemma["ids"]["<image_soft_token>"],
                     _hf_pixels(img, [0.5, 0.4, 0.3], [0.2, 0.3, 0.4], 56))
    causal = dataclasses.replace(families.PROJECTORS["gemma3"], bidirectional=False)
    monkeypatch.setitem(families.PROJECTORS, "gemma3", causal)
    c = llmrt.Model(gemma["path"], threads=2, activations="f32", kv_cache_dtype="f32")
    assert not _close(_llmrt_logits(c, c.prompt_ids("<start_of_image> a picture", images=[img])),
                      ref, 1e-3)


PROMPT = "Look at this picture of a fox. <start_of_image> The"


def test_gemma3_greedy_generation_matches_transformers(gemma, gemma_hf):
    torch, _ = _hf()
    m, hf = gemma["model"], gemma_hf
    img = _image(90, 30, 3)
    ids = m.prompt_ids(PROMPT, images=[img])
    t = torch.tensor([_hf_ids(m, ids)])
    px = _hf_pixels(img, [0.5, 0.4, 0.3], [0.2, 0.3, 0.4], 56)
    with torch.no_grad():
        ref = hf.generate(input_ids=t, pixel_values=px, token_type_ids=(
            t == gemma["ids"]["<image_soft_token>"]).long(), attention_mask=torch.ones_like(t),
            max_new_tokens=8, do_sample=False)[0, t.shape[1]:].tolist()
    r = m.generate(PROMPT, images=[img], max_new_tokens=8, ignore_eos=True)
    assert r.token_ids[:len(ref)] == ref


def test_gemma3_image_embeddings_and_prefix_are_cached(gemma):
    m = gemma["model"]
    img = _image(90, 31, 3)
    r = m.generate(PROMPT, images=[img], max_new_tokens=8, ignore_eos=True)
    # the same image again, as a data URI: its embeddings come from the
    # cache, its tokens' keys and values from the prefix cache
    before, hits = m.vision.images_encoded, m.cache_stats()["hits"]
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    uri = "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()
    r2 = m.generate(PROMPT, images=[uri], max_new_tokens=8, ignore_eos=True)
    assert r2.token_ids == r.token_ids
    assert m.vision.images_encoded == before
    assert m.cache_stats()["hits"] > hits
    # another image with the same text: encoded, and no prefix past the text reused
    r3 = m.generate(PROMPT, images=[_image(90, 31, 4)], max_new_tokens=8, ignore_eos=True)
    assert m.vision.images_encoded == before + 1
    assert r3.cached_tokens <= len(m.tokenize("Look at this picture of a fox. "))
    out = m.chat([{"role": "user", "content": [
        {"type": "image_url", "image_url": {"url": uri}},
        {"type": "text", "text": "What is it?"}]}], max_new_tokens=4)
    assert out.finish_reason in ("stop", "length")
    assert m.vision.images_encoded == before + 1


def test_gemma3_tower_and_projection_match_numpy(gemma):
    m, w = gemma["model"], gemma["weights"]
    for img in (_image(73, 41, 0), _image(56, 56, 1)):
        px, grid = m.vision.pixels(img)
        assert grid == (0, 0) and px.shape == (1, 3, 56, 56)
        ref = siglip_reference(w, "vision_tower.vision_model.", px.astype(np.float64), 4, 1e-6)
        G = 8
        patches = px.reshape(1, 3, G, 7, G, 7).transpose(0, 2, 4, 1, 3, 5).reshape(G * G, -1)
        assert _close(m.vision.native.encode(np.ascontiguousarray(patches)), ref[0])
        assert _close(m.vision.encode_pixels(px), gemma3_projection_reference(w, ref, 16, 1e-6))


def test_gemma3_images_batch_with_text_requests(gemma):
    m = gemma["model"]
    imgs = [_image(40 + 9 * i, 70 - 7 * i, 10 + i) for i in range(3)]
    alone = [m.generate("<start_of_image> The", images=[im], max_new_tokens=6,
                        ignore_eos=True).token_ids for im in imgs]
    text_alone = m.generate("The quick brown", max_new_tokens=6, ignore_eos=True).token_ids
    got: dict = {}

    def run(i):
        if i < 3:
            got[i] = m.generate("<start_of_image> The", images=[imgs[i]], max_new_tokens=6,
                                ignore_eos=True).token_ids
        else:
            got[i] = m.generate("The quick brown", max_new_tokens=6, ignore_eos=True).token_ids
    th = [threading.Thread(target=run, args=(i,)) for i in range(5)]
    for t in th:
        t.start()
    for t in th:
        t.join()
    assert [got[i] for i in range(3)] == alone
    assert got[3] == got[4] == text_alone


def test_gemma3_q8_0_within_bounds(gemma, tmp_path):
    out = str(tmp_path / "q.gguf")
    info = convert(gemma["dir"], out, "q8_0", progress=False)
    types = info["vision"]["types"]
    assert types["v.blk.0.attn_q.weight"] == "q8_0"
    assert types["v.blk.0.ffn_down.weight"] == "f16"      # 80 columns: not whole blocks
    assert types["mm.input_projection.weight"] == "f16"   # as llama.cpp writes it
    assert types["v.patch_embd.weight"] == "f32"
    q = llmrt.Model(out, threads=2)
    img = _image(33, 77, 4)
    ref = gemma["model"].vision.encode_pixels(gemma["model"].vision.pixels(img)[0])
    got = q.vision.encode_pixels(q.vision.pixels(img)[0])
    # q8_0 weights and 8-bit activations: within 3% of the largest value
    assert _close(got, ref, 3e-2)


def test_wrong_or_bad_mmproj_is_a_clear_error(gemma, tmp_path):
    with pytest.raises(FileNotFoundError):
        llmrt.Model(gemma["path"], mmproj=str(tmp_path / "none.gguf"))
    with pytest.raises(GGUFError, match="not an mmproj"):
        llmrt.Model(gemma["path"], mmproj=gemma["path"])  # the text model as mmproj
    m = llmrt.Model(llmrt.utils.default_model_path(), mmproj=False)
    with pytest.raises(ValueError, match="does not fit"):
        llmrt.Model(llmrt.utils.default_model_path(), mmproj=gemma["mmproj"])
    with pytest.raises(ValueError, match="vision encoder"):
        m.generate("hi", images=[_image(8, 8, 0)])
    g = gemma["model"]
    with pytest.raises(ValueError, match="2 image markers"):
        g.generate("<start_of_image><start_of_image>", images=[_image(8, 8, 0)])
    png = io.BytesIO()
    _image(30, 30, 0).save(png, format="PNG")
    with pytest.raises(ValueError):
        g.generate("x", images=[png.getvalue()[:len(png.getvalue()) // 2]])
    with pytest.raises(ValueError):
        g.generate("x", images=[_image(1, 1, 0)])


def test_fuzzed_mmproj_files_never_crash(gemma, tmp_path):
    from testutil import fuzz_gguf
    ok, err = fuzz_gguf(gemma["mmproj"], seed=5, runs=30, scratch=str(tmp_path / "f.gguf"),
                        model=gemma["path"])
    assert err > 0


# ---- Idefics3 / SmolVLM ----------------------------------------------------------------------


@pytest.fixture(scope="module")
def idefics(tmp_path_factory):
    root = tmp_path_factory.mktemp("idefics3")
    b = tiny_idefics3_vision(root)
    out, mm = str(root / "i3.gguf"), str(root / "vision.gguf")
    info = convert(b["dir"], out, "f32", progress=False, mmproj=mm)
    assert info["vision"]["projector"] == "idefics3"
    m = llmrt.Model(out, threads=2, activations="f32", kv_cache_dtype="f32", mmproj=mm)
    return dict(b, model=m, path=out, mmproj=mm)


@pytest.fixture(scope="module")
def idefics_hf(idefics):
    return _load_hf(idefics, "Idefics3ForConditionalGeneration")


def _i3_pixels(img):
    _, transformers = _hf()
    cls = getattr(transformers, "Idefics3ImageProcessorPil", None) or \
        transformers.Idefics3ImageProcessor
    p = cls(size={"longest_edge": 56}, max_image_size={"longest_edge": 28},
            image_mean=[0.5] * 3, image_std=[0.5] * 3)
    out = p(images=[[img]], return_tensors="pt")
    return out["pixel_values"], out["pixel_attention_mask"]


def test_idefics3_tiles_prompt_and_logits_match_transformers(idefics, idefics_hf):
    torch, _ = _hf()
    m, hf = idefics["model"], idefics_hf
    img = _image(100, 20, 5)  # wide: 1 x 2 tiles of 28 and the global view
    px, grid = m.vision.pixels(img)
    ref_px, mask = _i3_pixels(img)
    assert grid == (1, 2) and px.shape == (3, 3, 28, 28)
    assert np.abs(px - ref_px[0].numpy()).max() <= 1e-5
    with torch.no_grad():
        feats = _features(hf.model.get_image_features(pixel_values=ref_px,
                                                      pixel_attention_mask=mask))
    assert _close(m.vision.encode_pixels(px), feats)
    # the processor's text for a 1 x 2 grid, 4 tokens a tile
    e = m.vision.embeddings(img)
    tile = "<image>" * 4
    want = ("<fake_token_around_image><row_1_col_1>" + tile +
            "<fake_token_around_image><row_1_col_2>" + tile + "\n\n"
            "<fake_token_around_image><global-img>" + tile + "<fake_token_around_image>")
    assert m.vision.image_text(e) == want
    ids = m.prompt_ids("User:<image>What is this?<end_of_utterance>\nAssistant:", images=[img])
    assert sum(i >= m.vocab_size for i in ids) == 12
    t = torch.tensor([_hf_ids(m, ids)])
    with torch.no_grad():
        ref = hf(input_ids=t, pixel_values=ref_px, pixel_attention_mask=mask,
                 attention_mask=torch.ones_like(t)).logits[0].numpy()
    assert _close(_llmrt_logits(m, ids), ref)


def test_idefics3_small_image_and_chat(idefics, gemma):
    m = idefics["model"]
    img = _image(20, 25, 6)  # resized up to the longest edge (56): 2 x 2 tiles
    px, grid = m.vision.pixels(img)
    assert grid == (2, 2) and px.shape[0] == 5
    out = m.chat([{"role": "user", "content": [{"type": "image", "image": img},
                                               {"type": "text", "text": "Hi"}]}],
                 max_new_tokens=4)
    assert out.finish_reason in ("stop", "length")
    with pytest.raises(ValueError, match="does not fit"):  # gemma 3's tower for a llama
        llmrt.Model(idefics["path"], mmproj=gemma["mmproj"])


def test_idefics3_tower_connector_and_logits_match_numpy(idefics):
    gguf = pytest.importorskip("gguf")
    m, w = idefics["model"], idefics["weights"]
    img = _image(100, 20, 5)
    px, grid = m.vision.pixels(img)
    assert grid == (1, 2) and px.shape == (3, 3, 28, 28)
    ref = siglip_reference(w, "model.vision_model.", px.astype(np.float64), 2, 1e-6)
    feats = idefics3_projection_reference(w, ref, 2)
    assert _close(m.vision.encode_pixels(px), feats)
    ids = m.prompt_ids("User:<image>What is this?<end_of_utterance>\nAssistant:", images=[img])
    where = [i for i, t in enumerate(ids) if t >= m.vocab_size]
    assert len(where) == 12
    e = m.vision.embeddings(img)
    W = {t.name: np.asarray(t.data, np.float64).reshape([int(x) for x in t.shape[::-1]])
         for t in gguf.GGUFReader(idefics["path"]).tensors}
    tc = idefics["config"]["text_config"]
    cfg = dict(arch="llama", n_layer=3, n_head=4, n_head_kv=2, head_dim=16, eps=1e-5,
               rope_base=tc["rope_theta"])
    want = reference_logits(W, cfg, ids, embeds={p: e.rows[k] for k, p in enumerate(where)})
    assert _close(_llmrt_logits(m, ids), want)
    # the image's rows matter: its text alone gives other logits
    plain = reference_logits(W, cfg, np.minimum(ids, m.vocab_size - 1))
    assert not _close(plain, want, 1e-2)


def test_gemma3_prompt_chunks_never_split_an_image(gemma):
    # the scheduler feeds a prompt in chunks; a chunk that would end inside
    # an image ends before it (or takes it whole), so the image's rows still
    # see each other: every chunking gives the same logprobs
    m = gemma["model"]
    img = _image(47, 52, 8)
    prompt = "Some words come first, quite a few of them. <start_of_image> The"
    want = m.generate(prompt, images=[img], max_new_tokens=4, ignore_eos=True, logprobs=0)
    old = m.scheduler.chunk
    try:
        for chunk in (5, 13, 20):
            m.scheduler.chunk = chunk
            m.clear_prefix_cache()
            r = m.generate(prompt, images=[img], max_new_tokens=4, ignore_eos=True, logprobs=0)
            assert r.token_ids == want.token_ids
            assert np.allclose([t.logprob for t in r.logprobs],
                               [t.logprob for t in want.logprobs], atol=1e-4)
    finally:
        m.scheduler.chunk = old


def test_gemma3_image_past_the_first_native_chunk_matches_transformers(gemma, gemma_hf):
    # an image that starts near position 256 (one native pass): the pass is
    # cut before it, not inside it
    m, hf = gemma["model"], gemma_hf
    img = _image(60, 45, 9)
    for words in range(100, 300):  # a text that puts the image across position 256
        text = " ".join(["fox"] * words)
        ids = m.prompt_ids(text + "<start_of_image> and so", images=[img])
        first = next(i for i, t in enumerate(ids) if t >= m.vocab_size)
        if first < 256 < first + 16:
            break
    assert first < 256 < first + 16
    ref = _hf_logits(hf, _hf_ids(m, ids), gemma["ids"]["<image_soft_token>"],
                     _hf_pixels(img, [0.5, 0.4, 0.3], [0.2, 0.3, 0.4], 56))
    assert _close(_llmrt_logits(m, ids), ref)


def test_cli_generate_and_chat_with_an_image(gemma, tmp_path, capsys):
    from llmrt.cli import main
    png = str(tmp_path / "i.png")
    _image(40, 30, 11).save(png)
    assert main(["generate", "<start_of_image> The", "-m", gemma["path"], "--image", png,
                 "-n", "3", "--temperature", "0", "--ignore-eos"]) == 0
    assert main(["chat", "What is it?", "-m", gemma["path"], "--image", png, "-n", "3"]) == 0
    assert main(["generate", "x", "-m", gemma["path"], "--image",
                 str(tmp_path / "missing.png"), "-n", "1"]) == 2
    assert "image" in capsys.readouterr().err


def test_quantize_an_mmproj_file(gemma, tmp_path):
    gguf = pytest.importorskip("gguf")
    from llmrt.quantization import quantize_file
    out = str(tmp_path / "mm-q8.gguf")
    quantize_file(gemma["mmproj"], out, "q8_0")
    types = {t.name: t.tensor_type.name for t in gguf.GGUFReader(out).tensors}
    assert types["v.blk.0.attn_q.weight"] == "Q8_0"
    assert types["v.position_embd.weight"] == types["v.patch_embd.weight"] == "F32"
    assert types["mm.input_projection.weight"] == "F16"
    m = llmrt.Model(gemma["path"], mmproj=out, threads=2)
    img = _image(30, 40, 12)
    ref = gemma["model"].vision.encode_pixels(gemma["model"].vision.pixels(img)[0])
    assert _close(m.vision.encode_pixels(m.vision.pixels(img)[0]), ref, 3e-2)


def test_an_image_too_long_for_one_pass_is_refused_at_load(gemma, tmp_path):
    # gemma 3's image rows see each other: an image must fit one pass of the
    # decoder (256 rows); a file whose images would not is refused when loaded
    gguf = pytest.importorskip("gguf")
    from testutil import rewrite_gguf

    from llmrt.errors import UnsupportedModelError
    bad = str(tmp_path / "big.gguf")
    u32 = gguf.GGUFValueType.UINT32
    rewrite_gguf(gemma["mmproj"], bad, keys={"clip.vision.patch_size": (1, u32),
                                             "clip.vision.projector.scale_factor": (1, u32)})
    with pytest.raises(UnsupportedModelError, match="3136 tokens"):
        llmrt.Model(gemma["path"], mmproj=bad)


def test_prompt_lookup_never_drafts_an_image(gemma):
    # the prompt's image ids are not tokens: a sampled speculative request
    # whose text repeats what came before an image must not draft them
    m = gemma["model"]
    boi = m.tokenizer.special_token_id("<start_of_image>")
    r = m.generate(PROMPT, images=[_image(44, 44, 13)], draft="prompt_lookup",
                   temperature=0.8, seed=1, max_new_tokens=12, ignore_eos=True,
                   logit_bias={boi: 30.0})
    assert len(r.token_ids) == 12 and all(t < m.vocab_size for t in r.token_ids)


def test_a_prompt_with_images_belongs_to_its_model(gemma):
    m = gemma["model"]
    other = llmrt.Model(gemma["path"], threads=1)
    ids = other.prompt_ids(PROMPT, images=[_image(30, 30, 14)])
    with pytest.raises(ValueError, match="another model"):
        m.generate(ids, max_new_tokens=2)


TOWER_SCRIPT = r"""
import sys, numpy as np, llmrt
m = llmrt.Model(sys.argv[1], threads=2, activations="f32")
px = np.load(sys.argv[2])
np.save(sys.argv[3], m.vision.encode_pixels(px))
print(llmrt.build_info()["cpu_isa"])
"""


@pytest.mark.parametrize("isa", ["generic", "active"])
def test_tower_on_awkward_shapes_on_every_isa(tmp_path, isa):
    # width 60 in 5 heads of 12, FFN 84, a 7 x 7 grid of 5-pixel patches (49
    # rows: not whole tiles of the attention's 32 queries), no pooling: the
    # tower's kernels (LayerNorm, GELU, the dense attention's GEMMs and
    # exponentials) on the plain C++ kernels and the running CPU's
    import os
    import subprocess
    import sys
    b = tiny_gemma3_vision(tmp_path, D=60, F=84, heads=5, image=35, patch=5, tokens=49)
    out = str(tmp_path / "g.gguf")
    convert(b["dir"], out, "f32", progress=False)
    m = llmrt.Model(out, threads=2, activations="f32")
    px = m.vision.pixels(_image(41, 29, 15))[0]
    np.save(tmp_path / "px.npy", px)
    env = dict(os.environ, **({"LLMRT_ISA": "generic"} if isa == "generic" else {}))
    r = subprocess.run([sys.executable, "-c", TOWER_SCRIPT, out, str(tmp_path / "px.npy"),
                        str(tmp_path / "y.npy")], env=env, capture_output=True, text=True,
                       timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    assert r.stdout.split()[-1] == ("generic" if isa == "generic" else
                                    llmrt.build_info()["cpu_isa"])
    ref = siglip_reference(b["weights"], "vision_tower.vision_model.", px.astype(np.float64),
                           5, 1e-6)
    want = gemma3_projection_reference(b["weights"], ref, 49, 1e-6)
    assert _close(np.load(tmp_path / "y.npy"), want)
