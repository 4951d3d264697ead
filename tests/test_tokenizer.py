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


# ---- the o200k split (gpt-4o; gpt-oss's o200k_harmony) -----------------------------

O200K_TEXTS = ["HelloWorld CamelCaseString XMLHttpRequest iPhone McDonald's",
               "They're here, we'll see; I'VE DONE it, don't WE'LL",
               "1234567 and 12 and 3.14159 and 1,000,000",
               "line one\nline two\r\n\n  indented\n\n\n   trailing   ",
               "path/to/file and a//b, http://x.y/z/\nnext ./run.sh --flag=1",
               "naïve café Ελληνικά 日本語 Привет мир ǅemal",
               "emoji 😀🎉👍🏽 done!!! ...\n",
               "tabs\tand   spaces \t\n x", ""]


@pytest.fixture(scope="module")
def o200k_bpe():
    """A byte-level BPE trained by Hugging Face tokenizers with tokenizer.json's
    gpt-oss pre-tokenizer (the o200k Split, then ByteLevel without its regex)."""
    tokenizers = pytest.importorskip("tokenizers")
    from tokenizers import Regex, decoders, models, pre_tokenizers, trainers

    from llmrt.tokenizer import O200K_SPLIT
    tk = tokenizers.Tokenizer(models.BPE())
    tk.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(O200K_SPLIT), behavior="isolated"),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)])
    tk.decoder = decoders.ByteLevel()
    tk.train_from_iterator(O200K_TEXTS * 5 + CORPUS * 5, trainers.BpeTrainer(
        vocab_size=700, special_tokens=["<|endoftext|>", "<|start|>", "<|end|>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False))
    return tk


def _llmrt_bpe(tk, pre):
    vocab = tk.get_vocab()
    tokens = [t for t, _ in sorted(vocab.items(), key=lambda x: x[1])]
    specials = {"<|endoftext|>", "<|start|>", "<|end|>"}
    merges = json.loads(tk.to_str())["model"]["merges"]
    return llmrt.Tokenizer.from_metadata({
        "tokenizer.ggml.model": "gpt2", "tokenizer.ggml.pre": pre,
        "tokenizer.ggml.tokens": tokens,
        "tokenizer.ggml.token_type": [3 if t in specials else 1 for t in tokens],
        "tokenizer.ggml.merges": [m if isinstance(m, str) else " ".join(m) for m in merges]})


def test_o200k_split_matches_hugging_face(o200k_bpe):
    tok = _llmrt_bpe(o200k_bpe, "gpt-4o")
    for text in O200K_TEXTS + ["<|start|>user<|end|>Don'tStop 99999/"]:
        ids = tok.encode(text, add_special=False)
        assert ids == o200k_bpe.encode(text).ids, text
        assert tok.decode(ids) == text


def test_o200k_split_differs_from_gpt2_and_llama3(o200k_bpe):
    from tokenizers import Regex, pre_tokenizers

    from llmrt.tokenizer import LLAMA3_SPLIT, O200K_SPLIT

    def pieces(pat, text):
        return [p for p, _ in pre_tokenizers.Split(Regex(pat), behavior="isolated")
                .pre_tokenize_str(text)]
    assert pieces(O200K_SPLIT, "CamelCase they're 1234567") == \
        ["Camel", "Case", " they're", " ", "123", "456", "7"]
    assert pieces(LLAMA3_SPLIT, "CamelCase they're") == ["CamelCase", " they", "'re"]
    # the same vocabulary split as llama3 / GPT-2 gives other tokens for some texts
    o200k = _llmrt_bpe(o200k_bpe, "gpt-4o")
    for pre in ("llama-bpe", "default"):
        other = _llmrt_bpe(o200k_bpe, pre)
        differ = [t for t in O200K_TEXTS
                  if other.encode(t, add_special=False) != o200k.encode(t, add_special=False)]
        assert O200K_TEXTS[0] in differ and O200K_TEXTS[1] in differ, (pre, differ)


def test_convert_names_the_o200k_split(o200k_bpe):
    from llmrt.convert_tokenizer import _pre_name
    assert _pre_name(json.loads(o200k_bpe.to_str()), {}) == "gpt-4o"


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
