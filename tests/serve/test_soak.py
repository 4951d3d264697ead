"""A soak: 2,000 mixed requests (structured output, tools, streams,
embeddings, plain and chat) at concurrency 8 against one server; its
resident memory after warm-up must not grow by 20 MB (each constrained
request once leaked its matcher)."""

from __future__ import annotations

import concurrent.futures as cf
import json

import httpx
import pytest

pytest.importorskip("llguidance")

from testutil import write_tools_model

from llmrt.testing.server import KEY, start

TOOL = {"type": "function", "function": {"name": "add", "parameters": {
    "type": "object", "properties": {"a": {"type": "integer"}, "b": {"type": "integer"}},
    "required": ["a", "b"]}}}
SCHEMA = {"type": "object", "properties": {"n": {"type": "integer"},
                                           "s": {"type": "string", "maxLength": 6}},
          "required": ["n", "s"]}


def rss_mb(pid: int) -> float:
    with open(f"/proc/{pid}/statm") as f:
        return int(f.read().split()[1]) * 4096 / 2**20


def one(url: str, i: int) -> int:
    h = {"Authorization": f"Bearer {KEY}"}
    msgs = [{"role": "user", "content": f"request {i}"}]
    kind = i % 6
    if kind == 0:
        body = {"messages": msgs, "max_tokens": 24, "seed": i, "response_format": {
            "type": "json_schema", "json_schema": {"schema": SCHEMA}}}
    elif kind == 1:
        body = {"messages": msgs, "max_tokens": 40, "seed": i, "tools": [TOOL],
                "tool_choice": "required"}
    elif kind == 2:
        body = {"messages": msgs, "max_tokens": 8, "seed": i, "stream": True,
                "response_format": {"type": "json_object"}}
    elif kind == 3:
        r = httpx.post(url + "/v1/embeddings", headers=h, json={"input": [f"text {i}", "b"]},
                       timeout=60)
        return r.status_code
    elif kind == 4:
        body = {"messages": msgs, "max_tokens": 8, "seed": i, "tools": [TOOL]}
    else:
        r = httpx.post(url + "/v1/completions", headers=h,
                       json={"prompt": f"text {i}", "max_tokens": 8, "echo": True,
                             "logprobs": 1}, timeout=60)
        return r.status_code
    if body.get("stream"):
        with httpx.stream("POST", url + "/v1/chat/completions", headers=h, json=body,
                          timeout=60) as r:
            lines = [x for x in r.iter_lines() if x]
        assert lines[-1] == "data: [DONE]", lines[-3:]
        return r.status_code
    r = httpx.post(url + "/v1/chat/completions", headers=h, json=body, timeout=60)
    if kind == 0 and r.status_code == 200 and r.json()["choices"][0]["finish_reason"] == "stop":
        json.loads(r.json()["choices"][0]["message"]["content"])
    return r.status_code


def test_soak_2000_mixed_requests(tmp_path_factory):
    p = str(tmp_path_factory.mktemp("soak") / "soak.gguf")
    write_tools_model(p, n_layer=1, seed=6)
    s = start(p, "--api-key", KEY, "--threads", "2", "--max-batch-size", "8",
              "--kv-cache-tokens", "4096")
    try:
        with cf.ThreadPoolExecutor(8) as ex:
            codes = list(ex.map(lambda i: one(s.url, i), range(400)))
            warm = rss_mb(s.proc.pid)
            codes += list(ex.map(lambda i: one(s.url, i), range(400, 2000)))
        grown = rss_mb(s.proc.pid) - warm
        print(f"soak: resident {warm:.1f} MB after warm-up, {grown:+.1f} MB after 1600 more")
        assert codes.count(200) == 2000, {c: codes.count(c) for c in set(codes)}
        assert grown < 20, f"resident memory grew {grown:.1f} MB over 1600 requests"
    finally:
        s.stop()
