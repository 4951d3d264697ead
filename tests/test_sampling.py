"""The sampler chain: for fixed logits, many seeded draws follow the
distribution each stage defines (chi-square), per stage and for the whole
chain; each stage's edge cases; penalties, bias, min_new_tokens; logprobs,
n > 1 and beam search through generate()."""

import math

import numpy as np
import pytest

import llmrt
from llmrt import SamplingParams
from llmrt.sampling import Sampler

DRAWS = 20000
# Critical chi-square values at significance 0.001 (Wilson-Hilferty); a
# correct sampler fails one of these tests once in a thousand runs, and
# every test uses a fixed seed, so a run is reproducible.
ALPHA_Z = 3.090


def chi2_critical(df: int) -> float:
    a = 2.0 / (9.0 * df)
    return df * (1.0 - a + ALPHA_Z * math.sqrt(a)) ** 3


def draws(params: SamplingParams, logits, n=DRAWS, history=None):
    s = Sampler(params, len(logits))
    logits = np.asarray(logits, np.float32)
    h = np.asarray(history if history is not None else [], np.int32)
    return np.bincount([s(logits, h, 0) for _ in range(n)], minlength=len(logits))


def assert_follows(counts, probs):
    probs = np.asarray(probs, np.float64)
    probs = probs / probs.sum()
    n = counts.sum()
    assert counts[probs == 0].sum() == 0, "drew a token the stage excludes"
    exp = probs * n
    big = exp >= 5
    stat = (((counts[big] - exp[big]) ** 2) / exp[big]).sum()
    rest_exp, rest_obs = exp[~big & (probs > 0)].sum(), counts[~big & (probs > 0)].sum()
    df = int(big.sum()) - 1
    if rest_exp > 0:  # small categories pooled
        stat += (rest_obs - rest_exp) ** 2 / max(rest_exp, 1e-9)
        df += 1
    if df >= 1:
        assert stat < chi2_critical(df), (stat, chi2_critical(df), counts, exp)


# ---- numpy definitions of the stages ---------------------------------------------------

def softmax(z, t=1.0):
    z = np.asarray(z, np.float64) / t
    e = np.exp(z - z[np.isfinite(z)].max())
    e[~np.isfinite(z)] = 0
    return e / e.sum()


def keep_top_k(logits, k):
    keep = np.zeros(len(logits), bool)
    keep[np.argsort(-np.asarray(logits), kind="stable")[:k]] = True
    return keep


def keep_mass(p, order, mass):
    keep = np.zeros(len(p), bool)
    cum = np.cumsum(p[order])
    keep[order[:int(np.searchsorted(cum, mass - 1e-12)) + 1]] = True
    return keep


def keep_top_p(p, top_p):
    return keep_mass(p, np.argsort(-p, kind="stable"), top_p)


def keep_typical(p, typ):
    nz = p > 0
    H = -(p[nz] * np.log(p[nz])).sum()
    dev = np.where(nz, np.abs(-np.log(np.where(nz, p, 1)) - H), np.inf)
    return keep_mass(p, np.argsort(dev, kind="stable"), typ)


def chain(logits, temperature=1.0, top_k=0, typical_p=1.0, top_p=1.0, min_p=0.0):
    l = np.asarray(logits, np.float64)
    keep = np.isfinite(l)
    if top_k:
        keep &= keep_top_k(np.where(keep, l, -np.inf), top_k)
    for stage, val in (("typical", typical_p), ("top_p", top_p)):
        if val < 1.0:
            p = softmax(np.where(keep, l, -np.inf))
            keep &= keep_typical(p, val) if stage == "typical" else keep_top_p(p, val)
    if min_p > 0:
        p = softmax(np.where(keep, l, -np.inf))
        keep &= p >= min_p * p.max()
    return softmax(np.where(keep, l, -np.inf), temperature)


LOGITS = np.array([2.0, 1.5, 1.4, 1.0, 0.7, 0.5, 0.3, 0.0, -0.2, -0.5, -1.0, -1.3, -2.0,
                   -2.2, -3.0, 0.9, 1.1, -0.7, 0.2, -4.0])


@pytest.mark.parametrize("kw", [
    dict(temperature=1.0), dict(temperature=0.5), dict(temperature=2.0),
    dict(temperature=1.0, top_k=5), dict(temperature=1.0, top_p=0.8),
    dict(temperature=1.0, min_p=0.2), dict(temperature=1.0, typical_p=0.7),
    dict(temperature=0.7, top_k=12, typical_p=0.95, top_p=0.9, min_p=0.05),  # the whole chain
    dict(temperature=1.3, top_p=0.6, min_p=0.1),
])
def test_stage_distributions(kw):
    counts = draws(SamplingParams(seed=11, **kw), LOGITS)
    assert_follows(counts, chain(LOGITS, **kw))


def test_a_wrong_distribution_is_rejected():
    # the check has power: temperature 0.5 draws against the temperature-1 law
    counts = draws(SamplingParams(seed=3, temperature=0.5), LOGITS)
    with pytest.raises(AssertionError):
        assert_follows(counts, chain(LOGITS, temperature=1.0))


def test_penalties_and_bias_distribution():
    hist = [0, 0, 3, 5, 5, 5, 19]
    kw = dict(temperature=1.0, repetition_penalty=1.5, presence_penalty=0.3,
              frequency_penalty=0.2, logit_bias={7: 1.0, 2: -math.inf})
    counts = draws(SamplingParams(seed=5, **kw), LOGITS, history=hist)
    l = LOGITS.copy()
    for t in set(hist):
        c = hist.count(t)
        l[t] = l[t] / 1.5 if l[t] > 0 else l[t] * 1.5
        l[t] -= 0.3 + 0.2 * c
    l[7] += 1.0
    l[2] = -np.inf
    assert_follows(counts, softmax(l))


def test_penalty_window():
    # only the last penalty_last_n tokens count (greedy after penalties)
    p = SamplingParams(repetition_penalty=1e9, penalty_last_n=2)
    l = np.asarray(LOGITS, np.float32)
    assert Sampler(p, len(l))(l, np.array([0, 5, 9], np.int32), 0) == 0  # 0 left the window
    assert Sampler(p, len(l))(l, np.array([5, 0], np.int32), 0) == 1
    off = SamplingParams(repetition_penalty=1e9, penalty_last_n=0)
    assert Sampler(off, len(l))(l, np.array([0], np.int32), 0) == 0
    whole = SamplingParams(repetition_penalty=1e9, penalty_last_n=-1)
    assert Sampler(whole, len(l))(l, np.array([0] + [9] * 100, np.int32), 0) == 1


def test_edge_cases_change_nothing():
    l = np.asarray(LOGITS, np.float32)
    for kw in (dict(top_p=1.0, min_p=0.0), dict(top_k=20), dict(top_k=1000), dict(typical_p=1.0),
               dict(repetition_penalty=1.0, presence_penalty=0.0)):
        a = Sampler(SamplingParams(temperature=0.8, seed=4), 20)
        b = Sampler(SamplingParams(temperature=0.8, seed=4, **kw), 20)
        assert [a(l) for _ in range(300)] == [b(l) for _ in range(300)], kw


def test_greedy_and_top_k_1():
    l = np.asarray(LOGITS, np.float32)
    for kw in (dict(), dict(temperature=0.0, top_p=0.5), dict(temperature=3.0, top_k=1)):
        s = Sampler(SamplingParams(seed=1, **kw), 20)
        assert all(s(l) == 0 for _ in range(50))
    tie = np.array([1.0, 3.0, 3.0, 2.0], np.float32)
    assert Sampler(SamplingParams(), 4)(tie) == 1  # the first of equal maxima


def test_min_new_tokens_masks_end_tokens():
    l = np.asarray(LOGITS, np.float32)
    s = Sampler(SamplingParams(min_new_tokens=3), 20, end_ids=[0])
    assert [s(l, None, i) for i in range(5)] == [1, 1, 1, 0, 0]


def test_mirostat_tracks_its_target_surprise():
    rng = np.random.default_rng(0)
    l = np.sort(rng.standard_normal(2000) * 3).astype(np.float32)[::-1].copy()
    p = softmax(l)
    own = -(p * np.log2(p)).sum()  # ~8 bits: what plain sampling averages
    tau = 3.0
    for mode in (1, 2):
        s = Sampler(SamplingParams(temperature=1.0, mirostat_mode=mode, mirostat_tau=tau,
                                   mirostat_eta=0.1, seed=2), l.size)
        surprise = []
        for _ in range(4000):
            mu = s.mirostat_mu
            t = s(l)
            surprise.append(-math.log2(p[t]))
            if mode == 2:  # v2 draws only tokens whose surprise is within mu
                assert surprise[-1] <= mu + 1e-4 or t == 0
        # the control loop holds the surprise near tau (measured under the
        # truncated distribution it renormalises to, so a little above tau
        # under the full one), far below the model's own
        m = np.mean(surprise[1000:])
        assert tau - 0.5 < m < tau + 1.5 < own, (mode, m, own)
        assert 0 < s.mirostat_mu < 4 * tau


def test_all_minus_inf_raises():
    l = np.full(5, -np.inf, np.float32)
    with pytest.raises(ValueError, match="-inf"):
        Sampler(SamplingParams(temperature=1.0), 5)(l)


# ---- through generate() ---------------------------------------------------------------

PROMPT = [5, 40, 77, 12, 99]


def test_same_seed_same_text_on_any_thread_count(tiny):
    kw = dict(max_new_tokens=24, temperature=0.9, top_p=0.95, repetition_penalty=1.1,
              ignore_eos=True, seed=123)
    a = tiny.generate(PROMPT, **kw).token_ids
    one = llmrt.Model(tiny.path, threads=1)
    assert one.generate(PROMPT, **kw).token_ids == a
    assert tiny.generate(PROMPT, SamplingParams(**kw)).token_ids == a
    assert tiny.generate(PROMPT, SamplingParams(**kw), max_tokens=5).token_ids == a[:5]


def test_huge_penalty_never_repeats(tiny):
    r = tiny.generate(PROMPT, max_new_tokens=40, ignore_eos=True, repetition_penalty=1e9,
                      presence_penalty=1e9, penalty_last_n=-1)
    seen = PROMPT + r.token_ids
    assert len(set(seen)) == len(seen)


def test_logit_bias_forces_and_bans(tiny):
    r = tiny.generate(PROMPT, max_new_tokens=5, ignore_eos=True, logit_bias={42: 1e4})
    assert r.token_ids == [42] * 5
    g = tiny.generate(PROMPT, max_new_tokens=5, ignore_eos=True).token_ids
    r = tiny.generate(PROMPT, max_new_tokens=5, ignore_eos=True,
                      logit_bias={g[0]: -math.inf})
    assert r.token_ids[0] != g[0]


def test_min_new_tokens_and_finish_reason(tiny):
    eos = tiny.tokenizer.eos_id
    r = tiny.generate(PROMPT, max_new_tokens=20, logit_bias={eos: 1e4}, min_new_tokens=4)
    assert len(r.token_ids) == 4 and r.finish_reason == "stop"
    r = tiny.generate(PROMPT, max_new_tokens=6, ignore_eos=True)
    assert r.finish_reason == "length"


def test_logprobs_match_the_model(tiny):
    r = tiny.generate(PROMPT, max_new_tokens=6, ignore_eos=True, logprobs=3, temperature=0.8,
                      seed=9)
    full = tiny.logits(PROMPT + r.token_ids)
    for i, lp in enumerate(r.logprobs):
        z = full[len(PROMPT) - 1 + i].astype(np.float64)
        ref = z - (z.max() + np.log(np.exp(z - z.max()).sum()))
        assert lp.token_id == r.token_ids[i]
        assert abs(lp.logprob - ref[lp.token_id]) < 1e-3
        assert [t for t, _ in lp.top] == list(np.argsort(-ref, kind="stable")[:3])
        assert all(a[1] >= b[1] for a, b in zip(lp.top, lp.top[1:]))
    assert tiny.generate(PROMPT, max_new_tokens=2).logprobs is None


def test_n_samples_share_the_prompt(tiny):
    kw = dict(max_new_tokens=10, temperature=1.0, ignore_eos=True)
    before = tiny.cache_stats()["tokens_computed"]
    rs = tiny.generate(PROMPT, n=3, seed=50, **kw)
    assert len(rs) == 3
    # the prompt ran once: 5 + 3 x 9 positions
    assert tiny.cache_stats()["tokens_computed"] - before == 5 + 3 * 9
    for i, r in enumerate(rs):
        assert r.token_ids == tiny.generate(PROMPT, seed=50 + i, **kw).token_ids
    assert len({tuple(r.token_ids) for r in rs}) > 1
    assert tiny.cache_stats()["blocks_in_use"] == 0


def _beam_score(m, prompt, toks, lp):
    z = m.logits(prompt + toks).astype(np.float64)
    total = 0.0
    for i, t in enumerate(toks):
        row = z[len(prompt) - 1 + i]
        total += row[t] - (row.max() + np.log(np.exp(row - row.max()).sum()))
    return total / len(toks) ** lp


def test_beam_search(tiny):
    with pytest.raises(ValueError, match="for 5 sequences"):  # 4 beams + 1 in flight
        tiny.generate(PROMPT, max_new_tokens=100, num_beams=4)
    tiny = llmrt.Model(tiny.path, threads=2, kv_cache_tokens=512)  # room for the beams
    g = tiny.generate(PROMPT, max_new_tokens=8, ignore_eos=True)
    b1 = tiny.generate(PROMPT, max_new_tokens=8, ignore_eos=True, num_beams=1)
    assert b1.token_ids == g.token_ids
    r = tiny.generate(PROMPT, max_new_tokens=8, ignore_eos=True, num_beams=4,
                      length_penalty=0.5)
    scores = [b.score for b in r.beams]
    assert len(r.beams) == 4 and scores == sorted(scores, reverse=True)
    assert r.token_ids == r.beams[0].token_ids
    for b in r.beams:
        assert abs(b.score - _beam_score(tiny, PROMPT, b.token_ids, 0.5)) < 1e-3
    # beam search finds a sequence at least as likely as greedy's here
    assert scores[0] >= _beam_score(tiny, PROMPT, g.token_ids, 0.5) - 1e-6
    assert tiny.cache_stats()["blocks_in_use"] == 0


def test_stream_holds_back_only_possible_stop_prefixes(tiny):
    text = tiny.generate(PROMPT, max_new_tokens=30, ignore_eos=True).text
    stop = text[12:15]
    pieces = list(tiny.generate(PROMPT, max_new_tokens=30, ignore_eos=True, stop=stop,
                                stream=True))
    assert "".join(pieces) == text[:text.find(stop)]
    # a stop string that never occurs holds nothing back beyond its prefixes
    stream = tiny.generate(PROMPT, max_new_tokens=30, ignore_eos=True, stop="\x00never",
                           stream=True)
    assert "".join(stream) == text and stream.result.finish_reason == "length"


def test_stream_rejects_n_and_beams(tiny):
    for kw in (dict(n=2), dict(num_beams=2)):
        with pytest.raises(ValueError, match="stream"):
            tiny.generate(PROMPT, stream=True, **kw)


# ---- speculative decoding: prompt lookup ------------------------------------------------

def test_prompt_lookup_equals_greedy(tiny):
    prompt = PROMPT + [30, 31, 32, 33, 34, 35] * 3 + [30, 31]
    for kw in (dict(), dict(repetition_penalty=1.3), dict(stop_token_ids=[33]),
               dict(logprobs=2)):
        plain = tiny.generate(prompt, max_new_tokens=40, ignore_eos=True, **kw)
        spec = tiny.generate(prompt, max_new_tokens=40, ignore_eos=True, draft="prompt_lookup",
                             num_draft_tokens=5, **kw)
        assert spec.token_ids == plain.token_ids and spec.text == plain.text, kw
        assert spec.finish_reason == plain.finish_reason
        if kw.get("logprobs"):
            assert [(x.token_id, round(x.logprob, 3)) for x in spec.logprobs] == \
                [(x.token_id, round(x.logprob, 3)) for x in plain.logprobs]
    t = spec.timings
    assert t["draft_tokens"] > 0 and 0 <= t["draft_acceptance"] <= 1
    assert tiny.cache_stats()["blocks_in_use"] == 0


def test_prompt_lookup_accepts_on_repetitive_output(tiny, fixed_draft_length):
    # greedy on this model settles into a 4-token loop after ~25 tokens:
    # the lookup then drafts it (measured: 27% of drafted tokens accepted)
    r = tiny.generate(PROMPT, max_new_tokens=60, ignore_eos=True, draft="prompt_lookup")
    assert r.timings["draft_acceptance"] > 0.15 and r.timings["tokens_per_forward"] > 1.2
    assert r.token_ids == tiny.generate(PROMPT, max_new_tokens=60, ignore_eos=True).token_ids


def test_prompt_lookup_arguments(tiny):
    for kw, msg in [(dict(draft="ngram"), "draft"), (dict(num_draft_tokens=0), "num_draft"),
                    (dict(temperature=0.8, mirostat_mode=2), "mirostat"), (dict(n=2), "n=1"),
                    (dict(num_beams=2), "num_beams=1"), (dict(draft=tiny), "another model")]:
        kw.setdefault("draft", "prompt_lookup")
        with pytest.raises(ValueError, match=msg):
            tiny.generate(PROMPT, **kw)


# ---- speculative decoding: the adaptive draft length ------------------------------------

def _simulate(alpha, t0, c, k_max=8, steps=4000, seed=0):
    """Tokens per unit time of DraftLength on a simulated sequence: each
    drafted token stands with probability alpha (if those before it did), a
    step with k drafts takes t0 + c * k."""
    from llmrt.speculative import DraftLength
    rng = np.random.default_rng(seed)
    dl = DraftLength(k_max)
    tokens = time = 0.0
    ks = []
    for _ in range(steps):
        k = dl.choose(k_max)
        a = 0
        while a < k and rng.random() < alpha:
            a += 1
        dt = t0 + c * k
        dl.observe(k, a, dt)
        tokens += a + 1
        time += dt
        ks.append(k)
    return tokens / time * t0, np.array(ks)  # relative to plain decoding


@pytest.mark.parametrize("alpha,c", [(0.0, 0.2), (0.15, 0.2), (0.15, 0.6), (0.3, 1.0),
                                     (0.5, 0.6), (0.9, 1.0)])
def test_draft_length_never_loses_much_to_plain_decoding(alpha, c):
    # drafting that does not pay is dropped (probes now and then)
    speed, ks = _simulate(alpha, 1.0, c)
    assert speed >= 0.96, (speed, np.bincount(ks))


@pytest.mark.parametrize("alpha,c,best", [(0.9, 0.05, 2.5), (0.8, 0.1, 1.9), (0.6, 0.1, 1.4)])
def test_draft_length_drafts_long_where_it_pays(alpha, c, best):
    # the k the model would pick knowing alpha and c: its speed-up within 10%
    rate = max((1 - alpha ** (k + 1)) / (1 - alpha) / (1 + c * k) for k in range(9))
    assert rate >= best  # the cases are ones where speculation pays
    speed, ks = _simulate(alpha, 1.0, c)
    assert speed >= 0.9 * rate, (speed, rate, np.bincount(ks))


def test_draft_length_follows_the_text():
    # a copying stretch (everything accepted) after free text (nothing is):
    # the length climbs back from plain decoding within a few probes
    from llmrt.speculative import DraftLength
    dl = DraftLength(8)
    for _ in range(200):
        k = dl.choose(8)
        dl.observe(k, 0, 1.0 + 0.3 * k)
    assert dl.best() == 0
    ks = []
    for _ in range(300):
        k = dl.choose(8)
        dl.observe(k, k, 1.0 + 0.1 * k)
        ks.append(k)
    assert ks.index(8) < 150 and ks[-50:].count(8) >= 45, ks
