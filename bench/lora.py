"""What a LoRA adapter costs a token: decode tokens/s of the same prompt with
and without an adapter, alternating, and batched with half the requests on
the adapter.

    python bench/lora.py [--model PATH] [--threads 2] [--rank 16] [--runs 5]
        [--targets q_proj,k_proj,v_proj,o_proj,gate_proj,up_proj,down_proj] [--dtype f16]

The adapter is random (the speed does not depend on its values), written as
a PEFT directory for the model's shapes.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile

import numpy as np

import llmrt

MODULES = {"q_proj": "self_attn", "k_proj": "self_attn", "v_proj": "self_attn",
           "o_proj": "self_attn", "gate_proj": "mlp", "up_proj": "mlp", "down_proj": "mlp"}


def write_adapter(d: str, cfg: dict, rank: int, targets: list[str]) -> None:
    from safetensors.numpy import save_file
    D, F = cfg["n_embd"], cfg["n_ff"]
    qd, kvd = cfg["n_head"] * cfg["head_dim"], cfg["n_head_kv"] * cfg["head_dim"]
    shapes = {"q_proj": (qd, D), "k_proj": (kvd, D), "v_proj": (kvd, D), "o_proj": (D, qd),
              "gate_proj": (F, D), "up_proj": (F, D), "down_proj": (D, F)}
    rng = np.random.default_rng(0)
    t = {}
    for i in range(cfg["n_layer"]):
        for m in targets:
            rows, cols = shapes[m]
            p = f"base_model.model.model.layers.{i}.{MODULES[m]}.{m}"
            t[p + ".lora_A.weight"] = (rng.standard_normal((rank, cols)) * 0.01).astype(np.float32)
            t[p + ".lora_B.weight"] = (rng.standard_normal((rows, rank)) * 0.01).astype(np.float32)
    os.makedirs(d, exist_ok=True)
    save_file(t, os.path.join(d, "adapter_model.safetensors"))
    with open(os.path.join(d, "adapter_config.json"), "w") as f:
        json.dump({"r": rank, "lora_alpha": 2 * rank, "target_modules": targets}, f)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default=None)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--rank", type=int, default=16)
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--targets", default=",".join(MODULES))
    ap.add_argument("--dtype", default="f16", choices=["f16", "f32"],
                    help="how the adapter is stored")
    a = ap.parse_args()
    m = llmrt.Model(a.model, threads=a.threads, context_length=1024, kv_cache_tokens=8192)
    d = os.path.join(tempfile.mkdtemp(), "adapter")
    write_adapter(d, m.config, a.rank, a.targets.split(","))
    aid = m.load_lora(d, dtype=a.dtype)
    prompt = m.apply_chat_template([{"role": "user", "content": "Tell me about rivers."}])
    kw = dict(max_new_tokens=96, ignore_eos=True, add_special=False)
    base, lora = [], []
    for _ in range(a.runs):
        base.append(m.generate(prompt, **kw).timings["decode_tokens_per_s"])
        lora.append(m.generate(prompt, lora=aid, **kw).timings["decode_tokens_per_s"])
    b, l_ = statistics.median(base), statistics.median(lora)
    print(f"{m!r}, rank {a.rank} on {a.targets}, medians of {a.runs} alternating runs")
    print(f"decode batch 1: base {b:7.1f} tok/s   with the adapter {l_:7.1f} tok/s   "
          f"cost {100 * (b / l_ - 1):+.1f}% a token")
    prompts = [prompt] * 8
    mixed = [llmrt.SamplingParams(max_new_tokens=64, ignore_eos=True, lora=aid if i % 2 else None)
             for i in range(8)]
    plain = [llmrt.SamplingParams(max_new_tokens=64, ignore_eos=True)] * 8
    rates = {"plain": [], "mixed": []}
    import time
    for _ in range(max(2, a.runs // 2)):
        for name, ps in (("plain", plain), ("mixed", mixed)):
            m.clear_prefix_cache()
            t = time.perf_counter()
            rs = m.generate(prompts, ps, add_special=False)
            rates[name].append(sum(len(r.token_ids) for r in rs) / (time.perf_counter() - t))
    p_, x_ = statistics.median(rates["plain"]), statistics.median(rates["mixed"])
    print(f"batch of 8 (prompts included): all base {p_:7.1f} tok/s   half on the adapter "
          f"{x_:7.1f} tok/s   cost {100 * (p_ / x_ - 1):+.1f}%")


if __name__ == "__main__":
    main()
