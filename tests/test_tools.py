"""Tool calling in Python: chat(tools=...) in every tool_choice mode on a
tiny model whose template takes tools, the calls held to their schemas by
grammar; each family's format parsed (Hermes / Qwen, Llama 3, Mistral, the
generic fallback), streamed text that holds back a call, the lazy grammar
that wakes at the call's trigger."""

from __future__ import annotations

import json

import pytest

pytest.importorskip("llguidance")
jsonschema = pytest.importorskip("jsonschema")

from testutil import HERMES, TOOLS, write_model, write_tools_model  # noqa: E402
from testutil import TOOL_SCHEMAS as SCHEMAS  # noqa: E402
from testutil import WEATHER_ASK as ASK  # noqa: E402
from testutil import WEATHER_TOOL as WEATHER  # noqa: E402

import llmrt  # noqa: E402
from llmrt import tool_use as U  # noqa: E402
from llmrt import tools as T  # noqa: E402


@pytest.fixture(scope="module")
def hermes_model(tmp_path_factory):
    p = str(tmp_path_factory.mktemp("tools") / "hermes.gguf")
    write_tools_model(p)
    return llmrt.Model(p, threads=2)


@pytest.fixture(scope="module")
def plain_model(tmp_path_factory):
    """A ChatML model without tools in its template: the generic format."""
    p = str(tmp_path_factory.mktemp("tools") / "plain.gguf")
    write_model(p, wtype="Q8_0", n_layer=2, ctx=2048, tied=False, seed=5)
    return llmrt.Model(p, threads=2)


def valid(calls, allowed=None):
    assert calls
    for c in calls:
        assert allowed is None or c.name in allowed
        jsonschema.validate(json.loads(c.arguments), SCHEMAS[c.name])
        assert c.id.startswith("call_")


@pytest.mark.parametrize("fixture", ["hermes_model", "plain_model"])
def test_required_and_named_calls_follow_the_schemas(request, fixture):
    m = request.getfixturevalue(fixture)
    for seed in range(4):
        r = m.chat(ASK, tools=TOOLS, tool_choice="required", temperature=1.0, seed=seed,
                   max_new_tokens=150)
        assert r.finish_reason == "tool_calls", r
        valid(r.tool_calls)
        r = m.chat(ASK, tools=TOOLS, tool_choice={"type": "function",
                                                  "function": {"name": "add"}},
                   temperature=1.0, seed=seed, max_new_tokens=150)
        assert len(r.tool_calls) == 1
        valid(r.tool_calls, {"add"})


def test_parallel_calls_off_gives_one(hermes_model):
    for seed in range(4):
        r = hermes_model.chat(ASK, tools=TOOLS, tool_choice="required", temperature=1.0,
                              seed=seed, max_new_tokens=300, parallel_tool_calls=False)
        assert len(r.tool_calls) == 1


def test_auto_wakes_the_grammar_at_the_trigger(hermes_model):
    m = hermes_model
    trig = m.tokenizer.special_token_id("<tool_call>")
    for seed in range(3):
        # the trigger made likely: the call after it follows the schemas
        r = m.chat(ASK, tools=TOOLS, temperature=1.0, seed=seed, max_new_tokens=150,
                   logit_bias={trig: 100})
        assert r.finish_reason == "tool_calls"
        valid(r.tool_calls)
        assert r.token_ids[0] == trig
    # never triggered: free text, no calls
    r = m.chat(ASK, tools=TOOLS, temperature=0, max_new_tokens=10, logit_bias={trig: -100})
    assert r.tool_calls is None and r.finish_reason == "length"
    # "none" renders the tools but neither constrains nor parses
    r = m.chat(ASK, tools=TOOLS, tool_choice="none", temperature=1.0, seed=0,
               max_new_tokens=20, logit_bias={trig: 100})
    assert r.tool_calls is None and r.token_ids[0] == trig


def test_streamed_chat_holds_the_call_back(hermes_model):
    m = hermes_model
    kw = dict(tools=TOOLS, tool_choice="required", temperature=1.0, seed=2,
              max_new_tokens=150)
    r = m.chat(ASK, **kw)
    s = m.chat(ASK, stream=True, **kw)
    assert "".join(s) == ""
    assert [(t.name, t.arguments) for t in s.result.tool_calls] == \
        [(t.name, t.arguments) for t in r.tool_calls]


def test_tools_are_rendered_and_history_kept(hermes_model, plain_model):
    hist = ASK + [{"role": "assistant", "content": None, "tool_calls": [
        {"id": "call_1", "type": "function",
         "function": {"name": "get_weather", "arguments": '{"city": "Paris", "days": 3}'}}]},
        {"role": "tool", "tool_call_id": "call_1", "content": "sunny"}]
    text = hermes_model.apply_chat_template(U.plan(hermes_model.chat_template, hist,
                                                   hermes_model.tokenizer, TOOLS).messages,
                                            tools=TOOLS)
    assert '"name": "get_weather"' in text and "<tool_response>\nsunny" in text
    assert '{"name": "get_weather", "arguments": {"city": "Paris", "days": 3}}' in text
    p = U.plan(plain_model.chat_template, hist, plain_model.tokenizer, TOOLS)
    assert isinstance(p.fmt, T.Generic)
    text = plain_model.apply_chat_template(p.messages)
    assert "<tools>" in text and "get_weather" in text and "<tool_response>" in text
    assert '"arguments": {"city": "Paris", "days": 3}' in text


def test_bad_tools_raise_naming_the_field(hermes_model):
    m = hermes_model
    cases = [
        ([{"type": "function", "function": {"name": "bad name!"}}], None, "tools\\[0\\]"),
        ([{"type": "function"}], None, "tools\\[0\\]"),
        ([WEATHER, WEATHER], None, "twice"),
        (TOOLS, "sometimes", "tool_choice"),
        (TOOLS, {"type": "function", "function": {"name": "nope"}}, "tool_choice"),
        ([{"type": "function", "function": {"name": "f", "strict": True, "parameters": {
            "type": "object", "properties": {"x": {"$ref": "#/nowhere"}}}}}], "required",
         "tools"),
    ]
    for tools, choice, match in cases:
        with pytest.raises(ValueError, match=match):
            m.chat(ASK, tools=tools, tool_choice=choice, max_new_tokens=4)
    with pytest.raises(ValueError, match="response_format"):
        m.chat(ASK, tools=TOOLS, response_format={"type": "json_object"}, max_new_tokens=4)
    with pytest.raises(ValueError, match="tool_choice needs tools"):
        m.chat(ASK, tool_choice="required", max_new_tokens=4)
    # a non-strict tool whose schema the grammar engine refuses is relaxed to any object
    loose = [{"type": "function", "function": {"name": "f", "parameters": {
        "type": "object", "properties": {"x": {"$ref": "#/nowhere"}}}}}]
    r = m.chat(ASK, tools=loose, tool_choice="required", temperature=1.0, seed=1,
               max_new_tokens=60)
    assert r.tool_calls and r.tool_calls[0].name == "f"


@pytest.mark.parametrize("fmt, text, content, calls", [
    (T.Hermes(), 'Let me look.\n<tool_call>\n{"name": "f", "arguments": {"x": 1}}\n</tool_call>',
     "Let me look.", [("f", {"x": 1})]),
    (T.Hermes(), '<tool_call>\n{"name": "f", "arguments": {}}\n</tool_call>\n<tool_call>\n'
                 '{"name": "g", "arguments": {"y": "z"}}\n</tool_call>', "",
     [("f", {}), ("g", {"y": "z"})]),
    (T.Hermes(), '<tool_call>\n{"name": "f", "arguments": {"x": 1}}', "", [("f", {"x": 1})]),
    (T.Hermes(), "no call here", "no call here", []),
    (T.Hermes(), "<tool_call>\n{not json}\n</tool_call>", "<tool_call>\n{not json}\n</tool_call>",
     []),
    (T.Llama3(), '{"name": "f", "parameters": {"x": 2}}', "", [("f", {"x": 2})]),
    (T.Llama3(), '<|python_tag|>{"name": "f", "parameters": {}}; {"name": "g", '
                 '"parameters": {"a": [1]}}', "", [("f", {}), ("g", {"a": [1]})]),
    (T.Llama3(), "Paris is sunny.", "Paris is sunny.", []),
    (T.Mistral(), '[TOOL_CALLS][{"name": "f", "arguments": {"x": 3}}, '
                  '{"name": "g", "arguments": {}}]', "", [("f", {"x": 3}), ("g", {})]),
    (T.Mistral(), "[TOOL_CALLS]oops", "[TOOL_CALLS]oops", []),
])
def test_each_format_parses(fmt, text, content, calls):
    got_content, got = fmt.parse(text)
    assert got_content == content
    assert [(c.name, json.loads(c.arguments)) for c in got] == calls


def test_format_from_template():
    assert isinstance(T.detect(HERMES), T.Hermes)
    assert isinstance(T.detect("{{ '[TOOL_CALLS]' }}"), T.Mistral)
    assert isinstance(T.detect("<|start_header_id|>{% if tools %}{% endif %}"), T.Llama3)
    assert isinstance(T.detect("{{ '<|python_tag|>' }}"), T.Llama3)
    assert isinstance(T.detect(None), T.Generic)
    assert isinstance(T.detect("<|im_start|>{{ m }}"), T.Generic)


def test_stream_parser_holds_back_a_possible_trigger(hermes_model):
    tok = hermes_model.tokenizer
    p = U.ToolParser(T.Hermes(), tok)
    shown = p.add(tok.encode("Sure. <tool", add_special=False))
    assert shown == "Sure. "  # "<tool" may begin a call
    shown += p.add(tok.encode("s are fun", add_special=False))
    assert shown == "Sure. <tools are fun"
    p = U.ToolParser(T.Hermes(), tok)
    out = p.add(tok.encode('ok <tool_call>\n{"name": "add", "arguments": {"a": 1, "b": 2}}\n'
                           '</tool_call>', add_special=False))
    rest, calls = p.finish()
    assert out == "ok " and rest == "" and [c.name for c in calls] == ["add"]


def test_arguments_take_no_unlisted_keys(hermes_model):
    # a schema without additionalProperties: the grammar closes it (as
    # llama.cpp and xgrammar do), so a call is not padded with made-up keys
    open_tool = [{"type": "function", "function": {"name": "add", "parameters": {
        "type": "object", "properties": {"a": {"type": "integer", "maximum": 99, "minimum": 0},
                                         "b": {"type": "integer", "maximum": 99, "minimum": 0}},
        "required": ["a", "b"]}}}]
    for seed in range(4):
        r = hermes_model.chat(ASK, tools=open_tool, tool_choice="required", temperature=1.0,
                              seed=seed, max_new_tokens=100)
        assert r.finish_reason == "tool_calls"
        for c in r.tool_calls:
            assert set(json.loads(c.arguments)) == {"a", "b"}


def test_closing_a_schema_leaves_property_names_alone():
    # a property named "properties" is a name, not a keyword
    s = {"type": "object", "properties": {"properties": {"type": "object", "properties": {
        "x": {"type": "integer", "enum": [{"properties": {}}]}}}}}
    c = T._closed(s)
    assert c["additionalProperties"] is False
    assert set(c["properties"]) == {"properties"}
    inner = c["properties"]["properties"]
    assert inner["additionalProperties"] is False and set(inner["properties"]) == {"x"}
    assert inner["properties"]["x"]["enum"] == [{"properties": {}}]  # data untouched
