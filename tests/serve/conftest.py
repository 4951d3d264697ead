
import pytest

pytest.importorskip("fastapi")
pytest.importorskip("uvicorn")

from testutil import write_model

import llmrt
from llmrt.testing.server import KEY, start


@pytest.fixture(scope="session")
def model_path(tmp_path_factory):
    p = str(tmp_path_factory.mktemp("serve") / "tiny.gguf")
    write_model(p, wtype="Q8_0", n_layer=2, ctx=512, tied=False, seed=4)
    return p


@pytest.fixture(scope="session")
def server(model_path):
    s = start(model_path, "--api-key", KEY, "--batch-invariant", "--threads", "2",
              "--max-batch-size", "16", "--kv-cache-tokens", "16384")
    yield s
    s.stop()


@pytest.fixture(scope="session")
def peft_adapter(tmp_path_factory):
    """A random PEFT adapter for the tiny model (q, v and down projections)."""
    pytest.importorskip("safetensors")
    import numpy as np
    from test_lora import _write_peft
    rng = np.random.default_rng(3)
    D, F, r = 64, 96, 4
    shapes = {"q_proj": (64, D), "v_proj": (32, D), "down_proj": (D, F)}
    ad = {(i, m): (rng.standard_normal((r, cols)).astype(np.float32) / 8,
                   rng.standard_normal((rows, r)).astype(np.float32))
          for i in range(2) for m, (rows, cols) in shapes.items()}
    d = str(tmp_path_factory.mktemp("peft") / "peft")
    _write_peft(d, ad, r, 8.0)
    return d


@pytest.fixture(scope="session")
def ray_server(model_path, peft_adapter):
    """Two replicas behind one endpoint on a local Ray instance, each with
    the adapter `tuned`."""
    pytest.importorskip("ray.serve")
    s = start(model_path, "--api-key", KEY, "--batch-invariant", "--threads", "1",
              "--replicas", "2", "--max-batch-size", "16", "--kv-cache-tokens", "16384",
              "--lora", f"tuned={peft_adapter}", timeout=240)
    yield s
    s.stop()


@pytest.fixture(scope="session", params=["one process", "ray, 2 replicas"])
def api(request, server):
    """The client checks run against both: one process, and Ray Serve."""
    if request.param == "one process":
        return server
    return request.getfixturevalue("ray_server")


@pytest.fixture(scope="session")
def small_server(tmp_path_factory):
    # a long context, so that one request can hold the only place for seconds
    p = str(tmp_path_factory.mktemp("serve_small") / "tiny_long.gguf")
    write_model(p, wtype="Q8_0", n_layer=2, ctx=16384, tied=False, seed=4)
    s = start(p, "--threads", "1", "--max-batch-size", "1", "--max-queue", "0")
    yield s
    s.stop()


@pytest.fixture(scope="session")
def ref(model_path):
    """The same model in-process: what each request gives alone."""
    return llmrt.Model(model_path, threads=2, batch_invariant=True, kv_cache_tokens=16384)
