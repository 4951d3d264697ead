"""`llmrt serve` as a real server on 127.0.0.1, driven with the official
openai client: completions, chat, streaming, n, stop, seeds, logprobs,
embeddings, every error with its status, the API key; 64 concurrent streams
through a batch of 16, each equal to the request sent alone; clients that go
away mid-stream leave no KV blocks in use."""

from __future__ import annotations

import base64
import concurrent.futures as cf
import json
import re

import httpx
import numpy as np
import pytest

openai = pytest.importorskip("openai")

import llmrt
from llmrt.testing.server import KEY, metric, start

MSGS = [{"role": "user", "content": "hello there"}]


def client(server, key=KEY):
    return openai.OpenAI(base_url=server.url + "/v1", api_key=key, max_retries=0, timeout=60)


def test_models_and_health(api):
    assert httpx.get(api.url + "/health").json() == {"status": "ok"}
    ids = [m.id for m in client(api).models.list().data]
    assert ids[0] == api.name and set(ids[1:]) <= {"tuned"}  # the Ray one serves an adapter


def test_completion_equals_generate(api, ref):
    c = client(api)
    r = c.completions.create(model=api.name, prompt="the quick brown", max_tokens=12,
                             temperature=0)
    want = ref.generate("the quick brown", max_new_tokens=12)
    assert r.choices[0].text == want.text
    assert r.choices[0].finish_reason == want.finish_reason
    assert r.usage.prompt_tokens == want.prompt_tokens
    assert r.usage.completion_tokens == len(want.token_ids)
    assert r.usage.total_tokens == r.usage.prompt_tokens + r.usage.completion_tokens


def test_chat_equals_model_chat(api, ref):
    c = client(api)
    r = c.chat.completions.create(model=api.name, messages=MSGS, max_tokens=10,
                                  temperature=0)
    want = ref.chat(MSGS, max_new_tokens=10)
    assert r.choices[0].message.role == "assistant"
    assert r.choices[0].message.content == want.text
    assert r.object == "chat.completion"


def test_streams_join_to_the_result(api):
    c = client(api)
    kw = dict(model=api.name, max_tokens=16, temperature=0.8, seed=5)
    full = c.chat.completions.create(messages=MSGS, **kw).choices[0].message.content
    chunks = list(c.chat.completions.create(messages=MSGS, stream=True,
                                            stream_options={"include_usage": True}, **kw))
    text = "".join(ch.choices[0].delta.content or "" for ch in chunks if ch.choices)
    assert text == full
    finals = [ch for ch in chunks if ch.choices and ch.choices[0].finish_reason]
    assert len(finals) == 1
    assert chunks[-1].usage is not None and chunks[-1].usage.completion_tokens > 0
    full = c.completions.create(prompt="once upon", **kw).choices[0].text
    text = "".join(ch.choices[0].text for ch in
                   c.completions.create(prompt="once upon", stream=True, **kw) if ch.choices)
    assert text == full


def test_n_stop_seed_logprobs(api, ref):
    c = client(api)
    r = c.completions.create(model=api.name, prompt="abc", n=2, max_tokens=10,
                             temperature=1.0, seed=11)
    assert [ch.index for ch in r.choices] == [0, 1]
    want = ref.generate("abc", n=2, max_new_tokens=10, temperature=1.0, seed=11)
    assert [ch.text for ch in r.choices] == [w.text for w in want]
    again = c.completions.create(model=api.name, prompt="abc", n=2, max_tokens=10,
                                 temperature=1.0, seed=11)
    assert [ch.text for ch in again.choices] == [ch.text for ch in r.choices]
    # stop: cut where the greedy text has it
    text = ref.generate("the quick brown", max_new_tokens=16, ignore_eos=True).text
    stop = text[4:7]
    r = c.completions.create(model=api.name, prompt="the quick brown", max_tokens=16,
                             temperature=0, stop=[stop], extra_body={"ignore_eos": True})
    assert r.choices[0].text == text[:text.find(stop)]
    assert r.choices[0].finish_reason == "stop"
    # logprobs: the model's log-probabilities of the chosen tokens
    r = c.completions.create(model=api.name, prompt="xyz", max_tokens=5, temperature=0,
                             logprobs=2)
    want = ref.generate("xyz", max_new_tokens=5, logprobs=2)
    lp = r.choices[0].logprobs
    assert lp.token_logprobs == pytest.approx([x.logprob for x in want.logprobs], abs=1e-6)
    # the top alternatives, keyed by their text (two tokens of one text share a key)
    for t, w in zip(lp.top_logprobs, want.logprobs):
        assert 1 <= len(t) <= 2 and max(t.values()) == pytest.approx(w.top[0][1], abs=1e-6)
    r = c.chat.completions.create(model=api.name, messages=MSGS, max_tokens=5,
                                  temperature=0, logprobs=True, top_logprobs=3)
    content = r.choices[0].logprobs.content
    assert len(content) >= 1 and all(len(x.top_logprobs) == 3 for x in content)


def test_extras_and_min_tokens(api, ref):
    c = client(api)
    kw = dict(top_k=5, min_p=0.05, typical_p=0.9, repetition_penalty=1.3, min_tokens=4)
    r = c.completions.create(model=api.name, prompt="hello", max_tokens=8, temperature=0.7,
                             seed=3, extra_body=kw)
    want = ref.generate("hello", max_new_tokens=8, temperature=0.7, seed=3, top_k=5, min_p=0.05,
                        typical_p=0.9, repetition_penalty=1.3, min_new_tokens=4)
    assert r.choices[0].text == want.text


SCHEMA = {"type": "object", "properties": {
    "name": {"type": "string", "maxLength": 8},
    "n": {"type": "integer", "minimum": 0, "maximum": 99},
    "tags": {"type": "array", "items": {"enum": ["a", "b"]}, "maxItems": 2}},
    "required": ["name", "n", "tags"], "additionalProperties": False}


def test_response_format_on_both_endpoints(api, ref):
    jsonschema = pytest.importorskip("jsonschema")
    c = client(api)
    rf = {"type": "json_schema", "json_schema": {"name": "thing", "schema": SCHEMA}}
    r = c.chat.completions.create(model=api.name, messages=MSGS, max_tokens=80, temperature=0,
                                  response_format=rf)
    text = r.choices[0].message.content
    jsonschema.validate(json.loads(text), SCHEMA)
    assert r.choices[0].finish_reason == "stop"
    assert text == ref.chat(MSGS, max_new_tokens=80, response_format=rf).text
    # sampled and streamed, n = 2: each choice valid
    r = c.chat.completions.create(model=api.name, messages=MSGS, max_tokens=80, temperature=1.0,
                                  seed=3, n=2, response_format=rf)
    for ch in r.choices:
        jsonschema.validate(json.loads(ch.message.content), SCHEMA)
    chunks = c.chat.completions.create(model=api.name, messages=MSGS, max_tokens=80,
                                       temperature=1.0, seed=4, stream=True,
                                       response_format={"type": "json_object"})
    json.loads("".join(ch.choices[0].delta.content or "" for ch in chunks if ch.choices))
    # completions take it too (a regex here)
    r = c.completions.create(model=api.name, prompt="code:", max_tokens=12, temperature=1.0,
                             seed=5, extra_body={"response_format": {
                                 "type": "regex", "pattern": "[A-Z]{2}-[0-9]{3}"}})
    assert re.fullmatch("[A-Z]{2}-[0-9]{3}", r.choices[0].text)


def test_embeddings(api, ref):
    c = client(api)
    r = c.embeddings.create(model=api.name, input=["a cat", "a cat", "the stock market"])
    v = np.array([d.embedding for d in r.data])
    assert v.shape == (3, ref.config["n_embd"])
    assert float(v[0] @ v[1]) == pytest.approx(1.0, abs=1e-5)
    np.testing.assert_allclose(v, ref.embed(["a cat", "a cat", "the stock market"]), atol=1e-5)
    assert r.usage.prompt_tokens == sum(len(ref.tokenize(t)) for t in ["a cat"] * 2 +
                                        ["the stock market"])
    raw = httpx.post(api.url + "/v1/embeddings", headers={"Authorization": f"Bearer {KEY}"},
                     json={"input": "a cat", "encoding_format": "base64"}).json()
    b64 = np.frombuffer(base64.b64decode(raw["data"][0]["embedding"]), "<f4")
    np.testing.assert_allclose(b64, v[0], atol=1e-6)


def _post(server, path, body, key=KEY, raw=False):
    h = {"Authorization": f"Bearer {key}"} if key else {}
    if raw:
        return httpx.post(server.url + path, headers={**h, "content-type": "application/json"},
                          content=body)
    return httpx.post(server.url + path, headers=h, json=body)


@pytest.fixture(params=["one process", "ray, 2 replicas"])
def err_server(request, server):
    return server if request.param == "one process" else request.getfixturevalue("ray_server")


def test_errors_in_openais_shape(err_server):
    server = err_server
    cases = [
        (_post(server, "/v1/completions", b"{not json", raw=True), 400, None),
        (_post(server, "/v1/completions", {"prompt": "a", "temperature": -1}), 400,
         "temperature"),
        (_post(server, "/v1/completions", {"prompt": "a", "max_tokens": "x"}), 400, "max_tokens"),
        (_post(server, "/v1/completions", {"prompt": "a", "bogus": 1}), 400, "bogus"),
        (_post(server, "/v1/completions", {"prompt": 5}), 400, "prompt"),
        (_post(server, "/v1/chat/completions", {"messages": []}), 400, "messages"),
        (_post(server, "/v1/completions", {"prompt": "word " * 600}), 400, None),  # > context
        (_post(server, "/v1/completions", {"prompt": "a"}, key=None), 401, None),
        (_post(server, "/v1/completions", {"prompt": "a"}, key="wrong"), 401, None),
        (_post(server, "/v1/completions", {"prompt": "a", "model": "gpt-9"}), 404, "model"),
        (_post(server, "/v1/embeddings", {"input": "a", "encoding_format": "hex"}), 400,
         "encoding_format"),
        (_post(server, "/v1/completions", b"x" * (9 << 20), raw=True), 413, None),
        (_post(server, "/v1/chat/completions", {"messages": MSGS, "response_format": {
            "type": "json_schema", "json_schema": {"schema": {"type": "strin"}}}}), 400,
         "response_format"),
        (_post(server, "/v1/completions", {"prompt": "a", "response_format": {
            "type": "regex", "pattern": "(a"}}), 400, "response_format"),
        (_post(server, "/v1/completions", {"prompt": "a", "response_format": "json"}), 400,
         "response_format"),
        (httpx.get(server.url + "/v1/nothing", headers={"Authorization": f"Bearer {KEY}"}), 404,
         None),
    ]
    for r, status, param in cases:
        assert r.status_code == status, (r.status_code, r.text)
        err = r.json()["error"]
        assert err["message"] and "type" in err
        if param:
            assert err["param"] == param, err
    # the openai client raises its own error types for them
    with pytest.raises(openai.AuthenticationError):
        client(server, key="wrong").models.list()
    with pytest.raises(openai.NotFoundError):
        client(server).completions.create(model="gpt-9", prompt="a")
    with pytest.raises(openai.BadRequestError):
        client(server).completions.create(model=server.name, prompt="a", temperature=-2)
    # and the server keeps serving after all of them
    assert client(server).completions.create(model=server.name, prompt="ok", max_tokens=2,
                                             temperature=0).choices[0].text is not None


def test_queue_full_is_503_with_retry_after(small_server):
    # the small server runs one request and queues none
    # 16000 tokens of the tiny model: seconds, while the next request arrives
    long = dict(model=small_server.name, prompt="a", max_tokens=16000, temperature=0,
                extra_body={"ignore_eos": True})
    c = openai.OpenAI(base_url=small_server.url + "/v1", api_key="x", max_retries=0)
    stream = c.completions.create(stream=True, **long)
    next(iter(stream))
    r = httpx.post(small_server.url + "/v1/completions", json={"prompt": "b", "max_tokens": 2})
    assert r.status_code == 503 and r.headers["retry-after"] == "1"
    assert r.json()["error"]["type"] == "server_overloaded"
    stream.close()
    # once the stream's client is gone, its place is free again
    import time
    for _ in range(100):
        r = httpx.post(small_server.url + "/v1/completions", json={"prompt": "b",
                                                                   "max_tokens": 2})
        if r.status_code == 200:
            break
        time.sleep(0.1)
    assert r.status_code == 200


def test_64_concurrent_streams_through_a_batch_of_16(server, ref):
    # every request completes with the output it has alone (batch-invariant
    # kernels), nothing lost or duplicated
    prompts = [f"request {i} says" for i in range(64)]
    kws = [dict(max_tokens=12 + i % 9, temperature=0.0 if i % 2 else 0.9, seed=i)
           for i in range(64)]
    want = [ref.generate(p, max_new_tokens=k["max_tokens"], temperature=k["temperature"],
                         seed=k["seed"]).text for p, k in zip(prompts, kws)]

    def one(i):
        c = client(server)
        s = c.completions.create(model=server.name, prompt=prompts[i], stream=True, **kws[i])
        return "".join(ch.choices[0].text for ch in s if ch.choices)

    with cf.ThreadPoolExecutor(64) as ex:
        got = list(ex.map(one, range(64)))
    assert got == want
    assert metric(server, "llmrt_kv_blocks_used") == 0


def test_clients_that_disconnect_free_their_blocks(server):
    def one(i):
        with httpx.stream("POST", server.url + "/v1/completions",
                          headers={"Authorization": f"Bearer {KEY}"},
                          json={"prompt": f"client {i}", "max_tokens": 300, "stream": True,
                                "temperature": 0, "ignore_eos": True}) as r:
            for k, _ in enumerate(r.iter_lines()):
                if k >= 4:
                    break  # goes away mid-stream
        return True

    with cf.ThreadPoolExecutor(10) as ex:
        assert all(ex.map(one, range(10)))
    for _ in range(100):
        if metric(server, "llmrt_kv_blocks_used") == 0 and \
                metric(server, "llmrt_running_requests") == 0:
            break
        import time
        time.sleep(0.1)
    assert metric(server, "llmrt_kv_blocks_used") == 0
    assert metric(server, "llmrt_running_requests") == 0


def test_metrics(server):
    text = httpx.get(server.url + "/metrics", headers={"Authorization": f"Bearer {KEY}"}).text
    for name in ("llmrt_requests_total", "llmrt_prompt_tokens_total",
                 "llmrt_generation_tokens_total", "llmrt_queue_depth", "llmrt_running_requests",
                 "llmrt_kv_blocks_used", "llmrt_prefix_cache_hit_rate",
                 "llmrt_time_to_first_token_seconds_bucket",
                 "llmrt_time_per_output_token_seconds_bucket"):
        assert name in text, name
    assert metric(server, "llmrt_generation_tokens_total") > 0
    json.dumps(text)  # plain text


def test_a_conversation_stays_on_the_replica_with_its_prefix(ray_server):
    # the same first messages route to the same replica, whose prefix cache
    # then holds them: every request after the first finds its prompt's
    # blocks cached (by chance, with two replicas: 1 in 2 each)
    c = client(ray_server)
    system = {"role": "system", "content": "You answer questions about rivers. " * 12}
    first = {"role": "user", "content": "Which is the longest?"}
    cached = []
    for i in range(6):
        msgs = [system, first, {"role": "assistant", "content": "The Nile."},
                {"role": "user", "content": f"And number {i}?"}]
        r = c.chat.completions.create(model=ray_server.name, messages=msgs, max_tokens=2,
                                      temperature=0)
        cached.append(r.usage.prompt_tokens_details.cached_tokens)
    assert all(x > 0 for x in cached[1:]), cached


def test_prefix_router_ranks_replicas():
    pytest.importorskip("ray.serve")
    import asyncio
    from types import SimpleNamespace

    from llmrt.serve.ray_serve import PrefixAffinityRouter, prefix_key

    loads = {"a": 0, "b": 0, "c": 0}

    class Router(PrefixAffinityRouter):  # the queue lengths Ray would report
        replica_queue_len_cache = SimpleNamespace(get=lambda rid: loads[rid.unique_id])
    router = Router.__new__(Router)
    reps = [SimpleNamespace(replica_id=SimpleNamespace(unique_id=u)) for u in "abc"]

    def choose(key):
        pending = SimpleNamespace(kwargs={"prefix_key": key})
        return asyncio.run(router.choose_replicas(reps, pending))
    k1 = prefix_key("chat", {"messages": [{"role": "user", "content": "hi"}]})
    assert k1 == prefix_key("chat", {"messages": [{"role": "user", "content": "hi"}],
                                     "temperature": 1})
    home = choose(k1)[0][0]
    assert all(choose(k1)[0][0] is home for _ in range(5))  # the same replica each time
    homes = {choose(f"key{i}")[0][0].replica_id.unique_id for i in range(30)}
    assert homes == {"a", "b", "c"}  # keys spread over the replicas
    loads[home.replica_id.unique_id] = 20  # overloaded: the least busy instead
    assert choose(k1)[0][0] is not home
    assert choose(None) == [sorted(reps, key=lambda r: loads[r.replica_id.unique_id])]


def test_the_default_model_through_the_server(default_model_path):
    # SmolLM2's own chat template (ChatML) and end-of-turn token over HTTP
    from llmrt.testing.server import start
    s = start(default_model_path, "--batch-invariant", "--threads", "2",
              "--context-length", "2048", "--kv-cache-tokens", "4096")
    try:
        ref = llmrt.Model(default_model_path, threads=2, context_length=2048,
                          kv_cache_tokens=4096, batch_invariant=True)
        msgs = [{"role": "user", "content": "What is the capital of France?"}]
        c = openai.OpenAI(base_url=s.url + "/v1", api_key="x", max_retries=0)
        r = c.chat.completions.create(model=s.name, messages=msgs, max_tokens=40, temperature=0)
        want = ref.chat(msgs, max_new_tokens=40)
        assert r.choices[0].message.content == want.text
        assert r.choices[0].finish_reason == want.finish_reason
        assert want.text
        # held to a JSON Schema over HTTP, as in Python
        rf = {"type": "json_schema", "json_schema": {"name": "answer", "schema": {
            "type": "object", "properties": {"city": {"type": "string", "maxLength": 20},
                                             "country": {"type": "string", "maxLength": 20}},
            "required": ["city", "country"]}}}
        r = c.chat.completions.create(model=s.name, messages=msgs, max_tokens=40, temperature=0,
                                      response_format=rf)
        assert r.choices[0].message.content == ref.chat(msgs, max_new_tokens=40,
                                                        response_format=rf).text
        assert set(json.loads(r.choices[0].message.content)) == {"city", "country"}
    finally:
        s.stop()


def test_lora_adapters_served_as_model_names(model_path, peft_adapter):
    # --lora name=path: the adapter's name is a model id; its requests run
    # through the adapter, the base name's without, in one batch
    ref = llmrt.Model(model_path, threads=1, kv_cache_tokens=4096)
    aid = ref.load_lora(peft_adapter)
    s = start(model_path, "--threads", "1", "--lora", f"tuned={peft_adapter}")
    try:
        _check_lora_names(s, ref, aid, {})
    finally:
        s.stop()


def _check_lora_names(s, ref, aid, headers):
    ids = [m["id"] for m in httpx.get(s.url + "/v1/models", headers=headers).json()["data"]]
    assert ids == [s.name, "tuned"]
    for name, lora in ((s.name, None), ("tuned", aid)):
        r = httpx.post(s.url + "/v1/completions", headers=headers, json={
            "model": name, "prompt": "a b c", "max_tokens": 12, "temperature": 0,
            "ignore_eos": True}, timeout=60)
        assert r.status_code == 200, r.text
        want = ref.generate("a b c", max_new_tokens=12, ignore_eos=True, lora=lora).text
        assert r.json()["choices"][0]["text"] == want, name
    r = httpx.post(s.url + "/v1/completions", headers=headers,
                   json={"model": "other", "prompt": "a"})
    assert r.status_code == 404 and "tuned" in r.json()["error"]["message"]


def test_lora_adapters_on_every_replica(ray_server, model_path, peft_adapter):
    # each replica loads the adapters; the ingress knows their names
    ref = llmrt.Model(model_path, threads=1, kv_cache_tokens=4096, batch_invariant=True)
    aid = ref.load_lora(peft_adapter)
    _check_lora_names(ray_server, ref, aid, {"Authorization": f"Bearer {KEY}"})

def _replica_pids(root: int):
    """The replica processes descending from the server process `root`."""
    import subprocess
    out = subprocess.run(["ps", "-eo", "pid,ppid,args"], capture_output=True, text=True).stdout
    parent, cands = {}, []
    for line in out.splitlines()[1:]:
        pid, ppid, *args = line.split(None, 2)
        parent[int(pid)] = int(ppid)
        if args and "ServeReplica" in args[0] and "llmrt-replica" in args[0]:
            cands.append(int(pid))

    def under(pid: int) -> bool:
        for _ in range(64):
            if pid == root:
                return True
            if pid not in parent or pid <= 1:
                return False
            pid = parent[pid]
        return False
    return [p for p in cands if under(p)]


def test_a_replica_killed_mid_load_fails_only_its_own_requests(ray_server):
    # (last: the replica it kills is restarted by Ray Serve)
    import os
    import signal
    import time
    pids = _replica_pids(ray_server.proc.pid)
    if len(pids) != 2:
        pytest.skip(f"replica processes not found by name ({pids})")
    h = {"Authorization": f"Bearer {KEY}"}

    def one(i):
        lines = []
        try:
            with httpx.stream("POST", ray_server.url + "/v1/completions", headers=h, timeout=60,
                              json={"prompt": f"load {i}", "max_tokens": 400, "stream": True,
                                    "temperature": 0, "ignore_eos": True}) as r:
                for line in r.iter_lines():
                    if line:
                        lines.append(line)
        except httpx.HTTPError as e:  # the connection cut: also visible, not silent
            return ("cut", repr(e))
        if lines and lines[-1] == "data: [DONE]":
            return ("done", None)
        err = [x for x in lines if x.startswith("data: ") and '"error"' in x]
        return ("error", err[-1] if err else lines[-3:])

    with cf.ThreadPoolExecutor(8) as ex:
        futs = [ex.submit(one, i) for i in range(8)]
        time.sleep(1.0)
        os.kill(pids[0], signal.SIGKILL)
        got = [f.result() for f in futs]
    kinds = [k for k, _ in got]
    print("streams:", kinds)
    # every stream ended visibly: [DONE], or an error event / a cut connection
    for k, detail in got:
        assert k in ("done", "error", "cut"), detail
        if k == "error":
            assert isinstance(detail, str) and "failed" in detail, detail
            assert "Traceback" not in detail and "actor" not in detail.lower()
    assert kinds.count("done") >= 1, got  # the other replica's finished
    # and the next requests succeed
    t0 = time.time()
    ok = 0
    while time.time() - t0 < 120 and ok < 4:
        r = httpx.post(ray_server.url + "/v1/completions", headers=h, timeout=60,
                       json={"prompt": "after", "max_tokens": 4})
        ok = ok + 1 if r.status_code == 200 else 0
        if r.status_code != 200:
            assert r.status_code in (500, 503), r.text
            assert "Traceback" not in r.text
            time.sleep(0.5)
    assert ok == 4
