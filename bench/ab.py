"""Two builds of llmrt side by side: a benchmark script run alternately
under each (its --json line read back), medians and the ratio printed.

    python bench/ab.py --a /path/to/old/site --b python [--runs 5] -- \\
        bench/bench_generate.py --runs 3

--a / --b are directories put first on PYTHONPATH (each holding an llmrt
package with its built _core); the script after -- must print one JSON
object of numbers as its last line (bench_generate.py --json does).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys


def run(path: str, cmd: list[str]) -> dict:
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(
        [os.path.abspath(path)] + [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep)
                                   if p]))
    out = subprocess.run([sys.executable] + cmd, env=env, check=True, capture_output=True,
                         text=True).stdout
    return json.loads(out.strip().splitlines()[-1])


def main() -> None:
    argv = sys.argv[1:]
    if "--" not in argv:
        sys.exit("usage: ab.py --a DIR --b DIR [--runs N] -- script.py [args]")
    cut = argv.index("--")
    ap = argparse.ArgumentParser()
    ap.add_argument("--a", required=True)
    ap.add_argument("--b", required=True)
    ap.add_argument("--runs", type=int, default=5)
    a = ap.parse_args(argv[:cut])
    cmd = argv[cut + 1:]
    res: dict[str, dict[str, list[float]]] = {"a": {}, "b": {}}
    for i in range(a.runs):
        for side in (("a", "b") if i % 2 == 0 else ("b", "a")):
            for k, v in run(getattr(a, side), cmd).items():
                res[side].setdefault(k, []).append(float(v))
    print(f"a = {a.a}\nb = {a.b}\n{' '.join(cmd)}: medians of {a.runs} alternating runs")
    for k in res["a"]:
        ma, mb = statistics.median(res["a"][k]), statistics.median(res["b"].get(k, [0.0]))
        print(f"  {k:20s} a {ma:9.1f}   b {mb:9.1f}   b/a {mb / ma:5.3f}   "
              f"[a {' '.join(f'{x:.0f}' for x in res['a'][k])}; "
              f"b {' '.join(f'{x:.0f}' for x in res['b'].get(k, []))}]")


if __name__ == "__main__":
    main()
