"""The extension's type stub (llmrt/_core.pyi) names exactly what the
module has: every public function, class, method and property, both ways."""

from __future__ import annotations

import ast
import os

import llmrt
from llmrt import _core


def _stub() -> dict[str, set[str] | None]:
    path = os.path.join(os.path.dirname(llmrt.__file__), "_core.pyi")
    tree = ast.parse(open(path).read())
    out: dict[str, set[str] | None] = {}
    for node in tree.body:
        if isinstance(node, ast.FunctionDef):
            out[node.name] = None
        elif isinstance(node, ast.ClassDef):
            out[node.name] = {n.name for n in node.body if isinstance(n, ast.FunctionDef)
                              and not n.name.startswith("_")} | \
                             {n.target.id for n in node.body if isinstance(n, ast.AnnAssign)
                              and isinstance(n.target, ast.Name)}
        elif isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name):
            out[node.target.id] = None
    return out


def test_the_stub_names_what_the_module_has():
    stub = _stub()
    public = {n for n in dir(_core) if not n.startswith("_")}
    stub_public = {n for n in stub if not n.startswith("_")}
    assert stub_public == public, (stub_public ^ public)
    for name, members in stub.items():
        obj = getattr(_core, name, None)
        if members is None or not isinstance(obj, type) or issubclass(obj, BaseException):
            continue
        have = {m for m in dir(obj) if not m.startswith("_")}
        assert members == have, (name, members ^ have)


def test_the_stub_names_the_testing_submodule():
    stub = _stub()["_Testing"]
    have = {n for n in dir(_core.testing) if not n.startswith("_")}
    assert stub == have, stub ^ have
