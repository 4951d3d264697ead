"""Agent and evaluation clients against `llmrt serve`, where they are
installed (none is a dependency): langchain-openai (bind_tools,
with_structured_output by function calling and by JSON schema), instructor
(TOOLS mode), litellm (tools), the openai client's async API."""

from __future__ import annotations

import asyncio

import pytest

pytest.importorskip("openai")
pytest.importorskip("llguidance")
pydantic = pytest.importorskip("pydantic")

from testutil import write_tools_model

from llmrt.testing.server import KEY, start


class Add(pydantic.BaseModel):
    """Add two integers."""
    a: int = pydantic.Field(ge=0, le=100)
    b: int = pydantic.Field(ge=0, le=100)


TOOL = {"type": "function", "function": {"name": "add", "parameters": Add.model_json_schema()}}


@pytest.fixture(scope="module")
def srv(tmp_path_factory):
    p = str(tmp_path_factory.mktemp("clients") / "hc.gguf")
    write_tools_model(p)
    s = start(p, "--threads", "2", "--api-key", KEY)
    yield s
    s.stop()


def test_langchain_openai(srv):
    lc = pytest.importorskip("langchain_openai")
    llm = lc.ChatOpenAI(base_url=srv.url + "/v1", api_key=KEY, model=srv.name, max_tokens=100,
                        temperature=1.0, max_retries=0)
    m = llm.bind_tools([Add], tool_choice="required").invoke("1 + 2?")
    assert m.tool_calls and m.tool_calls[0]["name"] == "Add"
    Add(**m.tool_calls[0]["args"])
    for method in ("function_calling", "json_schema"):
        assert isinstance(llm.with_structured_output(Add, method=method).invoke("1 + 2?"), Add)


def test_instructor_tools_mode(srv):
    instructor = pytest.importorskip("instructor")
    import openai
    cl = instructor.from_openai(openai.OpenAI(base_url=srv.url + "/v1", api_key=KEY),
                                mode=instructor.Mode.TOOLS)
    out = cl.chat.completions.create(model=srv.name, response_model=Add, max_retries=0,
                                     max_tokens=100,
                                     messages=[{"role": "user", "content": "1 + 2?"}])
    assert isinstance(out, Add)


def test_litellm_tools(srv, monkeypatch):
    monkeypatch.setenv("LITELLM_LOCAL_MODEL_COST_MAP", "True")
    litellm = pytest.importorskip("litellm")
    r = litellm.completion(model=f"openai/{srv.name}", api_base=srv.url + "/v1", api_key=KEY,
                           max_tokens=100, messages=[{"role": "user", "content": "1 + 2?"}],
                           tools=[TOOL], tool_choice="required")
    import json
    Add(**json.loads(r.choices[0].message.tool_calls[0].function.arguments))


def test_openai_async_tools(srv):
    import json

    import openai

    async def go():
        c = openai.AsyncOpenAI(base_url=srv.url + "/v1", api_key=KEY, max_retries=0)
        r = await c.chat.completions.create(model=srv.name, tools=[TOOL], tool_choice="required",
                                            messages=[{"role": "user", "content": "hi"}],
                                            max_tokens=100)
        return r.choices[0].message.tool_calls
    calls = asyncio.run(go())
    Add(**json.loads(calls[0].function.arguments))
