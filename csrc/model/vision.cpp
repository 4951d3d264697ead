// The vision encoder and projector (see vision.h).
#include "model/vision.h"

#include <cmath>
#include <stdexcept>

namespace llmrt {

namespace {

// Images per pass are bounded by this many rows (the activations' memory).
constexpr int kMaxRows = 8192;

int need_int(const ConfigValues& v, const char* key) {
  auto it = v.find(key);
  if (it == v.end()) throw std::invalid_argument(std::string("vision config: missing ") + key);
  const double x = it->second;
  if (!(x >= 1 && x <= 1e8) || x != std::floor(x))
    throw std::invalid_argument(std::string("vision config: ") + key + " must be a positive integer");
  return (int)x;
}

float get_float(const ConfigValues& v, const char* key, float dflt) {
  auto it = v.find(key);
  if (it == v.end()) return dflt;
  if (!(it->second > 0 && it->second < 1)) throw std::invalid_argument(
      std::string("vision config: ") + key + " must be in (0, 1)");
  return (float)it->second;
}

void check_view(const WeightView& w, int64_t rows, int64_t cols, const std::string& what) {
  if (w.empty() || w.rows != rows || w.cols != cols)
    throw std::invalid_argument("vision tensor " + what + ": expected (" + std::to_string(rows) +
                                ", " + std::to_string(cols) + ")");
}

const float* vec(const std::map<std::string, WeightView>& t, const std::string& role, int64_t n,
                 bool required = true) {
  auto it = t.find(role);
  if (it == t.end()) {
    if (required) throw std::invalid_argument("vision tensor " + role + " missing");
    return nullptr;
  }
  const WeightView& w = it->second;
  if (w.type != DType::F32 || w.rows * w.cols != n)
    throw std::invalid_argument("vision tensor " + role + ": expected " + std::to_string(n) +
                                " float32 values");
  return reinterpret_cast<const float*>(w.data);
}

WeightView mat(const std::map<std::string, WeightView>& t, const std::string& role, int64_t rows,
               int64_t cols) {
  auto it = t.find(role);
  if (it == t.end()) throw std::invalid_argument("vision tensor " + role + " missing");
  check_view(it->second, rows, cols, role);
  return it->second;
}

}  // namespace

VisionConfig vision_config(const ConfigValues& v) {
  VisionConfig c;
  c.n_embd = need_int(v, "n_embd");
  c.n_ff = need_int(v, "n_ff");
  c.n_layer = need_int(v, "n_layer");
  c.n_head = need_int(v, "n_head");
  c.patch_dim = need_int(v, "patch_dim");
  c.n_patches = need_int(v, "n_patches");
  c.proj_in = need_int(v, "proj_in");
  c.proj_out = need_int(v, "proj_out");
  c.eps = get_float(v, "eps", 1e-6f);
  c.proj_eps = get_float(v, "proj_eps", c.eps);
  auto it = v.find("proj_norm");
  c.proj_norm = it != v.end() && it->second != 0;
  if (c.n_embd % c.n_head != 0)
    throw std::invalid_argument("vision config: n_embd must be a multiple of n_head");
  if (c.n_patches > kMaxRows)
    throw std::invalid_argument("vision config: more than " + std::to_string(kMaxRows) +
                                " patches an image");
  return c;
}

VisionWeights vision_weights(const VisionConfig& c, const std::map<std::string, WeightView>& t) {
  VisionWeights w;
  const int D = c.n_embd, F = c.n_ff;
  w.patch = mat(t, "patch", D, c.patch_dim);
  w.patch_b = vec(t, "patch_b", D);
  w.pos = vec(t, "pos", (int64_t)c.n_patches * D);
  w.post_w = vec(t, "post_w", D);
  w.post_b = vec(t, "post_b", D);
  w.proj = mat(t, "proj", c.proj_out, c.proj_in);
  w.proj_norm = c.proj_norm ? vec(t, "proj_norm", c.proj_in) : nullptr;
  for (int l = 0; l < c.n_layer; ++l) {
    const std::string b = "blk." + std::to_string(l) + ".";
    VisionLayer L;
    L.ln1_w = vec(t, b + "ln1_w", D);
    L.ln1_b = vec(t, b + "ln1_b", D);
    L.ln2_w = vec(t, b + "ln2_w", D);
    L.ln2_b = vec(t, b + "ln2_b", D);
    L.wq = mat(t, b + "wq", D, D);
    L.wk = mat(t, b + "wk", D, D);
    L.wv = mat(t, b + "wv", D, D);
    L.wo = mat(t, b + "wo", D, D);
    L.w_up = mat(t, b + "up", F, D);
    L.w_down = mat(t, b + "down", D, F);
    L.bq = vec(t, b + "bq", D);
    L.bk = vec(t, b + "bk", D);
    L.bv = vec(t, b + "bv", D);
    L.bo = vec(t, b + "bo", D);
    L.b_up = vec(t, b + "b_up", F);
    L.b_down = vec(t, b + "b_down", D);
    w.layers.push_back(L);
  }
  return w;
}

VisionTower::VisionTower(const VisionConfig& cfg, VisionWeights w, std::unique_ptr<Backend> be)
    : cfg_(cfg), w_(std::move(w)), be_(std::move(be)) {
  if ((int)w_.layers.size() != cfg_.n_layer)
    throw std::invalid_argument("vision tower: a layer's weights missing");
  auto prep = [&](WeightView& v) { v = be_->prepare_weight(v); };
  prep(w_.patch);
  prep(w_.proj);
  for (VisionLayer& L : w_.layers)
    for (WeightView* v : {&L.wq, &L.wk, &L.wv, &L.wo, &L.w_up, &L.w_down}) prep(*v);
}

VisionTower::~VisionTower() {
  for (float* p : {x_, xn_, q_, k_, v_, att_, ff_, in_})
    if (p) be_->free_floats(p);
}

void VisionTower::ensure(int rows) {
  if (rows <= cap_) return;
  cap_ = 0;  // until every buffer is allocated again (an allocation may throw)
  for (float** p : {&x_, &xn_, &q_, &k_, &v_, &att_, &ff_, &in_})
    if (*p) be_->free_floats(*p), *p = nullptr;
  const size_t n = rows, D = cfg_.n_embd;
  const size_t wide = std::max<size_t>({(size_t)cfg_.patch_dim, (size_t)cfg_.proj_in, D});
  x_ = be_->alloc_floats(n * D);
  xn_ = be_->alloc_floats(n * D);
  q_ = be_->alloc_floats(n * D);
  k_ = be_->alloc_floats(n * D);
  v_ = be_->alloc_floats(n * D);
  att_ = be_->alloc_floats(n * std::max<size_t>(D, cfg_.proj_out));
  ff_ = be_->alloc_floats(n * cfg_.n_ff);
  in_ = be_->alloc_floats(n * wide);
  cap_ = rows;
}

void VisionTower::encode(const float* patches, int n_img, float* out) {
  if (n_img < 1) throw std::invalid_argument("vision tower: no image");
  const VisionConfig& c = cfg_;
  const int P = c.n_patches, D = c.n_embd, hd = D / c.n_head;
  const float eps = c.eps, scale = 1.f / std::sqrt((float)hd);
  const int per_pass = std::max(1, kMaxRows / P);
  Backend& be = *be_;
  for (int i0 = 0; i0 < n_img; i0 += per_pass) {
    const int m = std::min(per_pass, n_img - i0), n = m * P;
    ensure(n);
    // patches (n, 3 p^2) @ W^T + b, + each image's positions
    be.upload(in_, patches + (size_t)i0 * P * c.patch_dim, (size_t)n * c.patch_dim);
    be.matmul(w_.patch, in_, n, x_);
    be.add_bias(x_, w_.patch_b, n, D);
    be.add_bias(x_, w_.pos, m, P * D);
    for (const VisionLayer& L : w_.layers) {
      // x += o(attention(LN1(x)))
      be.layernorm(x_, L.ln1_w, L.ln1_b, n, D, eps, xn_);
      const MatmulJob qkv[3] = {{&L.wq, q_}, {&L.wk, k_}, {&L.wv, v_}};
      be.matmul_many(qkv, 3, xn_, n);
      be.add_bias(q_, L.bq, n, D);
      be.add_bias(k_, L.bk, n, D);
      be.add_bias(v_, L.bv, n, D);
      be.attention_dense(q_, k_, v_, m, P, c.n_head, hd, scale, att_);
      be.matmul(L.wo, att_, n, xn_);
      be.add_bias(xn_, L.bo, n, D);
      be.add(x_, xn_, (size_t)n * D);
      // x += down(gelu(up(LN2(x))))
      be.layernorm(x_, L.ln2_w, L.ln2_b, n, D, eps, xn_);
      be.matmul(L.w_up, xn_, n, ff_);
      be.add_bias(ff_, L.b_up, n, c.n_ff);
      be.gelu(ff_, (size_t)n * c.n_ff);
      be.matmul(L.w_down, ff_, n, xn_);
      be.add_bias(xn_, L.b_down, n, D);
      be.add(x_, xn_, (size_t)n * D);
    }
    be.layernorm(x_, w_.post_w, w_.post_b, n, D, eps, xn_);
    be.download(out + (size_t)i0 * P * D, xn_, (size_t)n * D);
  }
}

void VisionTower::project(const float* x, int m, float* out) {
  if (m < 1) throw std::invalid_argument("vision projector: no rows");
  const VisionConfig& c = cfg_;
  Backend& be = *be_;
  for (int r0 = 0; r0 < m; r0 += kMaxRows) {
    const int n = std::min(kMaxRows, m - r0);
    ensure(std::max(n, 1));
    be.upload(in_, x + (size_t)r0 * c.proj_in, (size_t)n * c.proj_in);
    if (w_.proj_norm) be.rmsnorm(in_, w_.proj_norm, n, c.proj_in, c.proj_eps, in_);
    be.matmul(w_.proj, in_, n, att_);
    be.download(out + (size_t)r0 * c.proj_out, att_, (size_t)n * c.proj_out);
  }
}

}  // namespace llmrt
