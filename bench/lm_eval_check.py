"""lm-evaluation-harness against `llmrt serve`: a multiple-choice task from
local files, run through lm-eval's `local-completions` model (loglikelihood
requests: the prompt's logprobs by echo, tokenized through the server's
/tokenize), and the same accuracy computed from `Model.logits` directly.
The two must agree, item by item.

    python bench/lm_eval_check.py [--model PATH] [--items 60]

Needs lm-eval (`pip install "lm-eval[api]"`) and the server extra.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time

import numpy as np

CAPITALS = [("France", "Paris"), ("Germany", "Berlin"), ("Italy", "Rome"), ("Spain", "Madrid"),
            ("Japan", "Tokyo"), ("Egypt", "Cairo"), ("Russia", "Moscow"), ("Greece", "Athens"),
            ("Portugal", "Lisbon"), ("Austria", "Vienna"), ("Poland", "Warsaw"),
            ("Norway", "Oslo"), ("Sweden", "Stockholm"), ("Ireland", "Dublin"),
            ("Kenya", "Nairobi"), ("Peru", "Lima"), ("Cuba", "Havana"), ("China", "Beijing"),
            ("Canada", "Ottawa"), ("Chile", "Santiago")]
COLOURS = [("grass", "green"), ("the sky", "blue"), ("snow", "white"), ("coal", "black"),
           ("a banana", "yellow"), ("a tomato", "red"), ("an orange", "orange"),
           ("chocolate", "brown"), ("a lemon", "yellow"), ("blood", "red")]


def items(n: int) -> list[dict]:
    """Deterministic questions with four choices each."""
    rng = np.random.default_rng(0)
    out = []
    caps = [c for _, c in CAPITALS]
    cols = sorted({c for _, c in COLOURS})
    k = 0
    while len(out) < n:
        if k % 3 == 0:
            country, cap = CAPITALS[(k // 3) % len(CAPITALS)]
            wrong = [c for c in caps if c != cap]
            q, right = f"The capital of {country} is", cap
        elif k % 3 == 1:
            thing, col = COLOURS[(k // 3) % len(COLOURS)]
            wrong = [c for c in cols if c != col]
            q, right = f"The colour of {thing} is", col
        else:
            a, b = int(rng.integers(1, 10)), int(rng.integers(1, 10))
            right = str(a + b)
            wrong = [str(a + b + d) for d in (-2, -1, 1, 2) if a + b + d >= 0]
            q = f"{a} + {b} ="
        choices = [right] + list(rng.choice(wrong, 3, replace=False))
        rng.shuffle(choices)
        out.append({"question": q, "choices": [str(c) for c in choices],
                    "answer": choices.index(right)})
        k += 1
    return out


TASK = """task: llmrt_mc
dataset_path: json
dataset_kwargs:
  data_files:
    test: {data}
test_split: test
output_type: multiple_choice
doc_to_text: "{{{{question}}}}"
doc_to_choice: "{{{{choices}}}}"
doc_to_target: answer
target_delimiter: " "
metric_list:
  - metric: acc
"""


def direct(model, docs: list[dict]) -> list[list[float]]:
    """Each item's choices' log-likelihoods, from Model.logits (context and
    continuation tokenized apart, as lm-eval does)."""
    out = []
    for d in docs:
        ctx = model.tokenize(d["question"], add_special=False)
        scores = []
        for c in d["choices"]:
            cont = model.tokenize(" " + c, add_special=False)
            ids = ctx + cont
            lg = model.logits(ids).astype(np.float64)
            m = lg.max(axis=1, keepdims=True)
            ls = lg - m - np.log(np.exp(lg - m).sum(axis=1, keepdims=True))
            scores.append(float(sum(ls[len(ctx) - 1 + j, t] for j, t in enumerate(cont))))
        out.append(scores)
    return out


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default=None)
    ap.add_argument("--items", type=int, default=60)
    a = ap.parse_args()
    if shutil.which("lm_eval") is None and shutil.which("lm-eval") is None:
        print("lm-eval is not installed: pip install 'lm-eval[api]'")
        return 1
    import llmrt
    from llmrt.testing.server import start
    from llmrt.utils import default_model_path
    path = a.model or default_model_path()
    work = tempfile.mkdtemp(prefix="lmeval-")
    docs = items(a.items)
    data = os.path.join(work, "mc.jsonl")
    with open(data, "w") as f:
        for d in docs:
            f.write(json.dumps(d) + "\n")
    os.makedirs(os.path.join(work, "tasks"))
    with open(os.path.join(work, "tasks", "llmrt_mc.yaml"), "w") as f:
        f.write(TASK.format(data=data))
    model = llmrt.Model(path, threads=2)
    t0 = time.time()
    lls = direct(model, docs)
    preds = [int(np.argmax(x)) for x in lls]
    t_direct = time.time() - t0
    acc_direct = float(np.mean([p == d["answer"] for p, d in zip(preds, docs)]))
    srv = start(path, "--threads", "2")
    try:
        out = os.path.join(work, "out")
        cmd = ["lm_eval", "--model", "local-completions", "--model_args",
               f"base_url={srv.url}/v1/completions,model={srv.name},tokenizer_backend=remote,"
               "num_concurrent=4,max_retries=1", "--tasks", "llmrt_mc", "--include_path",
               os.path.join(work, "tasks"), "--output_path", out, "--log_samples"]
        t0 = time.time()
        r = subprocess.run(cmd, capture_output=True, text=True,
                           env=dict(os.environ, OPENAI_API_KEY="none", HF_DATASETS_OFFLINE="1"))
        t_eval = time.time() - t0
        if r.returncode != 0:
            print(r.stdout[-3000:], r.stderr[-3000:])
            return 1
    finally:
        srv.stop()
    res = samples = None
    for root, _, files in os.walk(out):
        for fn in files:
            if fn.startswith("results") and fn.endswith(".json"):
                res = json.load(open(os.path.join(root, fn)))
            if fn.startswith("samples_llmrt_mc") and fn.endswith(".jsonl"):
                samples = [json.loads(x) for x in open(os.path.join(root, fn))]
    acc_eval = res["results"]["llmrt_mc"]["acc,none"]
    got = {s["doc_id"]: [float(x[0][0]) for x in s["resps"]] for s in samples}
    agree = sum(int(np.argmax(got[i])) == p for i, p in enumerate(preds))
    diff = max(abs(a - b) for i, x in enumerate(lls) for a, b in zip(x, got[i]))
    print(f"model {os.path.basename(path)}, {len(docs)} items of 4 choices, "
          f"llmrt {llmrt.build_info()['cpu_isa']}")
    print(f"lm-eval (local-completions through llmrt serve): acc {acc_eval:.4f}  ({t_eval:.1f} s)")
    print(f"Model.logits directly:                         acc {acc_direct:.4f}  "
          f"({t_direct:.1f} s)")
    print(f"items whose chosen answer agrees: {agree} / {len(docs)}; largest difference of a "
          f"choice's log-likelihood: {diff:.2e}")
    return 0 if agree == len(docs) and abs(acc_eval - acc_direct) < 1e-9 else 1


if __name__ == "__main__":
    sys.exit(main())
