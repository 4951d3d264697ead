"""llmrt on a GPU, side by side with Hugging Face transformers in one run.

    python bench/gpu.py [--model PATH] [--peak-gbs 4800] [--no-cpu] [--no-peer]

llmrt (device="cuda"):
- generate() end to end at batch 1, 32-token prompt + 256 new tokens,
  greedy and sampled (top-k 40, top-p 0.95, min-p 0.05, T 0.8);
- the native decode step at context 64 / 512 / 2048 (one sequence, its
  token drawn greedily in the step), with the fraction of HBM bandwidth the
  weights' bytes give at that rate;
- 64 sequences decoding together (native steps), and generate() over 64
  prompts end to end;
- a 2048-token prompt (tokens/s, time to first token);
- the prompt and the batch of 64 again with activations="f16" (products of
  16 tokens or more on tensor cores).
The CPU backend's batch-1 decode on the same model, unless --no-cpu.

Peer (when torch and transformers import and see a GPU): LlamaForCausalLM of
the same shapes in bf16 with a static cache (generate() compiles it and
replays CUDA graphs), greedy 32 + 256 tokens at batch 1 and 64, and the
2048-token prompt. Speed depends on the shapes, not the weights, so the peer
is built from its config.

Without --model it uses the default model when installed, else writes a
random model of the default model's shapes (SmolLM2-135M: 30 layers, 576
wide, 9/3 heads, FFN 1536, vocabulary 49152; Q4_1 with a Q8_0 embedding),
which runs at the same speed.
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time

import numpy as np

import llmrt
from llmrt.sampling import Sampler
from llmrt.step import StepEntry

SAMPLED = dict(temperature=0.8, top_k=40, top_p=0.95, min_p=0.05)


def shaped_model(path: str) -> str:
    if not os.path.exists(path):
        from llmrt.testing.models import write_model
        write_model(path + ".tmp", wtype="Q4_1", emb_type="Q8_0", n_embd=576, n_layer=30, n_head=9,
                    n_head_kv=3, n_ff=1536, tied=True, extra_tokens=49152 - 269, ctx=8192)
        os.replace(path + ".tmp", path)
    return path


def weight_bytes(path: str) -> int:
    # every tensor but the embedding is read per step; a tied embedding is
    # read as the output head
    from gguf import GGUFReader
    t = {x.name: int(x.n_bytes) for x in GGUFReader(path).tensors}
    return sum(n for name, n in t.items() if name != "token_embd.weight" or "output.weight" not in t)


def step_time(m: llmrt.Model, batch: int, context: int, steps: int) -> float:
    """Seconds per native decode step of `batch` sequences at `context`
    positions, each drawing greedily in the step (the argmax on the device)."""
    eng = m.engine
    seqs = [eng.new_sequence() for _ in range(batch)]
    greedy = [Sampler(llmrt.SamplingParams(), m.vocab_size) for _ in seqs]
    prompt = (np.arange(context) * 7 % 1000 + 3).astype(np.int32)
    for s in seqs:
        eng.forward(s, prompt, "none")
    tok = np.asarray([5], np.int32)

    def step():
        eng.step([StepEntry(s, tok, "last", [g], 1) for s, g in zip(seqs, greedy)])
    for _ in range(4):  # warm-up: the first run, the graph capture, replays
        step()
    t = time.perf_counter()
    for _ in range(steps):
        step()
    dt = (time.perf_counter() - t) / steps
    for s in seqs:
        eng.release(s)
    return dt


def generate_rate(m: llmrt.Model, n_prompts: int, new: int, runs: int = 3, **kw) -> float:
    prompts = [[(13 * i + j) % 1000 + 3 for j in range(32)] for i in range(n_prompts)]
    m.generate(prompts[0], max_new_tokens=16, ignore_eos=True, **kw)  # warm-up
    rates = []
    for r in range(runs):
        m.clear_prefix_cache()
        t = time.perf_counter()
        if n_prompts == 1:
            out = [m.generate(prompts[0], max_new_tokens=new, ignore_eos=True, seed=r, **kw)]
        else:
            out = m.generate(prompts, max_new_tokens=new, ignore_eos=True, seed=r, **kw)
        rates.append(sum(len(x.token_ids) for x in out) / (time.perf_counter() - t))
    return statistics.median(rates)


def prompt_rate(m: llmrt.Model, n: int, runs: int = 3) -> float:
    ids = (np.arange(n) * 7 % 1000 + 3).astype(np.int32)
    eng = m.engine
    s = eng.new_sequence()
    eng.forward(s, ids[:64], "none")
    eng.release(s)
    out = []
    for _ in range(runs):
        m.clear_prefix_cache()
        s = eng.new_sequence()
        t = time.perf_counter()
        eng.forward(s, ids)
        out.append(n / (time.perf_counter() - t))
        eng.release(s)
    return statistics.median(out)


def transformers_peer(batch_sizes=(1, 64), new: int = 256, prompt: int = 2048) -> dict:
    """The same shapes in transformers, bf16, static cache (compiled)."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM
    if not torch.cuda.is_available():
        raise ImportError("torch sees no GPU")
    cfg = LlamaConfig(vocab_size=49152, hidden_size=576, intermediate_size=1536,
                      num_hidden_layers=30, num_attention_heads=9, num_key_value_heads=3,
                      max_position_embeddings=4096, tie_word_embeddings=True,
                      rms_norm_eps=1e-5, rope_theta=100000.0)
    torch.manual_seed(0)
    model = LlamaForCausalLM(cfg).to("cuda", torch.bfloat16).eval()
    out = {"version": __import__("transformers").__version__}
    for b in batch_sizes:
        ids = torch.randint(3, 1000, (b, 32), device="cuda")
        kw = dict(max_new_tokens=new, min_new_tokens=new, do_sample=False,
                  cache_implementation="static", pad_token_id=0)
        with torch.no_grad():
            model.generate(ids, **kw)  # compile and capture
            model.generate(ids, **kw)
            torch.cuda.synchronize()
            rates = []
            for _ in range(3):
                t = time.perf_counter()
                model.generate(ids, **kw)
                torch.cuda.synchronize()
                rates.append(b * new / (time.perf_counter() - t))
        out[f"generate_b{b}"] = statistics.median(rates)
    ids = torch.randint(3, 1000, (1, prompt), device="cuda")
    with torch.no_grad():
        model(ids)
        torch.cuda.synchronize()
        ts = []
        for _ in range(3):
            t = time.perf_counter()
            model(ids, logits_to_keep=1)
            torch.cuda.synchronize()
            ts.append(time.perf_counter() - t)
    out["prompt"] = prompt / statistics.median(ts)
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default=None)
    ap.add_argument("--peak-gbs", type=float, default=4800.0,
                    help="the GPU's memory bandwidth (H200: 4800 GB/s)")
    ap.add_argument("--steps", type=int, default=200)
    ap.add_argument("--no-cpu", action="store_true")
    ap.add_argument("--no-peer", action="store_true")
    a = ap.parse_args()
    path = a.model
    if path is None:
        try:
            path = llmrt.default_model_path()
        except FileNotFoundError:
            path = shaped_model(os.path.join(tempfile.gettempdir(), "llmrt_shaped_135m_8k.gguf"))
    info = llmrt.build_info()
    print(f"llmrt {llmrt.__version__}, GPU: {', '.join(info['cuda_devices']) or 'none'}")
    if not llmrt.cuda_available():
        print("no CUDA device: nothing to measure")
        return
    gpu = llmrt.Model(path, device="cuda", context_length=4096, kv_cache_tokens=64 * 600)
    wb = weight_bytes(path)
    print(f"model {os.path.basename(path)}: {wb / 1e6:.1f} MB of weights per step")

    res = {}
    res["greedy"] = generate_rate(gpu, 1, 256)
    res["sampled"] = generate_rate(gpu, 1, 256, **SAMPLED)
    print(f"generate(), 32 + 256 tokens, batch 1: greedy {res['greedy']:8.1f} tok/s   "
          f"sampled {res['sampled']:8.1f} tok/s")
    steps = {}
    for c in (64, 512, 2048):
        steps[c] = step_time(gpu, 1, c, a.steps)
        gbs = wb / steps[c] / 1e9
        print(f"decode step at context {c:5d}: {steps[c] * 1e3:6.3f} ms = {1 / steps[c]:8.1f} tok/s "
              f"({gbs:7.1f} GB/s of weights, {100 * gbs / a.peak_gbs:4.1f}% of {a.peak_gbs:.0f})")
    print(f"  step at 2048 / step at 64: {steps[2048] / steps[64]:.2f}x")
    res["step64"] = 64 / step_time(gpu, 64, 64, max(16, a.steps // 4))
    res["batch64"] = generate_rate(gpu, 64, 256, runs=2, **SAMPLED)
    print(f"batch 64: native steps {res['step64']:9.1f} tok/s   generate([64 prompts]) sampled "
          f"{res['batch64']:9.1f} tok/s")
    res["prompt"] = prompt_rate(gpu, 2048)
    print(f"prompt, 2048 tokens: {res['prompt']:9.1f} tok/s (first token after "
          f"{2048 / res['prompt'] * 1e3:.1f} ms)")
    # tensor cores: products of 16 tokens or more in f16 (f32 sums)
    del gpu
    tc = llmrt.Model(path, device="cuda", context_length=4096, kv_cache_tokens=64 * 600,
                     activations="f16")
    res["tc_prompt"] = prompt_rate(tc, 2048)
    res["tc_step64"] = 64 / step_time(tc, 64, 64, max(16, a.steps // 4))
    res["tc_batch64"] = generate_rate(tc, 64, 256, runs=2, **SAMPLED)
    print(f"tensor cores (activations='f16'): prompt 2048 {res['tc_prompt']:9.1f} tok/s (first "
          f"token after {2048 / res['tc_prompt'] * 1e3:.1f} ms); batch 64: native steps "
          f"{res['tc_step64']:9.1f} tok/s, generate([64 prompts]) sampled {res['tc_batch64']:9.1f} tok/s")
    del tc
    if not a.no_cpu:
        cpu = llmrt.Model(path, context_length=4096)
        c1 = generate_rate(cpu, 1, 64, runs=1)
        print(f"CPU backend ({cpu.threads} threads), generate() batch 1 greedy: {c1:8.1f} tok/s   "
              f"GPU / CPU {res['greedy'] / c1:.1f}x")
    if a.no_peer:
        return
    try:
        peer = transformers_peer()
    except ImportError as e:
        print(f"transformers peer not run: {e}")
        return
    print(f"transformers {peer['version']} (bf16, static cache, compiled), same shapes:")
    print(f"  generate batch 1: {peer['generate_b1']:9.1f} tok/s   llmrt greedy / peer "
          f"{res['greedy'] / peer['generate_b1']:.2f}x")
    print(f"  generate batch 64: {peer['generate_b64']:9.1f} tok/s   llmrt sampled / peer "
          f"{res['batch64'] / peer['generate_b64']:.2f}x (tensor cores "
          f"{res['tc_batch64'] / peer['generate_b64']:.2f}x)")
    print(f"  prompt 2048: {peer['prompt']:9.1f} tok/s   llmrt / peer "
          f"{res['prompt'] / peer['prompt']:.2f}x (tensor cores {res['tc_prompt'] / peer['prompt']:.2f}x)")


if __name__ == "__main__":
    main()
