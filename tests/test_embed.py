"""Model.embed: final hidden states (the output head's input), pooled and
normalised, batched between generation steps."""

import threading

import numpy as np
import pytest
from testutil import write_model

import llmrt


@pytest.fixture(scope="module")
def model_and_weights(tmp_path_factory):
    path = str(tmp_path_factory.mktemp("embed") / "m.gguf")
    W, cfg = write_model(path, wtype="F32", n_layer=2, ctx=512, tied=False, seed=3)
    return llmrt.Model(path, threads=2, activations="f32", kv_cache_dtype="f32"), W


def test_hidden_states_are_the_heads_input(model_and_weights):
    m, W = model_and_weights
    tokens = np.random.default_rng(0).integers(1, m.vocab_size, 300)  # crosses a 256 chunk
    eng = m.engine
    s = eng.new_sequence()
    h = eng.hidden_states([(s, tokens)])
    eng.release(s)
    assert h.shape == (300, m.config["n_embd"])
    logits = m.logits(tokens)
    got = h.astype(np.float64) @ W["output.weight"].T
    np.testing.assert_allclose(got, logits, rtol=0, atol=1e-4 * np.abs(logits).max())


def test_pooling_and_normalisation(model_and_weights):
    m, _ = model_and_weights
    texts = [[5, 6, 7, 8, 9], [10, 11], list(range(20, 90))]
    eng = m.engine
    rows = []
    for t in texts:
        s = eng.new_sequence()
        rows.append(eng.hidden_states([(s, t)]))
        eng.release(s)
    mean = m.embed(texts, normalize=False)
    last = m.embed(texts, pooling="last", normalize=False)
    for i, r in enumerate(rows):
        np.testing.assert_allclose(mean[i], r.mean(axis=0), rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(last[i], r[-1], rtol=1e-5, atol=1e-6)
    unit = m.embed(texts)
    np.testing.assert_allclose(np.linalg.norm(unit, axis=1), 1.0, rtol=1e-5)
    np.testing.assert_allclose(unit, mean / np.linalg.norm(mean, axis=1, keepdims=True),
                               rtol=1e-5, atol=1e-6)
    # one text alone: the same vector as in the batch (a row's values do not
    # depend on its batch with float32 activations, up to rounding)
    np.testing.assert_allclose(m.embed([texts[1]])[0], unit[1], rtol=1e-5, atol=1e-6)
    assert m.embed(texts[0]).shape == (1, m.config["n_embd"])
    assert m.cache_stats()["blocks_in_use"] == 0


def test_embed_arguments(model_and_weights):
    m, _ = model_and_weights
    with pytest.raises(ValueError, match="pooling"):
        m.embed("hi", pooling="max")
    with pytest.raises(ValueError, match="empty"):
        m.embed([])
    with pytest.raises(ValueError, match="context length"):
        m.embed([[1] * 600])


def test_embed_while_generating(model_and_weights):
    # embeddings run between the steps of a generation in another thread
    m, _ = model_and_weights
    want = m.generate([1, 2, 3], max_new_tokens=40, ignore_eos=True).token_ids
    ref = m.embed([[4, 5, 6], [7, 8]])
    out = {}
    go = threading.Barrier(2)

    def gen():
        go.wait()
        out["gen"] = m.generate([1, 2, 3], max_new_tokens=40, ignore_eos=True).token_ids

    t = threading.Thread(target=gen)
    t.start()
    go.wait()
    embs = [m.embed([[4, 5, 6], [7, 8]]) for _ in range(5)]
    t.join()
    assert out["gen"] == want
    for e in embs:
        np.testing.assert_allclose(e, ref, rtol=1e-5, atol=1e-6)
