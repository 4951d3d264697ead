"""Tokenizers built from GGUF metadata: byte-level BPE against the reference
ids (transformers' tokenizer built from the same GGUF, committed in
tests/data), SentencePiece against sentencepiece itself, round trips and
streaming-safe decoding."""

import io
import json
import os

import pytest
from testutil import write_model

import llmrt

DATA = os.path.join(os.path.dirname(__file__), "data")
REF = json.load(open(os.path.join(DATA, "smollm2_reference.json"), encoding="utf-8"))


# ---- byte-level BPE on the real vocabulary -----------------------------------------

@pytest.mark.parametrize("case", REF["tokenizer"], ids=lambda c: repr(c["text"][:20]))
def test_smollm2_tokens_equal_reference(smollm2, case):
    assert smollm2.tokenize(case["text"], add_special=False) == case["ids"]


@pytest.mark.parametrize("case", REF["tokenizer"], ids=lambda c: repr(c["text"][:20]))
def test_smollm2_round_trip(smollm2, case):
    assert smollm2.detokenize(case["ids"]) == case["text"]


def test_smollm2_specials(smollm2):
    tok = smollm2.tokenizer
    assert tok.bos_id == 1 and tok.eos_id == 2 and not tok.add_bos
    assert smollm2.tokenize("<|im_start|>") == [1]
    assert smollm2.detokenize([1, 2], skip_special=True) == ""
    assert smollm2.detokenize([1, 2]) == "<|im_start|><|im_end|>"


def _stream_pieces(tok, ids):
    d = tok.decoder(skip_special=False, sequence_start=True)
    pieces = [d.add(i) for i in ids]
    pieces.append(d.flush())
    return pieces


def test_streaming_never_splits_a_character(smollm2):
    text = "Emoji 😀🎉👍🏽 and 日本語 and Ελληνικά"
    ids = smollm2.tokenize(text, add_special=False)
    # some of these characters take several byte tokens
    assert len(ids) > len(text.split())
    pieces = _stream_pieces(smollm2.tokenizer, ids)
    assert "".join(pieces) == text
    assert all("\ufffd" not in p for p in pieces)


def test_streaming_incomplete_tail_becomes_replacement(smollm2):
    ids = smollm2.tokenize("😀", add_special=False)
    if len(ids) < 2:
        pytest.skip("emoji is a single token in this vocabulary")
    assert smollm2.detokenize(ids[:-1]).endswith("\ufffd")


def test_tiny_bpe_vocab(tmp_path):
    path = str(tmp_path / "m.gguf")
    write_model(path, n_layer=1)
    m = llmrt.Model(path, threads=1)
    ids = m.tokenize("the theater")
    # merges: "Ġt he" -> "Ġthe"; "t" "he" -> "t he" unmerged ("th e" is no merge)
    toks = [m.tokenizer.tokens[i] for i in ids]
    assert toks[0] == "t" and "Ġthe" in toks
    assert m.detokenize(ids) == "the theater"
    assert m.tokenize("<|im_end|>x") == [2, m.tokenizer.tokens.index("x")]


def test_bad_ids(smollm2):
    with pytest.raises(ValueError, match="outside the vocabulary"):
        smollm2.detokenize([10 ** 9])
    with pytest.raises(TypeError):
        smollm2.tokenize(b"bytes")


# ---- SentencePiece ------------------------------------------------------------------

CORPUS = """The quick brown fox jumps over the lazy dog. A journey of a thousand miles
begins with a single step. To be or not to be, that is the question. All that glitters
is not gold. The early bird catches the worm. Numbers like 12345 and 3.14 appear too.
Unicode: café, naïve, résumé, 東京, Москва.""".split("\n")


@pytest.fixture(scope="module")
def spm_processor():
    # identity normalisation and no whitespace folding: how llama-family
    # sentencepiece models are trained, and what GGUF files describe
    spm = pytest.importorskip("sentencepiece")
    buf = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(CORPUS * 20), model_writer=buf, vocab_size=400,
        model_type="bpe", byte_fallback=True, character_coverage=1.0, num_threads=1,
        add_dummy_prefix=True, remove_extra_whitespaces=False, normalization_rule_name="identity",
        user_defined_symbols=[], control_symbols=["<|im_start|>"], bos_id=1, eos_id=2, unk_id=0)
    return spm.SentencePieceProcessor(model_proto=buf.getvalue())


def _spm_vocab(sp):
    tokens, scores, types = [], [], []
    for i in range(sp.get_piece_size()):
        tokens.append(sp.id_to_piece(i))
        scores.append(sp.get_score(i))
        types.append(2 if sp.is_unknown(i) else 3 if sp.is_control(i) else
                     6 if sp.is_byte(i) else 5 if sp.is_unused(i) else 1)
    return tokens, scores, types


SPM_TEXTS = ["The quick brown fox", "  two leading spaces", "journey  of\tthe\nworm",
             "unseen word: zebra xylophone", "emoji 😀 falls back to bytes",
             "café Москва 東京", "12345 3.14", ""]


@pytest.fixture(scope="module")
def spm_model(spm_processor, tmp_path_factory):
    path = str(tmp_path_factory.mktemp("spm") / "spm.gguf")
    write_model(path, tokenizer="spm", spm_vocab=_spm_vocab(spm_processor), n_layer=1)
    return llmrt.Model(path, threads=1)


@pytest.mark.parametrize("text", SPM_TEXTS)
def test_spm_matches_sentencepiece(spm_processor, spm_model, text):
    ids = spm_model.tokenize(text, add_special=False)
    assert ids == spm_processor.encode(text)
    assert spm_model.detokenize(ids) == spm_processor.decode(ids)


def test_spm_bos_and_control_tokens(spm_processor, spm_model):
    ids = spm_model.tokenize("hello <|im_start|>world")
    assert ids[0] == 1  # add_bos_token
    start = spm_processor.piece_to_id("<|im_start|>")
    assert start in ids
    i = ids.index(start)
    # text after a control token gets no dummy space prefix
    assert spm_model.tokenizer.tokens[ids[i + 1]].startswith("w")
    assert spm_model.detokenize(ids, skip_special=True) == "hello world"  # BOS skipped


def test_spm_streaming_keeps_generated_leading_space(spm_model):
    tok = spm_model.tokenizer
    ids = tok.encode("fox jumps", add_special=False)
    k = next(i for i, t in enumerate(ids) if tok.tokens[t].startswith("\u2581j"))
    d = tok.decoder()  # a continuation: the space before "jumps" is kept
    assert "".join(d.add(i) for i in ids[k:]) + d.flush() == " jumps"
    assert tok.decode(ids[k:]) == "jumps"  # from a sequence start it is not"
