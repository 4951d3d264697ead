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
  float* logits = nullptr;  // device backends: the head's output before download
  size_t logits_cap = 0;
  float *router = nullptr, *ex = nullptr, *ey = nullptr;  // mixture of experts
  std::vector<float> router_host;
  std::vector<int32_t> ids, pos;  // token ids and positions of the pass's rows
  std::vector<AttnSeq> attn;      // the pass's sequences, for attention
  ~Scratch() {
    for (float* p : {x, xn, q, k, v, att, gate, up, logits, router, ex, ey})
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
          cache.type, cache.prefix_caching, backend_->pool_memory()) {
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
    if (c.n_expert > 0) {
      check_view(L.router, c.n_expert, c.n_embd, p + "ffn_gate_inp");
      if ((int)L.e_gate.size() != c.n_expert || (int)L.e_up.size() != c.n_expert ||
          (int)L.e_down.size() != c.n_expert)
        throw std::invalid_argument(p + "experts: expected " + std::to_string(c.n_expert));
      for (int e = 0; e < c.n_expert; ++e) {
        check_view(L.e_gate[e], c.n_ff, c.n_embd, p + "ffn_gate_exps");
        check_view(L.e_up[e], c.n_ff, c.n_embd, p + "ffn_up_exps");
        check_view(L.e_down[e], c.n_embd, c.n_ff, p + "ffn_down_exps");
      }
    } else {
      check_view(L.w_gate, c.n_ff, c.n_embd, p + "ffn_gate");
      check_view(L.w_up, c.n_ff, c.n_embd, p + "ffn_up");
      check_view(L.w_down, c.n_embd, c.n_ff, p + "ffn_down");
    }
    if (!L.attn_norm || !L.ffn_norm) throw std::invalid_argument(p + "norm weights missing");
  }
  if (!w_.output_norm) throw std::invalid_argument("output_norm missing");
  if (c.n_expert < 0 || c.n_expert > 256 ||
      (c.n_expert > 0 && (c.n_expert_used < 1 || c.n_expert_used > c.n_expert)))
    throw std::invalid_argument("expert counts: " + std::to_string(c.n_expert_used) + " used of " +
                                std::to_string(c.n_expert));

  // Matmul weights in the backend's preferred layout. The token embedding is
  // left as stored for row lookups; a tied output head gets its own copy when
  // the backend wants another layout (the lookups then touch only the rows
  // they need).
  auto prep = [&](WeightView& v) {
    const WeightView p = backend_->prepare_weight(v);
    if (p.data != v.data) replaced_.push_back(v.data);
    v = p;
  };
  for (auto& L : w_.layers) {
    for (WeightView* v : {&L.wq, &L.wk, &L.wv, &L.wo, &L.w_gate, &L.w_up, &L.w_down})
      if (!v->empty()) prep(*v);
    if (!L.router.empty()) prep(L.router);
    for (auto* ex : {&L.e_gate, &L.e_up, &L.e_down})
      for (WeightView& v : *ex) prep(v);
  }
  prep(w_.output);
}

LlamaModel::~LlamaModel() = default;

void LlamaModel::ensure_scratch(int n) {
  if (s_ && s_->cap >= n) return;
  backend_->forget_graphs();  // they refer to the buffers about to go
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
  if (c.n_expert > 0) {
    s->router = backend_->alloc_floats((size_t)n * c.n_expert);
    s->ex = backend_->alloc_floats((size_t)n * c.n_embd);
    s->ey = backend_->alloc_floats((size_t)n * c.n_embd);
  }
  s_ = std::move(s);
}

// A piece of one entry of a batched forward: n tokens at positions
// [pos0, pos0 + n) of the sequence whose block table is `table`; rows from
// first_logit on need logits (first_logit == n: none).
struct LlamaModel::Segment {
  const int* table;
  const int32_t* tokens;
  int n, pos0, first_logit;
};

int64_t LlamaModel::logit_rows(const BatchEntry* entries, int count) {
  int64_t rows = 0;
  for (int i = 0; i < count; ++i)
    rows += entries[i].logits == BatchEntry::kAll ? entries[i].n
            : entries[i].logits == BatchEntry::kLast ? 1 : 0;
  return rows;
}

void LlamaModel::forward(int seq, const int32_t* tokens, int n, bool all_logits, float* logits) {
  const BatchEntry e{seq, tokens, n,
                     all_logits ? BatchEntry::kAll : logits ? BatchEntry::kLast : BatchEntry::kNone};
  forward_batch(&e, 1, logits);
}

void LlamaModel::forward_batch(const BatchEntry* entries, int count, float* logits,
                               int32_t* greedy) {
  if (count <= 0) throw std::invalid_argument("forward: no sequences");
  std::vector<int> past(count);
  for (int i = 0; i < count; ++i) {
    const BatchEntry& e = entries[i];
    auto which = [&] {  // built only for an error message
      return count > 1 ? " (entry " + std::to_string(i) + ")" : std::string();
    };
    if (e.n <= 0 || !e.tokens) throw std::invalid_argument("forward: no tokens" + which());
    for (int j = 0; j < i; ++j)
      if (entries[j].seq == e.seq)
        throw std::invalid_argument("forward: sequence " + std::to_string(e.seq) +
                                    " appears twice in one batch");
    past[i] = kv_.length(e.seq);
    if ((int64_t)past[i] + e.n > cfg_.n_ctx)
      throw std::out_of_range("forward: positions " + std::to_string(past[i]) + ".." +
                              std::to_string((int64_t)past[i] + e.n - 1) +
                              " exceed the context length " + std::to_string(cfg_.n_ctx) +
                              which());
    for (int t = 0; t < e.n; ++t)
      if (e.tokens[t] < 0 || e.tokens[t] >= cfg_.n_vocab)
        throw std::out_of_range("token id " + std::to_string(e.tokens[t]) + " at index " +
                                std::to_string(t) + " is outside the vocabulary (size " +
                                std::to_string(cfg_.n_vocab) + ")" + which());
  }
  if (!logits && !greedy && logit_rows(entries, count) > 0)
    throw std::invalid_argument("forward: logits wanted but no buffer given");
  // blocks for every new position (or KVCacheFull, with nothing changed)
  int appended = 0;
  auto undo = [&] {
    for (int j = 0; j < appended; ++j) kv_.truncate(entries[j].seq, past[j]);
  };
  try {
    for (; appended < count; ++appended)
      kv_.append(entries[appended].seq, entries[appended].tokens, entries[appended].n);
  } catch (...) {
    undo();
    throw;
  }
  try {
    // pieces of at most kChunk tokens, in passes of kChunk rows plus one row
    // for each other sequence: a long prompt runs chunk by chunk, while the
    // one-token steps of other sequences ride along with a chunk
    std::vector<Segment> segs;
    for (int i = 0; i < count; ++i) {
      const BatchEntry& e = entries[i];
      const int* table = kv_.table(e.seq).data();
      for (int done = 0; done < e.n; done += kChunk) {
        const int m = std::min(kChunk, e.n - done);
        const int first = e.logits == BatchEntry::kAll                        ? 0
                          : e.logits == BatchEntry::kLast && done + m == e.n ? m - 1
                                                                               : m;
        segs.push_back({table, e.tokens + done, m, past[i] + done, first});
      }
    }
    const int cap = kChunk + count - 1;
    float* out = greedy ? nullptr : logits;
    int32_t* ids = greedy;
    for (size_t i = 0; i < segs.size();) {
      size_t j = i;
      int rows = 0;
      while (j < segs.size() && (j == i || rows + segs[j].n <= cap)) rows += segs[j++].n;
      forward_pass(segs.data() + i, (int)(j - i), out, ids);
      for (size_t k = i; k < j; ++k) {
        const int wanted = segs[k].n - segs[k].first_logit;
        if (out) out += (size_t)wanted * cfg_.n_vocab;
        if (ids) ids += wanted;
      }
      i = j;
    }
  } catch (...) {
    undo();
    throw;
  }
  for (int i = 0; i < count; ++i) {
    kv_.commit(entries[i].seq);
    tokens_computed_ += entries[i].n;
  }
}

// One pass over the weights for the rows of every segment, end to end.
void LlamaModel::forward_pass(const Segment* segs, int count, float* logits, int32_t* greedy) {
  int n = 0;
  for (int i = 0; i < count; ++i) n += segs[i].n;
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

  // token ids, positions and attention rows of the pass
  s.ids.resize(n);
  s.pos.resize(n);
  s.attn.resize(count);
  for (int i = 0, r = 0; i < count; ++i) {
    const Segment& g = segs[i];
    for (int t = 0; t < g.n; ++t, ++r) {
      s.ids[r] = g.tokens[t];
      s.pos[r] = g.pos0 + t;
    }
    s.attn[i] = AttnSeq{g.table, g.n, g.pos0};
  }

  // rows whose logits are wanted; a device backend computes them in its own
  // memory and copies them out at the end
  int rows = 0;
  for (int i = 0; i < count; ++i) rows += segs[i].n - segs[i].first_logit;
  const bool host = be.host_memory();
  float* head_out = logits;
  if ((!host || greedy) && rows > 0) {
    if (s.logits_cap < (size_t)rows * c.n_vocab) {
      be.forget_graphs();
      if (s.logits) be.free_floats(s.logits);
      s.logits = be.alloc_floats((size_t)rows * c.n_vocab);
      s.logits_cap = (size_t)rows * c.n_vocab;
    }
    head_out = s.logits;
  }
  be.begin_pass(kv_, s.attn.data(), count, s.ids.data(), s.pos.data(), n);

  auto body = [&] {
    be.embed(w_.tok_embd, s.ids.data(), n, s.x);  // x (n, D)
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
      be.rope(s.q, n, c.n_head, hd, s.pos.data(), c.rope);
      be.rope(s.k, n, c.n_head_kv, hd, s.pos.data(), c.rope);
      be.kv_write(kv_, s.attn.data(), count, l, s.k, s.v);
      mark(kStageOther);
      be.attention(kv_, s.attn.data(), count, l, s.q, c.n_head, att_scale, s.att);  // (n, qd)
      mark(kStageAttention);
      be.matmul(L.wo, s.att, n, s.xn);  // (n, D)
      mark(kStageMatmul);
      be.add(s.x, s.xn, (size_t)n * D);
      // ---- feed-forward block ----
      be.rmsnorm(s.x, L.ffn_norm, n, D, c.rms_eps, s.xn);
      if (!L.router.empty()) {
        moe_ffn(L, n);
        mark(kStageMatmul);
        continue;
      }
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

    // Output head only on the rows whose logits are wanted, gathered end to
    // end (the rows of one segment are consecutive already).
    if (rows == 0) return;
    int done = 0;
    const float* src = nullptr;
    for (int i = 0, r = 0; i < count; r += segs[i].n, ++i) {
      const int m = segs[i].n - segs[i].first_logit;
      if (m == 0) continue;
      const float* row = s.x + (size_t)(r + segs[i].first_logit) * D;
      if (done == 0 && count == 1) {
        src = row;  // one segment: no copy
      } else {
        be.copy(s.att + (size_t)done * D, row, (size_t)m * D);
        src = s.att;
      }
      done += m;
    }
    be.rmsnorm(src, w_.output_norm, rows, D, c.rms_eps, s.xn);
    mark(kStageOther);
    be.matmul(w_.output, s.xn, rows, head_out);
    mark(kStageHead);
  };

  // a pass of one-token rows (decoding), each with its logits, may replay a
  // device graph
  if (be.graphs() && n == count && rows == count && c.n_expert == 0)
    be.run_graph(n, body);
  else
    body();
  if (rows > 0) {
    if (greedy)
      be.argmax(s.logits, rows, c.n_vocab, greedy);
    else if (!host)
      be.download(logits, s.logits, (size_t)rows * c.n_vocab);
  }
}

// Mixture of experts: the router's logits pick each token's n_expert_used
// best experts (ties to the lower index), weighted by the softmax over the
// chosen ones; tokens are grouped by expert so that each expert's weights
// are read once for all its tokens, and each result is added to x.
void LlamaModel::moe_ffn(const LayerWeights& L, int n) {
  Backend& be = *backend_;
  Scratch& s = *s_;
  const auto& c = cfg_;
  const int E = c.n_expert, K = c.n_expert_used, D = c.n_embd, F = c.n_ff;
  be.matmul(L.router, s.xn, n, s.router);  // (n, E)
  const float* R = s.router;
  if (!be.host_memory()) {
    s.router_host.resize((size_t)n * E);
    be.download(s.router_host.data(), s.router, (size_t)n * E);
    R = s.router_host.data();
  }
  std::vector<std::vector<int32_t>> rows(E);
  std::vector<std::vector<float>> weights(E);
  std::vector<int> order(E);
  for (int t = 0; t < n; ++t) {
    const float* r = R + (size_t)t * E;
    for (int e = 0; e < E; ++e) order[e] = e;
    std::partial_sort(order.begin(), order.begin() + K, order.end(),
                      [r](int a, int b) { return r[a] > r[b] || (r[a] == r[b] && a < b); });
    const float mx = r[order[0]];
    float sum = 0.f;
    for (int k = 0; k < K; ++k) sum += std::exp(r[order[k]] - mx);
    for (int k = 0; k < K; ++k) {
      rows[order[k]].push_back(t);
      weights[order[k]].push_back(std::exp(r[order[k]] - mx) / sum);
    }
  }
  for (int e = 0; e < E; ++e) {
    const int m = (int)rows[e].size();
    if (m == 0) continue;
    be.gather_rows(s.ex, s.xn, rows[e].data(), m, D);
    const MatmulJob gu[2] = {{&L.e_gate[e], s.gate}, {&L.e_up[e], s.up}};
    be.matmul_many(gu, 2, s.ex, m);
    be.swiglu(s.gate, s.up, (size_t)m * F);
    be.matmul(L.e_down[e], s.gate, m, s.ey);
    be.scatter_add_rows(s.x, s.ey, rows[e].data(), weights[e].data(), m, D);
  }
}

}  // namespace llmrt
