#include "core/sampler.h"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <limits>
#include <numeric>
#include <stdexcept>
#include <string>

namespace llmrt {

namespace {
constexpr float kNegInf = -std::numeric_limits<float>::infinity();
// Tokens more than this many nats below the best one are never candidates:
// together they hold under n_vocab * e^-30 (~1e-8 for 100k tokens) of the
// mass, below float32 resolution of the sum.
constexpr float kCutoff = 30.f;

void require(bool ok, const std::string& what) {
  if (!ok) throw std::invalid_argument(what);
}
}  // namespace

Sampler::Sampler(const SamplingConfig& c, int n_vocab) : cfg_(c), n_vocab_(n_vocab), rng_(c.seed) {
  require(n_vocab > 0, "n_vocab must be positive");
  require(std::isfinite(c.temperature) && c.temperature >= 0.f, "temperature must be >= 0");
  require(c.top_k >= 0, "top_k must be >= 0");
  require(c.top_p > 0.f && c.top_p <= 1.f, "top_p must be in (0, 1]");
  require(c.min_p >= 0.f && c.min_p <= 1.f, "min_p must be in [0, 1]");
  require(c.typical_p > 0.f && c.typical_p <= 1.f, "typical_p must be in (0, 1]");
  require(std::isfinite(c.repetition_penalty) && c.repetition_penalty > 0.f,
          "repetition_penalty must be > 0");
  require(std::isfinite(c.presence_penalty), "presence_penalty must be finite");
  require(std::isfinite(c.frequency_penalty), "frequency_penalty must be finite");
  require(c.penalty_last_n >= -1, "penalty_last_n must be >= -1");
  require(c.mirostat >= 0 && c.mirostat <= 2, "mirostat must be 0, 1 or 2");
  require(std::isfinite(c.mirostat_tau) && c.mirostat_tau > 0.f, "mirostat_tau must be > 0");
  require(std::isfinite(c.mirostat_eta) && c.mirostat_eta > 0.f, "mirostat_eta must be > 0");
  require(c.min_new_tokens >= 0, "min_new_tokens must be >= 0");
  for (const auto& [id, b] : c.logit_bias) {
    require(id >= 0 && id < n_vocab, "logit_bias token " + std::to_string(id) +
                                         " is outside the vocabulary");
    require(!std::isnan(b) && b != std::numeric_limits<float>::infinity(),
            "logit_bias values must be finite or -inf");
  }
  for (int32_t id : c.end_ids) require(id >= 0 && id < n_vocab, "end token outside the vocabulary");
  mu_ = 2.f * c.mirostat_tau;
}

// ---- penalties -------------------------------------------------------------------

void Sampler::apply_penalties(const int32_t* history, int n_history) {
  const auto& c = cfg_;
  int n = c.penalty_last_n < 0 ? n_history : std::min(c.penalty_last_n, n_history);
  if (n == 0) return;
  const int32_t* h = history + (n_history - n);
  if (counts_.empty()) counts_.assign(n_vocab_, 0);
  for (int i = 0; i < n; ++i)
    if (h[i] >= 0 && h[i] < n_vocab_) ++counts_[h[i]];
  for (int i = 0; i < n; ++i) {
    const int32_t t = h[i];
    if (t < 0 || t >= n_vocab_ || counts_[t] == 0) continue;  // out of range, or done
    float& l = work_[t];
    if (c.repetition_penalty != 1.f) l = l > 0.f ? l / c.repetition_penalty : l * c.repetition_penalty;
    l -= c.presence_penalty + c.frequency_penalty * (float)counts_[t];
    counts_[t] = 0;  // once per distinct token; leaves counts_ zeroed
  }
}

// ---- candidates -------------------------------------------------------------------

template <class Key>
size_t Sampler::sorted_prefix_for_mass(Key key, float mass) {
  const size_t n = cands_.size();
  auto cmp = [&](const Cand& a, const Cand& b) { return key(a) > key(b); };
  for (size_t m = std::min<size_t>(64, n);; m = std::min(n, m * 4)) {
    std::partial_sort(cands_.begin(), cands_.begin() + m, cands_.end(), cmp);
    double cum = 0.0;
    for (size_t i = 0; i < m; ++i) {
      cum += cands_[i].p;
      if (cum >= mass) return i + 1;
    }
    if (m == n) return n;
  }
}

// p = softmax(logit / temperature) over the candidates.
void Sampler::softmax(float temperature) {
  float mx = kNegInf;
  for (const Cand& c : cands_) mx = std::max(mx, c.logit);
  double sum = 0.0;
  for (Cand& c : cands_) {
    c.p = std::exp((c.logit - mx) / temperature);
    sum += c.p;
  }
  const float inv = (float)(1.0 / sum);
  for (Cand& c : cands_) c.p *= inv;
}

int32_t Sampler::draw() {
  double total = 0.0;
  for (const Cand& c : cands_) total += c.p;
  const double u = (double)(rng_() >> 11) * 0x1.0p-53 * total;
  double cum = 0.0;
  for (const Cand& c : cands_) {
    cum += c.p;
    if (u < cum) return c.id;
  }
  // rounding at the top end: the last candidate with any mass
  for (size_t i = cands_.size(); i-- > 0;)
    if (cands_[i].p > 0.f) return cands_[i].id;
  return cands_.front().id;
}

// ---- mirostat ----------------------------------------------------------------------
// Candidates hold softmax(logit / temperature). v2: drop tokens whose
// surprise -log2 p exceeds mu. v1: estimate the Zipf exponent from the top
// 100 probabilities and keep the k that targets surprise tau. Then draw and
// move mu by eta * (observed surprise - tau).
int32_t Sampler::mirostat_step() {
  const float tau = cfg_.mirostat_tau, eta = cfg_.mirostat_eta;
  if (cfg_.mirostat == 2) {
    const float pmin = std::exp2(-mu_);
    size_t keep = 0;
    for (size_t i = 0; i < cands_.size(); ++i)
      if (cands_[i].p >= pmin) cands_[keep++] = cands_[i];
    if (keep == 0) {  // the most likely token alone
      const auto best = std::max_element(cands_.begin(), cands_.end(),
                                         [](const Cand& a, const Cand& b) { return a.p < b.p; });
      cands_[0] = *best;
      keep = 1;
    }
    cands_.resize(keep);
  } else {
    const size_t m = std::min<size_t>(100, cands_.size());
    auto cmp = [](const Cand& a, const Cand& b) { return a.p > b.p; };
    std::partial_sort(cands_.begin(), cands_.begin() + m, cands_.end(), cmp);
    double num = 0.0, den = 0.0;
    for (size_t i = 0; i + 1 < m; ++i) {
      if (cands_[i + 1].p <= 0.f) break;
      const double t = std::log((double)(i + 2) / (double)(i + 1));
      const double b = std::log((double)cands_[i].p / (double)cands_[i + 1].p);
      num += t * b;
      den += t * t;
    }
    const double s_hat = den > 0.0 ? num / den : 1.0;
    const double eps = s_hat - 1.0;
    double k = std::abs(eps) < 1e-9
                   ? (double)cands_.size()
                   : std::pow(eps * std::exp2((double)mu_) / (1.0 - std::pow((double)n_vocab_, -eps)),
                              1.0 / s_hat);
    if (!std::isfinite(k)) k = (double)cands_.size();
    const size_t kk = (size_t)std::clamp<double>(std::round(k), 1.0, (double)cands_.size());
    std::partial_sort(cands_.begin(), cands_.begin() + kk, cands_.end(), cmp);
    cands_.resize(kk);
  }
  double sum = 0.0;
  for (const Cand& c : cands_) sum += c.p;
  for (Cand& c : cands_) c.p = (float)(c.p / sum);
  const int32_t tok = draw();
  float p = 1.f;
  for (const Cand& c : cands_)
    if (c.id == tok) p = c.p;
  mu_ -= eta * (-std::log2(p) - tau);
  return tok;
}

// ---- the chain ---------------------------------------------------------------------

int32_t Sampler::sample(const float* logits, const int32_t* history, int n_history,
                        int n_generated) {
  const auto& c = cfg_;
  const bool penalize = c.penalty_last_n != 0 &&
                        (c.repetition_penalty != 1.f || c.presence_penalty != 0.f ||
                         c.frequency_penalty != 0.f);
  const bool mask_end = n_generated < c.min_new_tokens && !c.end_ids.empty();
  const float* L = logits;
  if (penalize || !c.logit_bias.empty() || mask_end) {
    work_.assign(logits, logits + n_vocab_);
    if (penalize) apply_penalties(history, n_history);
    for (const auto& [id, b] : c.logit_bias) work_[id] += b;
    if (mask_end)
      for (int32_t id : c.end_ids) work_[id] = kNegInf;
    L = work_.data();
  }

  // greedy: the first of the largest
  if (c.mirostat == 0 && (c.temperature == 0.f || c.top_k == 1)) {
    int32_t best = 0;
    for (int32_t i = 1; i < n_vocab_; ++i)
      if (L[i] > L[best]) best = i;
    return best;
  }

  // candidates: every token within kCutoff nats of the best
  float mx = kNegInf;
  for (int32_t i = 0; i < n_vocab_; ++i) mx = std::max(mx, L[i]);
  if (!(mx > kNegInf)) throw std::invalid_argument("every token has -inf logit (or NaN logits)");
  cands_.clear();
  const float floor = mx - kCutoff;
  for (int32_t i = 0; i < n_vocab_; ++i)
    if (L[i] >= floor) cands_.push_back({i, L[i], 0.f});

  if (c.mirostat != 0) {
    softmax(c.temperature > 0.f ? c.temperature : 1.f);
    return mirostat_step();
  }

  // top-k: selection, not a sort
  if (c.top_k > 0 && (size_t)c.top_k < cands_.size()) {
    std::nth_element(cands_.begin(), cands_.begin() + (c.top_k - 1), cands_.end(),
                     [](const Cand& a, const Cand& b) { return a.logit > b.logit; });
    cands_.resize(c.top_k);
  }
  softmax(1.f);

  // typical-p: the tokens whose surprise is closest to the entropy, up to
  // typical_p of the mass
  if (c.typical_p < 1.f) {
    double H = 0.0;
    for (const Cand& x : cands_)
      if (x.p > 0.f) H -= (double)x.p * std::log((double)x.p);
    const float h = (float)H;
    auto closeness = [h](const Cand& x) {
      return x.p > 0.f ? -std::abs(-std::log(x.p) - h) : kNegInf;
    };
    cands_.resize(sorted_prefix_for_mass(closeness, c.typical_p));
    softmax(1.f);
  }
  // top-p: the most likely tokens up to top_p of the mass
  if (c.top_p < 1.f) {
    cands_.resize(sorted_prefix_for_mass([](const Cand& x) { return x.p; }, c.top_p));
    softmax(1.f);
  }
  // min-p: tokens at least min_p times as likely as the best
  if (c.min_p > 0.f) {
    float pmax = 0.f;
    for (const Cand& x : cands_) pmax = std::max(pmax, x.p);
    const float thr = c.min_p * pmax;
    size_t keep = 0;
    for (size_t i = 0; i < cands_.size(); ++i)
      if (cands_[i].p >= thr) cands_[keep++] = cands_[i];
    cands_.resize(keep);
  }
  softmax(c.temperature);
  return draw();
}

// ---- log-probabilities -------------------------------------------------------------

TopLogprobs top_logprobs(const float* logits, int n_vocab, int32_t token, int n) {
  if (token < 0 || token >= n_vocab) throw std::invalid_argument("token outside the vocabulary");
  float mx = kNegInf;
  for (int i = 0; i < n_vocab; ++i) mx = std::max(mx, logits[i]);
  double sum = 0.0;
  for (int i = 0; i < n_vocab; ++i) sum += std::exp((double)(logits[i] - mx));
  const float lse = mx + (float)std::log(sum);
  TopLogprobs r;
  r.token_logprob = logits[token] - lse;
  n = std::max(0, std::min(n, n_vocab));
  if (n > 0) {
    std::vector<int32_t> idx(n_vocab);
    std::iota(idx.begin(), idx.end(), 0);
    std::partial_sort(idx.begin(), idx.begin() + n, idx.end(), [&](int32_t a, int32_t b) {
      return logits[a] > logits[b] || (logits[a] == logits[b] && a < b);
    });
    for (int i = 0; i < n; ++i) {
      r.ids.push_back(idx[i]);
      r.logprobs.push_back(logits[idx[i]] - lse);
    }
  }
  return r;
}

}  // namespace llmrt
