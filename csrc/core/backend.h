// What a device must provide to run the llama-family forward pass.
//
// The model (csrc/model) is written once against this interface; csrc/cpu and
// csrc/cuda implement it. Activations are row-major float32 matrices of n
// tokens; pointers are in the backend's own memory (host for the CPU, device
// memory for CUDA).
#pragma once

#include <cstddef>
#include <cstdint>
#include <memory>
#include <functional>
#include <stdexcept>
#include <string>

#include "core/kv_cache.h"
#include "core/sampler.h"
#include "core/tensor.h"

namespace llmrt {

struct RopeParams {
  int n_rot = 0;             // leading dims of each head that rotate
  float freq_base = 10000.f;
  float pos_scale = 1.f;     // linear RoPE scaling: position * pos_scale
  bool neox = false;         // pairs (i, i + n_rot/2) instead of (2i, 2i+1)
  const float* freq_factors = nullptr;  // optional (n_rot/2,) divisors (Llama 3.1, LongRoPE)
  float mscale = 1.f;        // cos and sin times this (LongRoPE's attention factor)
};

// One sequence's query rows in an attention call: n rows at positions
// [pos0, pos0 + n) of the sequence whose block table is `table`.
struct AttnSeq {
  const int* table;
  int n;
  int pos0;
  // optional (n,), host memory: the last key position each row sees (at
  // least its own; more for rows of an image whose tokens see each other,
  // gemma 3). Null: causal, row t sees [0, pos0 + t]. A sliding window
  // still starts from the row's own position.
  const int32_t* last = nullptr;
};

// How a layer's attention scores are formed.
struct AttnParams {
  float scale = 1.f;    // scores = q k^T * scale
  float softcap = 0.f;  // then softcap * tanh(scores / softcap) (0: none; gemma 2)
  int window = 0;       // a query at position p sees keys (p - window, p] (0: all of [0, p])
  // optional (n_heads,) logits, one per query head, that join the softmax's
  // denominator without a value (gpt-oss's attention sinks); host memory
  const float* sinks = nullptr;
};

// One output of a matmul_many call: y (n, w->rows), plus bias (w->rows,)
// when given (the fused operations add it). precise: a product whose
// activations a backend that rounds them (the CPU's 8-bit blocks) should
// carry at higher precision where it matters (the output head: its rounding
// is most of the int8 path's distance from float logits).
struct MatmulJob {
  const WeightView* w;
  float* y;
  const float* bias = nullptr;
  bool precise = false;
};

// One product of a matmul_grouped call: rows [row0, row0 + n) of x times
// w^T into y (n, w->rows).
struct GroupedJob {
  const WeightView* w;
  float* y;
  int row0;
  int n;
};

class Backend {
 public:
  virtual ~Backend() = default;
  virtual std::string name() const = 0;
  virtual int threads() const = 0;

  // Device memory for activations (float32). Freed by free_floats.
  virtual float* alloc_floats(size_t n) = 0;
  virtual void free_floats(float* p) = 0;
  // Whether alloc_floats and the KV pool are host memory (the CPU backend):
  // the model then writes logits straight to the caller's buffer.
  virtual bool host_memory() const { return true; }
  // The KV pool's memory (nullptr: host memory).
  virtual PoolMemory* pool_memory() { return nullptr; }
  // dst = src, n floats, both in backend memory.
  virtual void copy(float* dst, const float* src, size_t n) = 0;
  // host = src (backend memory), n floats; waits for the device.
  virtual void download(float* host, const float* src, size_t n) = 0;
  // dst (backend memory) = host, n floats.
  virtual void upload(float* dst, const float* host, size_t n) { copy(dst, host, n); }
  // host[r] = the first index of the largest of row r of x (rows, cols), in
  // backend memory; waits for the device. Greedy decoding without the
  // logits leaving the device.
  virtual void argmax(const float* x, int rows, int cols, int32_t* host) = 0;
  // Sampled decoding without the logits leaving the device (where
  // can_sample()): host[i] = the token draws[i] (host memory, as mods) draws
  // from its row of x (rows, cols); -1 where no token can be drawn.
  virtual bool can_sample() const { return false; }
  virtual void sample_rows(const float* x, int cols, const DeviceDraw* draws, int n,
                           const LogitMod* mods, int n_mods, int32_t* host) {
    (void)x, (void)cols, (void)draws, (void)n, (void)mods, (void)n_mods, (void)host;
    throw std::logic_error("this backend does not sample");
  }
  // Calls fn(i) for every i in [0, n) on the host, spread over the
  // backend's threads where it has a pool (host work between passes, such
  // as drawing each row's next token).
  virtual void host_parallel(int n, const std::function<void(int)>& fn) {
    for (int i = 0; i < n; ++i) fn(i);
  }

  // The view the backend wants for a matmul weight: w itself, or a copy in a
  // layout of its own (owned by the backend, alive as long as it is).
  virtual WeightView prepare_weight(const WeightView& w) { return w; }
  // The output head's weights: as prepare_weight, plus whatever its precise
  // products need (MatmulJob::precise).
  virtual WeightView prepare_head(const WeightView& w) { return prepare_weight(w); }
  // A weight read by many-token products only (an encoder's): the CPU
  // backend keeps F16 ones also in its products' own layout (twice the
  // bytes), so a call neither widens nor packs them: 14-bit integer panels
  // with 8-bit activations (16-bit integer products), else panels of halves.
  virtual WeightView prepare_panels(const WeightView& w) { return w; }

  // A forward pass begins: its rows' token ids and positions and its
  // sequences (host memory), the same for every layer's calls until the
  // next begin_pass. A device backend uploads them once here. local: the
  // same sequences with the sliding pool's tables (null when the cache has
  // no sliding layers); a sliding layer's calls get those.
  virtual void begin_pass(const KVCache& cache, const AttnSeq* seqs, const AttnSeq* local,
                          int count, const int32_t* ids, const int32_t* pos, int rows) {
    (void)cache, (void)seqs, (void)local, (void)count, (void)ids, (void)pos, (void)rows;
  }
  // Graphs captured so far hold device addresses of buffers about to be
  // freed: drop them.
  virtual void forget_graphs() {}
  // Whether run_graph may be used for passes of one-token rows.
  virtual bool graphs() const { return false; }
  // Runs fn, a pass of one-token rows, as a device graph: captured the
  // second time a pass of the same shape (`key`: its rows and which of them
  // want logits) is seen (the first runs as usual and warms every cache a
  // capture cannot fill) and replayed afterwards. Returns false when fn ran
  // directly.
  virtual bool run_graph(const std::string& key, const std::function<void()>& fn) {
    (void)key;
    fn();
    return false;
  }

  // out (n, table.cols) = rows ids[i] of the table (ids: host memory; the
  // table as stored in the file).
  virtual void embed(const WeightView& table, const int32_t* ids, int n, float* out) = 0;
  // y (n, W.rows) = x (n, W.cols) @ W^T.
  void matmul(const WeightView& w, const float* x, int n, float* y) {
    const MatmulJob job{&w, y};
    matmul_many(&job, 1, x, n);
  }
  // y = x @ W^T for a small float32 W (a LoRA adapter's A or B): a backend
  // may run it on the calling thread, where a parallel pass would cost more
  // in synchronisation than in arithmetic.
  virtual void matmul_small(const WeightView& w, const float* x, int n, float* y) {
    matmul(w, x, n, y);
  }
  // Several products of the same x (weights with equal cols, e.g. q/k/v or
  // gate/up) as one parallel pass: x is prepared once and the threads share
  // all the rows.
  virtual void matmul_many(const MatmulJob* jobs, int count, const float* x, int n) = 0;
  // Products of different weights over slices of the same x (cols wide: a
  // mixture of experts' rows grouped by expert), as one pass where the
  // backend can.
  virtual void matmul_grouped(const GroupedJob* jobs, int count, const float* x, int cols) {
    for (int i = 0; i < count; ++i)
      matmul(*jobs[i].w, x + (size_t)jobs[i].row0 * cols, jobs[i].n, jobs[i].y);
  }
  // y (n, dim) = x / rms(x) * weight, row by row. y may alias x.
  virtual void rmsnorm(const float* x, const float* weight, int n, int dim, float eps,
                       float* y) = 0;
  // y (n, dim) = (x - mean(x)) / sqrt(var(x) + eps) * weight + bias, row
  // by row (LayerNorm; weight and bias host memory, as rmsnorm's). y may
  // alias x.
  virtual void layernorm(const float* x, const float* weight, const float* bias, int n, int dim,
                         float eps, float* y) = 0;
  // x = gelu(x), GELU's tanh form, count elements.
  virtual void gelu(float* x, size_t count) = 0;
  // x = x Phi(x) = x (1 + erf(x / sqrt 2)) / 2, GELU's exact form (BERT's),
  // count elements.
  virtual void gelu_erf(float* x, size_t count) = 0;
  // Bidirectional attention without a cache (a vision encoder): n_seq
  // independent sequences of T rows each; q, k, v and out (n_seq * T,
  // n_heads * hd), row-major; per sequence and head out = softmax(q k^T *
  // scale) v over all T keys.
  virtual void attention_dense(const float* q, const float* k, const float* v, int n_seq, int T,
                               int n_heads, int hd, float scale, float* out) = 0;
  // The same for sequences of their own lengths end to end (an encoder's
  // batch of texts, padded nowhere): sequence s is rows [starts[s],
  // starts[s + 1]) (starts: host memory, n_seq + 1 entries).
  virtual void attention_ragged(const float* q, const float* k, const float* v,
                                const int32_t* starts, int n_seq, int n_heads, int hd, float scale,
                                float* out) {
    const size_t w = (size_t)n_heads * hd;
    for (int s = 0; s < n_seq; ++s) {
      const size_t r = (size_t)starts[s];
      const int T = starts[s + 1] - starts[s];
      if (T > 0) attention_dense(q + r * w, k + r * w, v + r * w, 1, T, n_heads, hd, scale, out + r * w);
    }
  }
  // y (n, dim) += bias (dim,)
  virtual void add_bias(float* y, const float* bias, int n, int dim) = 0;
  // x = LayerNorm(x + (t + bias)) row by row (an encoder's residual; bias,
  // host memory, may be null; t may be changed). One pass where fused.
  virtual void add_layernorm(float* x, float* t, const float* bias, const float* weight,
                             const float* ln_bias, int n, int dim, float eps) {
    if (bias) add_bias(t, bias, n, dim);
    add(x, t, (size_t)n * dim);
    layernorm(x, weight, ln_bias, n, dim, eps, x);
  }
  // x = gelu_erf(x + bias) row by row (bias may be null).
  virtual void bias_gelu_erf(float* x, const float* bias, int n, int dim) {
    if (bias) add_bias(x, bias, n, dim);
    gelu_erf(x, (size_t)n * dim);
  }
  // y += x, count elements.
  virtual void add(float* y, const float* x, size_t count) = 0;
  // dst row i = src row rows[i], i < count (rows: host memory).
  virtual void gather_rows(float* dst, const float* src, const int32_t* rows, int count,
                           int dim) = 0;
  // dst row rows[i] += weights[i] * src row i, i < count (rows, weights:
  // host memory; rows distinct).
  virtual void scatter_add_rows(float* dst, const float* src, const int32_t* rows,
                                const float* weights, int count, int dim) = 0;
  // gate = silu(gate) * up, count elements.
  virtual void swiglu(float* gate, const float* up, size_t count) = 0;
  // gate = gelu(gate) * up (GELU's tanh form), count elements.
  virtual void geglu(float* gate, const float* up, size_t count) = 0;
  // gate = g * sigmoid(alpha * g) * (u + 1), with g = min(gate, limit) and
  // u = up clamped to [-limit, limit] (gpt-oss's experts), count elements.
  virtual void swiglu_clamped(float* gate, const float* up, size_t count, float alpha,
                              float limit) = 0;
  // x = cap * tanh(x / cap), count elements (logit soft-capping).
  virtual void softcap(float* x, size_t count, float cap) = 0;
  // x *= s, count elements.
  virtual void scale(float* x, size_t count, float s) = 0;
  // Rotates x (n, n_heads, head_dim) in place; row t is at position pos[t]
  // (pos: host memory).
  virtual void rope(float* x, int n, int n_heads, int head_dim, const int32_t* pos,
                    const RopeParams& p) = 0;

  // ---- fused operations ----
  // Each is a sequence of the primitives above (the defaults, which the CPU
  // backend keeps: its results are those of the sequence to the bit); a
  // device backend runs them as fewer kernels.

  // xn (n, dim) = rmsnorm(x) * weight; then every job: y = xn @ W^T (+ bias).
  virtual void norm_matmul_many(const float* x, const float* weight, int n, int dim, float eps,
                                const MatmulJob* jobs, int count, float* xn) {
    rmsnorm(x, weight, n, dim, eps, xn);
    matmul_many(jobs, count, xn, n);
    for (int i = 0; i < count; ++i)
      if (jobs[i].bias) add_bias(jobs[i].y, jobs[i].bias, n, (int)jobs[i].w->rows);
  }
  // y (n, W.rows) += x (n, W.cols) @ W^T (tmp: n x W.rows floats of scratch).
  virtual void matmul_add(const WeightView& w, const float* x, int n, float* y, float* tmp) {
    matmul(w, x, n, tmp);
    add(y, tmp, (size_t)n * w.rows);
  }
  // xn = rmsnorm(x) * weight; gate (n, W.rows) = silu(xn @ Wg^T) * (xn @ Wu^T)
  // (up: scratch of the same size).
  virtual void norm_gate_up(const float* x, const float* weight, int n, int dim, float eps,
                            const WeightView& wg, const WeightView& wu, float* xn, float* gate,
                            float* up) {
    rmsnorm(x, weight, n, dim, eps, xn);
    const MatmulJob gu[2] = {{&wg, gate}, {&wu, up}};
    matmul_many(gu, 2, xn, n);
    swiglu(gate, up, (size_t)n * wg.rows);
  }
  // RoPE on q (n, n_heads, head_dim) and k (n, n_kv_heads, head_dim), then k
  // and v into the cache (as rope twice and kv_write).
  virtual void rope_kv_write(KVCache& cache, const AttnSeq* seqs, int count, int layer,
                             float* q, float* k, const float* v, int n, int n_heads,
                             int n_kv_heads, int head_dim, const int32_t* pos,
                             const RopeParams& p) {
    rope(q, n, n_heads, head_dim, pos, p);
    rope(k, n, n_kv_heads, head_dim, pos, p);
    kv_write(cache, seqs, count, layer, k, v);
  }
  // For each of `count` sequences (host memory), stores its n rows of k, v
  // (rows of all sequences end to end, (rows, n_kv_heads, head_dim)) at
  // positions [pos0, pos0 + n) of the sequence (blocks allocated).
  virtual void kv_write(KVCache& cache, const AttnSeq* seqs, int count, int layer,
                        const float* k, const float* v) = 0;
  // For each of `count` sequences (seqs and their block tables: host
  // memory), its n query rows (consecutive in q and out, sequence after
  // sequence): out (n, n_heads, head_dim) = causal softmax(q k^T * scale) v
  // (scores soft-capped where p says), reading the sequence's keys and
  // values at positions [0, pos0 + t] for its row t, or only the last
  // p.window of them (the table may then hold -1 for blocks wholly behind
  // every row's window). GQA: query head h reads kv head
  // h / (n_heads / n_kv_heads). A sequence's results do not depend on the
  // other sequences of the call.
  virtual void attention(const KVCache& cache, const AttnSeq* seqs, int count, int layer,
                         const float* q, int n_heads, const AttnParams& p, float* out) = 0;
};

}  // namespace llmrt
