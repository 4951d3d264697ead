"""The server over encoder models (tiny random BERT checkpoints, converted
here): an embedder through `llmrt serve` driven by the official openai
client, a reranker in-process (create_app) on /v1/rerank, /rerank and
/v2/rerank; each answer equal to the model's own, every error in OpenAI's
object, the native calls off the event loop. Needs no torch."""

from __future__ import annotations

import base64
import concurrent.futures as cf
import threading

import httpx
import numpy as np
import pytest

openai = pytest.importorskip("openai")
pytest.importorskip("safetensors")
pytest.importorskip("tokenizers")

from encoder_util import ENC_TEXT, bert_checkpoint, wordpiece_files

import llmrt
from llmrt.convert import convert
from llmrt.testing.server import KEY, start

DOCS = ["Search engines rank documents by relevance to a query.",
        "The quick brown fox jumps over the lazy dog.",
        "A stitch in time saves nine.",
        "Berlin, Paris, Tokyo: cities.",
        "embeddings place similar texts close together"]
QUERY = "rank documents by relevance"
AUTH = {"Authorization": f"Bearer {KEY}"}


def _gguf(root, classifier: int) -> str:
    d = root / ("rerank" if classifier else "embed")
    V = wordpiece_files(d)
    bert_checkpoint(d, V, classifier=classifier)
    out = str(root / f"{d.name}.gguf")
    convert(str(d), out, "f32", progress=False)
    return out


@pytest.fixture(scope="module")
def paths(tmp_path_factory):
    root = tmp_path_factory.mktemp("encoder_server")
    return {"embed": _gguf(root, 0), "rerank": _gguf(root, 1)}


@pytest.fixture(scope="module")
def embedder(paths):
    return llmrt.Model(paths["embed"], threads=1)


@pytest.fixture(scope="module")
def embed_server(paths):
    """`llmrt serve embed.gguf`, as a user starts it."""
    s = start(paths["embed"], "--api-key", KEY, "--threads", "1", "--max-inputs", "6")
    yield s
    s.stop()


@pytest.fixture(scope="module")
def reranker(paths):
    return llmrt.Model(paths["rerank"], threads=1)


@pytest.fixture(scope="module")
def rr(reranker):
    """create_app over the reranker, in-process."""
    from fastapi.testclient import TestClient

    from llmrt.serve import create_app
    with TestClient(create_app(reranker, model_name="rr", max_inputs=8)) as c:
        yield c


def _client(s):
    return openai.OpenAI(base_url=s.url + "/v1", api_key=KEY, max_retries=0, timeout=60)


def _error(r, status, param=None):
    assert r.status_code == status, (r.status_code, r.text)
    err = r.json()["error"]
    assert err["message"] and err["type"], err
    if param is not None:
        assert err["param"] == param, err
    return err


# ---- embeddings ----------------------------------------------------------------------
def test_openai_embeddings_equal_model_embed(embed_server, embedder):
    c = _client(embed_server)
    assert embedder.arch == "bert" and not embedder.is_reranker
    for fmt in ("float", "base64", None):   # None: the client asks for base64 and decodes it
        kw = {"encoding_format": fmt} if fmt else {}
        r = c.embeddings.create(model=embed_server.name, input=DOCS[:3], **kw)
        v = np.array([np.frombuffer(base64.b64decode(d.embedding), "<f4") if fmt == "base64"
                      else d.embedding for d in r.data])
        assert [d.index for d in r.data] == [0, 1, 2]
        np.testing.assert_allclose(v, embedder.embed(DOCS[:3]), atol=1e-5)
        assert r.usage.prompt_tokens == r.usage.total_tokens == \
            sum(len(embedder.tokenize(t)) for t in DOCS[:3])
    one = c.embeddings.create(model=embed_server.name, input=DOCS[0]).data[0].embedding
    np.testing.assert_allclose(one, embedder.embed(DOCS[0])[0], atol=1e-5)
    ids = [embedder.tokenize(t) for t in DOCS[:2]]
    r = c.embeddings.create(model=embed_server.name, input=ids)
    np.testing.assert_allclose([d.embedding for d in r.data], embedder.embed(ids), atol=1e-5)
    assert r.usage.prompt_tokens == sum(map(len, ids))
    r = c.embeddings.create(model=embed_server.name, input=ids[0])   # one list of ids
    np.testing.assert_allclose(r.data[0].embedding, embedder.embed(DOCS[0])[0], atol=1e-5)
    # dimensions: cut and normalised again (Matryoshka, as OpenAI's models)
    r = c.embeddings.create(model=embed_server.name, input=DOCS[:2], dimensions=16)
    want = embedder.embed(DOCS[:2])[:, :16]
    want /= np.linalg.norm(want, axis=1, keepdims=True)
    np.testing.assert_allclose([d.embedding for d in r.data], want, atol=1e-5)


def test_models_tokens_health_metrics(embed_server, embedder):
    c = _client(embed_server)
    assert [m.id for m in c.models.list().data] == [embed_server.name]
    assert httpx.get(embed_server.url + "/health").json() == {"status": "ok"}
    t = httpx.post(embed_server.url + "/tokenize", headers=AUTH, json={"prompt": DOCS[1]}).json()
    assert t["tokens"] == embedder.tokenize(DOCS[1]) and t["count"] == len(t["tokens"])
    assert t["max_model_len"] == embedder.context_length
    d = httpx.post(embed_server.url + "/detokenize", headers=AUTH,
                   json={"tokens": t["tokens"]}).json()
    assert d["prompt"] == embedder.detokenize(t["tokens"])
    info = httpx.get(embed_server.url + "/tokenizer_info", headers=AUTH).json()
    assert info["model_max_length"] == embedder.context_length
    m = httpx.get(embed_server.url + "/metrics", headers=AUTH).text
    assert 'llmrt_requests_total{endpoint="/v1/embeddings",status="200"}' in m
    assert "llmrt_prompt_tokens_total" in m and "llmrt_kv_blocks" not in m


def _post(s, path, body, raw=False):
    if raw:
        return httpx.post(s.url + path, headers={**AUTH, "content-type": "application/json"},
                          content=body)
    return httpx.post(s.url + path, headers=AUTH, json=body)


def test_embedding_errors(embed_server, embedder):
    s, n = embed_server, embedder.n_embd
    _error(_post(s, "/v1/embeddings", {"input": ENC_TEXT}), 400, "input")    # > 40 positions
    _error(_post(s, "/v1/embeddings", {"input": []}), 400, "input")
    _error(_post(s, "/v1/embeddings", {"input": ["a", 3]}), 400, "input")
    _error(_post(s, "/v1/embeddings", {"input": [[1, 2], [10 ** 6]]}), 400, "input")  # vocab
    _error(_post(s, "/v1/embeddings", {"input": "a", "encoding_format": "hex"}), 400,
           "encoding_format")
    for d in (0, n + 1, "8", True):
        _error(_post(s, "/v1/embeddings", {"input": "a", "dimensions": d}), 400, "dimensions")
    _error(_post(s, "/v1/embeddings", {"input": "a", "pooling": "cls"}), 400, "pooling")
    _error(_post(s, "/v1/embeddings", {"input": ["a"] * 7}), 413, "input")   # --max-inputs 6
    _error(_post(s, "/v1/embeddings", b"x" * (9 << 20), raw=True), 413)
    _error(_post(s, "/v1/embeddings", {"input": "a", "model": "gpt-9"}), 404, "model")
    _error(httpx.post(s.url + "/v1/embeddings", json={"input": "a"}), 401)
    err = _error(_post(s, "/v1/rerank", {"query": "q", "documents": ["a"]}), 400, "model")
    assert "classification head" in err["message"]
    # the generation endpoints: a 400 that says what the model is, never a 500
    for path, body in [("/v1/completions", {"prompt": "a"}),
                       ("/v1/chat/completions", {"messages": [{"role": "user", "content": "a"}]}),
                       ("/v1/responses", {"input": "a"})]:
        err = _error(_post(s, path, body), 400, "model")
        assert "embedding model" in err["message"], err
    r = _post(s, "/v1/messages", {"max_tokens": 5, "messages": [{"role": "user", "content": "a"}]})
    assert r.status_code == 400 and "embedding model" in r.json()["error"]["message"]  # Anthropic's
    with pytest.raises(openai.BadRequestError):
        _client(s).chat.completions.create(model=s.name, messages=[{"role": "user",
                                                                      "content": "a"}])
    # and it keeps serving
    assert len(_client(s).embeddings.create(model=s.name, input="ok").data) == 1


# ---- rerank --------------------------------------------------------------------------
def test_rerank_equals_model_rerank(rr, reranker):
    assert reranker.is_reranker
    want = reranker.rerank(QUERY, DOCS)
    ntok = sum(len(reranker.tokenizer.encode_pair(QUERY, d)[0]) for d in DOCS)
    for path in ("/v1/rerank", "/rerank", "/v2/rerank"):
        r = rr.post(path, json={"model": "rr", "query": QUERY, "documents": DOCS})
        assert r.status_code == 200, r.text
        b = r.json()
        assert b["id"].startswith("rerank") and b["model"] == "rr"
        assert b["usage"] == {"prompt_tokens": ntok, "total_tokens": ntok}
        assert [x["index"] for x in b["results"]] == [w.index for w in want]
        np.testing.assert_allclose([x["relevance_score"] for x in b["results"]],
                                   [w.score for w in want], atol=1e-6)
        assert all(0 <= x["relevance_score"] <= 1 for x in b["results"])
        assert [x["document"]["text"] for x in b["results"]] == [DOCS[w.index] for w in want]
    b = rr.post("/v1/rerank", json={"query": QUERY, "documents": DOCS, "top_n": 2,
                                    "return_documents": False}).json()
    assert [x["index"] for x in b["results"]] == [w.index for w in want[:2]]
    assert all("document" not in x for x in b["results"])
    objs = [{"text": d} for d in DOCS]   # Cohere's / Jina's document objects
    b = rr.post("/v1/rerank", json={"query": QUERY, "documents": objs, "top_n": 0}).json()
    assert [x["index"] for x in b["results"]] == [w.index for w in want]   # 0: all (vLLM)
    b = rr.post("/v1/rerank", json={"query": QUERY, "documents": DOCS, "top_n": 99}).json()
    assert len(b["results"]) == len(DOCS)
    b = rr.post("/v1/rerank", json={"query": QUERY, "documents": []}).json()
    assert b["results"] == [] and b["usage"]["total_tokens"] == 0
    # the reranker embeds too (its first token's state); generation is a 400
    e = rr.post("/v1/embeddings", json={"input": DOCS[0]}).json()
    np.testing.assert_allclose(e["data"][0]["embedding"], reranker.embed(DOCS[0])[0], atol=1e-5)
    err = _error(rr.post("/v1/completions", json={"prompt": "a"}), 400, "model")
    assert "reranking model" in err["message"]
    m = rr.get("/metrics").text
    assert 'llmrt_requests_total{endpoint="/rerank",status="200"}' in m


def test_rerank_errors(rr):
    ok = {"query": QUERY, "documents": DOCS}
    cases = [({**ok, "top_n": -1}, 400, "top_n"), ({**ok, "top_n": "2"}, 400, "top_n"),
             ({**ok, "top_n": True}, 400, "top_n"),
             ({**ok, "documents": ["a", 1]}, 400, "documents[1]"),
             ({**ok, "documents": [{"txt": "a"}]}, 400, "documents[0]"),
             ({**ok, "documents": "a"}, 400, "documents"),
             ({"documents": DOCS}, 400, "query"), ({**ok, "query": 5}, 400, "query"),
             ({**ok, "return_documents": "yes"}, 400, "return_documents"),
             ({**ok, "bogus": 1}, 400, "bogus"),
             ({**ok, "instruction": "judge"}, 400, "instruction"),
             ({**ok, "documents": ["a"] * 9}, 413, "documents"),     # max_inputs 8
             ({**ok, "model": "gpt-9"}, 404, "model")]
    for body, status, param in cases:
        _error(rr.post("/v1/rerank", json=body), status, param)
    _error(rr.post("/v1/rerank", content=b"[1, 2]", headers={"content-type": "application/json"}),
           400)
    _error(rr.post("/v1/rerank", content=b"x" * (9 << 20),
                   headers={"content-type": "application/json"}), 413)
    # a document longer than the context is cut, as the reranker's own tokenizer does
    r = rr.post("/v1/rerank", json={"query": QUERY, "documents": [ENC_TEXT, "a"]})
    assert r.status_code == 200 and len(r.json()["results"]) == 2


def test_rerank_runs_off_the_event_loop(rr, reranker, monkeypatch):
    """A rerank held inside the model does not hold the server: other
    requests are answered meanwhile, and concurrent ones all come right."""
    entered, release = threading.Event(), threading.Event()
    real = type(reranker).rerank

    def held(self, *a, **k):
        entered.set()
        release.wait(30)
        return real(self, *a, **k)
    monkeypatch.setattr(type(reranker), "rerank", held)
    with cf.ThreadPoolExecutor(1) as ex:
        slow = ex.submit(rr.post, "/v1/rerank", json={"query": QUERY, "documents": DOCS})
        assert entered.wait(30)
        assert rr.get("/v1/models").json()["data"][0]["id"] == "rr"
        assert rr.post("/tokenize", json={"prompt": "a"}).status_code == 200
        assert not slow.done()
        release.set()
        assert slow.result(60).status_code == 200
    monkeypatch.undo()
    want = [w.index for w in reranker.rerank(QUERY, DOCS)]
    with cf.ThreadPoolExecutor(4) as ex:
        rs = list(ex.map(lambda _: rr.post("/v1/rerank", json={"query": QUERY,
                                                               "documents": DOCS}), range(8)))
    assert all([x["index"] for x in r.json()["results"]] == want for r in rs)


def test_rerank_on_a_decoder(tmp_path):
    """A decoder model reranks where it can (Model.rerank: Qwen3-Reranker's
    yes / no); where it cannot, a 400 in OpenAI's shape."""
    from fastapi.testclient import TestClient
    from testutil import write_model

    from llmrt.serve import create_app
    p = str(tmp_path / "dec.gguf")
    write_model(p, n_layer=1, ctx=256, seed=2)
    m = llmrt.Model(p, threads=1, kv_cache_tokens=1024)
    try:
        want = [w.index for w in m.rerank(QUERY, DOCS[:3])]
    except ValueError:
        want = None
    with TestClient(create_app(m)) as c:
        r = c.post("/v1/rerank", json={"query": QUERY, "documents": DOCS[:3]})
        if want is None:
            _error(r, 400)
        else:
            assert r.status_code == 200, r.text
            assert [x["index"] for x in r.json()["results"]] == want
