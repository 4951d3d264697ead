"""`llmrt serve` under load, side by side with llama-cpp-python's server
(`python -m llama_cpp.server`) on the same model and machine.

    python bench/serve.py [--model PATH] [--clients 1,8,32,64] [--max-tokens 64]
        [--threads 2] [--no-peer]

llama-cpp-python's server runs one request at a time (queued: its
--interrupt_requests is switched off, else a new request cuts the running
one short). Each level runs that many concurrent clients, each sending streaming chat
requests one after another (distinct prompts; the end token's logit biased
to -100 so every reply is --max-tokens long), at least 16 requests and 2 a
client in all. Printed per server: requests/s, generated tokens/s, p50 / p99
time to first token and time per output token after the first, and the
ratios llmrt / llama.cpp. Token counts come from the model's tokenizer on
the streamed text, the same for both.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import socket
import statistics
import subprocess
import sys
import time

import httpx

import llmrt


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start(cmd: list[str], port: int, timeout: float = 180) -> subprocess.Popen:
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    t0 = time.time()
    while time.time() - t0 < timeout:
        if proc.poll() is not None:
            raise RuntimeError(f"{cmd[:4]} exited")
        try:
            r = httpx.get(f"http://127.0.0.1:{port}/v1/models", timeout=1)
            if r.status_code == 200:
                return proc
        except httpx.HTTPError:
            pass
        time.sleep(0.3)
    proc.kill()
    raise RuntimeError(f"{cmd[:4]} did not start")


TOPICS = ["rivers", "volcanoes", "bread", "bicycles", "owls", "glaciers", "chess", "coffee",
          "bridges", "salt", "kites", "castles", "whales", "clocks", "paper", "snow"]


async def one(client: httpx.AsyncClient, url: str, model: str, i: int, max_tokens: int,
              bias: dict) -> tuple[float, float, str]:
    body = {"model": model, "stream": True, "max_tokens": max_tokens, "temperature": 0.7,
            "seed": i, "logit_bias": bias,
            "messages": [{"role": "user",
                          "content": f"Tell me something about {TOPICS[i % len(TOPICS)]} "
                                     f"(note {i})."}]}
    t0 = time.perf_counter()
    first = None
    text = []
    async with client.stream("POST", url + "/v1/chat/completions", json=body,
                             timeout=600) as r:
        r.raise_for_status()
        async for line in r.aiter_lines():
            if not line.startswith("data: ") or line == "data: [DONE]":
                continue
            import json
            ch = json.loads(line[6:])
            for c in ch.get("choices", []):
                piece = (c.get("delta") or {}).get("content")
                if piece:
                    if first is None:
                        first = time.perf_counter()
                    text.append(piece)
    end = time.perf_counter()
    return (first or end) - t0, end - (first or end), "".join(text)


async def level(url: str, model: str, clients: int, max_tokens: int, bias: dict,
                count) -> dict:
    total = max(16, 2 * clients)
    per = -(-total // clients)
    out: list[tuple[float, float, str]] = []

    async def client_loop(c: int) -> None:
        async with httpx.AsyncClient() as http:
            for k in range(per):
                out.append(await one(http, url, model, c * per + k, max_tokens, bias))
    t0 = time.perf_counter()
    await asyncio.gather(*(client_loop(c) for c in range(clients)))
    wall = time.perf_counter() - t0
    toks = [count(t) for _, _, t in out]
    ttft = sorted(x[0] for x in out)
    tpot = sorted(d / max(n - 1, 1) for (_, d, _), n in zip(out, toks))

    def pct(xs, q):
        return xs[min(len(xs) - 1, int(q * len(xs)))]
    return dict(rps=len(out) / wall, tps=sum(toks) / wall, ttft50=statistics.median(ttft),
                ttft99=pct(ttft, 0.99), tpot50=statistics.median(tpot), tpot99=pct(tpot, 0.99))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default=None)
    ap.add_argument("--clients", default="1,8,32,64")
    ap.add_argument("--max-tokens", type=int, default=64)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--no-peer", action="store_true")
    a = ap.parse_args()
    path = os.path.abspath(a.model or llmrt.default_model_path())
    m = llmrt.Model(path, threads=1, context_length=256, kv_cache_tokens=256)
    bias = {str(i): -100 for i in sorted(m.end_token_ids)}
    levels = [int(x) for x in a.clients.split(",")]
    servers = []
    port = free_port()
    servers.append(("llmrt", [sys.executable, "-m", "llmrt", "serve", path, "--port", str(port),
                              "--threads", str(a.threads), "--max-batch-size", "64"], port,
                    os.path.splitext(os.path.basename(path))[0]))
    if not a.no_peer:
        try:
            import llama_cpp.server  # noqa: F401
            port2 = free_port()
            servers.append(("llama.cpp", [sys.executable, "-m", "llama_cpp.server", "--model",
                                          path, "--port", str(port2), "--n_threads",
                                          str(a.threads), "--n_threads_batch", str(a.threads),
                                          "--n_ctx", "8192", "--model_alias", "model",
                                          # queue requests instead of cutting the running one
                                          "--interrupt_requests", "False"],
                            port2, "model"))
        except ImportError:
            print("llama-cpp-python[server] not installed: llmrt only")
    res: dict[str, dict[int, dict]] = {}
    for name, cmd, p, model_id in servers:
        proc = start(cmd, p)
        try:
            url = f"http://127.0.0.1:{p}"
            asyncio.run(level(url, model_id, 1, 8, bias, lambda t: len(m.tokenize(t, False))))
            res[name] = {}
            for c in levels:
                res[name][c] = asyncio.run(level(url, model_id, c, a.max_tokens, bias,
                                                 lambda t: len(m.tokenize(t, False))))
        finally:
            proc.terminate()
            proc.wait(timeout=30)
    print(f"model {os.path.basename(path)}, {a.threads} threads each, {a.max_tokens} tokens a "
          f"reply, streaming chat; llmrt {llmrt.__version__} ({llmrt.build_info()['cpu_isa']})")
    for c in levels:
        for name in res:
            r = res[name][c]
            line = (f"{c:3d} clients  {name:9s} {r['rps']:6.2f} req/s {r['tps']:8.1f} tok/s   "
                    f"TTFT p50 {1e3 * r['ttft50']:7.0f} p99 {1e3 * r['ttft99']:7.0f} ms   "
                    f"per token p50 {1e3 * r['tpot50']:6.1f} p99 {1e3 * r['tpot99']:6.1f} ms")
            if name != "llmrt" and "llmrt" in res:
                o = res["llmrt"][c]
                line += (f"   llmrt/llama.cpp: {o['tps'] / r['tps']:.2f}x tok/s, p99 TTFT "
                         f"{r['ttft99'] / o['ttft99']:.1f}x lower")
            print(line)


if __name__ == "__main__":
    main()
