"""gpt-oss's harmony chat format, and the reasoning split it shares with
<think> replies: the template (openai/gpt-oss-20b's chat_template.jinja, in
tests/data) rendered in the sandbox; a reply's channels split into content,
reasoning and calls, whole and streamed token by token; the end tokens of a
harmony vocabulary; calls held to their schemas by grammar; the server's
reasoning_content, tool_calls, Responses reasoning items and Messages
thinking blocks through the official openai client. A tiny random model is
made to write a given reply by a grammar (response_format)."""

from __future__ import annotations

import json
import os
import random

import pytest

pytest.importorskip("llguidance")
jsonschema = pytest.importorskip("jsonschema")

from test_chat_templates import QWEN3  # noqa: E402
from testutil import TOOL_SCHEMAS, TOOLS, WEATHER_ASK, write_model  # noqa: E402

import llmrt  # noqa: E402
from llmrt import tool_use as U  # noqa: E402
from llmrt import tools as T  # noqa: E402
from llmrt.chat import with_reasoning  # noqa: E402
from llmrt.reasoning import HarmonySplitter, ThinkSplitter, join, style_of  # noqa: E402
from llmrt.testing.models import HARMONY_SPECIALS, write_harmony_model  # noqa: E402

TEMPLATE = open(os.path.join(os.path.dirname(__file__), "data", "gpt_oss_chat_template.jinja"),
                encoding="utf-8").read()
CALL = '{"city": "Paris", "days": 3}'
# replies as gpt-oss writes them (after the prompt's <|start|>assistant)
ANSWER = ("<|channel|>analysis<|message|>The user asks 2+2. Simple: 4.<|end|>"
          "<|start|>assistant<|channel|>final<|message|>2 + 2 = **4** 😀")
CALL_AFTER = ("<|channel|>analysis<|message|>Need the weather tool.<|end|><|start|>assistant"
              "<|channel|>commentary to=functions.get_weather <|constrain|>json<|message|>" + CALL)
CALL_BEFORE = "<|channel|>analysis<|message|>Use it.<|end|><|start|>assistant to=functions." \
              "get_weather<|channel|>commentary json<|message|>" + CALL
PREAMBLE = ("<|channel|>commentary<|message|>Checking the forecast.<|end|><|start|>assistant"
            "<|channel|>commentary to=functions.get_weather<|message|>" + CALL + "<|call|>")


# ---- the splitter on text -----------------------------------------------------------------
CASES = [
    # reply, content, reasoning, calls
    (ANSWER, "2 + 2 = **4** 😀", "The user asks 2+2. Simple: 4.", []),
    (ANSWER + "<|return|>", "2 + 2 = **4** 😀", "The user asks 2+2. Simple: 4.", []),
    (CALL_AFTER, "", "Need the weather tool.", [("get_weather", CALL)]),
    (CALL_BEFORE + "<|call|>", "", "Use it.", [("get_weather", CALL)]),
    (PREAMBLE, "Checking the forecast.", "", [("get_weather", CALL)]),
    # cut off inside analysis, inside a header, inside a call's arguments
    ("<|channel|>analysis<|message|>Let me thi", "", "Let me thi", []),
    ("<|channel|>analysis<|message|>Hm.<|end|><|start|>assistant<|channel|>fin", "", "Hm.", []),
    # (a call's arguments that are no JSON object are content, as a text format leaves them)
    ("<|channel|>commentary to=functions.get_weather<|message|>{\"city\": \"Par",
     '{"city": "Par', "", []),
    # an unknown channel, and no channel at all, are content
    ("<|channel|>musings<|message|>odd<|end|>", "odd", "", []),
    ("Just text, no markers.", "Just text, no markers.", "", []),
    # malformed arguments stay as content, not a call; a literal "<|" is text
    ("<|channel|>commentary to=functions.get_weather <|constrain|>json<|message|>{city: Paris}"
     "<|call|>", "{city: Paris}", "", []),
    ("<|channel|>final<|message|>a <| b <|endoftext", "a <| b <|endoftext", "", []),
    # a new channel without <|end|><|start|>; a call to a built-in tool is reasoning
    ("<|channel|>analysis<|message|>x<|channel|>final<|message|>y", "y", "x", []),
    ("<|channel|>analysis to=browser.search<|message|>{\"q\": 1}<|call|>", "", '{"q": 1}', []),
]


def _whole(text, calls=True):
    h = HarmonySplitter(calls)
    pieces = h.feed(text) + h.end()
    return join(pieces, "content"), join(pieces, "reasoning"), h.calls


@pytest.mark.parametrize("reply, content, reasoning, calls", CASES)
def test_harmony_splits_whole_replies(reply, content, reasoning, calls):
    got = _whole(reply)
    assert got == (content, reasoning, calls)
    assert "<|" not in got[1]
    # through the tools' format (what a request with tools parses)
    c, tc = T.Harmony().parse(reply)
    assert c == content and [(x.name, x.arguments) for x in tc] == calls


@pytest.mark.parametrize("reply, content, reasoning, calls", CASES)
def test_harmony_streams_split_anywhere(reply, content, reasoning, calls):
    rng = random.Random(len(reply))
    for cuts in ([1] * len(reply), [rng.randint(1, 9) for _ in range(len(reply))]):
        h, pieces, i = HarmonySplitter(), [], 0
        for n in cuts:
            if i >= len(reply):
                break
            out = h.feed(reply[i:i + n])
            i += n
            for kind, text in out:
                assert not any(m in text for m in HARMONY_SPECIALS) or "<| b" in reply, text
            pieces += out
        pieces += h.end()
        assert (join(pieces, "content"), join(pieces, "reasoning"), h.calls) == \
            (content, reasoning, calls)


def test_harmony_without_tools_keeps_calls_as_reasoning():
    assert _whole(CALL_AFTER, calls=False) == ("", "Need the weather tool." + CALL, [])


@pytest.mark.parametrize("reply, open_, content, reasoning", [
    ("<think>\nThe user greets.\n</think>\n\nHello.", False, "Hello.", "The user greets."),
    ("\nThe user greets.\n</think>\n\nHello.", True, "Hello.", "The user greets."),
    ("Hello.", False, "Hello.", ""),
    ("<think>\nhalf a tho", False, "", "half a tho"),
    ("<b>bold</b> text", False, "<b>bold</b> text", ""),
    ("<think>a </thin k> b</think>c", False, "c", "a </thin k> b"),
])
def test_think_tags_split_whole_and_streamed(reply, open_, content, reasoning):
    for step in (len(reply) or 1, 1, 3):
        t, pieces = ThinkSplitter(open_), []
        for i in range(0, len(reply), step):
            pieces += t.feed(reply[i:i + step])
        pieces += t.end()
        assert (join(pieces, "content"), join(pieces, "reasoning")) == (content, reasoning)


def test_styles_from_the_template():
    assert style_of(TEMPLATE) == ("harmony", False)
    assert style_of(QWEN3, "<|im_start|>assistant\n") == ("think", False)
    assert style_of(QWEN3, "<|im_start|>assistant\n<think>\n") == ("think", True)
    assert style_of(QWEN3, "<|im_start|>assistant\n<think>\n\n</think>\n\n") == ("think", False)
    assert style_of(None) == (None, False)
    assert style_of("{{ messages }}") == (None, False)
    assert isinstance(T.detect(TEMPLATE), T.Harmony)


# ---- a tiny model with harmony's vocabulary and gpt-oss's template ------------------------
@pytest.fixture(scope="module")
def harmony(tmp_path_factory):
    p = str(tmp_path_factory.mktemp("harmony") / "harmony.gguf")
    write_harmony_model(p, TEMPLATE)
    return llmrt.Model(p, threads=2)


def forced(m, reply):
    """A response_format that makes the model write exactly `reply` (its
    markers as their special tokens)."""
    tok, parts, pos = m.tokenizer, [], 0
    import re
    for mt in re.finditer("|".join(re.escape(s) for s in HARMONY_SPECIALS), reply):
        if mt.start() > pos:
            parts.append(json.dumps(reply[pos:mt.start()]))
        parts.append(f"<[{tok.special_token_id(mt.group(0))}]>")
        pos = mt.end()
    if pos < len(reply):
        parts.append(json.dumps(reply[pos:]))
    return {"type": "grammar", "grammar": "start: " + " ".join(parts)}


def test_a_harmony_vocabulary_ends_at_return_and_call_not_end(harmony, tmp_path):
    tok = harmony.tokenizer
    ends = {tok.tokens[i] for i in harmony.end_token_ids}
    assert {"<|return|>", "<|call|>", "<|endoftext|>"} <= ends and "<|end|>" not in ends
    # a vocabulary whose <|end|> ends its turns (Phi-3) keeps it
    p = str(tmp_path / "phi.gguf")
    write_model(p, n_layer=1, control_specials=("<|end|>",))
    phi = llmrt.Model(p, threads=1)
    assert "<|end|>" in {phi.tokenizer.tokens[i] for i in phi.end_token_ids}


def test_gpt_oss_template_renders(harmony):
    m = harmony
    plain = m.apply_chat_template(WEATHER_ASK)
    assert plain.startswith("<|start|>system<|message|>") and "Reasoning: medium" in plain
    assert "# Valid channels: analysis, commentary, final." in plain
    assert plain.endswith("<|start|>user<|message|>What is the weather in Paris for 3 days?"
                          "<|end|><|start|>assistant")
    assert "<|start|>developer" not in plain
    low = m.apply_chat_template([{"role": "system", "content": "Be brief."}] + WEATHER_ASK,
                                reasoning_effort="low")
    assert "Reasoning: low" in low and "# Instructions\n\nBe brief." in low
    hist = WEATHER_ASK + [
        {"role": "assistant", "content": None, "reasoning_content": "Need the <tool> & go.",
         "tool_calls": [{"id": "c1", "type": "function", "function": {
             "name": "get_weather", "arguments": CALL}}]},
        {"role": "tool", "tool_call_id": "c1", "content": "sunny <b>"}]
    p = U.plan(m.chat_template, hist, m.tokenizer, TOOLS)
    text = m.apply_chat_template(p.messages, tools=p.template_tools())
    assert "namespace functions {\n\n// The weather in a city\ntype get_weather = (_: {\n" \
           "city: string,\ndays: number,\n}) => any;" in text
    assert "type add = " in text  # a tool without a description renders too
    assert "<|start|>assistant<|channel|>analysis<|message|>Need the <tool> & go.<|end|>" \
           "<|start|>assistant to=functions.get_weather<|channel|>commentary json<|message|>" \
           + CALL + "<|call|>" in text
    # the tool's result: plain JSON text (no HTML escaping), then the prompt
    assert text.endswith('<|start|>functions.get_weather to=assistant<|channel|>commentary'
                         '<|message|>"sunny <b>"<|end|><|start|>assistant')
    # once a final answer follows, the turn's reasoning is dropped
    done = hist + [{"role": "assistant", "content": "Sunny."},
                   {"role": "user", "content": "Thanks"}]
    text = m.apply_chat_template(with_reasoning(done), tools=p.template_tools())
    assert "Need the" not in text and "<|channel|>final<|message|>Sunny.<|end|>" in text


def test_reply_parser_token_by_token(harmony):
    tok = harmony.tokenizer
    for reply, tools in ((ANSWER, False), (CALL_AFTER, True), (CALL_BEFORE, True),
                         (PREAMBLE, True), (CASES[5][0], False)):
        ids = tok.encode(reply, add_special=False)
        r = U.Reply("harmony", False, T.Harmony() if tools else None)
        p, pieces = U.ReplyParser(r, tok), []
        for k in range(1, len(ids) + 1):
            pieces += p.add("", ids[:k])
        rest, calls = p.finish(ids)
        pieces += rest
        want = _whole(reply, tools)
        assert (join(pieces, "content"), join(pieces, "reasoning")) == want[:2]
        assert [(c.name, c.arguments) for c in calls] == want[2]


def test_chat_splits_the_channels(harmony):
    m = harmony
    r = m.chat(WEATHER_ASK, response_format=forced(m, ANSWER), max_new_tokens=200)
    assert (r.text, r.reasoning_content, r.finish_reason) == \
        ("2 + 2 = **4** 😀", "The user asks 2+2. Simple: 4.", "stop")
    s = m.chat(WEATHER_ASK, response_format=forced(m, ANSWER), max_new_tokens=200, stream=True)
    d = list(s.deltas())
    assert join(d, "content") == r.text and join(d, "reasoning") == r.reasoning_content
    assert d[0][0] == "reasoning" and d[-1][0] == "content"
    assert s.result.text == r.text and s.result.reasoning_content == r.reasoning_content
    s = m.chat(WEATHER_ASK, response_format=forced(m, ANSWER), max_new_tokens=200, stream=True)
    assert "".join(s) == r.text  # iterating gives the answer only
    # cut off inside the analysis: no answer, the reasoning so far
    r = m.chat(WEATHER_ASK, response_format=forced(m, ANSWER), max_new_tokens=12)
    assert r.finish_reason == "length" and r.text == ""
    assert r.reasoning_content and "The user asks".startswith(r.reasoning_content)


def test_chat_passes_template_variables(harmony, monkeypatch):
    # chat_template_kwargs reach the template: gpt-oss's reasoning effort
    seen = {}
    cls = type(harmony)
    orig = cls.apply_chat_template

    def spy(self, messages, **kw):
        seen.update(kw)
        return orig(self, messages, **kw)
    monkeypatch.setattr(cls, "apply_chat_template", spy)
    harmony.chat(WEATHER_ASK, max_new_tokens=2, chat_template_kwargs={"reasoning_effort": "high"})
    assert seen["reasoning_effort"] == "high"
    assert "Reasoning: high" in orig(harmony, WEATHER_ASK, reasoning_effort="high")


def test_required_and_named_calls(harmony):
    m = harmony
    ch = m.tokenizer.special_token_id("<|channel|>")
    seen = set()
    for seed in range(4):
        # (a random model would write analysis for ever: the bias skips it)
        r = m.chat(WEATHER_ASK, tools=TOOLS, tool_choice="required", temperature=1.0, seed=seed,
                   max_new_tokens=150, logit_bias={ch: -100})
        assert r.finish_reason == "tool_calls" and len(r.tool_calls) == 1, r
        c = r.tool_calls[0]
        jsonschema.validate(json.loads(c.arguments), TOOL_SCHEMAS[c.name])
        assert r.text == "" and r.reasoning_content is None
        seen.add(c.name)
        r = m.chat(WEATHER_ASK, tools=TOOLS, tool_choice={"type": "function", "function": {
            "name": "add"}}, temperature=1.0, seed=seed, max_new_tokens=150,
            logit_bias={ch: -100})
        assert [c.name for c in r.tool_calls] == ["add"]
    s = m.chat(WEATHER_ASK, tools=TOOLS, tool_choice="required", temperature=1.0, seed=0,
               max_new_tokens=150, logit_bias={ch: -100}, stream=True)
    assert list(s.deltas()) == [] and s.result.tool_calls


def test_call_grammars_take_both_header_orders(harmony):
    m, tok = harmony, harmony.tokenizer
    lazy = U.plan(m.chat_template, WEATHER_ASK, tok, TOOLS)
    first = U.plan(m.chat_template, WEATHER_ASK, tok, TOOLS, "required")
    assert lazy.response_format["trigger"] == " to=functions"
    after, before = CALL_AFTER.split("<|start|>assistant", 1)[1], CALL_BEFORE.split(
        "<|start|>assistant", 1)[1]

    def takes(p, text):
        ids = tok.encode(text, add_special=False)
        return m.grammars.compile(p.response_format).matcher().validate_tokens(ids) == len(ids)
    for text in (after.split("commentary", 1)[1], before):
        assert takes(lazy, text), text
    for text in (CALL_AFTER, CALL_BEFORE, "<|channel|>commentary" + after.split("commentary")[1]):
        assert takes(first, text), text
    assert not takes(first, ANSWER) and not takes(lazy, " to=functions.nope<|message|>{}")
    # "auto": the grammar wakes where the reply writes " to=functions"
    from llmrt.sampling import Sampler, SamplingParams
    sampler = Sampler(SamplingParams(), m.vocab_size, m.end_token_ids, seed=0)
    c = m.grammars.compile(lazy.response_format).constraint(sampler, m.end_token_ids)
    ids = tok.encode(CALL_AFTER, add_special=False)
    done = [c.consume(t) for t in ids]
    assert c.active and done[-1] and not any(done[:-1])


def test_think_replies_split_too(tmp_path):
    p = str(tmp_path / "qwen3ish.gguf")
    write_model(p, wtype="Q8_0", n_layer=1, ctx=1024, tied=False, chat_template=QWEN3)
    m = llmrt.Model(p, threads=2)
    rf = {"type": "choice", "choices": ["<think>\nHi there.\n</think>\n\nHello!"]}
    r = m.chat(WEATHER_ASK, response_format=rf, max_new_tokens=60)
    assert (r.text, r.reasoning_content) == ("Hello!", "Hi there.")
    s = m.chat(WEATHER_ASK, response_format=rf, max_new_tokens=60, stream=True)
    assert "".join(s) == "Hello!" and s.result.reasoning_content == "Hi there."
    # a template without think tags: the text as it was
    p2 = str(tmp_path / "chatml.gguf")
    write_model(p2, wtype="Q8_0", n_layer=1, ctx=1024, tied=False)
    r = llmrt.Model(p2, threads=2).chat(WEATHER_ASK, response_format=rf, max_new_tokens=60)
    assert r.text == rf["choices"][0] and r.reasoning_content is None


# ---- the server ----------------------------------------------------------------------------
@pytest.fixture(scope="module")
def srv(harmony):
    pytest.importorskip("fastapi")
    pytest.importorskip("uvicorn")
    from llmrt.testing.server import KEY, start
    s = start(harmony.path, "--threads", "2", "--api-key", KEY)
    yield s
    s.stop()


@pytest.fixture(scope="module")
def client(srv):
    openai = pytest.importorskip("openai")
    from llmrt.testing.server import KEY
    return openai.OpenAI(base_url=srv.url + "/v1", api_key=KEY, max_retries=0, timeout=60)


def _chat(client, srv, harmony, reply, stream=False, **kw):
    return client.chat.completions.create(
        model=srv.name, messages=WEATHER_ASK, max_tokens=kw.pop("max_tokens", 200), stream=stream,
        extra_body={"response_format": forced(harmony, reply)}, **kw)


def _streamed(chunks):
    content, reasoning, calls, finish = "", "", [], None
    for ch in chunks:
        for c in ch.choices:
            d = c.delta
            content += d.content or ""
            reasoning += getattr(d, "reasoning_content", None) or ""
            calls += d.tool_calls or []
            finish = c.finish_reason or finish
    return content, reasoning, calls, finish


def test_server_reasoning_content(client, srv, harmony):
    r = _chat(client, srv, harmony, ANSWER)
    msg = r.choices[0].message
    assert msg.content == "2 + 2 = **4** 😀" and r.choices[0].finish_reason == "stop"
    assert msg.reasoning_content == "The user asks 2+2. Simple: 4."
    assert _streamed(_chat(client, srv, harmony, ANSWER, stream=True)) == \
        (msg.content, msg.reasoning_content, [], "stop")


@pytest.mark.parametrize("reply", [CASES[5][0], CASES[8][0], CASES[10][0], CASES[11][0],
                                   CASES[7][0], "Just text."])
def test_server_bad_replies_are_answers_not_errors(client, srv, harmony, reply):
    content, reasoning, calls = _whole(reply, calls=False)
    r = _chat(client, srv, harmony, reply)
    msg = r.choices[0].message
    assert (msg.content, msg.reasoning_content or "") == (content, reasoning)
    got = _streamed(_chat(client, srv, harmony, reply, stream=True))
    assert got[:3] == (content, reasoning, [])


def test_server_tool_calls(client, srv, harmony):
    ch = harmony.tokenizer.special_token_id("<|channel|>")
    kw = dict(model=srv.name, messages=WEATHER_ASK, max_tokens=150, tools=TOOLS,
              tool_choice="required", logit_bias={str(ch): -100}, seed=3, temperature=1.0)
    r = client.chat.completions.create(**kw)
    c = r.choices[0]
    assert c.finish_reason == "tool_calls" and c.message.content is None
    call = c.message.tool_calls[0].function
    jsonschema.validate(json.loads(call.arguments), TOOL_SCHEMAS[call.name])
    content, reasoning, calls, finish = _streamed(client.chat.completions.create(stream=True,
                                                                                  **kw))
    assert (content, reasoning, finish) == ("", "", "tool_calls")
    assert [(x.function.name, x.function.arguments) for x in calls] == \
        [(call.name, call.arguments)]
    # the call and its result go back in the history; the model answers
    hist = WEATHER_ASK + [c.message.model_dump(exclude_none=True),
                          {"role": "tool", "tool_call_id": c.message.tool_calls[0].id,
                           "content": "sunny"}]
    r = client.chat.completions.create(model=srv.name, messages=hist, max_tokens=200,
                                       extra_body={"response_format": forced(harmony, ANSWER)})
    assert r.choices[0].message.content == "2 + 2 = **4** 😀"


def _sse(srv, body):
    """A chat stream's server-sent events, one a chunk, as the service writes them."""
    import httpx

    from llmrt.testing.server import KEY
    with httpx.stream("POST", srv.url + "/v1/chat/completions", json=body, timeout=60,
                      headers={"Authorization": f"Bearer {KEY}"}) as r:
        text = "".join(r.iter_text())
    return [e.encode() + b"\n\n" for e in text.split("\n\n") if e.startswith("data: ")]


def _events(agen):
    import asyncio

    async def run():
        return [json.loads(b.decode().split("data: ", 1)[1]) async for b in agen]
    return asyncio.run(run())


async def _aiter(items):
    for x in items:
        yield x


def test_server_responses_and_messages(client, srv, harmony):
    import httpx

    from llmrt.serve import messages as M
    from llmrt.serve import responses as R
    from llmrt.testing.server import KEY
    reasoning, answer = "The user asks 2+2. Simple: 4.", "2 + 2 = **4** 😀"
    chat = {"model": srv.name, "messages": WEATHER_ASK, "max_tokens": 200,
            "response_format": forced(harmony, ANSWER)}
    out = client.chat.completions.create(**chat).model_dump()
    body = {"model": srv.name, "input": "2+2?"}
    # Responses: a reasoning item before the message, whole and streamed
    resp = R.from_chat(out, body, srv.name)
    assert [o["type"] for o in resp["output"]] == ["reasoning", "message"]
    assert resp["output"][0]["content"][0]["text"] == reasoning
    sse = _sse(srv, {**chat, "stream": True, "stream_options": {"include_usage": True}})
    evs = _events(R.stream(_aiter(sse), body, srv.name))
    assert "".join(e["delta"] for e in evs if e["type"] == "response.reasoning_text.delta") \
        == reasoning
    done = [e["item"] for e in evs if e["type"] == "response.output_item.done"]
    assert [d["type"] for d in done] == ["reasoning", "message"]
    assert done[1]["content"][0]["text"] == answer
    assert evs[-1]["response"]["output"] == done
    # Messages: a thinking block before the text, whole and streamed
    msg = M.from_chat(out, srv.name)
    assert [(b["type"], b.get("thinking") or b.get("text")) for b in msg["content"]] == \
        [("thinking", reasoning), ("text", answer)]
    evs = _events(M.stream(_aiter(sse), srv.name, 10))
    starts = [(e["index"], e["content_block"]["type"]) for e in evs
              if e["type"] == "content_block_start"]
    assert starts == [(0, "thinking"), (1, "text")]
    assert "".join(e["delta"].get("thinking", "") for e in evs
                   if e["type"] == "content_block_delta") == reasoning
    assert len([e for e in evs if e["type"] == "content_block_stop"]) == 2
    # both endpoints answer a harmony model (reasoning_effort reaches its template)
    h = {"Authorization": f"Bearer {KEY}"}
    r = httpx.post(srv.url + "/v1/responses", json={**body, "max_output_tokens": 30,
                                                    "reasoning": {"effort": "high"}},
                   headers=h, timeout=60)
    assert r.status_code == 200 and r.json()["status"] in ("completed", "incomplete")
    with client.responses.stream(model=srv.name, input="2+2?", max_output_tokens=20) as st:
        assert st.get_final_response().status in ("completed", "incomplete")
    r = httpx.post(srv.url + "/v1/messages", json={"model": srv.name, "max_tokens": 30,
                                                     "messages": WEATHER_ASK}, headers=h)
    assert r.status_code == 200 and r.json()["type"] == "message"
    # /tokenize renders the prompt chat would
    n = [httpx.post(srv.url + "/tokenize", json={"model": srv.name, "messages": WEATHER_ASK,
                                                  "reasoning_effort": e}, headers=h).json()["count"]
         for e in ("low", "medium")]
    assert n == [len(harmony.tokenize(harmony.apply_chat_template(WEATHER_ASK, reasoning_effort=e)))
                 for e in ("low", "medium")] and n[0] != n[1]
