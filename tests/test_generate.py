"""generate() / chat() behaviour on a tiny random model: stop conditions,
streaming, sampling settings, validation, prefix reuse, chat templates."""

import numpy as np
import pytest

import llmrt

PROMPT = [5, 40, 77, 12, 99]


def test_greedy_is_argmax_of_logits(tiny):
    r = tiny.generate(PROMPT, max_new_tokens=8, ignore_eos=True)
    assert r.finish_reason == "length" and len(r.token_ids) == 8
    seq = list(PROMPT)
    for t in r.token_ids:
        assert t == int(np.argmax(tiny.logits(seq)[-1]))
        seq.append(t)


def test_result_fields_and_timings(tiny):
    r = tiny.generate(PROMPT, max_new_tokens=4, ignore_eos=True)
    assert isinstance(r.text, str) and r.prompt_tokens == len(PROMPT)
    assert r.text == tiny.detokenize(r.token_ids, skip_special=True)
    for k in ("prompt_ms", "time_to_first_token_ms", "decode_tokens_per_s"):
        assert r.timings[k] >= 0


def test_stream_pieces_join_to_text(tiny):
    full = tiny.generate("the", max_new_tokens=20, ignore_eos=True)
    s = tiny.generate("the", max_new_tokens=20, ignore_eos=True, stream=True)
    pieces = list(s)
    assert "".join(pieces) == full.text
    assert s.result.token_ids == full.token_ids


def test_stop_token_ids(tiny):
    r = tiny.generate(PROMPT, max_new_tokens=8, ignore_eos=True)
    stop_at = r.token_ids[3]
    r2 = tiny.generate(PROMPT, max_new_tokens=8, stop_token_ids=[stop_at], ignore_eos=True)
    assert r2.finish_reason == "stop"
    assert r2.token_ids == r.token_ids[:r.token_ids.index(stop_at)]


def test_stop_strings_across_tokens(tiny):
    r = tiny.generate(PROMPT, max_new_tokens=30, ignore_eos=True)
    text = r.text
    if len(text) < 6:
        pytest.skip("generated text too short")
    stop = text[3:6]  # likely spans token boundaries
    s = tiny.generate(PROMPT, max_new_tokens=30, ignore_eos=True, stop=[stop], stream=True)
    streamed = "".join(s)
    assert s.result.finish_reason == "stop"
    assert streamed == s.result.text == text[:text.find(stop)]


def test_eos_stops(tiny):
    # make the model's end token the argmax by stopping on whatever it picks first
    r = tiny.generate(PROMPT, max_new_tokens=5, ignore_eos=True)
    eos = r.token_ids[0]
    ends = tiny.end_token_ids
    tiny.end_token_ids = {eos}
    try:
        r2 = tiny.generate(PROMPT, max_new_tokens=5)
        assert r2.finish_reason == "stop" and r2.token_ids == []
        r3 = tiny.generate(PROMPT, max_new_tokens=5, ignore_eos=True)
        assert r3.token_ids == r.token_ids
    finally:
        tiny.end_token_ids = ends


def test_seeded_sampling_is_reproducible(tiny):
    kw = dict(max_new_tokens=16, temperature=1.0, top_k=50, top_p=0.95, ignore_eos=True)
    a = tiny.generate(PROMPT, seed=7, **kw).token_ids
    b = tiny.generate(PROMPT, seed=7, **kw).token_ids
    c = tiny.generate(PROMPT, seed=8, **kw).token_ids
    assert a == b and a != c


def test_top_k_1_is_greedy(tiny):
    g = tiny.generate(PROMPT, max_new_tokens=8, ignore_eos=True).token_ids
    s = tiny.generate(PROMPT, max_new_tokens=8, ignore_eos=True, temperature=1.5, top_k=1,
                      seed=3).token_ids
    assert g == s


@pytest.mark.parametrize("kw,field", [
    (dict(temperature=-1.0), "temperature"), (dict(temperature=float("nan")), "temperature"),
    (dict(top_p=0.0), "top_p"), (dict(top_p=1.5), "top_p"), (dict(top_k=-1), "top_k"),
    (dict(min_p=2.0), "min_p"), (dict(max_new_tokens=-1), "max_new_tokens"),
    (dict(seed="x"), "seed"), (dict(stop=[""]), "stop"),
    (dict(typical_p=0.0), "typical_p"), (dict(repetition_penalty=0.0), "repetition_penalty"),
    (dict(presence_penalty=float("inf")), "presence_penalty"),
    (dict(frequency_penalty="a"), "frequency_penalty"), (dict(penalty_last_n=-2), "penalty_last_n"),
    (dict(logit_bias={-1: 1.0}), "logit_bias"), (dict(logit_bias={10**6: 1.0}), "logit_bias"),
    (dict(logit_bias=[1]), "logit_bias"), (dict(mirostat_mode=3), "mirostat_mode"),
    (dict(mirostat_tau=0.0), "mirostat_tau"), (dict(mirostat_eta=-1.0), "mirostat_eta"),
    (dict(min_new_tokens=-1), "min_new_tokens"), (dict(logprobs=21), "logprobs"),
    (dict(n=0), "n"), (dict(num_beams=0), "num_beams"), (dict(length_penalty=float("nan")),
                                                          "length_penalty"),
    (dict(num_beams=2, temperature=0.7), "num_beams"), (dict(stop_token_ids=[-3]), "stop_token_ids"),
    (dict(max_new_tokens=3, max_tokens=3), "given twice"), (dict(ignore_eos=1), "ignore_eos"),
])
def test_invalid_parameters_raise(tiny, kw, field):
    with pytest.raises(ValueError, match=field):
        tiny.generate(PROMPT, **kw)


def test_unknown_keyword_raises(tiny):
    with pytest.raises(ValueError, match="unknown sampling parameter 'temprature'"):
        tiny.generate(PROMPT, temprature=0.5)


def test_prompt_longer_than_context(tiny):
    with pytest.raises(ValueError, match="context length"):
        tiny.generate([3] * 129)


def test_generation_stops_at_context_end(tiny):
    r = tiny.generate([3] * 120, max_new_tokens=50, ignore_eos=True)
    assert r.finish_reason == "length" and len(r.token_ids) == 9  # 120 + 8 = 128 cached


def test_prefix_reuse_gives_same_tokens(tiny):
    a = tiny.generate(PROMPT + [7, 8], max_new_tokens=6, ignore_eos=True).token_ids
    tiny.generate(PROMPT + [1, 2, 3], max_new_tokens=3, ignore_eos=True)  # shares PROMPT
    b = tiny.generate(PROMPT + [7, 8], max_new_tokens=6, ignore_eos=True).token_ids
    assert a == b


def test_device_and_threads_validation(tiny):
    with pytest.raises(ValueError, match="device"):
        llmrt.Model(tiny.path, device="tpu")
    with pytest.raises(RuntimeError, match="CUDA"):
        llmrt.Model(tiny.path, device="cuda")
    with pytest.raises(ValueError, match="threads"):
        llmrt.Model(tiny.path, threads=0)
    with pytest.raises(ValueError, match="context_length"):
        llmrt.Model(tiny.path, context_length=100000)
    with pytest.raises(ValueError, match="activations"):
        llmrt.Model(tiny.path, activations="int4")
    with pytest.raises(ValueError, match="tensor cores.*device='cuda'"):
        llmrt.Model(tiny.path, activations="f16")


def test_chat_uses_template_and_stops(tiny):
    msgs = [{"role": "user", "content": "hi"}]
    text = tiny.apply_chat_template(msgs)
    assert text == "<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n"
    r = tiny.chat(msgs, max_new_tokens=4, ignore_eos=True)
    assert len(r.token_ids) == 4
    with pytest.raises(ValueError, match="messages"):
        tiny.chat([{"role": "user"}])


def test_chat_template_is_sandboxed():
    from llmrt.chat import TemplateError, render
    evil = "{{ ''.__class__.__mro__[1].__subclasses__() }}"
    with pytest.raises(TemplateError, match="unsafe"):
        render(evil, [{"role": "user", "content": "x"}])
    with pytest.raises(ValueError, match="nope"):
        render("{{ raise_exception('nope') }}", [{"role": "user", "content": "x"}])


def test_cuda_device_without_a_gpu_is_a_clear_error(tiny):
    import llmrt
    info = llmrt.build_info()
    assert isinstance(info["cuda"], bool) and isinstance(info["cuda_devices"], list)
    assert llmrt.cuda_available() == (info["cuda"] and len(info["cuda_devices"]) > 0)
    if llmrt.cuda_available():
        pytest.skip("a GPU is present: tests/cuda covers it")
    with pytest.raises(RuntimeError, match="CUDA"):
        llmrt.Model(tiny.path, device="cuda")
    with pytest.raises(ValueError, match="device"):
        llmrt.Model(tiny.path, device="tpu")
