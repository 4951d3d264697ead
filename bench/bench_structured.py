"""What structured output costs: decode tokens/s with a response_format
against the same prompts without one, in one run.

    python bench/bench_structured.py [--model PATH] [--threads N] [--runs 5]
                                     [--batch 16] [--peer] [--json]

Five constraints (three JSON Schemas, a regex, a Lark grammar), each asked
for by a chat prompt. For each, a constrained generation (greedy, then
sampled at temperature 0.8) makes n tokens; the unconstrained run of the
same prompt makes exactly n tokens too (min_new_tokens = max_new_tokens = n,
ignore_eos), so both time the same number of decode steps. Decode tokens/s
is the result's own (tokens after the first over the time after the first).
The two kinds alternate, --runs times; medians.

"mask" is what llguidance takes per token to compute the mask, measured by
replaying the generated tokens through a fresh matcher: llmrt computes it on
a worker thread while the forward pass runs, so the cost per token is what
is left of it after the overlap (and the applying of the mask to the row).

--batch N: N constrained requests (the five constraints in turn) as one
continuously batched generate() against the same N prompts unconstrained
with each request's token count: generated tokens/s of the whole batch.

--peer: llama-cpp-python, if installed, on the same model and JSON Schemas
(its grammar sampler, GBNF from LlamaGrammar.from_json_schema), decode
tokens/s constrained and not, streamed (time after the first token).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time

from bench_generate import read_bandwidth, weight_bytes_per_token

import llmrt

PERSON = {"type": "object", "properties": {
    "name": {"type": "string", "maxLength": 24},
    "age": {"type": "integer", "minimum": 0, "maximum": 120},
    "email": {"type": "string", "format": "email"},
    "city": {"type": "string", "enum": ["Paris", "Rome", "Oslo", "Lima"]}},
    "required": ["name", "age", "email", "city"]}
ORDER = {"type": "object", "properties": {
    "order_id": {"type": "string", "pattern": "^[A-Z]{2}[0-9]{4}$"},
    "items": {"type": "array", "minItems": 2, "maxItems": 4, "items": {
        "type": "object", "properties": {
            "product": {"type": "string", "maxLength": 16},
            "quantity": {"type": "integer", "minimum": 1, "maximum": 9},
            "price": {"type": "number", "minimum": 0}},
        "required": ["product", "quantity", "price"]}},
    "paid": {"type": "boolean"}},
    "required": ["order_id", "items", "paid"]}
EVENT = {"type": "object", "properties": {
    "title": {"type": "string", "maxLength": 30},
    "date": {"type": "string", "format": "date"},
    "tags": {"type": "array", "items": {"type": "string", "maxLength": 12}, "maxItems": 3},
    "location": {"anyOf": [{"type": "string", "maxLength": 20}, {"type": "null"}]}},
    "required": ["title", "date"]}
ARITH = r"""
start: expr
expr: term OP term OP term OP term OP term OP term (OP term)*
term: NUMBER | "(" term OP term ")"
OP: " + " | " - " | " * " | " / "
NUMBER: /[1-9][0-9]{0,3}/
"""

CASES = [
    ("json person", {"type": "json_schema", "json_schema": {"name": "person", "schema": PERSON}},
     "Invent a person. Reply with JSON: name, age, email and city."),
    ("json order", {"type": "json_schema", "json_schema": {"name": "order", "schema": ORDER}},
     "Write a shop order as JSON with an order id, two or three items and whether it is paid."),
    ("json event", {"type": "json_schema", "json_schema": {"name": "event", "schema": EVENT}},
     "Describe a concert as JSON: title, date, tags and location."),
    ("regex date", {"type": "regex", "pattern": r"(19|20)[0-9]{2}-(0[1-9]|1[0-2])-[0-2][0-9]"
                                                  r"( (and|to) (19|20)[0-9]{2}-(0[1-9]|1[0-2])"
                                                  r"-[0-2][0-9])*"},
     "When did the last three world cups start? Give dates."),
    ("grammar arith", {"type": "grammar", "grammar": ARITH},
     "Write a long arithmetic expression with parentheses."),
]
SAMPLED = dict(temperature=0.8, top_p=0.95, seed=7)


def decode_tps(r: llmrt.GenerationResult) -> float:
    return r.timings["decode_tokens_per_s"]


def mask_us_per_token(m: llmrt.Model, rf: dict, ids: list[int]) -> float:
    """llguidance's time per mask along a generated sequence (a fresh matcher)."""
    import numpy as np
    sampler = llmrt.sampling.Sampler(llmrt.SamplingParams(), m.vocab_size)
    c = m.grammars.compile(rf).constraint(sampler, m.end_token_ids)
    words = np.empty_like(c.words)
    t = time.perf_counter()
    for tok in ids:
        c.compute(words)
        c.consume(tok)
    return (time.perf_counter() - t) / max(len(ids), 1) * 1e6


def run_single(m: llmrt.Model, runs: int, mode: dict) -> list[dict]:
    rows = []
    for name, rf, ask in CASES:
        prompt = m.apply_chat_template([{"role": "user", "content": ask}])
        first = m.generate(prompt, max_new_tokens=160, response_format=rf, **mode)
        n = len(first.token_ids)
        con, unc = [], []
        for _ in range(runs):
            r = m.generate(prompt, max_new_tokens=160, response_format=rf, **mode)
            con.append(decode_tps(r))
            u = m.generate(prompt, max_new_tokens=n, min_new_tokens=n, ignore_eos=True, **mode)
            unc.append(decode_tps(u))
        rows.append(dict(case=name, tokens=n, constrained=statistics.median(con),
                         unconstrained=statistics.median(unc),
                         mask_us=mask_us_per_token(m, rf, first.token_ids),
                         finish=first.finish_reason, text=first.text))
    return rows


def run_batch(m: llmrt.Model, runs: int, size: int) -> dict:
    asks = [CASES[i % len(CASES)] for i in range(size)]
    prompts = [m.apply_chat_template([{"role": "user", "content": a}]) for _, _, a in asks]
    con_p = [llmrt.SamplingParams(max_new_tokens=160, response_format=rf, seed=i, **{
        k: v for k, v in SAMPLED.items() if k != "seed"}) for i, (_, rf, _) in enumerate(asks)]
    first = m.generate(prompts, con_p)
    counts = [len(r.token_ids) for r in first]
    unc_p = [llmrt.SamplingParams(max_new_tokens=n, min_new_tokens=n, ignore_eos=True, seed=i,
                                  **{k: v for k, v in SAMPLED.items() if k != "seed"})
             for i, n in enumerate(counts)]
    con, unc = [], []
    for _ in range(runs):
        t = time.perf_counter()
        rs = m.generate(prompts, con_p)
        con.append(sum(len(r.token_ids) for r in rs) / (time.perf_counter() - t))
        t = time.perf_counter()
        rs = m.generate(prompts, unc_p)
        unc.append(sum(len(r.token_ids) for r in rs) / (time.perf_counter() - t))
    return dict(size=size, tokens=sum(counts), constrained=statistics.median(con),
                unconstrained=statistics.median(unc))


def run_peer(path: str, threads: int, runs: int) -> list[dict] | None:
    try:
        from llama_cpp import Llama, LlamaGrammar
    except ImportError:
        return None
    llm = Llama(path, n_threads=threads, n_ctx=2048, verbose=False)

    def stream(prompt: str, n: int, grammar: object = None) -> tuple[int, float]:
        times = []
        for _ in llm.create_completion(prompt, max_tokens=n, temperature=0.0, grammar=grammar,
                                       stream=True):
            times.append(time.perf_counter())
        k = len(times)
        return k, (k - 1) / (times[-1] - times[0]) if k > 1 else 0.0

    m_tmp = llmrt.Model(path, threads=1, context_length=512)
    rows = []
    for name, rf, ask in CASES[:3]:
        prompt = m_tmp.apply_chat_template([{"role": "user", "content": ask}])
        g = LlamaGrammar.from_json_schema(json.dumps(rf["json_schema"]["schema"]), verbose=False)
        n, _ = stream(prompt, 160, g)
        con, unc = [], []
        for _ in range(runs):
            con.append(stream(prompt, 160, g)[1])
            unc.append(stream(prompt, n)[1])
        rows.append(dict(case=name, tokens=n, constrained=statistics.median(con),
                         unconstrained=statistics.median(unc)))
    return rows


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default=None)
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--batch", type=int, default=16, help="batched requests (0: skip)")
    ap.add_argument("--peer", action="store_true", help="also llama-cpp-python's grammars")
    ap.add_argument("--json", action="store_true")
    a = ap.parse_args()

    m = llmrt.Model(a.model, threads=a.threads)
    out: dict = {"model": os.path.basename(m.path), "threads": m.threads,
                 "cpu_isa": llmrt.build_info()["cpu_isa"]}
    m.generate("Hello", max_new_tokens=4, response_format={"type": "json_object"})  # warm up
    out["greedy"] = run_single(m, a.runs, {})
    out["sampled"] = run_single(m, a.runs, SAMPLED)
    if a.batch:
        out["batch"] = run_batch(m, a.runs, a.batch)
    if a.peer:
        out["peer"] = run_peer(m.path, m.threads, a.runs)
    if a.json:
        print(json.dumps(out))
        return

    per_token = weight_bytes_per_token(m)
    bw = read_bandwidth(m.threads)
    print(f"model: {out['model']}  threads: {m.threads}  isa: {out['cpu_isa']}  "
          f"read bandwidth: {bw:.1f} GB/s")
    for mode in ("greedy", "sampled"):
        print(f"\n{mode}: decode tok/s, constrained vs the same prompts unconstrained "
              f"(median of {a.runs})")
        print(f"  {'case':<14}{'tokens':>7}{'constrained':>13}{'plain':>9}{'cost':>8}"
              f"{'mask us/tok':>13}{'GB/s':>7}  finish")
        for r in out[mode]:
            cost = r["unconstrained"] / r["constrained"] - 1
            print(f"  {r['case']:<14}{r['tokens']:>7}{r['constrained']:>13.1f}"
                  f"{r['unconstrained']:>9.1f}{cost:>+8.1%}{r['mask_us']:>13.0f}"
                  f"{r['constrained'] * per_token / 1e9:>7.1f}  {r['finish']}")
        costs = [r["unconstrained"] / r["constrained"] - 1 for r in out[mode]]
        print(f"  median cost per token: {statistics.median(costs):+.1%} "
              f"(worst {max(costs):+.1%})")
    if a.batch:
        b = out["batch"]
        print(f"\nbatch of {b['size']} (sampled), {b['tokens']} tokens: constrained "
              f"{b['constrained']:.1f} tok/s, unconstrained {b['unconstrained']:.1f} tok/s, "
              f"cost {b['unconstrained'] / b['constrained'] - 1:+.1%}")
    if a.peer:
        if out["peer"] is None:
            print("\npeer: llama-cpp-python is not installed")
        else:
            print("\nllama-cpp-python (greedy, GBNF from the same JSON Schemas):")
            ours = {r["case"]: r for r in out["greedy"]}
            for r in out["peer"]:
                o = ours[r["case"]]
                print(f"  {r['case']:<14}{r['tokens']:>7} constrained {r['constrained']:>7.1f} "
                      f"plain {r['unconstrained']:>7.1f} cost "
                      f"{r['unconstrained'] / r['constrained'] - 1:+.1%}; llmrt constrained "
                      f"{o['constrained'] / r['constrained']:.2f}x")
    for r in out["greedy"]:
        print(f"\n{r['case']}: {r['text']!r}")


if __name__ == "__main__":
    main()
