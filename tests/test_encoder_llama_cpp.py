"""llama.cpp reads the encoder files llmrt convert writes (where
llama-cpp-python is installed): the same token ids and, in its embedding
mode with the file's pooling, the same embeddings as llmrt's."""

import numpy as np
import pytest
from encoder_util import ENC_TEXT, bert_checkpoint, nomic_checkpoint, wordpiece_files

import llmrt
from llmrt.convert import convert

llama_cpp = pytest.importorskip("llama_cpp")

TEXTS = ["the quick brown fox", "Search engines rank documents by relevance to a query.",
         "numbers like 12345 and 678 appear; symbols #, $, % too!",
         " ".join(ENC_TEXT.split()[:12])]  # under the 40 positions


@pytest.fixture(scope="module", params=["bert", "nomic"])
def files(request, tmp_path_factory):
    root = tmp_path_factory.mktemp("enc_llama")
    d = root / request.param
    V = wordpiece_files(d)
    if request.param == "nomic":
        nomic_checkpoint(d, V)
    else:
        bert_checkpoint(d, V)
    out = {}
    for t in ("f32", "q8_0"):
        out[t] = str(root / f"{request.param}-{t}.gguf")
        convert(str(d), out[t], t, progress=False)
    return out


def _llama(path):
    return llama_cpp.Llama(path, embedding=True, n_ctx=40, n_batch=40, n_ubatch=40,
                           n_threads=2, verbose=False)


@pytest.mark.parametrize("type_name", ["f32", "q8_0"])
def test_llama_cpp_embeds_our_files_as_we_do(files, type_name):
    path = files[type_name]
    m = llmrt.Model(path, threads=2)
    llm = _llama(path)
    for text in TEXTS:
        # its WordPiece reads our vocabulary and special tokens the same way
        ids = m.encoder.token_ids(text, True, False)[0]
        assert llm.tokenize(text.encode(), add_bos=True, special=False) == ids
    ours = m.embed(TEXTS)
    theirs = np.asarray(llm.embed(TEXTS, normalize=True), dtype=np.float64)
    assert theirs.shape == ours.shape
    cos = (ours * theirs).sum(-1) / np.linalg.norm(theirs, axis=-1) / np.linalg.norm(ours, axis=-1)
    # f32: float32 rounding apart; q8_0: both quantize the activations their
    # own way (llama.cpp to 8-bit blocks too), same weights
    assert cos.min() >= (0.99999 if type_name == "f32" else 0.999), cos
