"""Structured output (response_format): the native mask stage against numpy
on random logits and masks of awkward sizes; response_format's shapes and
errors; then SmolLM2 held to JSON Schemas (every sampled output validates
with jsonschema), regexes and grammars, with greedy, batching, streaming,
stop strings, n > 1, logprobs, speculative decoding and threads."""

from __future__ import annotations

import ast
import json
import re
import threading
import time

import numpy as np
import pytest
from test_sampling import assert_follows, chain, softmax

import llmrt
from llmrt import SamplingParams, masks, structured
from llmrt.sampling import Sampler

llg = pytest.importorskip("llguidance")
jsonschema = pytest.importorskip("jsonschema")


# ---- the native mask stage ---------------------------------------------------------------

def set_mask(s: Sampler, allowed: np.ndarray) -> None:
    """Writes a boolean allow-list into the sampler's mask words."""
    w = s.mask()
    bits = np.zeros(len(w) * 32, bool)
    bits[:len(allowed)] = allowed
    w[:] = np.packbits(bits, bitorder="little").view(np.uint32)


def masked_np(logits: np.ndarray, allowed: np.ndarray) -> np.ndarray:
    return np.where(allowed, logits, -np.inf).astype(np.float32)


@pytest.mark.parametrize("V", [7, 33, 1003])
@pytest.mark.parametrize("density", [0.02, 0.3, 0.97])
@pytest.mark.parametrize("kw", [dict(temperature=0.0), dict(temperature=0.7),
                                dict(temperature=1.0, top_k=5), dict(temperature=1.0, top_p=0.8),
                                dict(temperature=1.3, min_p=0.1),
                                dict(temperature=1.0, typical_p=0.9)])
def test_the_mask_comes_before_every_stage(V, density, kw):
    rng = np.random.default_rng(V * 7 + int(density * 100))
    logits = (rng.standard_normal(V) * 2).astype(np.float32)
    allowed = rng.random(V) < density
    allowed[rng.integers(V)] = True
    s = Sampler(SamplingParams(**kw), V, seed=3)
    s.enable_mask()
    set_mask(s, allowed)
    h = np.zeros(0, np.int32)
    s.expect_mask()
    s.mask_done()
    got = s.distribution(logits, h, 0)
    want = chain(masked_np(logits, allowed), **kw) if kw["temperature"] > 0 else None
    if want is None:  # greedy: the best allowed token
        want = np.zeros(V)
        want[np.flatnonzero(allowed)[np.argmax(logits[allowed])]] = 1
    np.testing.assert_allclose(got, want, atol=2e-6)
    assert not s.mask_expected  # used once
    if kw["temperature"] > 0 and V == 1003 and density == 0.3:
        counts = np.zeros(V, np.int64)
        for _ in range(4000):
            s.expect_mask()
            s.mask_done()
            counts[s(logits, h, 0)] += 1
        assert_follows(counts, want)


def test_a_mask_is_used_once_and_can_be_dropped():
    V = 100
    logits = np.arange(V, dtype=np.float32)  # unmasked greedy: the last token
    s = Sampler(SamplingParams(), V)
    with pytest.raises(RuntimeError):  # no mask to expect yet
        s.expect_mask()
    s.enable_mask()
    allowed = np.zeros(V, bool)
    allowed[[3, 40]] = True
    set_mask(s, allowed)
    h = np.zeros(0, np.int32)
    s.expect_mask()
    s.mask_done()
    assert s(logits, h, 0) == 40
    assert s(logits, h, 0) == V - 1
    s.expect_mask()
    s.clear_mask()
    assert s(logits, h, 0) == V - 1


def test_a_draw_waits_for_the_mask_another_thread_writes():
    V = 257
    logits = np.random.default_rng(0).standard_normal(V).astype(np.float32)
    s = Sampler(SamplingParams(temperature=1.0), V, seed=1)
    s.enable_mask()
    s.expect_mask()
    allowed = np.zeros(V, bool)
    allowed[[5, 256]] = True

    def writer():
        time.sleep(0.1)
        set_mask(s, allowed)
        s.mask_done()
    t = threading.Thread(target=writer)
    t0 = time.perf_counter()
    t.start()
    tok = s(logits, np.zeros(0, np.int32), 0)
    t.join()
    assert time.perf_counter() - t0 >= 0.09
    assert tok in (5, 256)


def test_mask_then_penalties_bias_and_min_new_tokens():
    V = 50
    logits = np.zeros(V, np.float32)
    allowed = np.zeros(V, bool)
    allowed[[1, 2, 3, 9]] = True
    p = SamplingParams(temperature=1.0, logit_bias={2: float("-inf")}, min_new_tokens=3,
                       repetition_penalty=2.0, presence_penalty=1.0)
    s = Sampler(p, V, end_ids=[9], seed=2)
    s.enable_mask()
    set_mask(s, allowed)
    hist = np.array([3, 3], np.int32)
    s.expect_mask()
    s.mask_done()
    got = s.distribution(logits, hist, 0)
    want = softmax(np.array([0.0 if t == 1 else -1.0 if t == 3 else -np.inf
                             for t in range(V)]))  # 2: banned, 9: an end token too early
    np.testing.assert_allclose(got, want, atol=1e-6)
    # nothing the constraint allows left: a clear error, not a garbage token
    s2 = Sampler(SamplingParams(logit_bias={1: float("-inf")}), V)
    s2.enable_mask()
    only = np.zeros(V, bool)
    only[1] = True
    set_mask(s2, only)
    s2.expect_mask()
    s2.mask_done()
    with pytest.raises(ValueError, match="structured output"):
        s2(logits, np.zeros(0, np.int32), 0)


# ---- response_format shapes -----------------------------------------------------------------

class Point:  # stands in for a pydantic model class
    @staticmethod
    def model_json_schema():
        return {"type": "object", "properties": {"x": {"type": "integer"}}, "required": ["x"]}


@pytest.mark.parametrize("rf, kind, src", [
    (None, None, None),
    ({"type": "text"}, None, None),
    ({"type": "json_object"}, "json", {"type": "object"}),
    ({"type": "json_object", "schema": {"type": "array"}}, "json", {"type": "array"}),
    ({"type": "json_schema", "json_schema": {"name": "a", "schema": {"type": "string"}}},
     "json", {"type": "string"}),
    ({"type": "object", "properties": {}}, "json", {"type": "object", "properties": {}}),
    ({"anyOf": [{"type": "null"}]}, "json", {"anyOf": [{"type": "null"}]}),
    (Point, "json", Point.model_json_schema()),
    ({"type": "regex", "pattern": "a+"}, "regex", "a+"),
    ({"type": "grammar", "grammar": "start: \"a\""}, "grammar", "start: \"a\""),
    ({"type": "choice", "choices": ["yes", "no"]}, "choice", ["yes", "no"]),
])
def test_response_format_shapes(rf, kind, src):
    got = structured.normalize(rf)
    assert got == (None if kind is None else (kind, src))


@pytest.mark.parametrize("rf, match", [
    ("json", "not the string"),
    (5, "must be a dict"),
    ({"type": "json_schema"}, "json_schema"),
    ({"type": "json_schema", "json_schema": {"schema": 3}}, "JSON Schema object"),
    ({"type": "regex"}, "pattern"),
    ({"type": "grammar", "grammar": ""}, "grammar"),
    ({"type": "choice", "choices": ["a", 3]}, "choices"),
    ({"type": "json_object", "schema": []}, "schema"),
])
def test_malformed_response_formats_are_value_errors(rf, match):
    with pytest.raises(ValueError, match=match):
        SamplingParams(response_format=rf)


def test_no_beam_search_with_a_constraint():
    with pytest.raises(ValueError, match="beam search"):
        SamplingParams(num_beams=2, response_format={"type": "json_object"})


# ---- SmolLM2 under constraints -------------------------------------------------------------

SCHEMAS = {
    "nested objects": {"type": "object", "properties": {
        "person": {"type": "object", "properties": {
            "name": {"type": "string", "minLength": 1, "maxLength": 20},
            "address": {"type": "object", "properties": {
                "street": {"type": "string", "maxLength": 24},
                "zip": {"type": "string", "pattern": "^[0-9]{5}$"}},
                "required": ["street", "zip"], "additionalProperties": False}},
            "required": ["name", "address"], "additionalProperties": False}},
        "required": ["person"], "additionalProperties": False},
    "array min/maxItems": {"type": "object", "properties": {
        "tags": {"type": "array", "items": {"type": "string", "maxLength": 10},
                 "minItems": 2, "maxItems": 4}},
        "required": ["tags"], "additionalProperties": False},
    "enums": {"type": "object", "properties": {
        "color": {"enum": ["red", "green", "blue"]},
        "size": {"type": "string", "enum": ["S", "M", "L", "XL"]},
        "level": {"enum": [1, 2, 3, None]}},
        "required": ["color", "size", "level"], "additionalProperties": False},
    "integer bounds": {"type": "object", "properties": {
        "age": {"type": "integer", "minimum": 0, "maximum": 120},
        "delta": {"type": "integer", "minimum": -10, "maximum": 10},
        "year": {"type": "integer", "exclusiveMinimum": 1899, "exclusiveMaximum": 2101}},
        "required": ["age", "delta", "year"], "additionalProperties": False},
    "string patterns": {"type": "object", "properties": {
        "code": {"type": "string", "pattern": "^[A-Z]{3}-[0-9]{3}$"},
        "hex": {"type": "string", "pattern": "^#[0-9a-f]{6}$"}},
        "required": ["code", "hex"], "additionalProperties": False},
    "formats": {"type": "object", "properties": {
        "day": {"type": "string", "format": "date"},
        "email": {"type": "string", "format": "email", "maxLength": 40},
        "ip": {"type": "string", "format": "ipv4"}},
        "required": ["day", "email", "ip"], "additionalProperties": False},
    "optional and required": {"type": "object", "properties": {
        "id": {"type": "integer", "minimum": 1, "maximum": 9999},
        "nickname": {"type": "string", "maxLength": 12},
        "admin": {"type": "boolean"}},
        "required": ["id"], "additionalProperties": False},
    "anyOf": {"type": "object", "properties": {
        "value": {"anyOf": [{"type": "integer", "minimum": 0, "maximum": 99},
                            {"type": "string", "maxLength": 8}, {"type": "null"}]}},
        "required": ["value"], "additionalProperties": False},
    "array of objects": {"type": "object", "properties": {
        "items": {"type": "array", "minItems": 1, "maxItems": 3, "items": {
            "type": "object", "properties": {
                "name": {"type": "string", "maxLength": 12},
                "qty": {"type": "integer", "minimum": 1, "maximum": 9}},
            "required": ["name", "qty"], "additionalProperties": False}}},
        "required": ["items"], "additionalProperties": False},
    "numbers, booleans, const, $ref": {"type": "object", "properties": {
        "ok": {"type": "boolean"},
        "ratio": {"type": "number", "minimum": 0, "maximum": 1},
        "version": {"const": "v1"},
        "digits": {"type": "array", "items": {"$ref": "#/$defs/digit"}, "maxItems": 3}},
        "required": ["ok", "ratio", "version", "digits"], "additionalProperties": False,
        "$defs": {"digit": {"type": "integer", "minimum": 0, "maximum": 9}}},
}
ASK = [{"role": "user", "content": "Reply with a JSON object describing something."}]
PHONE = r"\(\d{3}\) \d{3}-\d{4}"
ARITH = r"""
start: expr
expr: term (OP term)? (OP term)? (OP term)? (OP term)? (OP term)?
term: NUMBER | "(" term OP term ")"
OP: " + " | " - " | " * "
NUMBER: /[0-9]{1,3}/
"""


@pytest.fixture(scope="module")
def sm(default_model_path):
    # batch invariant: batched, speculative and threaded runs equal lone ones bit for bit
    return llmrt.Model(default_model_path, threads=2, context_length=2048,
                       kv_cache_tokens=8192, batch_invariant=True)


def validate(text: str, schema: dict) -> None:
    jsonschema.validate(json.loads(text), schema, format_checker=jsonschema.FormatChecker())


@pytest.mark.parametrize("name", list(SCHEMAS))
def test_sampled_outputs_validate_against_the_schema(sm, name):
    schema = SCHEMAS[name]
    prompt = sm.apply_chat_template(ASK)
    rs = sm.generate(prompt, max_new_tokens=200, temperature=1.0, n=20,
                     seed=list(SCHEMAS).index(name),
                     response_format={"type": "json_schema",
                                      "json_schema": {"name": "x", "schema": schema}})
    assert len(rs) == 20
    for r in rs:
        assert r.finish_reason == "stop", r.text
        validate(r.text, schema)
    assert len({r.text for r in rs}) > 1  # sampled, not one answer


def test_regex_grammar_and_choice_outputs_match(sm):
    prompt = sm.apply_chat_template([{"role": "user", "content": "Give me a phone number."}])
    for r in sm.generate(prompt, max_new_tokens=40, temperature=1.0, n=20, seed=1,
                         response_format={"type": "regex", "pattern": PHONE}):
        assert re.fullmatch(PHONE, r.text) and r.finish_reason == "stop", r.text
    prompt = sm.apply_chat_template([{"role": "user", "content": "Write a sum."}])
    for r in sm.generate(prompt, max_new_tokens=60, temperature=1.0, n=20, seed=2,
                         response_format={"type": "grammar", "grammar": ARITH}):
        assert r.finish_reason == "stop", r.text
        assert re.fullmatch(r"[0-9()+*\- ]+", r.text), r.text
        tree = ast.parse(r.text, mode="eval")  # balanced, well formed
        assert all(isinstance(n, (ast.Expression, ast.BinOp, ast.Constant, ast.Add, ast.Sub,
                                  ast.Mult)) for n in ast.walk(tree)), r.text
    gbnf = 'root ::= ("yes" | "no") ", because " [a-z]{1,8}'
    for r in sm.generate(prompt, max_new_tokens=30, temperature=1.0, n=10, seed=3,
                         response_format={"type": "grammar", "grammar": gbnf}):
        assert re.fullmatch(r"(yes|no), because [a-z]{1,8}", r.text), r.text
    for r in sm.generate(prompt, max_new_tokens=10, temperature=1.0, n=10, seed=4,
                         response_format={"type": "choice", "choices": ["alpha", "beta"]}):
        assert r.text in ("alpha", "beta")


def test_greedy_is_deterministic_and_batched_equals_one_at_a_time(sm):
    schema = SCHEMAS["array of objects"]
    prompts = [sm.apply_chat_template([{"role": "user", "content": c}])
               for c in ("List groceries.", "Give me a phone number.", "Write a sum.",
                         "Say hello.")]
    params = [SamplingParams(max_new_tokens=80, temperature=1.0, seed=11, response_format=schema),
              SamplingParams(max_new_tokens=40, temperature=0.9, seed=12,
                             response_format={"type": "regex", "pattern": PHONE}),
              SamplingParams(max_new_tokens=60, response_format={"type": "grammar",
                                                                  "grammar": ARITH}),
              SamplingParams(max_new_tokens=20)]
    alone = [sm.generate(p, q) for p, q in zip(prompts, params)]
    batched = sm.generate(prompts, params)
    for a, b in zip(alone, batched):
        assert a.token_ids == b.token_ids and a.text == b.text
    again = sm.generate(prompts[0], max_new_tokens=80, response_format=schema)
    assert again.text == sm.generate(prompts[0], max_new_tokens=80, response_format=schema).text
    validate(again.text, schema)


def test_streaming_stop_strings_and_length(sm):
    schema = SCHEMAS["nested objects"]
    prompt = sm.apply_chat_template(ASK)
    kw = dict(max_new_tokens=120, temperature=0.8, seed=5, response_format=schema)
    full = sm.generate(prompt, **kw)
    stream = sm.generate(prompt, stream=True, **kw)
    assert "".join(stream) == full.text
    assert stream.result.token_ids == full.token_ids
    validate(full.text, schema)
    cut = sm.generate(prompt, stop='"address"', **kw)
    assert cut.finish_reason == "stop" and full.text.startswith(cut.text)
    assert '"address"' not in cut.text
    # cut by max_new_tokens: "length", and what was made is a valid prefix
    short = sm.generate(prompt, **dict(kw, max_new_tokens=7))
    assert short.finish_reason == "length" and len(short.token_ids) == 7
    m = sm.grammars.compile(schema).matcher()
    assert m.validate_tokens(short.token_ids) == 7


def test_logprobs_are_those_of_the_constrained_distribution(sm):
    schema = SCHEMAS["enums"]
    prompt = sm.tokenize(sm.apply_chat_template(ASK))
    r = sm.generate(prompt, max_new_tokens=40, logprobs=4, response_format=schema)
    validate(r.text, schema)
    ids = prompt + r.token_ids
    logits = sm.logits(ids)[len(prompt) - 1:]
    c = sm.grammars.compile(schema).constraint(Sampler(SamplingParams(), sm.vocab_size),
                                               sm.end_token_ids)
    words = np.empty_like(c.words)
    for i, (tok, lp) in enumerate(zip(r.token_ids, r.logprobs)):
        c.compute(words)
        row = masks.masked(logits[i], words).astype(np.float64)
        ref = row - (row[np.isfinite(row)].max() +
                     np.log(np.exp(row[np.isfinite(row)] - row[np.isfinite(row)].max()).sum()))
        assert lp.token_id == tok
        assert abs(lp.logprob - ref[tok]) < 2e-3
        n_allowed = int(np.isfinite(row).sum())
        assert len(lp.top) == min(4, n_allowed)  # only tokens the constraint allows
        for t, v in lp.top:
            assert np.isfinite(row[t]) and abs(v - ref[t]) < 2e-3
        c.consume(tok)


def test_speculative_decoding_under_a_constraint(sm, smollm2_f32):
    schema = SCHEMAS["array of objects"]
    # a prompt that holds JSON, so prompt lookup has something to draft
    prompt = sm.apply_chat_template([{"role": "user", "content":
        'Like {"items": [{"name": "apple", "qty": 2}]}, list fruit as JSON.'}])
    kw = dict(max_new_tokens=100, response_format=schema)
    plain = sm.generate(prompt, **kw)
    for draft in ("prompt_lookup", smollm2_f32):
        spec = sm.generate(prompt, draft=draft, num_draft_tokens=6, **kw)
        assert spec.token_ids == plain.token_ids  # greedy: exactly plain decoding
        assert spec.timings["draft_tokens"] > 0
    validate(plain.text, schema)
    for seed in range(4):  # sampled: the accept / resample rule on masked distributions
        r = sm.generate(prompt, draft="prompt_lookup", temperature=1.0, seed=seed, **kw)
        validate(r.text, schema)


def test_mirostat_ignore_eos_and_min_new_tokens(sm):
    schema = SCHEMAS["optional and required"]
    prompt = sm.apply_chat_template(ASK)
    for kw in (dict(mirostat_mode=2, temperature=1.0, seed=1), dict(ignore_eos=True),
               dict(min_new_tokens=12, temperature=1.0, seed=2),
               dict(repetition_penalty=1.3, top_k=20, temperature=0.7, seed=3)):
        r = sm.generate(prompt, max_new_tokens=80, response_format=schema, **kw)
        assert r.finish_reason == "stop", (kw, r.text)
        validate(r.text, schema)


def test_threads_each_with_their_own_constraint(sm):
    prompt = sm.apply_chat_template(ASK)
    jobs = [dict(response_format=SCHEMAS[n], temperature=1.0, seed=i)
            for i, n in enumerate(["enums", "integer bounds", "string patterns", "anyOf"])]
    want = [sm.generate(prompt, max_new_tokens=60, **j).text for j in jobs]
    got = [None] * len(jobs)

    def run(i):
        got[i] = sm.generate(prompt, max_new_tokens=60, **jobs[i]).text
    ts = [threading.Thread(target=run, args=(i,)) for i in range(len(jobs))]
    for t in ts:
        t.start()
    for t in ts:
        t.join()
    assert got == want


@pytest.mark.parametrize("rf, match", [
    ({"type": "object", "properties": {"a": {"type": "strin"}}}, "strin"),
    ({"type": "array", "uniqueItems": True}, "uniqueItems"),
    ({"type": "object", "properties": {"a": {"type": "string", "format": "bogus"}}}, "bogus"),
    ({"type": "regex", "pattern": "(ab"}, "regex"),
    ({"type": "grammar", "grammar": "start: undefined_rule"}, "grammar"),
    ({"type": "grammar", "grammar": "root ::= [a-"}, "grammar"),
])
def test_bad_constraints_fail_before_anything_runs(sm, rf, match):
    steps = sm.engine.steps
    for call in (lambda: sm.generate("hi", response_format=rf),
                 lambda: sm.generate(["hi", "there"], response_format=rf),
                 lambda: sm.submit("hi", response_format=rf)):
        with pytest.raises(ValueError, match=match):
            call()
    assert sm.engine.steps == steps
    assert sm.cache_stats()["blocks_in_use"] == 0


def test_a_random_model_is_held_to_the_pattern_too(tiny):
    pat = r"[0-9]{3}-[a-z]{2,4}"
    for r in tiny.generate("x", max_new_tokens=12, temperature=1.0, n=4, seed=0,
                           response_format={"type": "regex", "pattern": pat}):
        assert re.fullmatch(pat, r.text), r.text


def test_draft_model_cut_to_nothing_by_the_constraint(sm, smollm2_f32, monkeypatch):
    # drafts the constraint cuts to nothing run a plain step: the draft model
    # forgets its cut tokens and drafts again from the real history
    from llmrt import structured as st_mod
    calls = []
    orig = st_mod.Constraint.valid_prefix

    def cut(self, drafts):
        calls.append(len(drafts))
        return 0 if len(calls) % 2 else orig(self, drafts)
    monkeypatch.setattr(st_mod.Constraint, "valid_prefix", cut)
    prompt = sm.apply_chat_template([{"role": "user", "content": "List two fruit as JSON."}])
    kw = dict(max_new_tokens=30, response_format=SCHEMAS["array of objects"])
    plain = sm.generate(prompt, **kw)
    spec = sm.generate(prompt, draft=smollm2_f32, num_draft_tokens=4, **kw)
    assert spec.token_ids == plain.token_ids
    assert len(calls) > 2
