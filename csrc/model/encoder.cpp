// The text encoder (see encoder.h).
#include "model/encoder.h"

#include <algorithm>
#include <cmath>
#include <stdexcept>

namespace llmrt {

namespace {

// Texts per pass are bounded by this many rows (the activations' memory).
constexpr int kMaxRows = 8192;

[[noreturn]] void bad(const std::string& what) {
  throw std::invalid_argument("encoder " + what);
}

int need_int(const EncoderValues& v, const char* key, int lo) {
  auto it = v.find(key);
  if (it == v.end()) bad(std::string("config: missing ") + key);
  const double x = it->second;
  if (!(x >= lo && x <= 1e8) || x != std::floor(x))
    bad(std::string("config: ") + key + " must be an integer >= " + std::to_string(lo));
  return (int)x;
}

const float* vec(const std::map<std::string, WeightView>& t, const std::string& role, int64_t n,
                 bool required) {
  auto it = t.find(role);
  if (it == t.end()) {
    if (required) bad("tensor " + role + " missing");
    return nullptr;
  }
  const WeightView& w = it->second;
  if (w.type != DType::F32 || w.rows * w.cols != n)
    bad("tensor " + role + ": expected " + std::to_string(n) + " float32 values");
  return reinterpret_cast<const float*>(w.data);
}

WeightView mat(const std::map<std::string, WeightView>& t, const std::string& role, int64_t rows,
               int64_t cols, bool required = true) {
  auto it = t.find(role);
  if (it == t.end()) {
    if (required) bad("tensor " + role + " missing");
    return WeightView{};
  }
  const WeightView& w = it->second;
  if (w.empty() || w.rows != rows || w.cols != cols)
    bad("tensor " + role + ": expected (" + std::to_string(rows) + ", " + std::to_string(cols) +
        ")");
  return w;
}

// Rows [r0, r0 + n) of a weight: a view of the same bytes.
WeightView rows_of(const WeightView& w, int64_t r0, int64_t n) {
  WeightView v = w;
  v.data = w.row(r0);
  v.rows = n;
  return v;
}

}  // namespace

EncoderConfig encoder_config(const EncoderValues& v) {
  EncoderConfig c;
  c.n_embd = need_int(v, "n_embd", 1);
  c.n_ff = need_int(v, "n_ff", 1);
  c.n_layer = need_int(v, "n_layer", 1);
  c.n_head = need_int(v, "n_head", 1);
  c.n_vocab = need_int(v, "n_vocab", 1);
  c.n_pos = need_int(v, "n_pos", 0);
  c.n_types = need_int(v, "n_types", 0);
  auto it = v.find("eps");
  if (it != v.end()) {
    if (!(it->second > 0 && it->second < 1)) bad("config: eps must be in (0, 1)");
    c.eps = (float)it->second;
  }
  it = v.find("rope_base");
  if (it != v.end()) {
    if (!(it->second > 1 && it->second < 1e12)) bad("config: rope_base must be > 1");
    c.rope_base = (float)it->second;
  }
  it = v.find("swiglu");
  c.swiglu = it != v.end() && it->second != 0;
  if (c.n_embd % c.n_head != 0) bad("config: n_embd must be a multiple of n_head");
  if (c.n_pos == 0 && (c.n_embd / c.n_head) % 2 != 0)
    bad("config: rotary positions need an even head size");
  return c;
}

EncoderWeights encoder_weights(const EncoderConfig& c, const std::map<std::string, WeightView>& t) {
  EncoderWeights w;
  const int D = c.n_embd, F = c.n_ff;
  w.tok = mat(t, "tok", c.n_vocab, D);
  if (c.n_pos > 0) w.pos = mat(t, "pos", c.n_pos, D);
  if (c.n_types > 0) w.types = mat(t, "types", c.n_types, D);
  w.embd_norm_w = vec(t, "embd_norm_w", D, true);
  w.embd_norm_b = vec(t, "embd_norm_b", D, true);
  for (int l = 0; l < c.n_layer; ++l) {
    const std::string b = "blk." + std::to_string(l) + ".";
    EncoderLayer L;
    if (t.count(b + "wqkv")) {
      const WeightView qkv = mat(t, b + "wqkv", 3 * (int64_t)D, D);
      L.wq = rows_of(qkv, 0, D);
      L.wk = rows_of(qkv, D, D);
      L.wv = rows_of(qkv, 2 * (int64_t)D, D);
      if (const float* bqkv = vec(t, b + "bqkv", 3 * (int64_t)D, false)) {
        L.bq = bqkv;
        L.bk = bqkv + D;
        L.bv = bqkv + 2 * D;
      }
    } else {
      L.wq = mat(t, b + "wq", D, D);
      L.wk = mat(t, b + "wk", D, D);
      L.wv = mat(t, b + "wv", D, D);
      L.bq = vec(t, b + "bq", D, false);
      L.bk = vec(t, b + "bk", D, false);
      L.bv = vec(t, b + "bv", D, false);
    }
    L.wo = mat(t, b + "wo", D, D);
    L.bo = vec(t, b + "bo", D, false);
    L.ln1_w = vec(t, b + "ln1_w", D, true);
    L.ln1_b = vec(t, b + "ln1_b", D, true);
    L.w_up = mat(t, b + "up", F, D);
    L.b_up = vec(t, b + "b_up", F, false);
    if (c.swiglu) L.w_gate = mat(t, b + "gate", F, D);
    L.w_down = mat(t, b + "down", D, F);
    L.b_down = vec(t, b + "b_down", D, false);
    L.ln2_w = vec(t, b + "ln2_w", D, true);
    L.ln2_b = vec(t, b + "ln2_b", D, true);
    w.layers.push_back(L);
  }
  return w;
}

Encoder::Encoder(const EncoderConfig& cfg, EncoderWeights w, std::unique_ptr<Backend> be)
    : cfg_(cfg), w_(std::move(w)), be_(std::move(be)) {
  if ((int)w_.layers.size() != cfg_.n_layer) bad("a layer's weights missing");
  for (EncoderLayer& L : w_.layers)
    for (WeightView* v : {&L.wq, &L.wk, &L.wv, &L.wo, &L.w_up, &L.w_gate, &L.w_down})
      if (!v->empty()) *v = be_->prepare_panels(be_->prepare_weight(*v));
}

Encoder::~Encoder() {
  for (float* p : {x_, t_, q_, k_, v_, att_, ff_, gate_})
    if (p) be_->free_floats(p);
}

void Encoder::ensure(int rows) {
  if (rows <= cap_) return;
  cap_ = 0;  // until every buffer is allocated again (an allocation may throw)
  for (float** p : {&x_, &t_, &q_, &k_, &v_, &att_, &ff_, &gate_})
    if (*p) be_->free_floats(*p), *p = nullptr;
  const size_t n = rows, D = cfg_.n_embd, F = cfg_.n_ff;
  x_ = be_->alloc_floats(n * D);
  t_ = be_->alloc_floats(n * D);
  q_ = be_->alloc_floats(n * D);
  k_ = be_->alloc_floats(n * D);
  v_ = be_->alloc_floats(n * D);
  att_ = be_->alloc_floats(n * D);
  ff_ = be_->alloc_floats(n * F);
  if (cfg_.swiglu) gate_ = be_->alloc_floats(n * F);
  cap_ = rows;
}

void Encoder::encode(const float* x0, const int32_t* pos, const int32_t* starts, int n_seq,
                     float* out) {
  if (n_seq < 1) bad("encode: no text");
  const EncoderConfig& c = cfg_;
  const int D = c.n_embd, F = c.n_ff, hd = D / c.n_head;
  const float eps = c.eps, scale = 1.f / std::sqrt((float)hd);
  RopeParams rp;
  rp.n_rot = hd;
  rp.freq_base = c.rope_base;
  rp.neox = true;
  Backend& be = *be_;
  std::vector<int32_t> local;  // a pass's starts, from 0
  for (int s0 = 0; s0 < n_seq;) {
    // the texts of one pass: as many whole texts as fit in kMaxRows (one
    // longer text alone)
    int s1 = s0 + 1;
    while (s1 < n_seq && starts[s1 + 1] - starts[s0] <= kMaxRows) ++s1;
    const int r0 = starts[s0], n = starts[s1] - r0;
    local.assign(starts + s0, starts + s1 + 1);
    for (int32_t& v : local) v -= r0;
    ensure(n);
    be.upload(x_, x0 + (size_t)r0 * D, (size_t)n * D);
    be.layernorm(x_, w_.embd_norm_w, w_.embd_norm_b, n, D, eps, x_);
    for (const EncoderLayer& L : w_.layers) {
      // x = LN1(x + o(attention(x)))
      const MatmulJob qkv[3] = {{&L.wq, q_}, {&L.wk, k_}, {&L.wv, v_}};
      be.matmul_many(qkv, 3, x_, n);
      if (L.bq) be.add_bias(q_, L.bq, n, D);
      if (L.bk) be.add_bias(k_, L.bk, n, D);
      if (L.bv) be.add_bias(v_, L.bv, n, D);
      if (c.n_pos == 0) {
        be.rope(q_, n, c.n_head, hd, pos + r0, rp);
        be.rope(k_, n, c.n_head, hd, pos + r0, rp);
      }
      be.attention_ragged(q_, k_, v_, local.data(), s1 - s0, c.n_head, hd, scale, att_);
      be.matmul(L.wo, att_, n, t_);
      be.add_layernorm(x_, t_, L.bo, L.ln1_w, L.ln1_b, n, D, eps);
      // x = LN2(x + down(act(up(x))))
      if (c.swiglu) {
        const MatmulJob gu[2] = {{&L.w_gate, gate_}, {&L.w_up, ff_}};
        be.matmul_many(gu, 2, x_, n);
        be.swiglu(gate_, ff_, (size_t)n * F);
        be.matmul(L.w_down, gate_, n, t_);
      } else {
        be.matmul(L.w_up, x_, n, ff_);
        be.bias_gelu_erf(ff_, L.b_up, n, F);
        be.matmul(L.w_down, ff_, n, t_);
      }
      be.add_layernorm(x_, t_, L.b_down, L.ln2_w, L.ln2_b, n, D, eps);
    }
    be.download(out + (size_t)r0 * D, x_, (size_t)n * D);
    s0 = s1;
  }
}

}  // namespace llmrt
