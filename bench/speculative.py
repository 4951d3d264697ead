"""Speculative decoding, decode tokens/s with and without it, the speed-up,
acceptance rate, tokens per target forward, and whether the greedy outputs
are identical:

- prompt lookup on an input-grounded task (the model is asked to repeat a
  paragraph; the drafts come from the prompt: high acceptance) and on
  free-form chat (few drafts stand: the adaptive draft length should keep
  it at plain decoding's speed);
- with --draft-model: an F16 copy of the model (made by `llmrt quantize`)
  as the target and the Q4_1 model itself as the draft, on open-ended chat
  prompts, greedy and sampled (temperature 0.7).

    python bench/speculative.py [--model PATH] [--threads 2] [--runs 3]
        [--activations int8|f32] [--batch-invariant] [--draft-model]
        [--f16 PATH]
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile

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
    ap.add_argument("--batch-invariant", action="store_true")
    ap.add_argument("--draft-model", action="store_true")
    ap.add_argument("--f16", default=os.path.join(tempfile.gettempdir(), "llmrt_bench_f16.gguf"))
    a = ap.parse_args()
    if a.draft_model:
        draft_model(a)
        return
    m = llmrt.Model(a.model, threads=a.threads, context_length=2048, activations=a.activations,
                    batch_invariant=a.batch_invariant)
    print(f"{m!r}, activations={a.activations}, prompt lookup k <= {a.num_draft_tokens}, "
          f"medians of {a.runs} alternating runs")
    tasks = [("copy", ["Repeat this text exactly:\n\n" + TEXT]), ("free-form chat", CHATS)]
    for name, asks in tasks:
        p, s_, acc, tpf, same, n = measure(m, asks, a.runs, dict(max_new_tokens=100),
                                           dict(draft="prompt_lookup",
                                                num_draft_tokens=a.num_draft_tokens))
        print(f"{name:15s} plain {p:6.1f} tok/s   prompt lookup {s_:6.1f} tok/s   "
              f"speed-up {s_ / p:.2f}x   acceptance {acc:.2f}, {tpf:.2f} tokens per forward; "
              f"greedy outputs identical {same}/{n}")


def measure(m: llmrt.Model, asks: list[str], runs: int, kw: dict, spec_kw: dict) -> tuple:
    """Decode tok/s of each chat prompt plain and speculative, alternating:
    medians of both, of the acceptance and of tokens per forward, and how
    many outputs were identical (of how many)."""
    plain, spec, same, acc, tpf = [], [], 0, [], []
    for _ in range(runs):
        for q in asks:
            prompt = m.apply_chat_template([{"role": "user", "content": q}])
            args = dict(add_special=False, **kw)
            r0 = m.generate(prompt, **args)
            r1 = m.generate(prompt, **spec_kw, **args)
            plain.append(r0.timings["decode_tokens_per_s"])
            spec.append(r1.timings["decode_tokens_per_s"])
            same += r0.token_ids == r1.token_ids
            acc.append(r1.timings["draft_acceptance"])
            tpf.append(r1.timings["tokens_per_forward"])
    med = statistics.median
    return med(plain), med(spec), med(acc), med(tpf), same, len(plain)


CHATS = ["Write a short story about a robot who learns to paint.",
         "Explain how a rainbow forms.",
         "What are the benefits of regular exercise?"]


def draft_model(a) -> None:
    src = a.model or llmrt.default_model_path()
    if not os.path.exists(a.f16):
        llmrt.quantize(src, a.f16, "f16")
    target = llmrt.Model(a.f16, threads=a.threads, context_length=2048,
                         batch_invariant=a.batch_invariant)
    draft = llmrt.Model(src, threads=a.threads, context_length=2048)
    k = min(a.num_draft_tokens, 4) if a.num_draft_tokens == 8 else a.num_draft_tokens
    print(f"target {target!r}\ndraft  {draft!r}\nk={k}, 100 new tokens a prompt, "
          f"{len(CHATS)} prompts, medians of {a.runs} runs")
    for label, kw in (("greedy", dict()), ("sampled T=0.7", dict(temperature=0.7, seed=1))):
        p, s_, acc, tpf, same, n = measure(target, CHATS, a.runs,
                                           dict(max_new_tokens=100, ignore_eos=True, **kw),
                                           dict(draft=draft, num_draft_tokens=k))
        print(f"{label:14s} plain {p:6.1f} tok/s   with draft {s_:6.1f} tok/s   "
              f"speed-up {s_ / p:.2f}x   acceptance {acc:.2f}, {tpf:.2f} tokens per target "
              f"forward" + (f"; outputs identical {same}/{n}" if not kw else ""))


if __name__ == "__main__":
    main()
