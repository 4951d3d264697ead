#include "model/llama.h"

#include <algorithm>
#include <chrono>
#include <cmath>
#include <stdexcept>
#include <string>

namespace llmrt {

namespace {
// Prompt tokens processed per pass: bounds activation memory for long prompts
// (the largest buffer is (chunk, n_ff) floats) and keeps them cache-friendly.
constexpr int kChunk = 256;

void check_view(const WeightView& w, int64_t rows, int64_t cols, const std::string& what) {
  if (w.empty() || w.rows != rows || w.cols != cols)
    throw std::invalid_argument("weight " + what + ": expected shape (" + std::to_string(rows) +
                                ", " + std::to_string(cols) + "), got (" +
                                std::to_string(w.rows) + ", " + std::to_string(w.cols) + ")");
}
}  // namespace

// Activation buffers for up to `cap` tokens, in backend memory.
struct LlamaModel::Scratch {
  Backend* be = nullptr;
  int cap = 0;
  float *x = nullptr, *xn = nullptr, *q = nullptr, *k = nullptr, *v = nullptr,
        *att = nullptr, *gate = nullptr, *up = nullptr;
  ~Scratch() {
    for (float* p : {x, xn, q, k, v, att, gate, up})
      if (p) be->free_floats(p);
  }
};

namespace {
int pool_blocks(const CacheOptions& o) {
  if (o.tokens <= 0) throw std::invalid_argument("the KV cache needs at least one position");
  if (o.block_tokens <= 0) throw std::invalid_argument("block_tokens must be positive");
  return (o.tokens + o.block_tokens - 1) / o.block_tokens;
}
}  // namespace

LlamaModel::LlamaModel(const LlamaConfig& cfg, LlamaWeights weights,
                       std::unique_ptr<Backend> backend, const CacheOptions& cache)
    : cfg_(cfg),
      w_(std::move(weights)),
      backend_(std::move(backend)),
      kv_(cfg.n_layer, cfg.n_head_kv, cfg.head_dim, cache.block_tokens, pool_blocks(cache),
          cache.type, cache.prefix_caching) {
  const auto& c = cfg_;
  if (c.n_head <= 0 || c.n_head_kv <= 0 || c.n_head % c.n_head_kv != 0)
    throw std::invalid_argument("n_head must be a positive multiple of n_head_kv");
  if (c.rope.n_rot <= 0 || c.rope.n_rot > c.head_dim || c.rope.n_rot % 2 != 0)
    throw std::invalid_argument("rope dimension must be even and at most head_dim");
  if ((int)w_.layers.size() != c.n_layer) throw std::invalid_argument("layer count mismatch");
  check_view(w_.tok_embd, c.n_vocab, c.n_embd, "token_embd");
  check_view(w_.output, c.n_vocab, c.n_embd, "output");
  const int64_t qd = (int64_t)c.n_head * c.head_dim, kvd = (int64_t)c.n_head_kv * c.head_dim;
  for (int i = 0; i < c.n_layer; ++i) {
    const auto& L = w_.layers[i];
    const std::string p = "blk." + std::to_string(i) + ".";
    check_view(L.wq, qd, c.n_embd, p + "attn_q");
    check_view(L.wk, kvd, c.n_embd, p + "attn_k");
    check_view(L.wv, kvd, c.n_embd, p + "attn_v");
    check_view(L.wo, c.n_embd, qd, p + "attn_output");
    check_view(L.w_gate, c.n_ff, c.n_embd, p + "ffn_gate");
    check_view(L.w_up, c.n_ff, c.n_embd, p + "ffn_up");
    check_view(L.w_down, c.n_embd, c.n_ff, p + "ffn_down");
    if (!L.attn_norm || !L.ffn_norm) throw std::invalid_argument(p + "norm weights missing");
  }
  if (!w_.output_norm) throw std::invalid_argument("output_norm missing");

  // Matmul weights in the backend's preferred layout. The token embedding is
  // left as stored for row lookups; a tied output head gets its own copy when
  // the backend wants another layout (the lookups then touch only the rows
  // they need).
  auto prep = [&](WeightView& v) {
    const WeightView p = backend_->prepare_weight(v);
    if (p.data != v.data) replaced_.push_back(v.data);
    v = p;
  };
  for (auto& L : w_.layers)
    for (WeightView* v : {&L.wq, &L.wk, &L.wv, &L.wo, &L.w_gate, &L.w_up, &L.w_down}) prep(*v);
  prep(w_.output);
}

LlamaModel::~LlamaModel() = default;

void LlamaModel::ensure_scratch(int n) {
  if (s_ && s_->cap >= n) return;
  s_.reset();
  auto s = std::make_unique<Scratch>();
  s->be = backend_.get();
  s->cap = n;
  const auto& c = cfg_;
  const size_t qd = (size_t)c.n_head * c.head_dim, kvd = (size_t)c.n_head_kv * c.head_dim;
  s->x = backend_->alloc_floats((size_t)n * c.n_embd);
  s->xn = backend_->alloc_floats((size_t)n * std::max<size_t>(c.n_embd, qd));
  s->q = backend_->alloc_floats((size_t)n * qd);
  s->k = backend_->alloc_floats((size_t)n * kvd);
  s->v = backend_->alloc_floats((size_t)n * kvd);
  s->att = backend_->alloc_floats((size_t)n * std::max<size_t>(qd, c.n_embd));
  s->gate = backend_->alloc_floats((size_t)n * c.n_ff);
  s->up = backend_->alloc_floats((size_t)n * c.n_ff);
  s_ = std::move(s);
}

void LlamaModel::forward(int seq, const int32_t* tokens, int n, bool all_logits, float* logits) {
  if (n <= 0) throw std::invalid_argument("forward: no tokens");
  const int n_past = kv_.length(seq);
  if ((int64_t)n_past + n > cfg_.n_ctx)
    throw std::out_of_range("forward: positions " + std::to_string(n_past) + ".." +
                            std::to_string((int64_t)n_past + n - 1) +
                            " exceed the context length " + std::to_string(cfg_.n_ctx));
  for (int i = 0; i < n; ++i)
    if (tokens[i] < 0 || tokens[i] >= cfg_.n_vocab)
      throw std::out_of_range("token id " + std::to_string(tokens[i]) + " at index " +
                              std::to_string(i) + " is outside the vocabulary (size " +
                              std::to_string(cfg_.n_vocab) + ")");
  kv_.append(seq, tokens, n);  // blocks for every new position (or KVCacheFull)
  try {
    const int* table = kv_.table(seq).data();
    for (int done = 0; done < n; done += kChunk) {
      const int m = std::min(kChunk, n - done);
      const bool last = done + m == n;
      float* out = all_logits ? logits + (size_t)done * cfg_.n_vocab : (last ? logits : nullptr);
      forward_chunk(table, tokens + done, m, n_past + done, all_logits, out);
    }
  } catch (...) {
    kv_.truncate(seq, n_past);
    throw;
  }
  kv_.commit(seq);
  tokens_computed_ += n;
}

// One chunk of n tokens at positions [pos0, pos0 + n).
void LlamaModel::forward_chunk(const int* table, const int32_t* tokens, int n, int pos0,
                               bool all_logits, float* logits) {
  ensure_scratch(n);
  Backend& be = *backend_;
  Scratch& s = *s_;
  const auto& c = cfg_;
  const int D = c.n_embd, hd = c.head_dim;
  const int qd = c.n_head * hd, kvd = c.n_head_kv * hd;
  const float att_scale = 1.f / std::sqrt((float)hd);

  // Optional per-stage wall time (LlamaModel::set_profiling), for tuning.
  using clock = std::chrono::steady_clock;
  auto t_last = clock::now();
  auto mark = [&](int stage) {
    if (!profiling_) return;
    const auto now = clock::now();
    profile_[stage] += std::chrono::duration<double>(now - t_last).count();
    t_last = now;
  };

  be.embed(w_.tok_embd, tokens, n, s.x);  // x (n, D)
  mark(kStageOther);

  for (int l = 0; l < c.n_layer; ++l) {
    const LayerWeights& L = w_.layers[l];
    // ---- attention block ----
    be.rmsnorm(s.x, L.attn_norm, n, D, c.rms_eps, s.xn);
    {  // q (n, qd), k (n, kvd), v (n, kvd) in one pass
      const MatmulJob qkv[3] = {{&L.wq, s.q}, {&L.wk, s.k}, {&L.wv, s.v}};
      be.matmul_many(qkv, 3, s.xn, n);
    }
    mark(kStageMatmul);
    if (L.bq) be.add_bias(s.q, L.bq, n, qd);
    if (L.bk) be.add_bias(s.k, L.bk, n, kvd);
    if (L.bv) be.add_bias(s.v, L.bv, n, kvd);
    be.rope(s.q, n, c.n_head, hd, pos0, c.rope);
    be.rope(s.k, n, c.n_head_kv, hd, pos0, c.rope);
    be.kv_write(kv_, table, l, pos0, n, s.k, s.v);
    mark(kStageOther);
    be.attention(kv_, table, l, s.q, n, pos0, c.n_head, att_scale, s.att);  // (n, qd)
    mark(kStageAttention);
    be.matmul(L.wo, s.att, n, s.xn);                                  // (n, D)
    mark(kStageMatmul);
    be.add(s.x, s.xn, (size_t)n * D);
    // ---- feed-forward block ----
    be.rmsnorm(s.x, L.ffn_norm, n, D, c.rms_eps, s.xn);
    {  // gate, up (n, n_ff) in one pass
      const MatmulJob gu[2] = {{&L.w_gate, s.gate}, {&L.w_up, s.up}};
      mark(kStageOther);
      be.matmul_many(gu, 2, s.xn, n);
    }
    mark(kStageMatmul);
    be.swiglu(s.gate, s.up, (size_t)n * c.n_ff);
    mark(kStageOther);
    be.matmul(L.w_down, s.gate, n, s.xn);  // (n, D)
    mark(kStageMatmul);
    be.add(s.x, s.xn, (size_t)n * D);
  }

  if (!logits) return;
  // Output head only on the rows whose logits are wanted.
  const int first = all_logits ? 0 : n - 1;
  const int rows = n - first;
  be.rmsnorm(s.x + (size_t)first * D, w_.output_norm, rows, D, c.rms_eps, s.xn);
  mark(kStageOther);
  be.matmul(w_.output, s.xn, rows, logits);
  mark(kStageHead);
}

}  // namespace llmrt
