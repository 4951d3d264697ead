"""One Model used from many threads: concurrent generate() calls join one
batch and each returns what it returns alone; streams interleave; a stream
cancelled from its thread frees its blocks."""

import threading

import numpy as np
import pytest
from testutil import write_model

import llmrt

PROMPTS = [[1, 5, 9, 13], [2, 40, 41, 42, 43, 44, 45], [3] + list(range(60, 100)), [4, 7],
           list(range(100, 170)), [6, 8, 10, 12, 14, 16], [20, 21, 22], [30] * 12]
# greedy, sampled with seeds, stop strings, n = 2, logprobs, penalties
PARAMS = [dict(), dict(temperature=0.9, seed=3), dict(temperature=1.1, top_k=20, seed=4),
          dict(n=2, temperature=1.0, seed=5), dict(logprobs=3), dict(repetition_penalty=1.4),
          dict(temperature=0.7, top_p=0.9, seed=6, logprobs=2), dict(min_new_tokens=10)]


@pytest.fixture(scope="module", params=[1, 4], ids=["1-step", "4-steps"])
def model(tmp_path_factory, request):
    # 4-steps: decode steps run four to a native call (as on a GPU)
    path = str(tmp_path_factory.mktemp("threads") / "m.gguf")
    write_model(path, wtype="Q8_0", n_layer=2, ctx=512, tied=False, seed=7)
    m = llmrt.Model(path, threads=2, kv_cache_tokens=4096, batch_invariant=True)
    m.scheduler.decode_steps = request.param
    return m


def _key(r):
    rs = r if isinstance(r, list) else [r]
    return [(x.token_ids, x.text, x.finish_reason,
             None if x.logprobs is None else [(t.token_id, t.logprob, t.top) for t in x.logprobs])
            for x in rs]


def _run_threads(fns):
    """Runs each fn in its own thread, all released at once; returns their
    results (re-raising the first error)."""
    out, errors = [None] * len(fns), []
    start = threading.Barrier(len(fns))

    def run(i):
        try:
            start.wait()
            out[i] = fns[i]()
        except BaseException as e:  # noqa: BLE001
            errors.append(e)
    threads = [threading.Thread(target=run, args=(i,)) for i in range(len(fns))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=300)
    assert not any(t.is_alive() for t in threads), "a thread hung"
    if errors:
        raise errors[0]
    return out


def test_concurrent_generate_equals_sequential(model):
    kw = [dict(p, max_new_tokens=24, ignore_eos=True) for p in PARAMS]
    # a stop string taken from the greedy text of prompt 2
    text = model.generate(PROMPTS[2], max_new_tokens=24, ignore_eos=True).text
    kw[2] = dict(kw[2], temperature=0.0, stop=[text[6:9]])
    steps0 = model.engine.steps
    ref = [model.generate(p, **k) for p, k in zip(PROMPTS, kw)]
    sequential_steps = model.engine.steps - steps0
    assert ref[2].finish_reason == "stop"
    for _ in range(2):
        got = _run_threads([lambda p=p, k=k: model.generate(p, **k) for p, k in zip(PROMPTS, kw)])
        assert [_key(g) for g in got] == [_key(r) for r in ref]
    # requests submitted together share steps: one pass over the weights for
    # all of them (streams: submitted at generate(), run while read)
    single = [i for i, k in enumerate(kw) if "n" not in k]
    submitted = threading.Barrier(len(single))

    def stream(i):
        s = model.generate(PROMPTS[i], stream=True, **kw[i])
        submitted.wait()
        list(s)
        return s.result
    steps0 = model.engine.steps
    got = _run_threads([lambda i=i: stream(i) for i in single])
    assert [_key(g) for g in got] == [_key(ref[i]) for i in single]
    assert model.engine.steps - steps0 < 0.5 * sequential_steps
    assert model.cache_stats()["blocks_in_use"] == 0


def test_streams_from_several_threads(model):
    kw = [dict(p, max_new_tokens=20, ignore_eos=True) for p in PARAMS if "n" not in p]
    prompts = PROMPTS[:len(kw)]
    ref = [model.generate(p, **k) for p, k in zip(prompts, kw)]

    def read(p, k):
        s = model.generate(p, stream=True, **k)
        pieces = list(s)
        return "".join(pieces), s.result

    got = _run_threads([lambda p=p, k=k: read(p, k) for p, k in zip(prompts, kw)])
    for (text, res), r in zip(got, ref):
        assert text == r.text and res.token_ids == r.token_ids
    # a batch stream (several prompts) beside single streams
    bref = model.generate(PROMPTS[:3], max_new_tokens=12, ignore_eos=True)

    def batch():
        s = model.generate(PROMPTS[:3], max_new_tokens=12, ignore_eos=True, stream=True)
        texts = ["", "", ""]
        for i, piece in s:
            texts[i] += piece
        return texts
    out = _run_threads([batch, lambda: read(PROMPTS[4], kw[0]), batch])
    assert out[0] == out[2] == [r.text for r in bref]
    assert out[1][0] == model.generate(PROMPTS[4], **kw[0]).text
    assert model.cache_stats()["blocks_in_use"] == 0


def test_cancelling_a_stream_from_its_thread_frees_its_blocks(model):
    kw = dict(max_new_tokens=30, ignore_eos=True)
    ref = [model.generate(p, **kw).token_ids for p in PROMPTS[1:5]]
    seen = {}

    def cancel():
        s = model.generate(PROMPTS[0], max_new_tokens=200, ignore_eos=True, stream=True)
        for k, _ in enumerate(s):
            if k == 3:
                break
        s.close()
        seen["after_close"] = list(s)
        with pytest.raises(RuntimeError):
            s.result
        return True

    out = _run_threads([cancel] + [lambda p=p: model.generate(p, **kw).token_ids
                                   for p in PROMPTS[1:5]])
    assert out[1:] == ref
    assert seen["after_close"] == []
    assert model.cache_stats()["blocks_in_use"] == 0


def test_errors_stay_in_their_thread(model):
    def bad():
        with pytest.raises(ValueError, match="temperature"):
            model.generate(PROMPTS[0], temperature=-1)
        with pytest.raises(ValueError, match="context length"):
            model.generate([5] * 600)
        return "ok"
    ref = model.generate(PROMPTS[1], max_new_tokens=16, ignore_eos=True).token_ids
    out = _run_threads([bad, lambda: model.generate(PROMPTS[1], max_new_tokens=16,
                                                    ignore_eos=True).token_ids,
                        lambda: model.logits(PROMPTS[2])])
    assert out[0] == "ok" and out[1] == ref
    assert np.array_equal(out[2], model.logits(PROMPTS[2]))


def test_speculative_and_beams_join_the_batch(model):
    kw = dict(max_new_tokens=20, ignore_eos=True)
    plain = model.generate(PROMPTS[5] * 3, **kw).token_ids
    beam = model.generate(PROMPTS[1], num_beams=3, **kw)
    got = _run_threads([
        lambda: model.generate(PROMPTS[5] * 3, draft="prompt_lookup", **kw).token_ids,
        lambda: model.generate(PROMPTS[1], num_beams=3, **kw),
        lambda: model.generate(PROMPTS[3], **kw).token_ids])
    assert got[0] == plain
    assert got[1].token_ids == beam.token_ids and \
        [b.token_ids for b in got[1].beams] == [b.token_ids for b in beam.beams]
    assert got[2] == model.generate(PROMPTS[3], **kw).token_ids
    assert model.cache_stats()["blocks_in_use"] == 0


def test_a_failed_step_ends_the_jobs_in_it_and_frees_their_blocks(model):
    # a step that raises (here: forced) ends every job in it, each with an
    # error object of its own; the model then runs as usual
    a = model.generate(PROMPTS[0], max_new_tokens=30, ignore_eos=True, stream=True)
    b = model.generate(PROMPTS[1], max_new_tokens=30, ignore_eos=True, stream=True)
    next(a)
    next(b)
    def boom(*args):
        raise llmrt.KVCacheFullError("KV cache full (forced)")
    model.engine.step = model.engine.decode = boom
    errors = []
    try:
        for s in (a, b):
            with pytest.raises(llmrt.KVCacheFullError, match="forced") as e:
                list(s)
            errors.append(e.value)
    finally:
        del model.engine.step, model.engine.decode
    assert errors[0] is not errors[1]
    assert model.cache_stats()["blocks_in_use"] == 0
    ref = model.generate(PROMPTS[2], max_new_tokens=8, ignore_eos=True)
    assert len(ref.token_ids) == 8
