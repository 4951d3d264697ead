#include "model/llama.h"

#include <algorithm>
#include <exception>
#include <mutex>
#include <cmath>
#include <stdexcept>
#include <string>

namespace llmrt {

namespace {
// Prompt tokens processed per pass: bounds activation memory for long prompts
// (the largest buffer is (chunk, n_ff) floats) and keeps them cache-friendly.
constexpr int kChunk = LlamaModel::kPassRows;

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
  float* hid = nullptr;  // final hidden states of a pass (device backends)
  float *x = nullptr, *xn = nullptr, *q = nullptr, *k = nullptr, *v = nullptr,
        *att = nullptr, *gate = nullptr, *up = nullptr;
  float* logits = nullptr;  // device backends: the head's output before download
  size_t logits_cap = 0;
  float *router = nullptr, *ex = nullptr, *ey = nullptr;  // mixture of experts
  float *lora_a = nullptr, *lora_b = nullptr;  // LoRA: (rows, rank) and (rows, widest output)
  int lora_cap = 0, lora_rank = 0;
  std::vector<float> router_host;
  std::vector<std::vector<int32_t>> expert_rows;  // mixture of experts: each expert's rows
  std::vector<std::vector<float>> expert_weights;  // and their weights
  std::vector<int32_t> all_rows, expert_order;
  std::vector<int> expert_rank;  // a row's experts by router logit
  std::vector<GroupedJob> gate_up_jobs, down_jobs;  // mixture of experts: the grouped products
  std::vector<int32_t> ids, pos;  // token ids and positions of the pass's rows
  std::vector<int32_t> last;      // each row's last key position (AttnSeq::last)
  std::vector<AttnSeq> attn;      // the pass's sequences, for attention
  std::vector<AttnSeq> attn_local;  // the same with the sliding pool's tables
  std::vector<float> host_logits; // device backends: the head's output, downloaded to draw
  std::vector<int32_t> argmax;    // device backends: each row's argmax
  ~Scratch() {
    for (float* p : {x, xn, q, k, v, att, gate, up, logits, router, ex, ey, hid, lora_a, lora_b})
      if (p) be->free_floats(p);
  }
};

namespace {
// Blocks of the pool: from its size in positions (default: the context) or
// in bytes.
int pool_blocks(const CacheOptions& o, const LlamaConfig& c) {
  const int bt = o.block_tokens;
  if (bt < 8 || bt > 64 || bt % 8 != 0)
    throw std::invalid_argument("kv_block_tokens must be a multiple of 8 up to 64, got " +
                                std::to_string(bt));
  if (o.tokens < 0 || o.bytes < 0)
    throw std::invalid_argument("kv_cache_tokens and kv_cache_bytes must be positive");
  if (o.tokens > 0 && o.bytes > 0)
    throw std::invalid_argument("give kv_cache_tokens or kv_cache_bytes, not both");
  int64_t blocks;
  if (o.bytes > 0) {
    const int64_t per_block = (int64_t)KVCache::position_bytes(c.n_head_kv, c.head_dim, o.type) *
                              2 * c.n_layer * bt;
    blocks = o.bytes / per_block;
    if (blocks < 1)
      throw std::invalid_argument("kv_cache_bytes=" + std::to_string(o.bytes) +
                                  " holds less than one block of " + std::to_string(bt) +
                                  " positions (" + std::to_string(per_block) + " bytes)");
  } else {
    const int64_t tokens = o.tokens > 0 ? o.tokens : c.n_ctx;
    blocks = (tokens + bt - 1) / bt;
  }
  if (blocks > (1 << 24)) throw std::invalid_argument("the KV cache is too large");
  return (int)blocks;
}
}  // namespace

LlamaModel::LlamaModel(const LlamaConfig& cfg, LlamaWeights weights,
                       std::unique_ptr<Backend> backend, const CacheOptions& cache)
    : cfg_(cfg),
      w_(std::move(weights)),
      backend_(std::move(backend)),
      kv_(cfg.n_layer, cfg.n_head_kv, cfg.head_dim, cache.block_tokens, pool_blocks(cache, cfg),
          cache.type, cache.prefix_caching, backend_->pool_memory(), cfg.sliding, cfg.window) {
  const auto& c = cfg_;
  if (c.n_head <= 0 || c.n_head_kv <= 0 || c.n_head % c.n_head_kv != 0)
    throw std::invalid_argument("n_head must be a positive multiple of n_head_kv");
  if (c.rope.n_rot <= 0 || c.rope.n_rot > c.head_dim || c.rope.n_rot % 2 != 0)
    throw std::invalid_argument("rope dimension must be even and at most head_dim");
  if ((int)w_.layers.size() != c.n_layer) throw std::invalid_argument("layer count mismatch");
  check_view(w_.tok_embd, c.n_vocab, c.n_embd, "tok_embd");
  check_view(w_.output, c.n_vocab, c.n_embd, "output");
  const int64_t qd = (int64_t)c.n_head * c.head_dim, kvd = (int64_t)c.n_head_kv * c.head_dim;
  for (int i = 0; i < c.n_layer; ++i) {
    const auto& L = w_.layers[i];
    const std::string p = "layers." + std::to_string(i) + ".";
    check_view(L.wq, qd, c.n_embd, p + "wq");
    check_view(L.wk, kvd, c.n_embd, p + "wk");
    check_view(L.wv, kvd, c.n_embd, p + "wv");
    check_view(L.wo, c.n_embd, qd, p + "wo");
    if (c.n_expert > 0) {
      check_view(L.router, c.n_expert, c.n_embd, p + "router");
      if ((int)L.e_gate.size() != c.n_expert || (int)L.e_up.size() != c.n_expert ||
          (int)L.e_down.size() != c.n_expert)
        throw std::invalid_argument(p + "experts: expected " + std::to_string(c.n_expert));
      for (int e = 0; e < c.n_expert; ++e) {
        check_view(L.e_gate[e], c.n_ff_exp, c.n_embd, p + "e_gate");
        check_view(L.e_up[e], c.n_ff_exp, c.n_embd, p + "e_up");
        check_view(L.e_down[e], c.n_embd, c.n_ff_exp, p + "e_down");
      }
      if (c.n_ff_shexp > 0) {
        check_view(L.s_gate_inp, 1, c.n_embd, p + "s_gate_inp");
        check_view(L.s_gate, c.n_ff_shexp, c.n_embd, p + "s_gate");
        check_view(L.s_up, c.n_ff_shexp, c.n_embd, p + "s_up");
        check_view(L.s_down, c.n_embd, c.n_ff_shexp, p + "s_down");
      }
    } else {
      check_view(L.w_gate, c.n_ff, c.n_embd, p + "w_gate");
      check_view(L.w_up, c.n_ff, c.n_embd, p + "w_up");
      check_view(L.w_down, c.n_embd, c.n_ff, p + "w_down");
    }
    if (!L.attn_norm || !L.ffn_norm) throw std::invalid_argument(p + "norm weights missing");
  }
  if (!w_.output_norm) throw std::invalid_argument("output_norm missing");
  if (c.rope_swa.n_rot != c.rope.n_rot || c.rope_swa.neox != c.rope.neox)
    throw std::invalid_argument("the sliding layers' RoPE must rotate the same dimensions");
  if (c.n_expert < 0 || c.n_expert > 256 ||
      (c.n_expert > 0 && (c.n_expert_used < 1 || c.n_expert_used > c.n_expert)))
    throw std::invalid_argument("expert counts: " + std::to_string(c.n_expert_used) + " used of " +
                                std::to_string(c.n_expert));

  // Matmul weights in the backend's preferred layout. The token embedding is
  // left as stored for row lookups; a tied output head gets its own copy when
  // the backend wants another layout (the lookups then touch only the rows
  // they need). On the host, the experts are prepared when first chosen
  // (prepare_expert): memory grows with the experts a workload touches, not
  // with all of them.
  for (auto& L : w_.layers) {
    for (WeightView* v : {&L.wq, &L.wk, &L.wv, &L.wo, &L.w_gate, &L.w_up, &L.w_down, &L.router,
                          &L.s_gate_inp, &L.s_gate, &L.s_up, &L.s_down})
      if (!v->empty()) prepare(*v);
  }
  if (c.n_expert > 0) {
    expert_ready_.assign((size_t)c.n_layer * c.n_expert, 0);
    if (!backend_->host_memory())  // a device holds every expert from the start
      for (int l = 0; l < c.n_layer; ++l)
        for (int e = 0; e < c.n_expert; ++e) prepare_expert(l, e);
  }
  prepare(w_.output, true);
}

void LlamaModel::prepare(WeightView& v, bool head) {
  const WeightView p = head ? backend_->prepare_head(v) : backend_->prepare_weight(v);
  if (p.data != v.data) {
    replaced_.push_back(v.data);
    page_out(v.data, v.nbytes());  // the source's pages go now, not after the whole load
  }
  v = p;
}

void LlamaModel::prepare_expert(int layer, int e) {
  uint8_t& ready = expert_ready_[(size_t)layer * cfg_.n_expert + e];
  if (ready) return;
  LayerWeights& L = w_.layers[layer];
  for (auto* ex : {&L.e_gate, &L.e_up, &L.e_down}) prepare((*ex)[e]);
  ready = 1;
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
  s->hid = backend_->alloc_floats((size_t)n * c.n_embd);
  // a mixture of experts gathers each row once for each of its K experts
  const size_t ff = std::max({c.n_ff, c.n_expert > 0 ? c.n_ff_exp : 0, c.n_ff_shexp});
  const size_t pairs = (size_t)n * std::max(1, c.n_expert_used);
  const size_t rows_ff = std::max((size_t)n * ff, pairs * c.n_ff_exp);
  s->gate = backend_->alloc_floats(rows_ff);
  s->up = backend_->alloc_floats(rows_ff);
  if (c.n_expert > 0) {
    s->router = backend_->alloc_floats((size_t)n * (c.n_expert + 1));  // + the shared gate
    s->ex = backend_->alloc_floats(pairs * c.n_embd);
    s->ey = backend_->alloc_floats(pairs * c.n_embd);
  }
  s_ = std::move(s);
}

int LlamaModel::add_adapter(std::vector<std::tuple<int, int, LoraPair>> pairs) {
  const auto& c = cfg_;
  if (c.n_expert > 0)
    throw std::invalid_argument("LoRA adapters on mixture-of-experts models are not supported");
  const int64_t qd = (int64_t)c.n_head * c.head_dim, kvd = (int64_t)c.n_head_kv * c.head_dim;
  // (rows, cols) of each target's weight
  const int64_t shape[kLoraTargets][2] = {{qd, c.n_embd}, {kvd, c.n_embd}, {kvd, c.n_embd},
                                          {c.n_embd, qd}, {c.n_ff, c.n_embd}, {c.n_ff, c.n_embd},
                                          {c.n_embd, c.n_ff}};
  std::vector<LoraPair> table((size_t)c.n_layer * kLoraTargets);
  int rank = 0;
  for (auto& [layer, target, p] : pairs) {
    if (layer < 0 || layer >= c.n_layer || target < 0 || target >= kLoraTargets)
      throw std::invalid_argument("LoRA: layer " + std::to_string(layer) + " / target " +
                                  std::to_string(target) + " is outside the model");
    const int64_t rows = shape[target][0], cols = shape[target][1];
    const int64_t r = p.a.rows;
    const bool f16 = p.a.type == DType::F16;
    const size_t es = f16 ? 2 : 4;  // bytes a value
    if (r <= 0 || p.a.cols != cols || p.b.rows != rows || p.b.cols != r ||
        (p.a.type != DType::F32 && !f16) || p.b.type != p.a.type ||
        p.a_bytes.size() != (size_t)(r * cols) * es || p.b_bytes.size() != (size_t)(rows * r) * es)
      throw std::invalid_argument("LoRA: layer " + std::to_string(layer) + " target " +
                                  std::to_string(target) + ": A must be (rank, " +
                                  std::to_string(cols) + ") and B (" + std::to_string(rows) +
                                  ", rank), both float32 or both float16");
    LoraPair& q = table[(size_t)layer * kLoraTargets + target];
    q = std::move(p);
    q.a.data = q.a_bytes.data();
    q.b.data = q.b_bytes.data();
    q.a = backend_->prepare_weight(q.a);  // a device copy where the backend has its own memory
    q.b = backend_->prepare_weight(q.b);
    rank = std::max<int>(rank, (int)r);
  }
  adapters_.push_back(std::move(table));
  lora_rank_ = std::max(lora_rank_, rank);
  backend_->forget_graphs();
  return (int)adapters_.size();
}

// A piece of one entry of a batched forward: n tokens at positions
// [pos0, pos0 + n) of the sequence whose block table is `table`; rows from
// first_logit on need logits (first_logit == n: none). Their logits go to
// `logits`, or, when the entry has samplers, the draws from its last row go
// to `drawn` (and `logprobs`).
struct LlamaModel::Segment {
  const int* table;
  const int* local;  // the sliding pool's table (null without sliding layers)
  const int32_t* tokens;
  int n, pos0, first_logit;
  const BatchEntry* entry;
  float* logits;
  int32_t* drawn;
  TopLogprobs* logprobs;
  float* hidden;  // its rows' final hidden states (host memory), or null
  const float* embeds;  // the rows of its token ids >= n_vocab, in order
  int wanted() const { return n - first_logit; }
};

int64_t LlamaModel::embed_rows(const int32_t* tokens, int n) const {
  int64_t m = 0;
  for (int t = 0; t < n; ++t) m += tokens[t] >= cfg_.n_vocab;
  return m;
}

int64_t LlamaModel::logit_rows(const BatchEntry* entries, int count) {
  int64_t rows = 0;
  for (int i = 0; i < count; ++i)
    if (entries[i].n_samplers == 0)
      rows += entries[i].logits == BatchEntry::kAll ? entries[i].n
              : entries[i].logits == BatchEntry::kLast ? 1 : 0;
  return rows;
}

int64_t LlamaModel::draws(const BatchEntry* entries, int count) {
  int64_t n = 0;
  for (int i = 0; i < count; ++i) n += entries[i].n_samplers;
  return n;
}

// Rows of the entry's piece starting at `done`: kChunk at most, and, where
// a run of embedding rows sees itself whole, cut before such a run rather
// than inside it (its keys must all be in the cache when it attends).
int LlamaModel::chunk_length(const BatchEntry& e, int done) const {
  const int m = std::min(kChunk, e.n - done);
  if (!cfg_.embeds_bidirectional || !e.embeds || done + m == e.n) return m;
  const int V = cfg_.n_vocab;
  if (e.tokens[done + m - 1] < V || e.tokens[done + m] < V) return m;
  int start = done + m - 1;
  while (start > done && e.tokens[start - 1] >= V) --start;
  if (start == done)
    throw std::invalid_argument("forward: a run of more than " + std::to_string(kChunk) +
                                " embedding rows (an image's tokens) cannot attend as one");
  return start - done;
}

void LlamaModel::forward_batch(const BatchEntry* entries, int count, const BatchOutput& out) {
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
      if (e.tokens[t] < 0 || (e.tokens[t] >= cfg_.n_vocab && !e.embeds))
        throw std::out_of_range("token id " + std::to_string(e.tokens[t]) + " at index " +
                                std::to_string(t) + " is outside the vocabulary (size " +
                                std::to_string(cfg_.n_vocab) + ")" + which());
    if (e.n_samplers < 0 || (e.n_samplers > 0 && (e.logits != BatchEntry::kLast || !e.samplers)))
      throw std::invalid_argument("forward: samplers draw from the last row only" + which());
    for (int j = 0; j < e.n_samplers; ++j)
      if (!e.samplers[j] || e.samplers[j]->n_vocab() != cfg_.n_vocab)
        throw std::invalid_argument("forward: a sampler for another vocabulary size" + which());
  }
  if (!out.logits && logit_rows(entries, count) > 0)
    throw std::invalid_argument("forward: logits wanted but no buffer given");
  if (!out.tokens && draws(entries, count) > 0)
    throw std::invalid_argument("forward: draws wanted but no buffer given");
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
    float* lg = out.logits;
    int32_t* drawn = out.tokens;
    TopLogprobs* lps = out.logprobs;
    for (int i = 0; i < count; ++i) {
      const BatchEntry& e = entries[i];
      const int* table = kv_.table(e.seq).data();
      const int* local = kv_.has_sliding() ? kv_.sliding_table(e.seq).data() : nullptr;
      const float* embeds = e.embeds;
      for (int done = 0, m; done < e.n; done += m) {
        m = chunk_length(e, done);
        const int first = e.logits == BatchEntry::kAll                        ? 0
                          : e.logits == BatchEntry::kLast && done + m == e.n ? m - 1
                                                                               : m;
        segs.push_back({table, local, e.tokens + done, m, past[i] + done, first, &e, lg, drawn, lps,
                        e.hidden ? e.hidden + (size_t)done * cfg_.n_embd : nullptr, embeds});
        if (e.n_samplers == 0 && lg) lg += (size_t)(m - first) * cfg_.n_vocab;
        if (embeds) embeds += (size_t)embed_rows(e.tokens + done, m) * cfg_.n_embd;
      }
      drawn += e.n_samplers;
      if (lps) lps += e.n_samplers;
    }
    const int cap = kChunk + count - 1;
    for (size_t i = 0; i < segs.size();) {
      size_t j = i;
      int rows = 0;
      while (j < segs.size() && (j == i || rows + segs[j].n <= cap)) rows += segs[j++].n;
      forward_pass(segs.data() + i, (int)(j - i));
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

int LlamaModel::decode(const DecodeEntry* entries, int count, int max_steps, int32_t* tokens,
                       TopLogprobs* logprobs) {
  if (count <= 0 || max_steps <= 0) throw std::invalid_argument("decode: nothing to run");
  std::vector<int32_t> feed(count);
  std::vector<int> left(count), gen(count);
  for (int i = 0; i < count; ++i) {
    const DecodeEntry& e = entries[i];
    if (!e.sampler || e.budget < 1)
      throw std::invalid_argument("decode: every entry needs a sampler and a budget >= 1");
    if (e.sampler->mask_expected())  // a mask is for one draw: such samplers step singly
      throw std::invalid_argument("decode: a sampler expecting a token mask runs one step at a "
                                  "time (forward_batch)");
    feed[i] = e.token;
    left[i] = e.budget;
    gen[i] = e.n_generated;
  }
  std::fill(tokens, tokens + (size_t)count * max_steps, -1);
  std::vector<BatchEntry> batch;
  std::vector<int> which;
  std::vector<int32_t> drawn(count);
  std::vector<TopLogprobs> lps(logprobs ? count : 0);
  int steps = 0;
  for (; steps < max_steps; ++steps) {
    batch.clear();
    which.clear();
    for (int i = 0; i < count; ++i) {
      if (left[i] == 0) continue;
      BatchEntry b;
      b.seq = entries[i].seq;
      b.tokens = &feed[i];
      b.n = 1;
      b.logits = BatchEntry::kLast;
      b.samplers = &entries[i].sampler;
      b.n_samplers = 1;
      b.n_generated = gen[i];
      batch.push_back(b);
      which.push_back(i);
    }
    if (batch.empty()) break;
    BatchOutput out;
    out.tokens = drawn.data();
    out.logprobs = logprobs ? lps.data() : nullptr;
    try {
      forward_batch(batch.data(), (int)batch.size(), out);
    } catch (...) {
      if (steps == 0) throw;
      break;
    }
    for (size_t j = 0; j < which.size(); ++j) {
      const int i = which[j];
      const int32_t t = drawn[j];
      tokens[(size_t)steps * count + i] = t;
      if (logprobs) logprobs[(size_t)steps * count + i] = std::move(lps[j]);
      ++gen[i];
      --left[i];
      const auto& ends = entries[i].sampler->config().end_ids;
      if (std::find(ends.begin(), ends.end(), t) != ends.end()) left[i] = 0;
      feed[i] = t;
    }
  }
  return steps;
}

// What one forward pass runs on: its segments and rows, where the wanted
// logits go, the segments' LoRA adapters and the attention parameters.
struct LlamaModel::Pass {
  const Segment* segs;
  int count;
  int n = 0;                 // rows of the pass
  int rows = 0;              // rows whose logits are wanted
  bool drawing = false;      // some entry draws from its rows
  bool hidden = false;       // some entry wants its final hidden states
  float* direct = nullptr;   // the caller's buffer, when the head writes there
  float* head_out = nullptr; // where the head writes its rows
  bool lora = false;         // some segment's sequence has an adapter
  bool embeds = false;       // some rows are given as embeddings
  std::vector<int> adapter;  // each segment's adapter (0: none)
  AttnParams global_attn, sliding_attn;
};

// One pass over the weights for the rows of every segment, end to end.
void LlamaModel::forward_pass(const Segment* segs, int count) {
  const Pass p = begin_pass(segs, count);
  Backend& be = *backend_;
  auto body = [&] {
    be.embed(w_.tok_embd, s_->ids.data(), p.n, s_->x);  // x (n, D)
    if (cfg_.embd_scale > 0.f)  // gemma: sqrt(D)
      be.scale(s_->x, (size_t)p.n * cfg_.n_embd, cfg_.embd_scale);
    if (p.embeds) given_rows(p);
    for (int l = 0; l < cfg_.n_layer; ++l) {
      attention_block(p, l);
      ffn_block(p, l);
    }
    output_head(p);
  };
  // a pass of one-token rows (decoding) may replay a device graph, keyed by
  // its shape: the rows and which of them want logits
  if (be.graphs() && p.n == count && cfg_.n_expert == 0 && !p.hidden && !p.lora && !p.embeds) {
    std::string key(count, '0');  // a character a row: whether it wants logits
    for (int i = 0; i < count; ++i)
      if (segs[i].wanted()) key[i] = '1';
    be.run_graph(key, body);
  } else {
    body();
  }
  end_pass(p);
}

// x's rows of token ids >= n_vocab replaced by the entries' embeddings, a
// run of consecutive rows in one copy.
void LlamaModel::given_rows(const Pass& p) {
  const int D = cfg_.n_embd, V = cfg_.n_vocab;
  for (int i = 0, r = 0; i < p.count; r += p.segs[i++].n) {
    const Segment& g = p.segs[i];
    const float* src = g.embeds;
    for (int t = 0; t < g.n;) {
      if (g.tokens[t] < V) {
        ++t;
        continue;
      }
      int u = t;
      while (u < g.n && g.tokens[u] >= V) ++u;
      backend_->upload(s_->x + (size_t)(r + t) * D, src, (size_t)(u - t) * D);
      src += (size_t)(u - t) * D;
      t = u;
    }
  }
}

// The pass's token ids, positions and attention rows staged in the scratch,
// its logit destination chosen, its adapters looked up; the backend told.
LlamaModel::Pass LlamaModel::begin_pass(const Segment* segs, int count) {
  Pass p{segs, count};
  for (int i = 0; i < count; ++i) p.n += segs[i].n;
  ensure_scratch(p.n);
  Backend& be = *backend_;
  Scratch& s = *s_;
  const auto& c = cfg_;
  p.global_attn.scale = c.attn_scale > 0.f ? c.attn_scale : 1.f / std::sqrt((float)c.head_dim);
  p.global_attn.softcap = c.attn_softcap;
  p.sliding_attn = p.global_attn;
  p.sliding_attn.window = c.window;

  s.ids.resize(p.n);
  s.pos.resize(p.n);
  s.attn.resize(count);
  s.attn_local.resize(kv_.has_sliding() ? count : 0);
  s.last.resize(p.n);
  for (int i = 0, r = 0; i < count; ++i) {
    const Segment& g = segs[i];
    const int r0 = r;
    bool runs = false;  // rows that see a run of embedding rows whole
    for (int t = 0; t < g.n; ++t, ++r) {
      const bool given = g.tokens[t] >= c.n_vocab;
      s.ids[r] = given ? 0 : g.tokens[t];  // looked up, then replaced
      s.pos[r] = g.pos0 + t;
      s.last[r] = g.pos0 + t;
      p.embeds |= given;
      runs |= given && c.embeds_bidirectional;
    }
    if (runs)  // each run's rows see to its end
      for (int t = g.n - 1, end = -1; t >= 0; --t) {
        if (g.tokens[t] < c.n_vocab) end = -1;
        else if (end < 0) end = g.pos0 + t;
        if (end >= 0) s.last[r0 + t] = end;
      }
    const int32_t* last = runs ? s.last.data() + r0 : nullptr;
    s.attn[i] = AttnSeq{g.table, g.n, g.pos0, last};
    if (g.local) s.attn_local[i] = AttnSeq{g.local, g.n, g.pos0, last};
    p.hidden |= g.hidden != nullptr;
  }

  // Rows whose logits are wanted. They go straight to the caller's buffer
  // when the backend's memory is the host's and no row is drawn from;
  // otherwise to a buffer of the backend's, from which they are copied out
  // or drawn from.
  for (int i = 0; i < count; ++i) {
    if (segs[i].wanted() == 0) continue;
    p.rows += segs[i].wanted();
    if (segs[i].entry->n_samplers > 0) p.drawing = true;
    else if (!p.direct) p.direct = segs[i].logits;
  }
  p.head_out = be.host_memory() && !p.drawing ? p.direct : nullptr;
  if (p.rows > 0 && !p.head_out) {
    const size_t need = (size_t)p.rows * c.n_vocab;
    if (s.logits_cap < need) {
      be.forget_graphs();
      if (s.logits) be.free_floats(s.logits);
      s.logits = be.alloc_floats(need);
      s.logits_cap = need;
    }
    p.head_out = s.logits;
  }
  // LoRA: with any adapter, the layers run through the primitives so that
  // the adapters' products join each weight's
  p.adapter.assign(count, 0);
  for (int i = 0; i < count; ++i) {
    p.adapter[i] = kv_.adapter(segs[i].entry->seq);
    p.lora |= p.adapter[i] != 0;
  }
  be.begin_pass(kv_, s.attn.data(), kv_.has_sliding() ? s.attn_local.data() : nullptr, count,
                s.ids.data(), s.pos.data(), p.n);
  return p;
}

// x += the projection of `in` (in_cols wide) by w (plus bias, where given),
// with the adapters' products for target t; through post_norm first where
// the family has one.
void LlamaModel::residual_projection(const Pass& p, int l, const WeightView& w, LoraTarget t,
                                     const float* in, int in_cols, const float* bias,
                                     const float* post_norm) {
  Backend& be = *backend_;
  Scratch& s = *s_;
  const int D = cfg_.n_embd, n = p.n;
  if (!post_norm) {
    be.matmul_add(w, in, n, s.x, s.xn);
    if (bias) be.add_bias(s.x, bias, n, D);
    if (p.lora) lora_add(l, t, in, in_cols, s.x, D, p.segs, p.count, p.adapter);
  } else {  // gemma: x += rmsnorm(projection)
    be.matmul(w, in, n, s.xn);
    if (bias) be.add_bias(s.xn, bias, n, D);
    if (p.lora) lora_add(l, t, in, in_cols, s.xn, D, p.segs, p.count, p.adapter);
    be.rmsnorm(s.xn, post_norm, n, D, cfg_.rms_eps, s.xn);
    be.add(s.x, s.xn, (size_t)n * D);
  }
}

// Layer l's attention block: q, k, v of the normed x (with the adapters'
// products), the per-head norms, RoPE and the cache write, attention over
// each sequence's cache, and the output projection into the residual.
void LlamaModel::attention_block(const Pass& p, int l) {
  Backend& be = *backend_;
  Scratch& s = *s_;
  const auto& c = cfg_;
  const LayerWeights& L = w_.layers[l];
  const int D = c.n_embd, hd = c.head_dim, n = p.n;
  const bool sliding = kv_.sliding(l);  // the cache's flags: the config's
  // q (n, qd), k (n, kvd), v (n, kvd) of the normed x, in one pass
  const MatmulJob qkv[3] = {{&L.wq, s.q, L.bq}, {&L.wk, s.k, L.bk}, {&L.wv, s.v, L.bv}};
  if (!p.lora) {
    be.norm_matmul_many(s.x, L.attn_norm, n, D, c.rms_eps, qkv, 3, s.xn);
  } else {  // the normed x stays in xn for the adapters
    be.Backend::norm_matmul_many(s.x, L.attn_norm, n, D, c.rms_eps, qkv, 3, s.xn);
    lora_add(l, kLoraQ, s.xn, D, s.q, c.n_head * hd, p.segs, p.count, p.adapter);
    lora_add(l, kLoraK, s.xn, D, s.k, c.n_head_kv * hd, p.segs, p.count, p.adapter);
    lora_add(l, kLoraV, s.xn, D, s.v, c.n_head_kv * hd, p.segs, p.count, p.adapter);
  }
  // qwen3, gemma 3: each head of q and k RMSNormed (in place) before RoPE
  if (L.q_norm) be.rmsnorm(s.q, L.q_norm, n * c.n_head, hd, c.rms_eps, s.q);
  if (L.k_norm) be.rmsnorm(s.k, L.k_norm, n * c.n_head_kv, hd, c.rms_eps, s.k);
  // a sliding layer's keys and values are in the sliding pool
  const AttnSeq* as = sliding ? s.attn_local.data() : s.attn.data();
  be.rope_kv_write(kv_, as, p.count, l, s.q, s.k, s.v, n, c.n_head, c.n_head_kv, hd,
                   s.pos.data(), sliding ? c.rope_swa : c.rope);
  AttnParams ap = sliding ? p.sliding_attn : p.global_attn;
  ap.sinks = L.sinks;
  be.attention(kv_, as, p.count, l, s.q, c.n_head, ap, s.att);  // (n, qd)
  residual_projection(p, l, L.wo, kLoraO, s.att, c.n_head * hd, L.bo, L.post_attn_norm);
}

// Layer l's feed-forward block: act(gate) * up of the normed x (SiLU, or
// GELU for gemma; the experts' mixture where the layer has a router), then
// the down projection into the residual.
void LlamaModel::ffn_block(const Pass& p, int l) {
  Backend& be = *backend_;
  Scratch& s = *s_;
  const auto& c = cfg_;
  const LayerWeights& L = w_.layers[l];
  const int D = c.n_embd, n = p.n;
  if (!L.router.empty()) {
    be.rmsnorm(s.x, L.ffn_norm, n, D, c.rms_eps, s.xn);
    moe_ffn(l, n);
    return;
  }
  if (!p.lora && !c.gelu) {
    be.norm_gate_up(s.x, L.ffn_norm, n, D, c.rms_eps, L.w_gate, L.w_up, s.xn, s.gate, s.up);
  } else {  // the adapters' products join gate and up before the activation
    be.rmsnorm(s.x, L.ffn_norm, n, D, c.rms_eps, s.xn);
    const MatmulJob gu[2] = {{&L.w_gate, s.gate, nullptr}, {&L.w_up, s.up, nullptr}};
    be.matmul_many(gu, 2, s.xn, n);
    if (p.lora) {
      lora_add(l, kLoraGate, s.xn, D, s.gate, c.n_ff, p.segs, p.count, p.adapter);
      lora_add(l, kLoraUp, s.xn, D, s.up, c.n_ff, p.segs, p.count, p.adapter);
    }
    if (c.gelu) be.geglu(s.gate, s.up, (size_t)n * c.n_ff);
    else be.swiglu(s.gate, s.up, (size_t)n * c.n_ff);
  }
  residual_projection(p, l, L.w_down, kLoraDown, s.gate, c.n_ff, nullptr, L.post_ffn_norm);
}

// The final norm of the rows whose hidden states are wanted, and the output
// head on the rows whose logits are wanted, gathered end to end (the rows
// of one segment are consecutive already).
void LlamaModel::output_head(const Pass& p) {
  Backend& be = *backend_;
  Scratch& s = *s_;
  const auto& c = cfg_;
  const int D = c.n_embd;
  const Segment* segs = p.segs;
  for (int i = 0, r = 0; i < p.count; r += segs[i].n, ++i)
    if (segs[i].hidden)
      be.rmsnorm(s.x + (size_t)r * D, w_.output_norm, segs[i].n, D, c.rms_eps,
                 be.host_memory() ? segs[i].hidden : s.hid + (size_t)r * D);
  if (p.rows == 0) return;
  int done = 0;
  const float* src = nullptr;
  for (int i = 0, r = 0; i < p.count; r += segs[i].n, ++i) {
    const int m = segs[i].wanted();
    if (m == 0) continue;
    const float* row = s.x + (size_t)(r + segs[i].first_logit) * D;
    if (done == 0 && p.count == 1) {
      src = row;  // one segment: no copy
    } else {
      be.copy(s.att + (size_t)done * D, row, (size_t)m * D);
      src = s.att;
    }
    done += m;
  }
  // the final norm folded into the head, its activations carried precisely
  const MatmulJob head{&w_.output, p.head_out, nullptr, true};
  be.norm_matmul_many(src, w_.output_norm, p.rows, D, c.rms_eps, &head, 1, s.xn);
  if (c.final_softcap > 0.f)  // gemma 2
    be.softcap(p.head_out, (size_t)p.rows * c.n_vocab, c.final_softcap);
}

// Results out of the backend's buffers: hidden states, the logit rows not
// written in place (runs of rows that follow each other in both buffers in
// one copy), and the draws.
void LlamaModel::end_pass(const Pass& p) {
  Backend& be = *backend_;
  Scratch& s = *s_;
  const Segment* segs = p.segs;
  const int D = cfg_.n_embd;
  if (p.hidden && !be.host_memory())
    for (int i = 0, r = 0; i < p.count; r += segs[i].n, ++i)
      if (segs[i].hidden)
        be.download(segs[i].hidden, s.hid + (size_t)r * D, (size_t)segs[i].n * D);
  if (p.rows == 0 || p.head_out == p.direct) return;
  const size_t V = cfg_.n_vocab;
  float* dst = nullptr;
  const float* src = nullptr;
  size_t run = 0;
  for (int i = 0, r = 0; i < p.count; r += segs[i].wanted(), ++i) {
    const Segment& g = segs[i];
    if (g.wanted() == 0 || g.entry->n_samplers > 0) continue;
    const float* from = s.logits + (size_t)r * V;
    if (run && g.logits == dst + run * V && from == src + run * V) {
      run += g.wanted();
      continue;
    }
    if (run) be.download(dst, src, run * V);
    dst = g.logits, src = from, run = g.wanted();
  }
  if (run) be.download(dst, src, run * V);
  if (p.drawing) draw(segs, p.count, p.rows);
}

// The samplers of the pass's entries draw from their rows of s.logits. On
// the host, in parallel (each sampler is used once a pass, its row read
// only). On a device: argmax-only draws take the argmax there, the other
// chains run there too where the backend can (one id a draw comes back),
// and the rest (mirostat, log-probabilities) need their rows on the host.
void LlamaModel::draw(const Segment* segs, int count, int rows) {
  Backend& be = *backend_;
  Scratch& s = *s_;
  const int V = cfg_.n_vocab;
  enum Where { kHost, kArgmax, kDevice };
  struct Task {
    Sampler* sampler;
    const Segment* seg;
    int row, j;
    Where where;
  };
  std::vector<Task> tasks;
  const bool device = !be.host_memory();
  bool need_host = false, need_argmax = false;
  std::vector<DeviceDraw> dev;
  std::vector<LogitMod> mods;
  std::vector<int> dev_task;
  for (int i = 0, r = 0; i < count; r += segs[i].wanted(), ++i) {
    const Segment& g = segs[i];
    if (g.wanted() == 0) continue;
    for (int j = 0; j < g.entry->n_samplers; ++j) {
      Sampler* sp = g.entry->samplers[j];
      Where w = kHost;
      if (device && sp->argmax_only(g.entry->n_generated)) w = kArgmax;
      else if (device && be.can_sample() && sp->device_capable()) w = kDevice;
      tasks.push_back({sp, &g, r, j, w});
      need_argmax |= w == kArgmax;
      need_host |= w == kHost;
    }
  }
  if (device) {
    // chains on the device (their random numbers are taken only if they run)
    bool on_device = false;
    for (const Task& k : tasks)
      on_device |= k.where == kDevice;
    if (on_device) {
      std::vector<std::mt19937_64> streams;  // put back if the draws fail
      for (size_t t = 0; t < tasks.size(); ++t) {
        Task& k = tasks[t];
        if (k.where != kDevice) continue;
        const std::vector<int32_t>& hist = kv_.tokens(k.seg->entry->seq);
        streams.push_back(k.sampler->stream());
        dev.push_back(k.sampler->device_draw(hist.data(), (int)hist.size(),
                                             k.seg->entry->n_generated, mods));
        dev.back().row = k.row;
        dev_task.push_back((int)t);
      }
      std::vector<int32_t> ids(dev.size());
      auto put_back = [&] {
        for (size_t d = 0; d < dev_task.size(); ++d)
          tasks[dev_task[d]].sampler->set_stream(streams[d]);
      };
      try {
        be.sample_rows(s.logits, V, dev.data(), (int)dev.size(), mods.data(), (int)mods.size(),
                       ids.data());
      } catch (...) {
        put_back();
        throw;
      }
      for (size_t d = 0; d < ids.size(); ++d)
        if (ids[d] < 0) {
          put_back();
          throw std::invalid_argument("every token has -inf logit (or NaN logits)");
        }
      for (size_t d = 0; d < ids.size(); ++d) {
        const Task& k = tasks[dev_task[d]];
        k.seg->drawn[k.j] = ids[d];
      }
    }
    if (need_argmax) {
      s.argmax.resize(rows);
      be.argmax(s.logits, rows, V, s.argmax.data());
    }
    if (need_host) {
      s.host_logits.resize((size_t)rows * V);
      be.download(s.host_logits.data(), s.logits, (size_t)rows * V);
    }
  }
  const float* host_rows = device ? s.host_logits.data() : s.logits;
  std::exception_ptr error;
  std::mutex error_mu;
  be.host_parallel((int)tasks.size(), [&](int t) {
    const Task& k = tasks[t];
    if (k.where == kDevice) return;  // drawn above
    const BatchEntry& e = *k.seg->entry;
    try {
      int32_t tok;
      if (k.where == kArgmax) {
        tok = s.argmax[k.row];
      } else {
        const float* row = host_rows + (size_t)k.row * V;
        const std::vector<int32_t>& hist = kv_.tokens(e.seq);
        tok = k.sampler->sample(row, hist.data(), (int)hist.size(), e.n_generated);
        const int lp = k.sampler->config().logprobs;
        if (lp >= 0 && k.seg->logprobs)  // of the masked row when a constraint masked it
          k.seg->logprobs[k.j] = top_logprobs(k.sampler->drawn_from(row), V, tok, lp);
      }
      k.seg->drawn[k.j] = tok;
    } catch (...) {
      std::lock_guard<std::mutex> lk(error_mu);
      if (!error) error = std::current_exception();
    }
  });
  if (error) std::rethrow_exception(error);
}

// Mixture of experts: the router's logits pick each token's n_expert_used
// best experts (ties to the lower index), weighted by the softmax over the
// chosen ones; tokens are grouped by expert so that each expert's weights
// are read once for all its tokens, and each result is added to x.
void LlamaModel::moe_ffn(int layer, int n) {
  const LayerWeights& L = w_.layers[layer];
  Backend& be = *backend_;
  Scratch& s = *s_;
  const auto& c = cfg_;
  const int E = c.n_expert, K = c.n_expert_used;
  be.matmul(L.router, s.xn, n, s.router);  // (n, E)
  if (L.router_b) be.add_bias(s.router, L.router_b, n, E);
  const float* R = s.router;
  if (!be.host_memory()) {
    s.router_host.resize((size_t)n * E);
    be.download(s.router_host.data(), s.router, (size_t)n * E);
    R = s.router_host.data();
  }
  // each expert's rows and their weights: the softmax over every expert of
  // the K largest logits, renormalised over those K or not
  std::vector<std::vector<int32_t>>& rows = s.expert_rows;
  std::vector<std::vector<float>>& weights = s.expert_weights;
  rows.resize(E);
  weights.resize(E);
  for (int e = 0; e < E; ++e) rows[e].clear(), weights[e].clear();
  std::vector<int>& order = s.expert_rank;
  order.resize(E);
  for (int t = 0; t < n; ++t) {
    const float* r = R + (size_t)t * E;
    for (int e = 0; e < E; ++e) order[e] = e;
    std::partial_sort(order.begin(), order.begin() + K, order.end(),
                      [r](int a, int b) { return r[a] > r[b] || (r[a] == r[b] && a < b); });
    const float mx = r[order[0]];
    double sum = 0.0;
    if (c.expert_norm) {
      for (int k = 0; k < K; ++k) sum += std::exp((double)(r[order[k]] - mx));
    } else {
      for (int e = 0; e < E; ++e) sum += std::exp((double)(r[e] - mx));
    }
    for (int k = 0; k < K; ++k) {
      rows[order[k]].push_back(t);
      weights[order[k]].push_back((float)(std::exp((double)(r[order[k]] - mx)) / sum));
    }
  }
  run_experts(layer, n, rows, weights);
  if (c.n_ff_shexp > 0) shared_expert(L, n);
}

// The chosen experts of the pass's rows: the rows gathered in expert order
// (a row once for each of its experts), each expert's gate and up products
// over its rows, one SwiGLU, its down products, and the results added back
// to each row with its weight. The products of all experts run as grouped
// passes (one dispatch each on the CPU): each chosen expert's weights are
// read once for all the rows that chose it, the others not at all.
void LlamaModel::run_experts(int layer, int n, const std::vector<std::vector<int32_t>>& rows,
                             const std::vector<std::vector<float>>& weights) {
  const LayerWeights& L = w_.layers[layer];
  Backend& be = *backend_;
  Scratch& s = *s_;
  const int E = cfg_.n_expert, D = cfg_.n_embd, F = cfg_.n_ff_exp;
  std::vector<int32_t>& order = s.expert_order;  // the pass's row of each gathered row
  order.clear();
  std::vector<GroupedJob>& gu = s.gate_up_jobs;
  std::vector<GroupedJob>& down = s.down_jobs;
  gu.clear();
  down.clear();
  for (int e = 0; e < E; ++e) {
    const int m = (int)rows[e].size();
    if (m == 0) continue;
    prepare_expert(layer, e);
    const int r0 = (int)order.size();
    order.insert(order.end(), rows[e].begin(), rows[e].end());
    gu.push_back({&L.e_gate[e], s.gate + (size_t)r0 * F, r0, m});
    gu.push_back({&L.e_up[e], s.up + (size_t)r0 * F, r0, m});
    down.push_back({&L.e_down[e], s.ey + (size_t)r0 * D, r0, m});
  }
  const int pairs = (int)order.size();
  be.gather_rows(s.ex, s.xn, order.data(), pairs, D);
  be.matmul_grouped(gu.data(), (int)gu.size(), s.ex, D);
  if (L.e_gate_b || L.e_up_b)  // gpt-oss: each expert's biases on its rows
    for (const GroupedJob& j : down) {
      const size_t e = (size_t)(j.w - L.e_down.data());
      if (L.e_gate_b) be.add_bias(s.gate + (size_t)j.row0 * F, L.e_gate_b + e * F, j.n, F);
      if (L.e_up_b) be.add_bias(s.up + (size_t)j.row0 * F, L.e_up_b + e * F, j.n, F);
    }
  if (cfg_.swiglu_limit > 0.f)
    be.swiglu_clamped(s.gate, s.up, (size_t)pairs * F, cfg_.swiglu_alpha, cfg_.swiglu_limit);
  else
    be.swiglu(s.gate, s.up, (size_t)pairs * F);
  be.matmul_grouped(down.data(), (int)down.size(), s.gate, F);
  if (L.e_down_b)
    for (const GroupedJob& j : down) {
      const size_t e = (size_t)(j.w - L.e_down.data());
      be.add_bias(s.ey + (size_t)j.row0 * D, L.e_down_b + e * D, j.n, D);
    }
  // each expert's rows back, in expert order (a row's experts add in turn)
  for (const GroupedJob& j : down) {
    const int e = (int)(j.w - L.e_down.data());
    be.scatter_add_rows(s.x, s.ey + (size_t)j.row0 * D, rows[e].data(), weights[e].data(), j.n, D);
  }
}

void LlamaModel::shared_expert(const LayerWeights& L, int n) {
  Backend& be = *backend_;
  Scratch& s = *s_;
  const auto& c = cfg_;
  const int D = c.n_embd, F = c.n_ff_shexp;
  // its gate: sigmoid(s_gate_inp . xn) per row, on the host
  be.matmul(L.s_gate_inp, s.xn, n, s.router);  // (n, 1)
  std::vector<float>& g = s.router_host;
  g.resize(n);
  if (be.host_memory()) std::copy(s.router, s.router + n, g.begin());
  else be.download(g.data(), s.router, (size_t)n);
  for (float& v : g) v = 1.f / (1.f + std::exp(-v));
  std::vector<int32_t>& ident = s.all_rows;  // rows 0 .. n-1
  ident.resize(n);
  for (int i = 0; i < n; ++i) ident[i] = i;
  const MatmulJob gu[2] = {{&L.s_gate, s.gate}, {&L.s_up, s.up}};
  be.matmul_many(gu, 2, s.xn, n);
  be.swiglu(s.gate, s.up, (size_t)n * F);
  be.matmul(L.s_down, s.gate, n, s.ey);
  be.scatter_add_rows(s.x, s.ey, ident.data(), g.data(), n, D);
}

// ---- LoRA ----------------------------------------------------------------------------

void LlamaModel::lora_add(int layer, LoraTarget t, const float* x, int cols, float* y, int out,
                          const Segment* segs, int count, const std::vector<int>& adapter) {
  Backend& be = *backend_;
  Scratch& s = *s_;
  const auto& c = cfg_;
  const int widest = std::max({c.n_embd, c.n_ff, c.n_head * c.head_dim});
  for (int i = 0, r0 = 0; i < count; r0 += segs[i].n, ++i) {
    const int a = adapter[i];
    if (a == 0) continue;
    const LoraPair& p = adapters_[a - 1][(size_t)layer * kLoraTargets + t];
    if (p.a.empty()) continue;
    const int m = segs[i].n;
    if (!s.lora_a || s.lora_cap < m || s.lora_rank < lora_rank_) {  // the pass's rows, every rank
      if (s.lora_a) be.free_floats(s.lora_a);
      if (s.lora_b) be.free_floats(s.lora_b);
      s.lora_a = s.lora_b = nullptr;
      s.lora_a = be.alloc_floats((size_t)s.cap * lora_rank_);
      s.lora_b = be.alloc_floats((size_t)s.cap * widest);
      s.lora_cap = s.cap;
      s.lora_rank = lora_rank_;
    }
    be.matmul_small(p.a, x + (size_t)r0 * cols, m, s.lora_a);  // (m, rank)
    be.matmul_small(p.b, s.lora_a, m, s.lora_b);               // (m, out)
    be.add(y + (size_t)r0 * out, s.lora_b, (size_t)m * out);
  }
}

}  // namespace llmrt
