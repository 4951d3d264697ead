"""A decoder reranks as Qwen3-Reranker does (P("yes") after its judging
prompt), and embeds with the pooling its file names."""

import numpy as np
import pytest

import llmrt
from llmrt.rerank import PROMPT_HEAD, PROMPT_TAIL


def test_scores_are_p_yes_of_the_last_position(smollm2_f32):
    m = smollm2_f32
    q = "What is the capital of France?"
    docs = ["Paris is the capital and largest city of France.", "Bananas are yellow.",
            "The Eiffel Tower stands in Paris."]
    res = m.rerank(q, docs, instruction="Find the answer", return_documents=True)
    yes, no = m.tokenize("yes", add_special=False)[0], m.tokenize("no", add_special=False)[0]
    ref = []
    for d in docs:
        text = f"{PROMPT_HEAD}<Instruct>: Find the answer\n<Query>: {q}\n<Document>: {d}{PROMPT_TAIL}"
        lg = m.logits(m.tokenize(text, add_special=False))[-1].astype(np.float64)
        ref.append(1 / (1 + np.exp(lg[no] - lg[yes])))
    got = {r.index: r.score for r in res}
    assert np.allclose([got[i] for i in range(len(docs))], ref, atol=1e-4)
    assert [r.index for r in res] == sorted(range(len(docs)), key=lambda i: -ref[i])
    assert [r.document for r in res] == [docs[r.index] for r in res]
    assert len(m.rerank(q, docs, top_n=1)) == 1 and m.rerank(q, []) == []
    with pytest.raises(TypeError):
        m.rerank(q, "one string")
    with pytest.raises(ValueError):
        m.rerank(q, docs, top_n=-2)


def test_embed_pools_as_the_file_says(default_model_path):
    # a Qwen3-Embedding-style file names last-token pooling (pooling_type 3)
    m = llmrt.Model(default_model_path, threads=2)
    m.metadata = dict(m.metadata, **{"llama.pooling_type": 3})
    texts = ["a short text", "another one, a little longer"]
    assert np.array_equal(m.embed(texts), m.embed(texts, pooling="last"))
    assert not np.allclose(m.embed(texts), m.embed(texts, pooling="mean"))
    h = m.embed(texts, pooling="cls", normalize=False)
    assert h.shape == (2, m.config["n_embd"])
