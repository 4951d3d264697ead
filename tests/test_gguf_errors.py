"""Bad files: every corrupt, truncated or unsupported GGUF raises a Python
exception naming the problem; none crashes the process."""

import struct

import numpy as np
import pytest
from testutil import fuzz_gguf, rewrite_gguf, write_model

import llmrt
from llmrt import GGUFError, UnsupportedModelError
from llmrt.gguf_file import GGUFFile


@pytest.fixture(scope="module")
def good(tmp_path_factory):
    path = str(tmp_path_factory.mktemp("gguf") / "good.gguf")
    write_model(path, wtype="Q4_1", n_layer=1)
    return path


def _bytes(path):
    with open(path, "rb") as f:
        return bytearray(f.read())


def _write(tmp_path, data, name="bad.gguf"):
    p = tmp_path / name
    p.write_bytes(bytes(data))
    return str(p)


def test_good_file_loads(good):
    m = llmrt.Model(good, threads=1)
    assert m.arch == "llama"


def test_parser_agrees_with_gguf_reader(good):
    import gguf
    ours = GGUFFile(good)
    ref = gguf.GGUFReader(good)
    assert set(ours.tensors) == {t.name for t in ref.tensors}
    for t in ref.tensors:
        o = ours.tensors[t.name]
        assert o.type_id == int(t.tensor_type)
        assert o.shape == [int(x) for x in t.shape]
        assert o.offset == int(t.data_offset)
    for k, f in ref.fields.items():
        if not k.startswith("GGUF."):
            assert ours.metadata[k] == f.contents(), k


def test_missing_file():
    with pytest.raises(FileNotFoundError):
        llmrt.Model("/nonexistent/model.gguf")


def test_not_gguf(tmp_path):
    with pytest.raises(GGUFError, match="not a GGUF file"):
        llmrt.Model(_write(tmp_path, b"PK\x03\x04" + b"\0" * 100))
    with pytest.raises(GGUFError, match="empty"):
        llmrt.Model(_write(tmp_path, b""))


def test_bad_version(tmp_path, good):
    d = _bytes(good)
    d[4:8] = struct.pack("<I", 7)
    with pytest.raises(GGUFError, match="version 7"):
        llmrt.Model(_write(tmp_path, d))


def test_absurd_counts(tmp_path, good):
    d = _bytes(good)
    d[8:16] = struct.pack("<Q", 1 << 60)
    with pytest.raises(GGUFError, match="more than"):
        llmrt.Model(_write(tmp_path, d))


@pytest.mark.parametrize("frac", [0.0005, 0.01, 0.1, 0.5, 0.9, 0.999])
def test_truncated(tmp_path, good, frac):
    d = _bytes(good)
    cut = max(1, int(len(d) * frac))
    with pytest.raises(GGUFError, match="truncated|corrupt|too short|past the end"):
        llmrt.Model(_write(tmp_path, d[:cut]))


def test_unknown_architecture(tmp_path):
    import gguf
    p = str(tmp_path / "arch.gguf")
    w = gguf.GGUFWriter(p, "mamba")
    w.add_tensor("token_embd.weight", np.zeros((4, 32), np.float32))
    w.write_header_to_file(); w.write_kv_data_to_file(); w.write_tensors_to_file(); w.close()
    with pytest.raises(UnsupportedModelError, match="architecture 'mamba'"):
        llmrt.Model(p)


def _rewrite_tensor_type(path, tmp_path, name, new_type):
    f = GGUFFile(path)
    d = _bytes(path)
    # the tensor's type field sits just before its 8-byte offset in the table
    key = struct.pack("<Q", len(name)) + name.encode()
    i = d.index(key) + len(key)
    (n_dims,) = struct.unpack_from("<I", d, i)
    j = i + 4 + 8 * n_dims
    d[j:j + 4] = struct.pack("<I", new_type)
    del f
    return _write(tmp_path, d)


def test_unsupported_tensor_type(tmp_path, good):
    p = _rewrite_tensor_type(good, tmp_path, "blk.0.attn_q.weight", 10)  # Q2_K
    with pytest.raises(UnsupportedModelError, match="blk.0.attn_q.weight.*Q2_K"):
        llmrt.Model(p)


def test_unknown_tensor_type(tmp_path, good):
    p = _rewrite_tensor_type(good, tmp_path, "blk.0.ffn_up.weight", 999)
    with pytest.raises(GGUFError, match="blk.0.ffn_up.weight"):
        llmrt.Model(p)


def test_wrong_type_changes_size(tmp_path, good):
    # Q4_1 -> Q8_0 makes the tensor larger than its data: named, not a crash
    p = _rewrite_tensor_type(good, tmp_path, "blk.0.ffn_down.weight", 8)
    with pytest.raises(GGUFError):
        llmrt.Model(p)


def test_wrong_shape(tmp_path):
    p = str(tmp_path / "shape.gguf")
    write_model(p, n_layer=1)
    d = _bytes(p)
    name = b"blk.0.ffn_gate.weight"
    i = d.index(struct.pack("<Q", len(name)) + name) + 8 + len(name) + 4
    d[i:i + 8] = struct.pack("<Q", 32)  # ne0 64 -> 32
    with pytest.raises(GGUFError, match="blk.0.ffn_gate.weight.*shape"):
        llmrt.Model(_write(tmp_path, d))


def test_missing_tensor(tmp_path):
    import gguf
    src = str(tmp_path / "src.gguf")
    write_model(src, n_layer=1)
    r = gguf.GGUFReader(src)
    p = str(tmp_path / "missing.gguf")
    w = gguf.GGUFWriter(p, "llama")
    for k, f in r.fields.items():
        if k.startswith("GGUF.") or k == "general.architecture":
            continue
        v = f.contents()
        vt = f.types[0]
        if vt == gguf.GGUFValueType.ARRAY:
            w.add_array(k, v)
        else:
            w.add_key_value(k, v, vt)
    for t in r.tensors:
        if t.name != "blk.0.attn_k.weight":
            w.add_tensor(t.name, np.asarray(t.data), raw_dtype=t.tensor_type)
    w.write_header_to_file(); w.write_kv_data_to_file(); w.write_tensors_to_file(); w.close()
    with pytest.raises(GGUFError, match="missing tensor 'blk.0.attn_k.weight'"):
        llmrt.Model(p)


def test_missing_hyperparameter(tmp_path, good):
    d = _bytes(good)
    key = b"llama.block_count"
    i = d.index(key)
    d[i:i + len(key)] = b"llama.blockXcount"
    with pytest.raises(GGUFError, match="llama.block_count"):
        llmrt.Model(_write(tmp_path, d))


def test_bad_rope_factors_and_window_keys(tmp_path):
    import gguf
    p = str(tmp_path / "lr.gguf")
    write_model(p, n_layer=1, longrope=True)
    t = {t.name: t for t in gguf.GGUFReader(p).tensors}["rope_factors_long.weight"]
    d = _bytes(p)
    d[t.data_offset:t.data_offset + 4] = struct.pack("<f", 0.0)
    with pytest.raises(GGUFError, match="rope_factors_long.weight.*positive"):
        llmrt.Model(_write(tmp_path, d))
    p = str(tmp_path / "g.gguf")
    write_model(p, arch="gemma3", n_layer=2)
    d = _bytes(p)
    key = b"gemma3.attention.sliding_window_pattern"
    i = d.index(key) + len(key)
    assert struct.unpack("<I", d[i:i + 4])[0] == 4  # GGUF type uint32
    d[i + 4:i + 8] = struct.pack("<I", 1 << 20)
    with pytest.raises(GGUFError, match="sliding_window_pattern.*out of range"):
        llmrt.Model(_write(tmp_path, d, "g2.gguf"))


@pytest.mark.parametrize("arch,key,value", [
    ("llama", "llama.rope.scaling.attn_factor", 1e30),
    ("gemma2", "gemma2.attention.scale", 1e300),
    ("gemma2", "gemma2.attn_logit_softcapping", 1e300),
    ("gemma2", "gemma2.final_logit_softcapping", -1.0),
    ("gemma3", "gemma3.rope.freq_base_swa", 1e-300),
])
def test_out_of_range_floats_are_errors(tmp_path, arch, key, value):
    import gguf
    src = str(tmp_path / "src.gguf")
    write_model(src, arch=arch, n_layer=1)
    p = rewrite_gguf(src, str(tmp_path / "bad.gguf"), {key: (value, gguf.GGUFValueType.FLOAT64)})
    with pytest.raises(GGUFError, match=key.replace(".", r"\.") + ".*out of range"):
        llmrt.Model(p)


def test_window_and_longrope_keys_without_their_parts(tmp_path):
    import gguf
    src = str(tmp_path / "src.gguf")
    write_model(src, arch="qwen2", n_layer=1, ctx=512)
    # an original context without LongRoPE's factors: no attention factor
    p = rewrite_gguf(src, str(tmp_path / "a.gguf"), {
        "qwen2.rope.scaling.original_context_length": (64, gguf.GGUFValueType.UINT32)})
    assert llmrt.Model(p).config["rope_mscale"] == 1.0
    # a window as long as the context, or a huge one: no window
    for w in (512, 2 ** 40):
        p = rewrite_gguf(src, str(tmp_path / f"w{w}.gguf"), {
            "qwen2.attention.sliding_window": (w, gguf.GGUFValueType.UINT64)})
        assert "sliding_window" not in llmrt.Model(p).cache_stats()


def test_fuzzed_gemma_files_never_crash(tmp_path):
    # sliding-window layers, soft-caps, post-norms: the loader's gemma keys and tensors
    p = str(tmp_path / "gemma.gguf")
    write_model(p, arch="gemma2", wtype="Q8_0", n_layer=2, window=4)
    ok, err = fuzz_gguf(p, 99, 150, tmp_path / "fuzz.gguf")
    assert err > 0


def test_fuzzed_files_never_crash(tmp_path, good):
    # In a child process: a crash there fails this test instead of the run.
    ok, err = fuzz_gguf(good, 1234, 300, tmp_path / "fuzz.gguf")
    assert err > 0


def test_the_native_model_takes_tensors_by_known_roles_only(tmp_path):
    # the loader hands the weights over by role (families.LAYER_TENSORS);
    # a role the native model does not know, or a layer past its depth, is
    # an error rather than a tensor silently left unused
    from llmrt import _core
    from llmrt.gguf_loader import load_gguf

    p = str(tmp_path / "m.gguf")
    write_model(p, n_layer=2)
    g = load_gguf(p)
    by_role = {role: g.tensors[name] for role, name in g.roles.items()}
    assert {"tok_embd", "layers.1.wq", "layers.0.w_down"} <= set(by_role)
    assert not any("." in r and not r.startswith("layers.") for r in by_role)
    cfg = dict(g.config, n_ctx=64)
    assert _core.LlamaModel(cfg, by_role, _core.ModelOptions()).n_vocab == g.config["n_vocab"]
    norm = by_role["layers.0.attn_norm"]
    for bad in ("layers.0.bogus", "layers.2.attn_norm", "layers.x.wq", "blk.0.attn_norm.weight"):
        with pytest.raises(ValueError, match="unknown tensor role"):
            _core.LlamaModel(cfg, dict(by_role, **{bad: norm}), _core.ModelOptions())
    missing = {r: t for r, t in by_role.items() if r != "layers.1.wk"}
    with pytest.raises(ValueError, match="missing tensor 'layers.1.wk'"):
        _core.LlamaModel(cfg, missing, _core.ModelOptions())
