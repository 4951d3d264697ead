"""`llmrt serve` for agents and evaluation, with the official openai client:
tool calling in every tool_choice mode (streamed and not) on a tiny model
whose chat template takes tools, echo and prompt logprobs equal to
Model.logits, /tokenize and /detokenize, GET /v1/models/{id}; every hostile
request a 4xx in OpenAI's error shape, counted in the metrics; the API key
on /metrics and /docs; a non-streaming request cancelled when its client
goes away."""

from __future__ import annotations

import json
import time

import httpx
import numpy as np
import pytest

openai = pytest.importorskip("openai")
jsonschema = pytest.importorskip("jsonschema")
pytest.importorskip("llguidance")

from testutil import ADD_TOOL as ADD
from testutil import TOOL_SCHEMAS as SCHEMAS
from testutil import TOOLS, write_tools_model
from testutil import WEATHER_ASK as ASK

import llmrt
from llmrt.testing.server import KEY, metric, start


@pytest.fixture(scope="module")
def tools_model(tmp_path_factory):
    p = str(tmp_path_factory.mktemp("tools") / "hermes.gguf")
    write_tools_model(p)
    return p


@pytest.fixture(scope="module")
def srv(tools_model):
    s = start(tools_model, "--api-key", KEY, "--threads", "2", "--max-batch-size", "8",
              "--kv-cache-tokens", "8192")
    yield s
    s.stop()


def client(server):
    return openai.OpenAI(base_url=server.url + "/v1", api_key=KEY, max_retries=0, timeout=60)


def check_calls(calls, allowed=None):
    assert calls
    for c in calls:
        assert c.type == "function" and c.id
        assert allowed is None or c.function.name in allowed
        jsonschema.validate(json.loads(c.function.arguments), SCHEMAS[c.function.name])


def test_tool_choice_required_and_named(srv):
    c = client(srv)
    for seed in range(3):
        r = c.chat.completions.create(model=srv.name, messages=ASK, tools=TOOLS,
                                      tool_choice="required", temperature=1.0, seed=seed,
                                      max_tokens=120)
        ch = r.choices[0]
        assert ch.finish_reason == "tool_calls", ch
        check_calls(ch.message.tool_calls)
        r = c.chat.completions.create(
            model=srv.name, messages=ASK, tools=TOOLS, temperature=1.0, seed=seed,
            tool_choice={"type": "function", "function": {"name": "add"}}, max_tokens=120)
        ch = r.choices[0]
        assert ch.finish_reason == "tool_calls"
        assert len(ch.message.tool_calls) == 1
        check_calls(ch.message.tool_calls, {"add"})


@pytest.mark.parametrize("mode", ["required", "named", "auto", "none"])
def test_tool_calls_streamed_as_openai_sends_them(srv, mode):
    c = client(srv)
    trig = llmrt.Model(srv_model_path(srv), threads=1).tokenizer.special_token_id("<tool_call>")
    kw = dict(model=srv.name, messages=ASK, tools=TOOLS, temperature=1.0, seed=5,
              max_tokens=120)
    if mode == "named":
        kw["tool_choice"] = {"type": "function", "function": {"name": "add"}}
    else:
        kw["tool_choice"] = mode
    if mode in ("auto", "none"):
        kw["logit_bias"] = {str(trig): 100}  # the model starts a call
    calls: dict[int, dict] = {}
    content, finish = "", None
    for ch in c.chat.completions.create(stream=True, **kw):
        d = ch.choices[0].delta
        content += d.content or ""
        for tc in d.tool_calls or []:
            cur = calls.setdefault(tc.index, {"id": None, "name": "", "arguments": ""})
            cur["id"] = tc.id or cur["id"]
            cur["name"] += (tc.function.name or "") if tc.function else ""
            cur["arguments"] += (tc.function.arguments or "") if tc.function else ""
        finish = ch.choices[0].finish_reason or finish
    whole = c.chat.completions.create(**kw).choices[0]
    if mode == "none":  # neither constrained nor parsed: the text as it came
        assert not calls and finish != "tool_calls" and whole.message.tool_calls is None
        assert content == whole.message.content
        return
    assert finish == "tool_calls" and calls and all(x["id"] for x in calls.values())
    assert [(x["name"], x["arguments"]) for x in calls.values()] == \
        [(t.function.name, t.function.arguments) for t in whole.message.tool_calls]
    for x in calls.values():
        jsonschema.validate(json.loads(x["arguments"]), SCHEMAS[x["name"]])
        assert mode != "named" or x["name"] == "add"


def test_tool_choice_auto_and_none(srv):
    c = client(srv)
    # auto: this random model rarely starts a call by itself; with the call's
    # first token made likely, the rest of the call is held to the schema
    ref = llmrt.Model(srv_model_path(srv), threads=1)
    trig = ref.tokenizer.special_token_id("<tool_call>")
    r = c.chat.completions.create(model=srv.name, messages=ASK, tools=TOOLS, tool_choice="auto",
                                  temperature=1.0, seed=1, max_tokens=120,
                                  logit_bias={str(trig): 100})
    ch = r.choices[0]
    assert ch.finish_reason == "tool_calls"
    check_calls(ch.message.tool_calls)
    # and without the push, plain text comes back as content
    r = c.chat.completions.create(model=srv.name, messages=ASK, tools=TOOLS, temperature=0,
                                  max_tokens=8, logit_bias={str(trig): -100})
    assert r.choices[0].message.tool_calls is None and r.choices[0].finish_reason == "length"
    # none: no calls parsed
    r = c.chat.completions.create(model=srv.name, messages=ASK, tools=TOOLS, tool_choice="none",
                                  temperature=0, max_tokens=8)
    assert r.choices[0].message.tool_calls is None


def srv_model_path(server):
    return server.log.rsplit("/", 1)[0] + f"/{server.name}.gguf"


def test_a_conversation_with_tool_results(srv):
    c = client(srv)
    first = c.chat.completions.create(model=srv.name, messages=ASK, tools=TOOLS,
                                      tool_choice="required", temperature=0, max_tokens=120)
    call = first.choices[0].message.tool_calls[0]
    history = ASK + [
        {"role": "assistant", "content": None,
         "tool_calls": [{"id": call.id, "type": "function",
                         "function": {"name": call.function.name,
                                      "arguments": call.function.arguments}}]},
        {"role": "tool", "tool_call_id": call.id, "content": "sunny, 21 C"}]
    r = c.chat.completions.create(model=srv.name, messages=history, tools=TOOLS, temperature=0,
                                  max_tokens=4)
    assert r.usage.prompt_tokens > first.usage.prompt_tokens
    # the history is rendered, not dropped: the call and the result are in the prompt
    toks = httpx.post(srv.url + "/tokenize", headers={"Authorization": f"Bearer {KEY}"},
                      json={"messages": history, "tools": TOOLS}).json()
    text = httpx.post(srv.url + "/detokenize", headers={"Authorization": f"Bearer {KEY}"},
                      json={"tokens": toks["tokens"]}).json()["prompt"]
    assert "<tool_call>" in text and call.function.name in text and "sunny, 21 C" in text
    assert toks["count"] == r.usage.prompt_tokens


def test_echo_logprobs_equal_the_models_logits(srv, tools_model):
    ref = llmrt.Model(tools_model, threads=2)
    prompt = "the cat sat on the mat"
    ids = ref.tokenize(prompt)
    lg = ref.logits(ids).astype(np.float64)
    m = lg.max(axis=1, keepdims=True)
    ls = lg - m - np.log(np.exp(lg - m).sum(axis=1, keepdims=True))
    want = [ls[i - 1, ids[i]] for i in range(1, len(ids))]
    r = client(srv).completions.create(model=srv.name, prompt=prompt, echo=True, logprobs=1,
                                       max_tokens=0, temperature=0)
    lp = r.choices[0].logprobs
    assert r.choices[0].text == prompt
    assert lp.token_logprobs[0] is None and lp.top_logprobs[0] is None
    assert len(lp.token_logprobs) == len(ids)
    np.testing.assert_allclose(lp.token_logprobs[1:], want, atol=2e-4)
    # token ids as the prompt (as lm-evaluation-harness sends them), one more token
    r = client(srv).completions.create(model=srv.name, prompt=ids, echo=True, logprobs=1,
                                       max_tokens=1, temperature=0)
    lp = r.choices[0].logprobs
    assert len(lp.token_logprobs) == len(ids) + 1
    np.testing.assert_allclose(lp.token_logprobs[1:len(ids)], want, atol=2e-4)
    # vLLM's prompt_logprobs
    r = httpx.post(srv.url + "/v1/completions", headers={"Authorization": f"Bearer {KEY}"},
                   json={"prompt": prompt, "max_tokens": 1, "prompt_logprobs": 2}).json()
    plp = r["choices"][0]["prompt_logprobs"]
    assert plp[0] is None and len(plp) == len(ids)
    got = [plp[i][str(ids[i])]["logprob"] for i in range(1, len(ids))]
    np.testing.assert_allclose(got, want, atol=2e-4)
    # Model.score: the same sums
    sc = ref.score("the cat sat on", " the mat")
    n = len(sc.token_ids)
    assert abs(sc.logprob - sum(want[-n:])) < 1e-3


def test_models_by_id_and_tokens(srv):
    h = {"Authorization": f"Bearer {KEY}"}
    assert client(srv).models.retrieve(srv.name).id == srv.name
    with pytest.raises(openai.NotFoundError):
        client(srv).models.retrieve("gpt-9")
    t = httpx.post(srv.url + "/tokenize", headers=h, json={"prompt": "hello world"}).json()
    assert t["count"] == len(t["tokens"]) and t["max_model_len"] == 2048
    assert httpx.post(srv.url + "/detokenize", headers=h,
                      json={"tokens": t["tokens"]}).json()["prompt"] == "hello world"
    assert httpx.post(srv.url + "/detokenize", headers=h,
                      json={"tokens": [10**9]}).status_code == 400


def _post(server, body, path="/v1/chat/completions", raw=False):
    h = {"Authorization": f"Bearer {KEY}"}
    if raw:
        return httpx.post(server.url + path, headers={**h, "content-type": "application/json"},
                          content=body, timeout=60)
    return httpx.post(server.url + path, headers=h, json=body, timeout=60)


HOSTILE = [
    # (path, body (raw bytes or a dict), param or None)
    ("/v1/completions", b'{"prompt": ' + b"[" * 1000 + b"]" * 1000 + b"}", None),
    ("/v1/completions", b'{"prompt": "a", "x": ' + b"[" * 100000 + b"]" * 100000 + b"}", None),
    ("/v1/completions", {"prompt": "a", "model": []}, "model"),
    ("/v1/completions", {"prompt": "a", "model": {"x": 1}}, "model"),
    ("/v1/completions", b'{"prompt": "\\ud800"}', "prompt"),
    ("/v1/chat/completions", b'{"messages": [{"role": "user", "content": "\\udfff"}]}', None),
    ("/v1/completions", b'{"prompt": "a", "stop": ["\\ud800"]}', None),
    ("/v1/completions", {"prompt": "a", "top_k": 2**63}, "top_k"),
    ("/v1/completions", {"prompt": "a", "top_k": 2**64 + 5}, "top_k"),
    ("/v1/completions", {"prompt": "a", "min_tokens": 2**63}, "min_tokens"),
    ("/v1/completions", {"prompt": "a", "logit_bias": {str(2**70): 1}}, "logit_bias"),
    ("/v1/completions", {"prompt": "a", "logit_bias": {"100000": 1}}, "logit_bias"),
    ("/v1/completions", {"prompt": "a", "logit_bias": {"-1": 1}}, "logit_bias"),
    ("/v1/completions", {"prompt": "a", "seed": 2**70}, "seed"),
    ("/v1/completions", {"prompt": "a", "max_tokens": 10**10}, "max_tokens"),
    ("/v1/completions", {"prompt": "a", "max_tokens": 10**9}, "max_tokens"),
    ("/v1/completions", {"prompt": "a", "max_tokens": 2048}, "max_tokens"),
    ("/v1/completions", {"prompt": "a", "max_tokens": 5, "min_tokens": 9}, "min_tokens"),
    ("/v1/completions", {"prompt": "a", "temperature": "hot"}, "temperature"),
    ("/v1/completions", {"prompt": "a", "temperature": 1e308}, "temperature"),
    ("/v1/completions", {"prompt": "a", "n": 10**6}, "n"),
    ("/v1/completions", {"prompt": "a", "stop": ["x"] * 100}, "stop"),
    ("/v1/completions", {"prompt": [10**12]}, "prompt"),
    ("/v1/completions", {"prompt": [5000]}, "prompt"),
    ("/v1/completions", {"prompt": "a", "echo": "yes"}, "echo"),
    ("/v1/completions", {"prompt": "a", "stream": 1}, "stream"),
    ("/v1/chat/completions", {"messages": [{"role": "wizard", "content": "a"}]}, "messages[0]"),
    ("/v1/chat/completions", {"messages": [{"role": "user", "content": 5}]},
     "messages[0].content"),
    ("/v1/chat/completions", {"messages": ASK, "response_format": {
        "type": "json_schema", "json_schema": {"schema": {"$ref": "#"}}}}, "response_format"),
    ("/v1/chat/completions", {"messages": ASK, "tools": [{"type": "function"}]}, "tools[0]"),
    ("/v1/chat/completions", {"messages": ASK, "tools": TOOLS, "tool_choice": "sometimes"},
     "tool_choice"),
    ("/v1/chat/completions", {"messages": ASK, "tools": TOOLS, "tool_choice": {
        "type": "function", "function": {"name": "nope"}}}, "tool_choice"),
    ("/v1/chat/completions", {"messages": ASK, "tool_choice": "required"}, "tool_choice"),
    ("/v1/chat/completions", {"messages": ASK, "tools": [{"type": "function", "function": {
        "name": "f", "strict": True, "parameters": {"type": "object", "properties": {
            "x": {"$ref": "#/nowhere"}}}}}]}, "tools"),
    ("/v1/chat/completions", {"messages": ASK + [{"role": "assistant", "tool_calls": [
        {"id": "1", "type": "function", "function": {"name": "f", "arguments": "{oops"}}]}]},
     "messages[1].tool_calls[0].function.arguments"),
    ("/v1/chat/completions", {"messages": ASK, "functions": [{"name": "f"}]}, "functions"),
    ("/v1/chat/completions", {"messages": ASK, "chat_template_kwargs": {"bos_token": "x"}},
     "chat_template_kwargs"),
    ("/v1/chat/completions", {"messages": ASK, "chat_template_kwargs": [1]},
     "chat_template_kwargs"),
    ("/v1/embeddings", b'{"input": "\\ud800"}', "input"),
]


def test_hostile_requests_are_4xx(srv):
    before = metric_total(srv, "400")
    for path, body, param in HOSTILE:
        r = _post(srv, body, path, raw=isinstance(body, bytes))
        assert 400 <= r.status_code < 500, (path, body if isinstance(body, dict) else body[:60],
                                            r.status_code, r.text[:300])
        err = r.json()["error"]
        assert err["message"] and err["type"] == "invalid_request_error"
        assert "Traceback" not in r.text and "llguidance" not in r.text.lower()
        if param:
            assert err["param"] == param, (body, err)
    assert metric_total(srv, "400") - before >= len(HOSTILE) - 2
    # and the server serves on
    assert client(srv).completions.create(model=srv.name, prompt="ok", max_tokens=2).choices


def metric_total(server, status):
    text = httpx.get(server.url + "/metrics", headers={"Authorization": f"Bearer {KEY}"}).text
    return sum(float(v) for v in
               __import__("re").findall(rf'^llmrt_requests_total{{[^}}]*status="{status}"[^}}]*}} '
                                        rf'(\S+)$', text, __import__("re").M))


def test_max_tokens_default_fits_the_context(srv):
    # no max_tokens: the default is cut to the room the context leaves
    long = [100] * 2040
    r = client(srv).completions.create(model=srv.name, prompt=long, temperature=0,
                                       extra_body={"ignore_eos": True, "max_tokens": None})
    assert r.usage.prompt_tokens == 2040 and r.usage.completion_tokens == 8


def test_api_key_guards_metrics_and_docs(srv):
    for path in ("/metrics", "/docs", "/openapi.json", "/v1/models", "/tokenize"):
        r = httpx.get(srv.url + path) if path != "/tokenize" else \
            httpx.post(srv.url + path, json={"prompt": "a"})
        assert r.status_code == 401, path
        assert r.headers["www-authenticate"] == "Bearer"
    assert httpx.get(srv.url + "/health").status_code == 200
    assert httpx.get(srv.url + "/metrics", headers={"Authorization": f"Bearer {KEY}"}
                     ).status_code == 200
    assert metric_total(srv, "401") >= 4


def test_public_metrics(tools_model):
    s = start(tools_model, "--api-key", KEY, "--public-metrics", "--threads", "1")
    try:
        assert httpx.get(s.url + "/metrics").status_code == 200
        assert httpx.get(s.url + "/docs").status_code == 401
    finally:
        s.stop()


def test_a_client_that_leaves_cancels_its_request(default_model_path):
    # a non-streaming request whose client gives up stops running: its
    # blocks go, and it never finishes (a finished one would count its tokens)
    s = start(default_model_path, "--api-key", KEY, "--threads", "1")
    try:
        with pytest.raises(httpx.TimeoutException):  # ~20 s of work if it ran to the end
            httpx.post(s.url + "/v1/completions", headers={"Authorization": f"Bearer {KEY}"},
                       json={"prompt": "a", "max_tokens": 1900, "ignore_eos": True,
                             "temperature": 0}, timeout=1.0)
        t0 = time.time()
        while time.time() - t0 < 10:
            if metric(s, "llmrt_running_requests") == 0 and metric(s, "llmrt_kv_blocks_used") == 0:
                break
            time.sleep(0.05)
        assert time.time() - t0 < 10
        assert metric(s, "llmrt_kv_blocks_used") == 0
        assert metric(s, "llmrt_generation_tokens_total") == 0
    finally:
        s.stop()


# ---- OpenAI Responses and Anthropic Messages -------------------------------------------
def test_responses_round_trip(srv):
    c = client(srv)
    r = c.responses.create(model=srv.name, input="hello there", instructions="Be brief.",
                           max_output_tokens=6, temperature=0)
    assert r.status == "incomplete" and r.incomplete_details.reason == "max_output_tokens"
    assert r.output_text and r.usage.output_tokens == 6
    # the same text as the chat endpoint gives for the same messages
    chat = c.chat.completions.create(model=srv.name, temperature=0, max_tokens=6, messages=[
        {"role": "system", "content": "Be brief."}, {"role": "user", "content": "hello there"}])
    assert r.output_text == chat.choices[0].message.content
    text0 = r.output_text
    # function tools, required: a function_call item; its output goes back as an input item
    tools = [{"type": "function", "name": "add", "parameters": ADD["function"]["parameters"]}]
    r = c.responses.create(model=srv.name, input=ASK[0]["content"], tools=tools,
                           tool_choice="required", temperature=1.0, max_output_tokens=100)
    calls = [o for o in r.output if o.type == "function_call"]
    assert calls and r.status == "completed"
    jsonschema.validate(json.loads(calls[0].arguments), SCHEMAS["add"])
    r2 = c.responses.create(model=srv.name, tools=tools, max_output_tokens=4, temperature=0,
                            input=[{"role": "user", "content": ASK[0]["content"]},
                                   {"type": "function_call", "call_id": calls[0].call_id,
                                    "name": "add", "arguments": calls[0].arguments},
                                   {"type": "function_call_output",
                                    "call_id": calls[0].call_id, "output": "3"}])
    assert r2.usage.input_tokens > r.usage.input_tokens
    # streamed: typed events, text deltas joined equal the final text
    events = list(c.responses.create(model=srv.name, input="hello there", stream=True,
                                     instructions="Be brief.",
                                     max_output_tokens=6, temperature=0))
    kinds = [e.type for e in events]
    assert kinds[0] == "response.created" and kinds[-1] == "response.completed"
    deltas = "".join(e.delta for e in events if e.type == "response.output_text.delta")
    assert deltas == events[-1].response.output_text == text0
    # a structured text format
    r = c.responses.create(model=srv.name, input="a person", max_output_tokens=60,
                           temperature=0, text={"format": {
                               "type": "json_schema", "name": "p", "schema": {
                                   "type": "object", "properties": {"n": {"type": "integer"}},
                                   "required": ["n"], "additionalProperties": False}}})
    if r.status == "completed":
        assert isinstance(json.loads(r.output_text)["n"], int)
    with pytest.raises(openai.BadRequestError):
        c.responses.create(model=srv.name, input="x", previous_response_id="resp_1")


def test_anthropic_messages_round_trip(srv):
    anthropic = pytest.importorskip("anthropic")
    a = anthropic.Anthropic(base_url=srv.url, api_key=KEY, max_retries=0)
    m = a.messages.create(model=srv.name, max_tokens=6, system="Be brief.", extra_body={"temperature": 0},
                          messages=[{"role": "user", "content": "hello there"}])
    assert m.stop_reason == "max_tokens" and m.content[0].type == "text"
    chat = client(srv).chat.completions.create(
        model=srv.name, extra_body={"temperature": 0}, max_tokens=6,
        messages=[{"role": "system", "content": "Be brief."},
                  {"role": "user", "content": "hello there"}])
    assert m.content[0].text == chat.choices[0].message.content
    assert m.usage.input_tokens == chat.usage.prompt_tokens
    n = a.messages.count_tokens(model=srv.name, system="Be brief.",
                                messages=[{"role": "user", "content": "hello there"}])
    assert n.input_tokens == chat.usage.prompt_tokens
    # tools: any -> a tool_use block, validated; the result goes back as tool_result
    tools = [{"name": "add", "description": "sum", "input_schema": ADD["function"]["parameters"]}]
    m = a.messages.create(model=srv.name, max_tokens=100, extra_body={"temperature": 1.0}, tools=tools,
                          tool_choice={"type": "any"},
                          messages=[{"role": "user", "content": "1 + 2?"}])
    assert m.stop_reason == "tool_use"
    use = [b for b in m.content if b.type == "tool_use"][0]
    jsonschema.validate(use.input, SCHEMAS["add"])
    m2 = a.messages.create(model=srv.name, max_tokens=4, extra_body={"temperature": 0}, tools=tools,
                           messages=[{"role": "user", "content": "1 + 2?"},
                                     {"role": "assistant", "content": [
                                         {"type": "tool_use", "id": use.id, "name": "add",
                                          "input": use.input}]},
                                     {"role": "user", "content": [
                                         {"type": "tool_result", "tool_use_id": use.id,
                                          "content": "3"}]}])
    assert m2.usage.input_tokens > m.usage.input_tokens
    # streamed, and the SDK's accumulated message
    with a.messages.stream(model=srv.name, max_tokens=6, extra_body={"temperature": 0},
                           messages=[{"role": "user", "content": "hello there"}],
                           system="Be brief.") as s:
        text = "".join(s.text_stream)
        final = s.get_final_message()
    assert text == final.content[0].text == chat.choices[0].message.content
    assert final.stop_reason == "max_tokens"
    with a.messages.stream(model=srv.name, max_tokens=100, extra_body={"temperature": 1.0}, tools=tools,
                           tool_choice={"type": "tool", "name": "add"},
                           messages=[{"role": "user", "content": "1 + 2?"}]) as s:
        final = s.get_final_message()
    assert final.stop_reason == "tool_use"
    jsonschema.validate([b for b in final.content if b.type == "tool_use"][0].input,
                        SCHEMAS["add"])
    # errors in Anthropic's shape, and its x-api-key header
    with pytest.raises(anthropic.BadRequestError):
        a.messages.create(model=srv.name, max_tokens=4, messages=[])
    r = httpx.post(srv.url + "/v1/messages", headers={"x-api-key": "wrong"},
                   json={"model": srv.name, "max_tokens": 4, "messages": [
                       {"role": "user", "content": "a"}]})
    assert r.status_code == 401 and r.json()["type"] == "error"
    assert r.json()["error"]["type"] == "authentication_error"


def test_sigterm_drains_then_cancels(default_model_path):
    # a request that would run ~20 s: SIGTERM lets it run --shutdown-timeout
    # seconds, then answers 503 in OpenAI's shape and exits
    import signal
    import threading
    s = start(default_model_path, "--threads", "1", "--shutdown-timeout", "1")
    got = {}

    def req():
        r = httpx.post(s.url + "/v1/completions", timeout=120,
                       json={"prompt": "a", "max_tokens": 1900, "ignore_eos": True})
        got["r"] = r

    t = threading.Thread(target=req)
    t.start()
    time.sleep(1.0)
    t0 = time.time()
    s.proc.send_signal(signal.SIGTERM)
    s.proc.wait(60)
    t.join(60)
    assert time.time() - t0 < 15
    assert got["r"].status_code == 503
    assert "shut down" in got["r"].json()["error"]["message"]
