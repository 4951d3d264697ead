"""Decode speed on a shared machine: llmrt and llama-cpp-python, quiet and
then beside busy processes (each spinning one core), in one run with the
engines alternating; the figure is loaded / quiet per engine.

    python bench/contention.py [--model PATH] [--threads 2] [--busy 2] [--runs 5]

With as many busy processes as cores a fair share is half the quiet speed.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import time

from compare import LlamaCppRunner, LlmrtRunner

import llmrt

BUSY = "while True: pass"


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default=None)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--busy", type=int, default=2, help="busy processes in the loaded runs")
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--tokens", type=int, default=64)
    a = ap.parse_args()
    path = a.model or llmrt.default_model_path()
    runners = [LlmrtRunner(path, a.threads, 512)]
    try:
        runners.append(LlamaCppRunner(path, a.threads, 512))
    except ImportError:
        print("llama-cpp-python not installed: llmrt only")
    prompt = runners[0].m.tokenize("The capital of France is")
    for r in runners:
        r.decode(prompt, 8)  # warm-up

    res = {r.name: {"quiet": [], "loaded": []} for r in runners}
    for _ in range(a.runs):
        for r in runners:
            res[r.name]["quiet"].append(r.decode(prompt, a.tokens))
        procs = [subprocess.Popen([sys.executable, "-c", BUSY]) for _ in range(a.busy)]
        try:
            time.sleep(0.5)  # let the scheduler spread them
            for r in runners:
                res[r.name]["loaded"].append(r.decode(prompt, a.tokens))
        finally:
            for p in procs:
                p.kill()
                p.wait()
    print(f"model {os.path.basename(path)}, {a.threads} threads, {a.busy} busy processes, "
          f"llmrt {llmrt.build_info()['cpu_isa']}, medians of {a.runs}")
    for name, d in res.items():
        q, lo = statistics.median(d["quiet"]), statistics.median(d["loaded"])
        print(f"{name:10s} quiet {q:7.1f} tok/s   loaded {lo:7.1f} tok/s   {lo / q:5.2f}x   "
              f"(loaded runs {', '.join(f'{v:.1f}' for v in d['loaded'])})")


if __name__ == "__main__":
    main()
