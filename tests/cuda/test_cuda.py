"""CUDA backend tests: skipped where no GPU (or no CUDA build) is present."""

import pytest

import llmrt

pytestmark = pytest.mark.skipif(not llmrt.cuda_available(), reason="no CUDA device or CUDA build")


def test_cuda_model_matches_cpu(default_model_path):
    cpu = llmrt.Model(default_model_path, device="cpu")
    gpu = llmrt.Model(default_model_path, device="cuda")
    ids = cpu.tokenize("The capital of France is")
    assert (cpu.logits(ids).argmax(-1) == gpu.logits(ids).argmax(-1)).all()
