"""Continuous batching (generate over a list of prompts, forward_batch) and
speculative decoding with a draft model, on tiny random models."""
import numpy as np
import pytest
from test_sampling import assert_follows
from testutil import write_model

import llmrt
from llmrt.sampling import Sampler
from llmrt.speculative import DraftLength, accept_or_resample
from llmrt.step import DecodeEntry, StepEntry

PROMPTS = [[1, 5, 9, 13], [2, 40, 41, 42, 43, 44, 45, 46, 47, 48, 49, 50, 51],
           [3] + list(range(60, 100)), [4, 7], list(range(100, 170)), [6, 8, 10, 12, 14, 16]]


@pytest.fixture(scope="module")
def paths(tmp_path_factory):
    d = tmp_path_factory.mktemp("batch")
    target, draft = str(d / "target.gguf"), str(d / "draft.gguf")
    write_model(target, wtype="Q8_0", n_layer=2, ctx=512, tied=False, seed=0)
    # the draft: same vocabulary, other (random) weights, one layer
    write_model(draft, wtype="Q4_0", n_layer=1, ctx=512, tied=False, seed=1)
    return target, draft


@pytest.fixture(scope="module")
def inv(paths):
    """The target with batch-invariant kernels: exact comparisons."""
    return llmrt.Model(paths[0], threads=2, kv_cache_tokens=4096, batch_invariant=True)


@pytest.fixture(scope="module")
def fast(paths):
    """The target with the default (matrix-vector) one-token kernels."""
    return llmrt.Model(paths[0], threads=2, kv_cache_tokens=4096)


@pytest.fixture(scope="module")
def draft(paths):
    return llmrt.Model(paths[1], threads=2, kv_cache_tokens=4096)


def alone(m, prompts, **kw):
    return [m.generate(p, **kw) for p in prompts]


# ---- forward_batch ----------------------------------------------------------------------

def test_forward_batch_prompts_equal_alone(fast):
    # several-token rows use the same kernels and summation order alone or
    # batched (default mode too): bit-identical logits
    eng = fast.engine
    ps = [np.asarray(p, np.int32) for p in PROMPTS[:4]]
    ref = [fast.logits(p) for p in ps]
    seqs = [eng.new_sequence() for _ in ps]
    out = eng.step([StepEntry(s, p, "all") for s, p in zip(seqs, ps)])[0]
    assert out.shape == (sum(len(p) for p in ps), fast.vocab_size)
    assert np.array_equal(out, np.concatenate(ref))
    # modes: none / last / all pick the rows
    more = [np.asarray([7, 8], np.int32), np.asarray([9], np.int32), np.asarray([10, 11, 12], np.int32)]
    out2 = eng.step([StepEntry(seqs[0], more[0], "none"), StepEntry(seqs[1], more[1], "last"),
                     StepEntry(seqs[2], more[2], "all")])[0]
    assert out2.shape == (1 + 3, fast.vocab_size)
    assert [eng.length(s) for s in seqs[:3]] == [len(ps[0]) + 2, len(ps[1]) + 1,
                                               len(ps[2]) + 3]
    # an entry with samplers: its last row is drawn from inside the step (a
    # greedy sampler takes the first of equal maxima), the rows of the
    # others come back as before
    for s, p in zip(seqs[:3], more):
        eng.truncate(s, eng.length(s) - len(p))
    greedy = [Sampler(SP(), fast.vocab_size) for _ in range(2)]
    lg, ids, lps = eng.step([StepEntry(seqs[0], more[0], "none"), StepEntry(seqs[1], more[1], "last", greedy[:1], 0),
                             StepEntry(seqs[2], more[2], "all")])
    assert np.array_equal(lg, out2[1:]) and lps is None
    assert ids.dtype == np.int32 and ids.tolist() == [out2[0].argmax()]
    for s, p in zip(seqs[:3], more):
        eng.truncate(s, eng.length(s) - len(p))
    lg, ids, _ = eng.step([StepEntry(seqs[2], more[2], "last", greedy[1:], 0),
                           StepEntry(seqs[1], more[1], "last", greedy[:1], 0)])
    assert lg.shape == (0, fast.vocab_size)
    assert ids.tolist() == [out2[3].argmax(), out2[0].argmax()]
    for s in seqs:
        eng.release(s)


def test_sampling_inside_the_step_equals_sampling_the_logits(fast):
    # a sampler drawing inside the step sees the same logits and the same
    # history (the sequence's tokens) as one given them outside: same draws,
    # same logprobs; several samplers may draw from one row (n samples)
    eng = fast.engine
    kw = dict(temperature=0.9, top_p=0.95, repetition_penalty=1.3, logprobs=3)
    p = np.asarray(PROMPTS[2], np.int32)
    a, b = eng.new_sequence(), eng.new_sequence()
    lg = eng.forward(a, p)
    inside = [Sampler(SP(seed=s, **kw), fast.vocab_size) for s in (1, 2, 3)]
    outside = [Sampler(SP(seed=s, **kw), fast.vocab_size) for s in (1, 2, 3)]
    _, ids, lps = eng.step([StepEntry(b, p, "last", inside, 0)])
    assert ids.tolist() == [o(lg, p, 0) for o in outside]
    for tok, lp in zip(ids, lps):
        want, top = llmrt.sampling.top_logprobs(lg, int(tok), 3)
        assert lp[0] == want and list(zip(lp[1], lp[2])) == top
    # and the next step: history = the prompt and the fed token
    t = np.asarray([int(ids[0])], np.int32)
    lg2 = eng.forward(a, t)
    _, ids2, _ = eng.step([StepEntry(b, t, "last", inside[:1], 1)])
    assert ids2.tolist() == [outside[0](lg2, np.concatenate([p, t]), 1)]
    eng.release(a)
    eng.release(b)


def test_forward_batch_one_token_rows(inv, fast):
    # one-token rows: bit-identical with batch_invariant; at float rounding
    # otherwise (matrix-vector alone vs the tile kernels in a batch)
    for m, exact in ((inv, True), (fast, False)):
        eng = m.engine
        p = np.asarray(PROMPTS[1], np.int32)
        a, b, c = eng.new_sequence(), eng.new_sequence(), eng.new_sequence()
        for s in (a, b, c):
            eng.forward(s, p)
        t = np.asarray([77], np.int32)
        lone = eng.forward(a, t)
        out = eng.step([StepEntry(b, t, "last"), StepEntry(c, np.asarray([5, 6, 7], np.int32), "last")])[0]
        if exact:
            assert np.array_equal(out[0], lone)
        else:
            np.testing.assert_allclose(out[0], lone, atol=0.05 * np.abs(lone).max())
        for s in (a, b, c):
            eng.release(s)


def test_forward_batch_long_prompt_chunks_equal_alone(inv):
    # a 300-token prompt runs in 256 + 44 token pieces, alone or beside others
    eng = inv.engine
    long = np.asarray((np.arange(300) * 7) % 250 + 3, np.int32)
    ref = inv.logits(long)
    s1, s2 = eng.new_sequence(), eng.new_sequence()
    eng.forward(s2, np.asarray(PROMPTS[0], np.int32))
    out = eng.step([StepEntry(s2, np.asarray([3], np.int32), "last"), StepEntry(s1, long, "all")])[0]
    assert np.array_equal(out[1:], ref)
    eng.release(s1)
    eng.release(s2)


def test_forward_batch_errors_leave_sequences_unchanged(paths):
    m = llmrt.Model(paths[0], threads=1, kv_cache_tokens=96, kv_block_tokens=32)
    eng = m.engine
    a, b = eng.new_sequence(), eng.new_sequence()
    eng.forward(a, np.arange(1, 41, dtype=np.int32))  # 2 blocks
    with pytest.raises(ValueError, match="twice"):
        eng.step([StepEntry(a, np.asarray([1], np.int32), "last"),
                           StepEntry(a, np.asarray([2], np.int32), "last")])
    with pytest.raises(ValueError, match="'none', 'last' or 'all'"):
        eng.step([StepEntry(a, np.asarray([1], np.int32), "first")])
    with pytest.raises(ValueError, match="vocabulary"):
        eng.step([StepEntry(a, np.asarray([1], np.int32), "last"),
                           StepEntry(b, np.asarray([10**6], np.int32), "last")])
    # a fits, b does not: neither is changed
    with pytest.raises(llmrt.KVCacheFullError):
        eng.step([StepEntry(a, np.asarray([1, 2], np.int32), "last"),
                           StepEntry(b, np.arange(1, 60, dtype=np.int32), "last")])
    assert eng.length(a) == 40 and eng.length(b) == 0


# ---- generate over a list of prompts ----------------------------------------------------

def test_batch_equals_one_at_a_time(inv):
    kw = dict(max_new_tokens=20, ignore_eos=True)
    ref = alone(inv, PROMPTS, **kw)
    # at most 3 at a time: the later prompts join as earlier ones finish
    for mb in (64, 3, 1):
        got = inv.generate(PROMPTS, max_batch_size=mb, **kw)
        assert [r.token_ids for r in got] == [r.token_ids for r in ref], mb
        assert [r.text for r in got] == [r.text for r in ref]
    assert inv.cache_stats()["blocks_in_use"] == 0


def test_batch_joins_mid_way_with_different_lengths(inv):
    # different max_new_tokens: short requests finish and queued ones take
    # their place while long ones are still decoding
    ps = [SP(max_new_tokens=n, ignore_eos=True) for n in (3, 30, 5, 25, 1, 12)]
    ref = [inv.generate(p, q) for p, q in zip(PROMPTS, ps)]
    got = inv.generate(PROMPTS, ps, max_batch_size=2)
    assert [r.token_ids for r in got] == [r.token_ids for r in ref]
    assert [len(r.token_ids) for r in got] == [3, 30, 5, 25, 1, 12]
    assert all(r.timings["queue_ms"] >= 0 for r in got)


def SP(**kw):
    return llmrt.SamplingParams(**kw)


def test_batch_per_request_parameters(inv):
    ps = [SP(max_new_tokens=15, temperature=0.9, seed=5, ignore_eos=True),
          SP(max_new_tokens=15, repetition_penalty=1.5, ignore_eos=True),
          SP(max_new_tokens=15, top_k=5, temperature=1.2, seed=9, ignore_eos=True, logprobs=2),
          SP(max_new_tokens=0)]
    ref = [inv.generate(p, q) for p, q in zip(PROMPTS, ps)]
    got = inv.generate(PROMPTS[:4], ps)
    assert [r.token_ids for r in got] == [r.token_ids for r in ref]
    assert got[3].token_ids == [] and got[3].text == ""
    assert [(x.token_id, x.logprob) for x in got[2].logprobs] == \
        [(x.token_id, x.logprob) for x in ref[2].logprobs]


def test_batch_stop_strings_and_n(inv):
    text = inv.generate(PROMPTS[0], max_new_tokens=20, ignore_eos=True).text
    stop = text[5:8]
    got = inv.generate([PROMPTS[0], PROMPTS[1]], max_new_tokens=20, ignore_eos=True, stop=[stop])
    assert got[0].text == text[:text.find(stop)] and got[0].finish_reason == "stop"
    # n samples of each prompt: a list of n per prompt, sample j with seed + j
    got = inv.generate([PROMPTS[0], PROMPTS[3]], n=3, temperature=1.0, seed=11,
                       max_new_tokens=8, ignore_eos=True)
    assert [len(g) for g in got] == [3, 3]
    for j in range(3):
        one = inv.generate(PROMPTS[3], temperature=1.0, seed=11 + j, max_new_tokens=8,
                           ignore_eos=True)
        assert got[1][j].token_ids == one.token_ids


def test_batch_stream_yields_index_and_pieces(inv):
    ref = alone(inv, PROMPTS[:3], max_new_tokens=12, ignore_eos=True)
    s = inv.generate(PROMPTS[:3], max_new_tokens=12, ignore_eos=True, stream=True)
    assert isinstance(s, llmrt.BatchStream)
    with pytest.raises(RuntimeError):
        s.results
    texts = ["", "", ""]
    order = []
    for i, piece in s:
        texts[i] += piece
        order.append(i)
    assert texts == [r.text for r in ref]
    assert len(set(order[:3])) > 1  # interleaved, not one after another
    assert [r.text for r in s.results] == texts


def test_queue_larger_than_kv_budget(paths):
    # 12 requests of up to 2 blocks each in a 6-block cache: they wait for
    # room instead of failing, and the outputs are those of running alone
    m = llmrt.Model(paths[0], threads=2, kv_cache_tokens=6 * 32, batch_invariant=True)
    prompts = [[1 + i, 20 + i, 30 + i] + list(range(40, 40 + 2 * i)) for i in range(12)]
    ref = alone(m, prompts, max_new_tokens=25, ignore_eos=True)
    got = m.generate(prompts, max_new_tokens=25, ignore_eos=True)
    assert [r.token_ids for r in got] == [r.token_ids for r in ref]
    assert max(r.timings["queue_ms"] for r in got) > 0
    assert m.cache_stats()["blocks_in_use"] == 0
    # one request larger than the whole cache: a clear error up front
    with pytest.raises(ValueError, match="prompt 1"):
        m.generate([prompts[0], list(range(1, 200))], max_new_tokens=10)


def test_batch_arguments(inv):
    with pytest.raises(ValueError, match="max_batch_size"):
        inv.generate(PROMPTS, max_batch_size=0)
    with pytest.raises(ValueError, match="2 SamplingParams for 6 prompts"):
        inv.generate(PROMPTS, [SP(), SP()])
    with pytest.raises(ValueError, match="num_beams"):
        inv.generate(PROMPTS, num_beams=2)
    with pytest.raises(ValueError, match="one prompt at a time"):
        inv.generate(PROMPTS, draft="prompt_lookup")
    with pytest.raises(ValueError, match="prompt 2"):
        inv.generate(["ok", "fine", ""], add_special=False)


def test_batch_text_prompts_match_and_default_kernels_agree(inv, fast):
    prompts = ["hello world", "abc abc abc", "the end"]
    ref = alone(inv, prompts, max_new_tokens=10, ignore_eos=True)
    assert [r.text for r in inv.generate(prompts, max_new_tokens=10, ignore_eos=True)] == \
        [r.text for r in ref]
    # the default kernels differ from batch-invariant ones only at rounding:
    # on this model the greedy tokens agree
    got = fast.generate(prompts, max_new_tokens=10, ignore_eos=True)
    assert [r.token_ids for r in got] == [r.token_ids for r in ref]


# ---- speculative decoding ---------------------------------------------------------------

def test_draft_model_greedy_equals_plain(inv, draft):
    for kw in (dict(), dict(repetition_penalty=1.3), dict(stop_token_ids=[33]), dict(logprobs=2),
               dict(min_new_tokens=5)):
        plain = inv.generate(PROMPTS[2], max_new_tokens=30, ignore_eos=True, **kw)
        for k in (1, 4, 7):
            spec = inv.generate(PROMPTS[2], max_new_tokens=30, ignore_eos=True, draft=draft,
                                num_draft_tokens=k, **kw)
            assert spec.token_ids == plain.token_ids and spec.text == plain.text, (kw, k)
            if kw.get("logprobs"):
                assert [(x.token_id, x.logprob) for x in spec.logprobs] == \
                    [(x.token_id, x.logprob) for x in plain.logprobs]
    t = spec.timings
    assert t["draft_tokens"] > 0 and 0 <= t["draft_acceptance"] <= 1
    assert t["tokens_per_forward"] >= 1
    assert inv.cache_stats()["blocks_in_use"] == 0 and draft.cache_stats()["blocks_in_use"] == 0


@pytest.mark.parametrize("kind", ["model", "prompt_lookup"])
def test_draft_lengths_changing_every_step_keep_greedy_output(inv, draft, kind, monkeypatch):
    # the adaptive length goes up and down with the acceptance and the
    # clock: any sequence of lengths (plain steps among them) gives plain
    # greedy decoding's tokens, and drafting then stands where it did
    lengths = iter([0, 3, 1, 0, 0, 5, 2, 7, 1, 0, 4] * 20)
    monkeypatch.setattr(DraftLength, "choose", lambda self, room: min(next(lengths), room))
    d = draft if kind == "model" else "prompt_lookup"
    prompt = PROMPTS[4] + PROMPTS[4][:20]  # the lookup finds text to copy
    for kw in (dict(), dict(repetition_penalty=1.3, logprobs=2)):
        plain = inv.generate(prompt, max_new_tokens=40, ignore_eos=True, **kw)
        spec = inv.generate(prompt, max_new_tokens=40, ignore_eos=True, draft=d,
                            num_draft_tokens=7, **kw)
        assert spec.token_ids == plain.token_ids, kw
        if kw.get("logprobs"):
            assert [(x.token_id, x.logprob) for x in spec.logprobs] == \
                [(x.token_id, x.logprob) for x in plain.logprobs]
    assert spec.timings["draft_tokens"] > 0
    assert inv.cache_stats()["blocks_in_use"] == 0


def test_draft_model_drafting_itself_accepts_everything(paths, inv, fixed_draft_length):
    # a copy of the target as its own draft: every drafted token stands. (A
    # draft as slow as the target never pays, so the adaptive length would
    # stop drafting: a fixed length here, to check the verification.)
    twin = llmrt.Model(paths[0], threads=2, kv_cache_tokens=4096, batch_invariant=True)
    r = inv.generate(PROMPTS[1], max_new_tokens=40, ignore_eos=True, draft=twin,
                     num_draft_tokens=4)
    assert r.timings["draft_acceptance"] == 1.0
    assert r.timings["tokens_per_forward"] > 4
    assert r.token_ids == inv.generate(PROMPTS[1], max_new_tokens=40, ignore_eos=True).token_ids


def test_draft_model_arguments(inv, paths, tmp_path):
    other = str(tmp_path / "other_vocab.gguf")
    write_model(other, n_layer=1, extra_tokens=3)
    with pytest.raises(ValueError, match="same vocabulary"):
        inv.generate(PROMPTS[0], draft=llmrt.Model(other, threads=1))
    small = llmrt.Model(paths[1], threads=1, kv_cache_tokens=32)
    with pytest.raises(ValueError, match="draft model's cache"):
        inv.generate(PROMPTS[0], draft=small, max_new_tokens=100)


def test_accept_or_resample_keeps_the_target_distribution():
    # whatever the draft's distribution q, the token that stands follows p
    rng = np.random.default_rng(0)
    V, N = 12, 60000
    p = rng.dirichlet(np.ones(V) * 0.7)
    for q in (rng.dirichlet(np.ones(V) * 0.7), np.full(V, 1.0 / V), p.copy(), None):
        counts = np.zeros(V)
        for _ in range(N):
            if q is None:  # a deterministic draft (prompt lookup): always token 3
                x = 3
            else:
                x = int(rng.choice(V, p=q))
            counts[accept_or_resample(p.astype(np.float32), q, x, rng)] += 1
        assert_follows(counts, p)
    # and the check can fail: a rule that always keeps the draft does
    q = rng.dirichlet(np.ones(V) * 0.7)
    counts = np.bincount(rng.choice(V, size=N, p=q), minlength=V)
    with pytest.raises(AssertionError):
        assert_follows(counts, p)


@pytest.mark.parametrize("lengths", ["adaptive", "random"])
@pytest.mark.parametrize("draft_kind", ["model", "prompt_lookup"])
def test_speculative_sampling_matches_plain_distribution(inv, draft, draft_kind, lengths,
                                                         monkeypatch):
    if lengths == "random":  # draft lengths 0-2 drawn each step: plain and drafted draws mix
        pick = np.random.default_rng(7)
        monkeypatch.setattr(DraftLength, "choose",
                            lambda self, room: min(int(pick.integers(0, 3)), room))
    # tokens 2 and 3 come out of speculation (token 1 comes from the prompt's
    # forward): each follows the model's own sampling distribution given the
    # tokens before it, checked on the most common prefixes
    base = PROMPTS[5]
    # the prompt repeats itself after its greedy continuation: the lookup
    # drafts that continuation, which sampling often (not always) follows
    cont = inv.generate(base, max_new_tokens=6, ignore_eos=True).token_ids
    prompt = base + cont + base
    # the lookup's drafts need the sampled text to follow the greedy one often
    temp = 1.3 if draft_kind == "model" else 0.6
    kw = dict(temperature=temp, top_k=30, max_new_tokens=3, ignore_eos=True)
    d = draft if draft_kind == "model" else "prompt_lookup"
    N = 4000
    outs, drafted, accepted = [], 0, 0.0
    for seed in range(N):
        r = inv.generate(prompt, draft=d, num_draft_tokens=2, seed=seed, **kw)
        outs.append(tuple(r.token_ids))
        drafted += r.timings["draft_tokens"]
        accepted += r.timings["draft_acceptance"] * r.timings["draft_tokens"]
    # both the accepting and the resampling branches ran many times
    assert drafted > N / 8 and 100 < accepted < drafted - 100, (drafted, accepted)
    sp = Sampler(llmrt.SamplingParams(temperature=temp, top_k=30), inv.vocab_size)
    V = inv.vocab_size
    firsts = [o[0] for o in outs]
    t0 = max(set(firsts), key=firsts.count)
    seconds = [o[1] for o in outs if o[0] == t0]
    assert len(seconds) > 150
    assert_follows(np.bincount(seconds, minlength=V),
                   sp.distribution(inv.logits(prompt + [t0])[-1]))
    pairs = [o[:2] for o in outs]
    t01 = max(set(pairs), key=pairs.count)
    thirds = [o[2] for o in outs if o[:2] == t01]
    assert_follows(np.bincount(thirds, minlength=V),
                   sp.distribution(inv.logits(prompt + list(t01))[-1]))


def test_invariance_with_odd_sizes(tmp_path):
    # float weights with sizes that are no multiple of the vector width
    # (n_embd 72, n_ff 100, head size 18: float-tile tails, the plain
    # attention kernel, SwiGLU tails): a sequence's logits are the same bits
    # alone, batched, chunked or in a speculative verification
    path = str(tmp_path / "odd.gguf")
    write_model(path, wtype="F32", n_embd=72, n_head=4, n_head_kv=2, n_ff=100, n_layer=2,
                ctx=512, tied=False)
    m = llmrt.Model(path, threads=2, kv_cache_tokens=2048, batch_invariant=True)
    eng = m.engine
    p = np.asarray((np.arange(150) * 11) % 250 + 2, np.int32)
    ref = m.logits(p)
    a, b = eng.new_sequence(), eng.new_sequence()
    eng.forward(b, np.asarray(PROMPTS[1], np.int32))
    rows = [eng.step([StepEntry(a, p[:1], "all"), StepEntry(b, np.asarray([9], np.int32), "last")])[0][:1]]
    for lo, hi in ((1, 2), (2, 7), (7, 8), (8, 150)):  # one token, chunks, one token, the rest
        rows.append(eng.step([StepEntry(b, np.asarray([9], np.int32), "last"),
                                       StepEntry(a, p[lo:hi], "all")])[0][1:])
    assert np.array_equal(np.concatenate(rows), ref)
    r = m.generate(list(p[:20]), max_new_tokens=25, ignore_eos=True)
    assert m.generate([list(p[:20]), list(p[5:9])], max_new_tokens=25,
                      ignore_eos=True)[0].token_ids == r.token_ids
    assert m.generate(list(p[:20]), max_new_tokens=25, ignore_eos=True,
                      draft="prompt_lookup").token_ids == r.token_ids


def test_batch_with_a_prompt_longer_than_a_chunk(inv):
    # a 300-token prompt goes in 256 + 44 token pieces while the others decode
    long = list((np.arange(300) * 13) % 250 + 3)
    prompts = [PROMPTS[0], long, PROMPTS[3]]
    ref = alone(inv, prompts, max_new_tokens=12, ignore_eos=True)
    got = inv.generate(prompts, max_new_tokens=12, ignore_eos=True)
    assert [r.token_ids for r in got] == [r.token_ids for r in ref]
    assert got[1].prompt_tokens == 300


def test_abandoned_batch_stream_frees_its_blocks(inv):
    s = inv.generate(PROMPTS, max_new_tokens=30, ignore_eos=True, stream=True)
    for k, _ in enumerate(s):
        if k == 5:
            break
    del s
    import gc
    gc.collect()
    # the next job finds the whole cache and gives the usual outputs
    ref = alone(inv, PROMPTS[:2], max_new_tokens=8, ignore_eos=True)
    got = inv.generate(PROMPTS[:2], max_new_tokens=8, ignore_eos=True)
    assert [r.token_ids for r in got] == [r.token_ids for r in ref]
    assert inv.cache_stats()["blocks_in_use"] == 0


def test_decode_steps_return_no_logits(fast):
    # sampled, penalised, logprob-reporting and greedy requests, alone and
    # batched: every step's logits array is empty (the tokens are drawn in
    # the native step); only speculative verification and beam search
    # bring rows back
    shapes = []
    step = fast.engine.step

    def spy(entries):
        out = step(entries)
        shapes.append(out[0].shape[0])
        return out
    fast.engine.step = spy
    try:
        kw = dict(max_new_tokens=12, ignore_eos=True)
        fast.generate(PROMPTS[0], temperature=0.9, seed=1, repetition_penalty=1.2, logprobs=3,
                      min_new_tokens=4, **kw)
        fast.generate(PROMPTS[:4], [SP(temperature=0.8, top_p=0.9, seed=2, **kw), SP(**kw),
                                    SP(logprobs=1, **kw), SP(n=2, temperature=1.0, **kw)])
        assert len(shapes) > 20 and set(shapes) == {0}
        shapes.clear()
        fast.generate(PROMPTS[1], num_beams=2, **kw)
        assert shapes and min(shapes) > 0
    finally:
        del fast.engine.step


def test_samples_forked_from_a_partial_block_are_counted_right(paths):
    # n samples share the prompt's last, partly filled block until each
    # writes to it: two prompts of 8 samples in a 14-block cache need 9
    # blocks each, so the second waits for the first instead of running the
    # pool dry mid-way
    m = llmrt.Model(paths[0], threads=2, kv_cache_tokens=14 * 32, batch_invariant=True)
    prompts = [list(range(3, 43)), list(range(50, 90))]  # 40 tokens: one block and a part
    kw = dict(n=8, temperature=1.0, seed=3, max_new_tokens=20, ignore_eos=True)
    ref = [m.generate(p, **kw) for p in prompts]
    got = m.generate(prompts, **kw)
    assert [[r.token_ids for r in g] for g in got] == [[r.token_ids for r in g] for g in ref]
    assert max(r.timings["queue_ms"] for r in got[1]) > 0
    assert m.cache_stats()["blocks_in_use"] == 0


def test_several_decode_steps_per_call_equal_single_steps(inv, paths):
    # the native multi-step decode (used on GPUs) gives the tokens, texts,
    # logprobs and finish reasons of one step a call: greedy, sampled, stop
    # strings cut mid-call, end tokens, budgets that end mid-call, n samples
    eng = inv.engine
    p = np.asarray(PROMPTS[2], np.int32)
    a, b = eng.new_sequence(), eng.new_sequence()
    first = int(eng.forward(a, p).argmax())
    eng.forward(b, p)
    kw = dict(temperature=0.9, seed=4, logprobs=2)
    s1, s2 = Sampler(SP(**kw), inv.vocab_size), Sampler(SP(**kw), inv.vocab_size)
    tokens, lps = eng.decode([DecodeEntry(a, first, s1, 1, 6)], 10)
    assert tokens.shape == (6, 1)  # the budget ends it
    want, tok = [], first
    for i in range(6):
        _, ids, lp = eng.step([StepEntry(b, np.asarray([tok], np.int32), "last", [s2], 1 + i)])
        tok = int(ids[0])
        want.append(tok)
        assert lps[i][0] == lp[0]
    assert tokens[:, 0].tolist() == want
    eng.release(a)
    eng.release(b)

    text = inv.generate(PROMPTS[0], max_new_tokens=20, ignore_eos=True).text
    cases = [(PROMPTS[0], dict(max_new_tokens=20, ignore_eos=True, stop=[text[7:10]])),
             (PROMPTS[1], dict(max_new_tokens=13, temperature=1.1, seed=2, logprobs=1)),
             (PROMPTS[3], dict(max_new_tokens=30, stop_token_ids=[40, 41, 42, 43])),
             (PROMPTS[4], dict(max_new_tokens=17, n=2, temperature=0.8, seed=8,
                               ignore_eos=True)),
             (PROMPTS[5], dict(max_new_tokens=9, repetition_penalty=1.5, min_new_tokens=3))]

    def run(steps):
        inv.scheduler.decode_steps = steps
        calls = []
        decode = inv.engine.decode

        def spy(entries, k):
            calls.append(k)
            return decode(entries, k)
        inv.engine.decode = spy
        try:
            single = [inv.generate(q, **k) for q, k in cases]
            batch = inv.generate([q for q, _ in cases], [SP(**k) for _, k in cases])
        finally:
            inv.scheduler.decode_steps = 1
            del inv.engine.decode
        return single, batch, calls

    def key(rs):
        rs = rs if isinstance(rs, list) else [rs]
        return [(r.token_ids, r.text, r.finish_reason,
                 None if r.logprobs is None else [(x.token_id, x.logprob) for x in r.logprobs])
                for r in rs]
    one = run(1)
    four = run(4)
    assert one[2] == [] and four[2] and max(four[2]) == 4
    assert [key(r) for r in four[0]] == [key(r) for r in one[0]]
    assert [key(r) for r in four[1]] == [key(r) for r in one[1]]
    assert one[0][0].finish_reason == "stop" and inv.cache_stats()["blocks_in_use"] == 0
