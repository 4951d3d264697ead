"""Speculative decoding with prompt lookup on an input-grounded task (the
model is asked to repeat a paragraph; the drafts come from the prompt):
decode tokens/s with and without it, the speed-up, acceptance rate and
tokens per target forward, and whether the greedy outputs are identical.

    python bench/speculative.py [--model PATH] [--threads 2] [--runs 3]
        [--activations int8|f32]
"""

from __future__ import annotations

import argparse
import statistics

import llmrt

TEXT = ("The committee met on Tuesday to review the budget for the new library. After a long "
        "discussion, the members agreed to increase funding for children's programs, reduce "
        "spending on printed newspapers, and hire two additional librarians for the evening "
        "shift. The chair thanked everyone for their patience and closed the meeting at nine.")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default=None)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--activations", default="int8")
    ap.add_argument("--num-draft-tokens", type=int, default=8)
    a = ap.parse_args()
    m = llmrt.Model(a.model, threads=a.threads, context_length=2048, activations=a.activations)
    prompt = m.apply_chat_template([{"role": "user",
                                     "content": "Repeat this text exactly:\n\n" + TEXT}])
    kw = dict(max_new_tokens=100, add_special=False)
    plain, spec, res = [], [], {}
    for _ in range(a.runs):
        r = m.generate(prompt, **kw)
        plain.append(r.timings["decode_tokens_per_s"])
        res["plain"] = r
        r = m.generate(prompt, draft="prompt_lookup", num_draft_tokens=a.num_draft_tokens, **kw)
        spec.append(r.timings["decode_tokens_per_s"])
        res["spec"] = r
    p, s = statistics.median(plain), statistics.median(spec)
    t = res["spec"].timings
    same = res["spec"].token_ids == res["plain"].token_ids
    first = next((i for i, (x, y) in enumerate(zip(res["plain"].token_ids,
                                                   res["spec"].token_ids)) if x != y), None)
    print(f"{m!r}, activations={a.activations}, {len(res['plain'].token_ids)} tokens")
    print(f"plain greedy       {p:7.1f} tok/s   [runs {' '.join(f'{x:.0f}' for x in plain)}]")
    print(f"prompt lookup (k={a.num_draft_tokens}) {s:7.1f} tok/s   "
          f"[runs {' '.join(f'{x:.0f}' for x in spec)}]   speed-up {s / p:.2f}x")
    print(f"acceptance {t['draft_acceptance']:.2f}, {t['tokens_per_forward']:.2f} tokens per "
          f"target forward; outputs identical: {same}"
          + ("" if same else f" (first difference at token {first})"))


if __name__ == "__main__":
    main()
