"""Encoder models (BERT, XLM-RoBERTa, nomic-bert): tiny random checkpoints
written in the tests, converted by llmrt convert, checked against an
independent float64 forward over the checkpoint's own names (always) and
against transformers (where installed)."""

import os

import numpy as np
import pytest
from encoder_util import (
    ENC_TEXT,
    bert_checkpoint,
    classifier_reference,
    encoder_reference,
    nomic_checkpoint,
    wordpiece_files,
)

import llmrt
from llmrt.convert import convert
from llmrt.encoder import EncoderModel, load_encoder
from llmrt.errors import GGUFError

KINDS = ["bert", "xlmr", "nomic", "bert_cls", "xlmr_cls"]
LENGTHS = (1, 7, 33, 5, 40, 2)


def _unigram_files(d):
    """An XLM-R SentencePiece unigram vocabulary (sentencepiece.bpe.model and
    the fast tokenizer's tokenizer.json where transformers is installed)."""
    spm = pytest.importorskip("sentencepiece")
    d.mkdir(parents=True, exist_ok=True)
    (d / "corpus.txt").write_text(ENC_TEXT.replace(". ", ".\n"))
    spm.SentencePieceTrainer.train(
        input=str(d / "corpus.txt"), model_prefix=str(d / "sentencepiece.bpe"), vocab_size=150, hard_vocab_limit=False,
        model_type="unigram", minloglevel=2, unk_id=0, bos_id=1, eos_id=2, pad_id=-1)
    (d / "corpus.txt").unlink()
    (d / "tokenizer_config.json").write_text(
        '{"tokenizer_class": "XLMRobertaTokenizer", "model_max_length": 40}')
    # XLM-R's layout: <s> <pad> </s> <unk>, the pieces shifted by one, <mask>
    return spm.SentencePieceProcessor(model_file=str(d / "sentencepiece.bpe.model")).get_piece_size() + 2


def build(root, kind, type_name="f32"):
    d = root / kind
    if kind.startswith("xlmr"):
        V = _unigram_files(d)
        ck = bert_checkpoint(d, V, roberta=True, T=1, classifier=1 if "cls" in kind else 0)
    else:
        V = wordpiece_files(d)
        ck = nomic_checkpoint(d, V) if kind == "nomic" else \
            bert_checkpoint(d, V, classifier=1 if "cls" in kind else 0)
    out = str(root / f"{kind}-{type_name}.gguf")
    convert(str(d), out, type_name, progress=False)
    return out, ck, V


@pytest.fixture(scope="module", params=KINDS)
def enc(request, tmp_path_factory):
    root = tmp_path_factory.mktemp("enc")
    out, ck, V = build(root, request.param)
    return dict(kind=request.param, path=out, ck=ck, V=V, dir=str(root / request.param))


def _seqs(V, kind, seed=0):
    rng = np.random.default_rng(seed)
    n_types = 1 if kind.startswith("xlmr") else 2
    return [(list(map(int, rng.integers(0, V, T))), list(map(int, rng.integers(0, n_types, T))))
            for T in LENGTHS]


def test_hidden_states_match_the_reference(enc):
    # a ragged batch of awkward lengths, padded nowhere: every token's state
    # equals the float64 forward of its text alone
    m = llmrt.Model(enc["path"], threads=2, activations="f32")
    assert isinstance(m, EncoderModel)
    seqs = _seqs(enc["V"], enc["kind"])
    hs = m.encoder.hidden_states(seqs)
    for (ids, types), h in zip(seqs, hs):
        ref = encoder_reference(enc["ck"], ids, types)
        assert h.shape == ref.shape
        assert np.abs(h - ref).max() <= 1e-4 * np.abs(ref).max()
    if m.is_reranker:
        got = m.encoder.classify(np.stack([h[0] for h in hs]))
        ref = np.stack([classifier_reference(enc["ck"], encoder_reference(enc["ck"], i, t)[0])
                        for i, t in seqs])
        assert np.abs(got - ref).max() <= 1e-4 * max(1.0, np.abs(ref).max())


def test_a_text_is_the_same_alone_or_batched(enc):
    # f32 and int8 activations: a text's hidden states do not depend on the
    # texts beside it, nor on the thread count
    seqs = _seqs(enc["V"], enc["kind"], seed=1)
    for act in ("f32", "int8"):
        m = llmrt.Model(enc["path"], threads=2, activations=act)
        together = m.encoder.hidden_states(seqs)
        for s, h in zip(seqs, together):
            assert np.array_equal(m.encoder.hidden_states([s])[0], h)
        one = llmrt.Model(enc["path"], threads=1, activations=act).encoder.hidden_states(seqs)
        for a, b in zip(one, together):
            assert np.array_equal(a, b)


def test_embed_pools_as_the_file_says(enc):
    m = llmrt.Model(enc["path"], threads=2, activations="f32")
    texts = ["the quick brown fox", "Café naïve résumé 12345", "a"]
    hs = [m.hidden_states(t) for t in texts]
    expect = {"mean": [h.mean(0) for h in hs], "cls": [h[0] for h in hs],
              "last": [h[-1] for h in hs]}
    for pooling, rows in expect.items():
        got = m.embed(texts, pooling=pooling, normalize=False)
        assert np.allclose(got, np.stack(rows), atol=1e-5)
        unit = m.embed(texts, pooling=pooling)
        assert np.allclose(np.linalg.norm(unit, axis=1), 1, atol=1e-5)
    default = "cls" if m.pooling == "rank" else m.pooling
    assert np.allclose(m.embed(texts), m.embed(texts, pooling=default))
    assert m.embed("one text").shape == (1, m.n_embd)
    ids = m.tokenize(texts[0])
    assert np.array_equal(m.embed([ids]), m.embed(texts[:1]))


def test_quantized_files_stay_close(enc, tmp_path):
    # q8_0: embeddings within cosine 0.999 of the float64 reference
    d = enc["dir"]
    out = str(tmp_path / "q8.gguf")
    convert(d, out, "q8_0", progress=False)
    m = llmrt.Model(out, threads=2)
    seqs = _seqs(enc["V"], enc["kind"], seed=2)
    for (ids, types), h in zip(seqs, m.encoder.hidden_states(seqs)):
        ref = encoder_reference(enc["ck"], ids, types).mean(0)
        got = h.mean(0)
        assert got @ ref / np.linalg.norm(got) / np.linalg.norm(ref) >= 0.999


def test_f16_files_match_and_batch_alike(enc, tmp_path):
    # f16 (its weights kept as the float product's panels): within f16
    # weight rounding of the float64 reference, and a text's states the same
    # bits alone, batched or on one thread
    out = str(tmp_path / "f16.gguf")
    convert(enc["dir"], out, "f16", progress=False)
    m = llmrt.Model(out, threads=2, activations="f32")
    seqs = _seqs(enc["V"], enc["kind"], seed=3)
    together = m.encoder.hidden_states(seqs)
    for (ids, types), h in zip(seqs, together):
        ref = encoder_reference(enc["ck"], ids, types)
        assert np.abs(h - ref).max() <= 2e-3 * np.abs(ref).max()  # 6.4e-4 seen
        assert np.array_equal(m.encoder.hidden_states([(ids, types)])[0], h)
    one = llmrt.Model(out, threads=1, activations="f32").encoder.hidden_states(seqs)
    for a, b in zip(one, together):
        assert np.array_equal(a, b)


def test_f16_files_on_integer_products_stay_close_and_batch_alike(enc, tmp_path):
    # f16 with the default 8-bit activations: where 16-bit integer products
    # are faster, 14-bit integer weights against 13-bit activations, blocks
    # of 64: states close to the float64 reference's and the float path's,
    # a text's the same bits alone, batched or on one thread
    out = str(tmp_path / "f16.gguf")
    convert(enc["dir"], out, "f16", progress=False)
    m = llmrt.Model(out, threads=2)
    seqs = _seqs(enc["V"], enc["kind"], seed=4)
    together = m.encoder.hidden_states(seqs)
    exact = llmrt.Model(out, threads=2, activations="f32").encoder.hidden_states(seqs)
    for (ids, types), h, f in zip(seqs, together, exact):
        ref = encoder_reference(enc["ck"], ids, types)
        assert np.abs(h - ref).max() <= 3e-3 * np.abs(ref).max()
        assert np.abs(h - f).max() <= 2e-3 * np.abs(f).max()
        assert np.array_equal(m.encoder.hidden_states([(ids, types)])[0], h)
    one = llmrt.Model(out, threads=1).encoder.hidden_states(seqs)
    for a, b in zip(one, together):
        assert np.array_equal(a, b)


def test_long_texts_are_cut_or_refused(enc):
    m = llmrt.Model(enc["path"], threads=2)
    long = " ".join(["fox"] * 200)
    assert len(m.tokenize(long)) > m.context_length
    e = m.embed(long)
    assert e.shape == (1, m.n_embd) and np.all(np.isfinite(e))
    with pytest.raises(ValueError, match="longer than"):
        m.embed(long, truncate=False)


def test_bad_input_is_a_clear_error(enc):
    m = llmrt.Model(enc["path"], threads=2)
    with pytest.raises(ValueError, match="outside the vocabulary"):
        m.embed([[1, 2, enc["V"] + 5]])
    with pytest.raises(ValueError):
        m.embed([])
    with pytest.raises(ValueError, match="no tokens"):
        m.embed([[]])
    with pytest.raises(TypeError, match="does not generate"):
        m.generate("hello")
    with pytest.raises(ValueError, match="pooling"):
        m.embed("x", pooling="max")
    if not m.is_reranker:
        with pytest.raises(ValueError, match="does not rerank"):
            m.rerank("q", ["d"])


def test_rerank_orders_as_the_reference(tmp_path):
    for kind in ("bert_cls", "xlmr_cls"):
        out, ck, V = build(tmp_path, kind)
        m = llmrt.Model(out, threads=2, activations="f32")
        query = "quick fox"
        docs = ["the quick brown fox jumps", "a stitch in time", "Berlin, Paris, Tokyo",
                "numbers like 12345", "search engines rank documents", "café résumé"]
        res = m.rerank(query, docs, return_documents=True)
        ref = []
        for d in docs:
            ids, types = m.tokenizer.encode_pair(query, d)
            ref.append(classifier_reference(ck, encoder_reference(ck, ids, types)[0])[0])
        assert [r.index for r in res] == list(np.argsort(-np.asarray(ref), kind="stable"))
        assert np.allclose([r.score for r in res], 1 / (1 + np.exp(-np.sort(ref)[::-1])), atol=1e-5)
        assert [r.document for r in res] == [docs[r.index] for r in res]
        top = m.rerank(query, docs, top_n=2)
        assert [(r.index, r.document) for r in top] == [(r.index, None) for r in res[:2]]
        assert m.rerank(query, []) == []
        with pytest.raises(TypeError):
            m.rerank(query, "not a list")
        with pytest.raises(ValueError):
            m.rerank(query, docs, top_n=-1)


def test_file_checks(tmp_path):
    from gguf import GGUFValueType as VT
    from testutil import rewrite_gguf
    out, _, _ = build(tmp_path, "bert")
    bad = str(tmp_path / "bad.gguf")
    rewrite_gguf(out, bad, drop=("blk.1.ffn_up.weight",))
    with pytest.raises(GGUFError, match="ffn_up"):
        load_encoder(bad)
    rewrite_gguf(out, bad, keys={"bert.attention.head_count": (5, VT.UINT32)})
    with pytest.raises(GGUFError, match="heads"):
        load_encoder(bad)
    rewrite_gguf(out, bad, keys={"bert.pooling_type": (4, VT.UINT32)})
    with pytest.raises(GGUFError, match="rank"):
        load_encoder(bad)


def test_fuzzed_encoder_files_fail_cleanly(tmp_path):
    from testutil import fuzz_gguf
    out, _, _ = build(tmp_path, "nomic")
    fuzz_gguf(out, seed=7, runs=40, scratch=str(tmp_path / "fuzz.gguf"))


# ---- against transformers, where installed ----------------------------------------------

@pytest.mark.parametrize("kind", ["bert", "xlmr", "bert_cls", "xlmr_cls"])
def test_matches_transformers(tmp_path, kind):
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    out, ck, V = build(tmp_path, kind)
    d = str(tmp_path / kind)
    auto = transformers.AutoModelForSequenceClassification if "cls" in kind else \
        transformers.AutoModel
    hf = auto.from_pretrained(d).eval()
    tok = transformers.AutoTokenizer.from_pretrained(d)
    m = llmrt.Model(out, threads=2, activations="f32")
    texts = ["the quick brown fox", "Café naïve résumé, 東京!", "numbers like 12345 and 678"]
    for t in texts:
        enc = tok(t, return_tensors="pt")
        assert enc["input_ids"][0].tolist() == m.tokenize(t)
        with torch.no_grad():
            o = hf(**enc, output_hidden_states=True)
        ref = o.hidden_states[-1][0].numpy()
        got = m.hidden_states(t)
        assert np.abs(got - ref).max() <= 1e-4 * np.abs(ref).max()
    if "cls" in kind:
        q, docs = "quick fox", ["the quick brown fox", "a stitch in time", "Tokyo 東京"]
        enc = tok([q] * len(docs), docs, return_tensors="pt", padding=True)
        with torch.no_grad():
            ref = hf(**enc).logits[:, 0].numpy()
        got = m.rerank_logits(q, docs)[:, 0]
        assert np.abs(got - ref).max() <= 1e-4 * max(1.0, np.abs(ref).max())
        assert [r.index for r in m.rerank(q, docs)] == list(np.argsort(-ref, kind="stable"))


def test_matches_sentence_transformers(tmp_path):
    st = pytest.importorskip("sentence_transformers")
    out, ck, V = build(tmp_path, "bert")
    d = str(tmp_path / "bert")
    model = st.SentenceTransformer(d, device="cpu")  # mean pooling over a plain BertModel
    texts = ["the quick brown fox", "Café naïve résumé", "search engines rank documents"]
    ref = model.encode(texts, normalize_embeddings=True)
    got = llmrt.Model(out, threads=2, activations="f32").embed(texts)
    assert np.all(np.sum(got * ref, axis=1) >= 0.9999)
    assert os.path.exists(out)


def test_cli_says_an_encoder_does_not_generate(tmp_path, capsys):
    from llmrt.cli import main
    out, _, _ = build(tmp_path, "bert")
    assert main(["generate", "hello", "--model", out]) == 2
    assert "is an encoder (bert)" in capsys.readouterr().err
    assert main(["info", "--model", out]) == 0
    assert "EncoderModel" in capsys.readouterr().out
