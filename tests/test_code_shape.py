"""The package's shape, kept: no module of python/llmrt over 500 lines, no
function over 80, and no import cycle among its modules (imports for type
checking aside)."""

from __future__ import annotations

import ast
import os

import llmrt

ROOT = os.path.dirname(os.path.abspath(llmrt.__file__))
SRC = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "python", "llmrt")
PKG = SRC if os.path.isdir(SRC) else ROOT


def _modules() -> dict[str, str]:
    out = {}
    for dp, _, fs in os.walk(PKG):
        for f in fs:
            if f.endswith(".py"):
                p = os.path.join(dp, f)
                rel = os.path.relpath(p, os.path.dirname(PKG))[:-3].replace(os.sep, ".")
                out[rel[:-len(".__init__")] if rel.endswith(".__init__") else rel] = p
    return out


def test_modules_and_functions_are_short():
    long_mods, long_fns = [], []
    for name, p in _modules().items():
        src = open(p).read()
        if src.count("\n") > 500:
            long_mods.append((name, src.count("\n")))
        for n in ast.walk(ast.parse(src)):
            if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef)):
                if n.end_lineno - n.lineno + 1 > 80:
                    long_fns.append((name, n.name, n.end_lineno - n.lineno + 1))
    assert not long_mods, long_mods
    assert not long_fns, long_fns


def _edges(mods: dict[str, str]) -> dict[str, set[str]]:
    graph: dict[str, set[str]] = {}
    for m, p in mods.items():
        pkg = m if p.endswith("__init__.py") else m.rsplit(".", 1)[0]
        edges: set[str] = set()

        class Visit(ast.NodeVisitor):
            def visit_If(self, n: ast.If) -> None:
                if not (isinstance(n.test, ast.Name) and n.test.id == "TYPE_CHECKING"):
                    self.generic_visit(n)

            def visit_ImportFrom(self, n: ast.ImportFrom) -> None:
                base = pkg
                for _ in range(max(n.level - 1, 0)):
                    base = base.rsplit(".", 1)[0]
                tgt = (base + ("." + n.module if n.module else "")) if n.level else (n.module or "")
                if n.module and tgt in mods:
                    edges.add(tgt)
                for a in n.names:
                    if f"{tgt}.{a.name}" in mods:
                        edges.add(f"{tgt}.{a.name}")
        Visit().visit(ast.parse(open(p).read()))
        edges.discard(m)
        graph[m] = edges
    return graph


def test_no_import_cycles():
    graph = _edges(_modules())
    state: dict[str, int] = {}
    path: list[str] = []

    def visit(v: str) -> None:
        state[v] = 1
        path.append(v)
        for w in sorted(graph[v]):
            if state.get(w) == 1:
                raise AssertionError("import cycle: " + " -> ".join(path[path.index(w):] + [w]))
            if w not in state:
                visit(w)
        path.pop()
        state[v] = 2
    for v in sorted(graph):
        if v not in state:
            visit(v)


def test_the_runtime_does_not_import_the_offline_tools():
    graph = _edges(_modules())
    runtime = ["llmrt.model", "llmrt.engine", "llmrt.scheduler", "llmrt.request", "llmrt.jobs",
               "llmrt.lora", "llmrt.sampling", "llmrt.structured", "llmrt.serve.service"]
    seen, todo = set(), list(runtime)
    while todo:
        m = todo.pop()
        if m not in seen:
            seen.add(m)
            todo.extend(graph.get(m, ()))
    offline = {"llmrt.convert", "llmrt.quantization", "llmrt.cli"}
    assert not {m for m in seen if m in offline or m.startswith("llmrt.testing")}, seen


def test_no_module_but_the_family_table_tests_an_architecture_name():
    import re
    names = "|".join(["llama", "qwen2", "qwen3", "phi3", "gemma2", "gemma3"])
    pat = re.compile(r"""arch"?\]?\s*(==|!=|in)\s*\(?["'](""" + names + r""")["']""")
    hits = [(n, i + 1) for n, p in _modules().items() if n != "llmrt.families"
            for i, line in enumerate(open(p)) if pat.search(line)]
    assert not hits, hits


def test_a_family_that_differs_in_flags_only_is_one_table_entry(tmp_path, monkeypatch):
    # Qwen3 under another architecture name: one Family entry, nothing else
    import numpy as np
    from testutil import write_model

    from llmrt.families import FAMILIES, Family
    a, b = str(tmp_path / "a.gguf"), str(tmp_path / "b.gguf")
    write_model(a, arch="qwen3", seed=3)
    write_model(b, arch="qwen3", seed=3, gguf_arch="myqwen")
    monkeypatch.setitem(FAMILIES, "myqwen", Family("myqwen", (), qk_norm=True, rope_neox=True))
    ids = [5, 9, 200, 17, 64]
    want = llmrt.Model(a, threads=1, activations="f32").logits(ids)
    got = llmrt.Model(b, threads=1, activations="f32").logits(ids)
    np.testing.assert_array_equal(got, want)
