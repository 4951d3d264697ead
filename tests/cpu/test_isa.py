"""Run-time ISA selection: LLMRT_ISA forces a variant, and a variant the CPU
cannot run makes the import fail with a clear message."""

import os
import subprocess
import sys

import pytest

import llmrt
from llmrt import _core


def _run(env_isa):
    env = dict(os.environ, LLMRT_ISA=env_isa)
    code = "import llmrt; print(llmrt.build_info()['cpu_isa'])"
    return subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True,
                          timeout=120)


def test_build_info():
    info = llmrt.build_info()
    assert "generic" in info["cpu_isa_compiled"]
    assert info["cpu_isa"] in info["cpu_isa_supported"]
    # the CUDA backend is compiled in where a CUDA compiler was found; usable
    # only with a GPU
    assert isinstance(info["cuda"], bool)
    assert llmrt.cuda_available() == (info["cuda"] and bool(info["cuda_devices"]))
    assert info["version"] == llmrt.__version__


@pytest.mark.parametrize("isa", ["generic", "avx2", "avx512", "avx512_vnni"])
def test_forced_isa(isa):
    r = _run(isa)
    if _core.testing.isa_available(isa):
        assert r.returncode == 0, r.stderr
        assert r.stdout.strip() == isa
    else:
        assert r.returncode != 0
        assert "cannot run" in r.stderr or "not compiled" in r.stderr


def test_unknown_isa_fails_loudly():
    r = _run("sse9")
    assert r.returncode != 0
    assert "LLMRT_ISA='sse9'" in r.stderr


def test_forced_generic_gives_same_greedy_tokens(tmp_path):
    # The whole model through the plain C++ kernels and through the default
    # variant agree on greedy tokens of a tiny model.
    from testutil import write_model
    path = str(tmp_path / "m.gguf")
    write_model(path, wtype="Q4_1", n_embd=64, n_layer=2)
    code = ("import llmrt,sys; m=llmrt.Model(sys.argv[1], threads=2);"
            "print(m.generate([5, 9, 33, 70], max_new_tokens=12, ignore_eos=True).token_ids)")
    outs = []
    for isa in ("generic", llmrt.build_info()["cpu_isa"]):
        r = subprocess.run([sys.executable, "-c", code, path], capture_output=True, text=True,
                           env=dict(os.environ, LLMRT_ISA=isa), timeout=120)
        assert r.returncode == 0, r.stderr
        outs.append(r.stdout)
    assert outs[0] == outs[1]
