#include "core/sampler.h"

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstring>
#include <limits>
#include <stdexcept>
#include <string>

#if defined(__SSE2__)
#include <emmintrin.h>
#endif

namespace llmrt {

namespace {
constexpr float kNegInf = -std::numeric_limits<float>::infinity();

void require(bool ok, const std::string& what) {
  if (!ok) throw std::invalid_argument(what);
}

// ---- whole-vocabulary passes, written so the compiler vectorises them ----

// max of x[0..n) (NaN never wins)
float vmax(const float* x, int n) {
  int i = 0;
  float r = kNegInf;
#if defined(__SSE2__)
  __m128 m0 = _mm_set1_ps(kNegInf), m1 = m0, m2 = m0, m3 = m0;
  for (; i + 16 <= n; i += 16) {
    m0 = _mm_max_ps(_mm_loadu_ps(x + i), m0);  // max_ps(a, b) is b when a is NaN
    m1 = _mm_max_ps(_mm_loadu_ps(x + i + 4), m1);
    m2 = _mm_max_ps(_mm_loadu_ps(x + i + 8), m2);
    m3 = _mm_max_ps(_mm_loadu_ps(x + i + 12), m3);
  }
  alignas(16) float t[4];
  _mm_store_ps(t, _mm_max_ps(_mm_max_ps(m0, m1), _mm_max_ps(m2, m3)));
  for (float v : t) r = v > r ? v : r;
#endif
  for (; i < n; ++i) r = x[i] > r ? x[i] : r;
  return r;
}

// e^x, relative error ~2e-7 (as expf), 0 below -87 (and for -inf); a plain
// function of floats and ints so loops over it vectorise.
inline float exp_fast(float x) {
  const float xc = x < -87.f ? -87.f : (x > 88.f ? 88.f : x);
  const float t = xc * 1.44269504f;
  const float n = (t + 12582912.f) - 12582912.f;  // round to nearest
  float r = xc - n * 0.693145752f;
  r = r - n * 1.42860677e-6f;
  float p = 1.f / 720;
  p = p * r + 1.f / 120;
  p = p * r + 1.f / 24;
  p = p * r + 1.f / 6;
  p = p * r + 0.5f;
  p = p * r + 1.f;
  p = p * r + 1.f;
  const int32_t bits = ((int32_t)n + 127) << 23;
  float scale;
  std::memcpy(&scale, &bits, 4);
  return x < -87.f ? 0.f : p * scale;
}

#if defined(__SSE2__)
// exp_fast on 4 lanes
inline __m128 exp4(__m128 x) {
  const __m128 xc = _mm_min_ps(_mm_max_ps(x, _mm_set1_ps(-87.f)), _mm_set1_ps(88.f));
  const __m128 magic = _mm_set1_ps(12582912.f);
  const __m128 n = _mm_sub_ps(_mm_add_ps(_mm_mul_ps(xc, _mm_set1_ps(1.44269504f)), magic), magic);
  __m128 r = _mm_sub_ps(xc, _mm_mul_ps(n, _mm_set1_ps(0.693145752f)));
  r = _mm_sub_ps(r, _mm_mul_ps(n, _mm_set1_ps(1.42860677e-6f)));
  __m128 p = _mm_set1_ps(1.f / 720);
  p = _mm_add_ps(_mm_mul_ps(p, r), _mm_set1_ps(1.f / 120));
  p = _mm_add_ps(_mm_mul_ps(p, r), _mm_set1_ps(1.f / 24));
  p = _mm_add_ps(_mm_mul_ps(p, r), _mm_set1_ps(1.f / 6));
  p = _mm_add_ps(_mm_mul_ps(p, r), _mm_set1_ps(0.5f));
  p = _mm_add_ps(_mm_mul_ps(p, r), _mm_set1_ps(1.f));
  p = _mm_add_ps(_mm_mul_ps(p, r), _mm_set1_ps(1.f));
  const __m128i e = _mm_slli_epi32(_mm_add_epi32(_mm_cvttps_epi32(n), _mm_set1_epi32(127)), 23);
  const __m128 v = _mm_mul_ps(p, _mm_castsi128_ps(e));
  return _mm_andnot_ps(_mm_cmplt_ps(x, _mm_set1_ps(-87.f)), v);  // 0 below -87 and for -inf
}
#endif

// e[i] = exp((x[i] - mx) * s) (unless e is null); returns sum e and (when
// wanted) sum e (x - mx).
void exp_pass(const float* x, int n, float mx, float s, float* e, double& s0, double* s1) {
  int i = 0;
  double t0 = 0.0, t1 = 0.0;
#if defined(__SSE2__)
  const __m128 vmx = _mm_set1_ps(mx), vs = _mm_set1_ps(s);
  __m128 a0 = _mm_setzero_ps(), a1 = _mm_setzero_ps();
  for (; i + 4 <= n; i += 4) {
    const __m128 d = _mm_sub_ps(_mm_loadu_ps(x + i), vmx);
    const __m128 v = exp4(_mm_mul_ps(d, vs));
    if (e) _mm_storeu_ps(e + i, v);
    a0 = _mm_add_ps(a0, v);
    // -inf logits: v = 0, and 0 * -inf must not make a NaN
    a1 = _mm_add_ps(a1, _mm_and_ps(_mm_cmpgt_ps(v, _mm_setzero_ps()), _mm_mul_ps(v, d)));
  }
  alignas(16) float f0[4], f1[4];
  _mm_store_ps(f0, a0);
  _mm_store_ps(f1, a1);
  for (int j = 0; j < 4; ++j) {
    t0 += f0[j];
    t1 += f1[j];
  }
#endif
  for (; i < n; ++i) {
    const float d = x[i] - mx;
    const float v = exp_fast(d * s);
    if (e) e[i] = v;
    t0 += v;
    t1 += v > 0.f ? (double)v * d : 0.0;
  }
  s0 = t0;
  if (s1) *s1 = t1;
}

// sum of e[i] over x[i] in [lo, hi]
double window_mass(const float* x, const float* e, int n, float lo, float hi) {
  int i = 0;
  double t = 0.0;
#if defined(__SSE2__)
  const __m128 vlo = _mm_set1_ps(lo), vhi = _mm_set1_ps(hi);
  __m128 a0 = _mm_setzero_ps(), a1 = a0;
  for (; i + 8 <= n; i += 8) {
    const __m128 x0 = _mm_loadu_ps(x + i), x1 = _mm_loadu_ps(x + i + 4);
    const __m128 k0 = _mm_and_ps(_mm_cmpge_ps(x0, vlo), _mm_cmple_ps(x0, vhi));
    const __m128 k1 = _mm_and_ps(_mm_cmpge_ps(x1, vlo), _mm_cmple_ps(x1, vhi));
    a0 = _mm_add_ps(a0, _mm_and_ps(k0, _mm_loadu_ps(e + i)));
    a1 = _mm_add_ps(a1, _mm_and_ps(k1, _mm_loadu_ps(e + i + 4)));
  }
  alignas(16) float f[4];
  _mm_store_ps(f, _mm_add_ps(a0, a1));
  for (float v : f) t += v;
#endif
  for (; i < n; ++i) t += (x[i] >= lo && x[i] <= hi) ? e[i] : 0.f;
  return t;
}

// tokens with x[i] in [lo, hi]
int window_count(const float* x, int n, float lo, float hi) {
  int i = 0, t = 0;
#if defined(__SSE2__)
  const __m128 vlo = _mm_set1_ps(lo), vhi = _mm_set1_ps(hi);
  __m128i c = _mm_setzero_si128();
  for (; i + 4 <= n; i += 4) {
    const __m128 v = _mm_loadu_ps(x + i);
    const __m128 k = _mm_and_ps(_mm_cmpge_ps(v, vlo), _mm_cmple_ps(v, vhi));
    c = _mm_sub_epi32(c, _mm_castps_si128(k));  // a true lane is -1
  }
  alignas(16) int32_t f[4];
  _mm_store_si128((__m128i*)f, c);
  t = f[0] + f[1] + f[2] + f[3];
#endif
  for (; i < n; ++i) t += (x[i] >= lo && x[i] <= hi) ? 1 : 0;
  return t;
}

// calls f(i) for every x[i] in [lo, hi], in order; blocks of 4 with none
// in the window cost one compare
template <class F>
void for_window(const float* x, int n, float lo, float hi, F&& f) {
  int i = 0;
#if defined(__SSE2__)
  const __m128 vlo = _mm_set1_ps(lo), vhi = _mm_set1_ps(hi);
  for (; i + 4 <= n; i += 4) {
    const __m128 v = _mm_loadu_ps(x + i);
    int bits = _mm_movemask_ps(_mm_and_ps(_mm_cmpge_ps(v, vlo), _mm_cmple_ps(v, vhi)));
    while (bits) {
      const int j = __builtin_ctz(bits);
      f(i + j);
      bits &= bits - 1;
    }
  }
#endif
  for (; i < n; ++i)
    if (x[i] >= lo && x[i] <= hi) f(i);
}
// The lower end of the narrowest window [mx - d, mx], d = 1, 2, 4 ... 64,
// holding at least k logits (-inf: all of them).
float top_window_low(const float* x, int n, float mx, int k) {
  for (float d = 1.f; d <= 64.f; d *= 2.f)
    if (window_count(x, n, mx - d, mx) >= k) return mx - d;
  return kNegInf;
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
  require(c.logprobs >= -1 && c.logprobs <= 64, "logprobs must be in [-1, 64]");
  mu_ = 2.f * c.mirostat_tau;
}

// ---- the token mask -----------------------------------------------------------------

void Sampler::enable_mask() {
  if (mask_.empty()) mask_.assign(((size_t)n_vocab_ + 31) / 32, 0xffffffffu);
}

void Sampler::expect_mask() {
  if (mask_.empty()) throw std::logic_error("expect_mask: the sampler has no mask (enable_mask)");
  std::lock_guard<std::mutex> lk(mask_mu_);
  mask_state_.store(kMaskPending);
}

void Sampler::mask_done() {
  {
    std::lock_guard<std::mutex> lk(mask_mu_);
    if (mask_state_.load() == kMaskPending) mask_state_.store(kMaskReady);
  }
  mask_cv_.notify_all();
}

void Sampler::clear_mask() {
  std::lock_guard<std::mutex> lk(mask_mu_);
  mask_state_.store(kMaskOff);
}

// Waits for the expected mask, then copies the logits with every token it
// disallows at -inf. The mask is used once.
const float* Sampler::apply_mask(const float* logits) {
  {
    std::unique_lock<std::mutex> lk(mask_mu_);
    if (!mask_cv_.wait_for(lk, std::chrono::seconds(kMaskTimeoutSeconds),
                           [this] { return mask_state_.load() != kMaskPending; }))
      throw std::runtime_error("structured output: the token mask was not ready after " +
                               std::to_string(kMaskTimeoutSeconds) + " s");
    mask_state_.store(kMaskOff);
  }
  // -inf everywhere, then the allowed logits: a constraint usually allows
  // few tokens (or, inside a string, whole words of them)
  const int V = n_vocab_;
  masked_.assign(V, kNegInf);
  float* out = masked_.data();
  for (int w = 0; w * 32 < V; ++w) {
    uint32_t bits = mask_[w];
    const int lo = w * 32;
    if (bits == 0xffffffffu && lo + 32 <= V) {
      std::memcpy(out + lo, logits + lo, sizeof(float) * 32);
      continue;
    }
    while (bits) {
      const int t = lo + __builtin_ctz(bits);
      if (t < V) out[t] = logits[t];
      bits &= bits - 1;
    }
  }
  last_masked_ = true;
  return masked_.data();
}

bool Sampler::penalizes() const {
  const auto& c = cfg_;
  return c.penalty_last_n != 0 && (c.repetition_penalty != 1.f || c.presence_penalty != 0.f ||
                                   c.frequency_penalty != 0.f);
}

bool Sampler::masks_end(int n_generated) const {
  return n_generated < cfg_.min_new_tokens && !cfg_.end_ids.empty();
}

DeviceDraw Sampler::device_draw(const int32_t* history, int n_history, int n_generated,
                               std::vector<LogitMod>& mods) {
  const auto& c = cfg_;
  DeviceDraw d;
  d.temperature = c.temperature;
  d.top_k = c.top_k;
  d.top_p = c.top_p;
  d.min_p = c.min_p;
  d.typical_p = c.typical_p;
  d.repetition_penalty = c.repetition_penalty;
  d.presence_penalty = c.presence_penalty;
  d.frequency_penalty = c.frequency_penalty;
  d.mods_begin = (int)mods.size();
  if (penalizes()) {  // each distinct token of the window once, with its count
    const int n = c.penalty_last_n < 0 ? n_history : std::min(c.penalty_last_n, n_history);
    std::vector<int32_t> win(history + (n_history - n), history + n_history);
    std::sort(win.begin(), win.end());
    for (size_t i = 0; i < win.size();) {
      size_t j = i;
      while (j < win.size() && win[j] == win[i]) ++j;
      if (win[i] >= 0 && win[i] < n_vocab_)
        mods.push_back({win[i], LogitMod::kPenalty, (float)(j - i)});
      i = j;
    }
  }
  // one entry a token (the device adds them in parallel): repeated biases summed
  const size_t first_bias = mods.size();
  for (const auto& [id, b] : c.logit_bias) {
    bool merged = false;
    for (size_t m = first_bias; m < mods.size() && !merged; ++m)
      if (mods[m].token == id) {
        mods[m].value += b;
        merged = true;
      }
    if (!merged) mods.push_back({id, LogitMod::kBias, b});
  }
  if (masks_end(n_generated))
    for (int32_t id : c.end_ids) mods.push_back({id, LogitMod::kMask, 0.f});
  d.mods_end = (int)mods.size();
  // greedy takes no random number (as sample())
  if (!(c.temperature == 0.f || c.top_k == 1)) d.u = (double)(rng_() >> 11) * 0x1.0p-53;
  return d;
}

bool Sampler::argmax_only(int n_generated) const {
  const auto& c = cfg_;
  return !mask_expected() && c.mirostat == 0 && (c.temperature == 0.f || c.top_k == 1) && !penalizes() &&
         c.logit_bias.empty() && !masks_end(n_generated) && c.logprobs < 0;
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

// ---- candidates from the whole vocabulary -----------------------------------------

void Sampler::gather(const float* L, float lo, float hi) {
  std::vector<Cand>& out = cands_;
  out.clear();
  for_window(L, n_vocab_, lo, hi, [&out, L](int i) { out.push_back({i, L[i], 0.f}); });
}

// The k largest logits (mx: the largest): the narrowest window below mx
// that holds k of them, then a selection.
void Sampler::gather_top(const float* L, float mx, int k) {
  gather(L, top_window_low(L, n_vocab_, mx, k), mx);
  if ((size_t)k < cands_.size()) {
    std::nth_element(cands_.begin(), cands_.begin() + (k - 1), cands_.end(),
                     [](const Cand& a, const Cand& b) { return a.logit > b.logit; });
    cands_.resize(k);
  }
}

// ---- mirostat ----------------------------------------------------------------------
// p = softmax(logit / temperature). v2: keep the tokens whose surprise
// -log2 p is within mu. v1: estimate the Zipf exponent from the top 100
// probabilities and keep the k that targets surprise tau. Then draw and
// move mu by eta * (observed surprise - tau).
int32_t Sampler::mirostat_step(const float* L, float mx, float T) {
  const float tau = cfg_.mirostat_tau, eta = cfg_.mirostat_eta;
  double s0;
  exp_pass(L, n_vocab_, mx, 1.f / T, e_.data(), s0, nullptr);
  auto set_p = [&] {
    for (Cand& x : cands_) x.p = (float)(e_[x.id] / s0);
  };
  if (cfg_.mirostat == 2) {  // p >= 2^-mu  <=>  l >= mx + T (log s0 - mu ln 2)
    gather(L, mx + T * (float)(std::log(s0) - mu_ * 0.69314718), mx);
    if (cands_.empty()) gather_top(L, mx, 1);  // the most likely token alone
    set_p();
  } else {
    gather_top(L, mx, std::min(n_vocab_, 100));
    set_p();
    const size_t m = cands_.size();
    auto cmp = [](const Cand& a, const Cand& b) { return a.p > b.p; };
    std::sort(cands_.begin(), cands_.end(), cmp);
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
                   ? (double)n_vocab_
                   : std::pow(eps * std::exp2((double)mu_) / (1.0 - std::pow((double)n_vocab_, -eps)),
                              1.0 / s_hat);
    if (!std::isfinite(k)) k = (double)n_vocab_;
    const int kk = (int)std::clamp<double>(std::round(k), 1.0, (double)n_vocab_);
    if ((size_t)kk > m) {  // more than the 100 gathered
      gather_top(L, mx, kk);
      set_p();
    } else {
      cands_.resize(kk);  // sorted: the kk most likely
    }
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
  double total = 0.0;
  const int r = filter(logits, history, n_history, n_generated, total);
  if (r >= 0) return r;
  if (r == kFromVocab) return draw_all(total);
  if (r == kMirostat) return mirostat_step(L_, mx_, mirostat_t_);
  return draw();
}

void Sampler::distribution(const float* logits, const int32_t* history, int n_history,
                           int n_generated, float* probs) {
  if (cfg_.mirostat != 0)
    throw std::invalid_argument("mirostat adapts as it draws: it has no fixed distribution");
  double total = 0.0;
  const int r = filter(logits, history, n_history, n_generated, total);
  std::fill(probs, probs + n_vocab_, 0.f);
  if (r >= 0) {
    probs[r] = 1.f;
  } else if (r == kFromVocab) {
    const double inv = 1.0 / total;
    for (int i = 0; i < n_vocab_; ++i) probs[i] = (float)(e_[i] * inv);
  } else {
    double sum = 0.0;
    for (const Cand& c : cands_) sum += c.p;
    for (const Cand& c : cands_) probs[c.id] = (float)(c.p / sum);
  }
}

// Everything before the draw. Returns the token when the choice is made
// (greedy), else where the draw's weights are: kFromVocab (e_, summing to
// total), kFromCands (cands_' p) or kMirostat (L_, mx_).
int Sampler::filter(const float* logits, const int32_t* history, int n_history, int n_generated,
                    double& total) {
  const auto& c = cfg_;
  const bool penalize = penalizes();
  const bool mask_end = masks_end(n_generated);
  last_masked_ = false;
  const float* L = mask_state_.load() != kMaskOff ? apply_mask(logits) : logits;
  if (penalize || !c.logit_bias.empty() || mask_end) {
    work_.assign(L, L + n_vocab_);
    if (penalize) apply_penalties(history, n_history);
    for (const auto& [id, b] : c.logit_bias) work_[id] += b;
    if (mask_end)
      for (int32_t id : c.end_ids) work_[id] = kNegInf;
    L = work_.data();
  }

  const int V = n_vocab_;
  const float mx = vmax(L, V);
  if (!(mx > kNegInf))
    throw std::invalid_argument(last_masked_ ? "structured output: no token the constraint allows "
                                               "has a finite logit (a logit_bias or the end-token "
                                               "mask removed them all)"
                                             : "every token has -inf logit (or NaN logits)");
  // greedy: the first of the largest
  if (c.mirostat == 0 && (c.temperature == 0.f || c.top_k == 1)) {
    for (int32_t i = 0; i < V; ++i)
      if (L[i] == mx) return i;
  }

  // The first filter runs on the whole vocabulary without materialising
  // it: each one keeps the tokens whose logits fall in a window (the k
  // largest, the most likely up to some mass, those closest to the
  // entropy), so the window is widened until it provably holds the answer
  // and only its tokens become candidates.
  e_.resize(V);
  if (c.mirostat != 0) {
    L_ = L;
    mx_ = mx;
    mirostat_t_ = c.temperature > 0.f ? c.temperature : 1.f;
    return kMirostat;
  }

  bool typical_done = false, top_p_done = false;
  if (c.top_k > 0 && c.top_k < V) {
    gather_top(L, mx, c.top_k);
  } else if (c.typical_p < 1.f || c.top_p < 1.f) {
    double s0, s1;
    exp_pass(L, V, mx, 1.f, e_.data(), s0, &s1);
    const double need = (c.typical_p < 1.f ? c.typical_p : c.top_p) * s0;
    // typical: -log p_i = mx + log s0 - l_i, entropy H = log s0 - s1 / s0, so
    // the tokens closest to H have logits closest to mx + s1 / s0
    const float center = c.typical_p < 1.f ? mx + (float)(s1 / s0) : mx;
    float d = 2.f;
    for (; d <= 64.f; d *= 2.f)
      if (window_mass(L, e_.data(), V, center - d, center + d) >= need) break;
    if (d > 64.f) gather(L, kNegInf, mx);
    else gather(L, center - d, center + d);
    for (Cand& x : cands_) x.p = (float)(e_[x.id] / s0);
    const float mass = c.typical_p < 1.f ? c.typical_p : c.top_p;
    if (c.typical_p < 1.f) {
      auto closeness = [center](const Cand& x) { return -std::abs(x.logit - center); };
      cands_.resize(sorted_prefix_for_mass(closeness, mass));
      typical_done = true;
    } else {
      cands_.resize(sorted_prefix_for_mass([](const Cand& x) { return x.p; }, mass));
      top_p_done = true;
    }
  } else if (c.min_p > 0.f) {
    gather(L, mx + std::log(c.min_p), mx);  // p >= min_p p_max  <=>  l >= mx + log min_p
  } else {
    // temperature alone: draw from the whole vocabulary
    exp_pass(L, V, mx, 1.f / c.temperature, e_.data(), total, nullptr);
    return kFromVocab;
  }
  softmax(1.f);

  // typical-p: the tokens whose surprise is closest to the entropy, up to
  // typical_p of the mass
  if (c.typical_p < 1.f && !typical_done) {
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
  if (c.top_p < 1.f && !top_p_done) {
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
  return kFromCands;
}

// A draw from weights e_[0..V) summing to total: block sums first, then
// the one block.
int32_t Sampler::draw_all(double total) {
  const double u = (double)(rng_() >> 11) * 0x1.0p-53 * total;
  constexpr int kBlock = 256;
  double cum = 0.0;
  const int V = n_vocab_;
  for (int b0 = 0; b0 < V; b0 += kBlock) {
    const int b1 = std::min(V, b0 + kBlock);
    float part[8] = {};
    int i = b0;
    for (; i + 8 <= b1; i += 8)
      for (int j = 0; j < 8; ++j) part[j] += e_[i + j];
    double bs = 0.0;
    for (float v : part) bs += v;
    for (; i < b1; ++i) bs += e_[i];
    if (u < cum + bs) {
      for (i = b0; i < b1; ++i) {
        cum += e_[i];
        if (u < cum && e_[i] > 0.f) return i;
      }
      for (i = b1; i-- > b0;)  // rounding at the block's end
        if (e_[i] > 0.f) return i;
    }
    cum += bs;
  }
  for (int i = V; i-- > 0;)
    if (e_[i] > 0.f) return i;
  return 0;
}

// ---- log-probabilities -------------------------------------------------------------

TopLogprobs top_logprobs(const float* logits, int n_vocab, int32_t token, int n) {
  if (token < 0 || token >= n_vocab) throw std::invalid_argument("token outside the vocabulary");
  const float mx = vmax(logits, n_vocab);
  double s0;
  exp_pass(logits, n_vocab, mx, 1.f, nullptr, s0, nullptr);
  const float lse = mx + (float)std::log(s0);
  TopLogprobs r;
  r.token_logprob = logits[token] - lse;
  n = std::max(0, std::min(n, n_vocab));
  if (n == 0) return r;
  std::vector<int32_t> idx;  // the n largest and some ties below them
  for_window(logits, n_vocab, top_window_low(logits, n_vocab, mx, n), mx,
             [&idx](int i) { idx.push_back(i); });
  std::partial_sort(idx.begin(), idx.begin() + n, idx.end(), [&](int32_t a, int32_t b) {
    return logits[a] > logits[b] || (logits[a] == logits[b] && a < b);
  });
  for (int i = 0; i < n; ++i) {
    if (!(logits[idx[i]] > kNegInf)) break;  // a token that cannot be drawn (masked) is no alternative
    r.ids.push_back(idx[i]);
    r.logprobs.push_back(logits[idx[i]] - lse);
  }
  return r;
}

}  // namespace llmrt
