// CPU implementations of the backend operations, one file per family:
// matmul.cpp, attention.cpp, elementwise.cpp. Shapes as in core/backend.h.
#pragma once

#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <memory>
#include <vector>

#include "core/backend.h"
#include "core/kv_cache.h"
#include "core/tensor.h"
#include "core/threadpool.h"
#include "cpu/arch/kernels.h"

namespace llmrt::cpu {

// ---- matmul.cpp ----
void embed(ThreadPool& pool, const Kernels& k, const WeightView& table, const int32_t* ids,
           int n, float* out);
// Quantized activations of a batch, grown as needed and reused across calls.
struct ActBuffer {
  std::vector<int8_t> qs;
  std::vector<float> d, s;
  std::vector<float> y2;  // a precise product's two partial outputs
  std::vector<int64_t> group_start;  // matmul_grouped: each job's first weight row in the pass
  std::vector<int16_t> q16;  // activations for the 14-bit integer panels (Kernels::quantize_i16)
  std::vector<float> s16;
};

// y_i (n, W_i.rows) = x (n, cols) @ W_i^T for each job, in one parallel pass.
// With int8 set, integer-dot types use x quantized once into `act` and the
// int8 kernels; otherwise (and for the float types) weights are widened to
// float and multiplied with float FMA. With invariant set, one token (n ==
// 1) goes through the same kernels and summation order as several, so a
// row's result never depends on how many tokens share the call (a little
// slower for one token: the matrix-vector kernels sum in another order).
// A job marked precise (alone in its call) carries each token's activations
// as two rows of 8-bit blocks, the second the rounding of the first: about
// 15 bits a value, for the output head.
void matmul_many(ThreadPool& pool, const Kernels& k, const MatmulJob* jobs, int count,
                 const float* x, int n, ActBuffer& act, bool int8, bool invariant = false);
void matmul_grouped(ThreadPool& pool, const Kernels& k, const GroupedJob* jobs, int count,
                    const float* x, int n, int cols, ActBuffer& act, bool int8, bool invariant);
inline void matmul(ThreadPool& pool, const Kernels& k, const WeightView& w, const float* x, int n,
                   float* y, ActBuffer& act, bool int8 = true, bool invariant = false) {
  const MatmulJob job{&w, y};
  matmul_many(pool, k, &job, 1, x, n, act, int8, invariant);
}

// Storage of repacked weights, 64-byte aligned, so the kernels' vector loads
// meet cache lines the same way in every run (malloc gives 16 bytes).
struct AlignedFree {
  void operator()(uint8_t* p) const { std::free(p); }
};
using PackedBytes = std::unique_ptr<uint8_t[], AlignedFree>;

// ---- repack.cpp ----
// Whether w can take a faster repacked layout (Q8_0, the K-quants, Q4_0 / Q4_1
// with an even block count).
bool can_repack(const WeightView& w);
// A repacked copy of w (Q4_0R / Q4_1R / Q8_0R / Q4_KR / Q5_KR / Q6_KR / MXFP4R) in
// `storage`.
WeightView repack(ThreadPool& pool, const WeightView& w, PackedBytes& storage);
// w (F16) with its rows also as the float product's panels of halves
// (WeightView::panels) in storage; the rows stay as they are.
WeightView keep_panels(ThreadPool& pool, const WeightView& w, PackedBytes& storage);
// w (F16) with its rows also as 14-bit integer panels (WeightView::ipanels,
// Kernels::gemm_i16p's layout) in storage, for products with 8-bit
// activations' mode; the rows stay as they are.
WeightView keep_i16_panels(ThreadPool& pool, const Kernels& k, const WeightView& w,
                           PackedBytes& storage);

// ---- attention.cpp ----
// Stores k, v (n, kvd) at positions [pos0, pos0 + n) of a sequence whose
// block table is `table`.
void kv_write(const Kernels& k, KVCache& cache, const int* table, int layer, int pos0, int n,
              const float* kx, const float* vx);
// Buffers of attention(), reused across calls.
// How one sequence's rows are split into tasks.
// One sequence's share of an attention call.
struct AttnPlan {
  int n, pos0, nb, ranges;   // rows, first position, cache blocks, key ranges
  int range0;                // a decode row's first range (the window's)
  const int32_t* last;       // AttnSeq::last
  size_t row0, ptr0, part0;  // first row, first block pointer, first partial row
  int64_t task0, tasks;
};
struct AttnScratch {
  std::vector<const uint8_t*> kp, vp;  // block pointers per sequence and kv head
  // split-KV partials of decode rows: unnormalised outputs, running max, sum
  std::vector<float> part_out, part_max, part_sum;
  std::vector<AttnPlan> plans;
  std::vector<int> task_seq;           // sequence of each task
  std::vector<int> decode;             // the one-row sequences
};
void attention(ThreadPool& pool, const Kernels& k, const KVCache& cache, const AttnSeq* seqs,
               int count, int layer, const float* q, int n_heads, const AttnParams& p,
               float* out, AttnScratch& scr);

// The same for sequences of their own lengths end to end (attention_ragged).
void attention_ragged(ThreadPool& pool, const Kernels& k, const float* q, const float* kx,
                      const float* v, const int32_t* starts, int n_seq, int n_heads, int hd,
                      float scale, float* out);
// Bidirectional attention without a cache (core/backend.h attention_dense).
void attention_dense(ThreadPool& pool, const Kernels& k, const float* q, const float* kx,
                     const float* v, int n_seq, int T, int n_heads, int hd, float scale,
                     float* out);

// ---- elementwise.cpp ----
void layernorm(ThreadPool& pool, const Kernels& k, const float* x, const float* w, const float* b, int n, int dim,
               float eps, float* y);
void gelu(ThreadPool& pool, const Kernels& k, float* x, size_t count);
// x Phi(x), the exact GELU (std::erf; BERT's activation).
void gelu_erf(ThreadPool& pool, const Kernels& k, float* x, size_t count);
void rmsnorm(ThreadPool& pool, const Kernels& k, const float* x, const float* w, int n, int dim,
             float eps, float* y);
void add_bias(ThreadPool& pool, float* y, const float* bias, int n, int dim);
void add(ThreadPool& pool, float* y, const float* x, size_t count);
// x = LayerNorm(x + (t + bias)) and x = gelu_erf(x + bias), a row at a time
// (bias may be null): the results of add_bias, add and layernorm / gelu_erf
// in turn, in one pass over memory.
void add_layernorm(ThreadPool& pool, const Kernels& k, float* x, const float* t, const float* bias,
                   const float* w, const float* b, int n, int dim, float eps);
void bias_gelu_erf(ThreadPool& pool, const Kernels& k, float* x, const float* bias, int n, int dim);
void swiglu(ThreadPool& pool, const Kernels& k, float* gate, const float* up, size_t count);
void geglu(ThreadPool& pool, const Kernels& k, float* gate, const float* up, size_t count);
void swiglu_clamped(ThreadPool& pool, float* gate, const float* up, size_t count, float alpha,
                    float limit);
// cos / sin tables of a chunk's positions, kept between the layers' calls:
// two sets of parameters (gemma 3's local and global layers alternate).
struct RopeTable {
  struct Entry {
    std::vector<int32_t> pos;
    int half = -1;
    float base = 0.f, scale = 0.f, mscale = 0.f;
    const float* factors = nullptr;
    std::vector<float> cs, sn;
  };
  Entry e[2];
  int last = 0;  // the entry used last
};
void rope(ThreadPool& pool, float* x, int n, int n_heads, int head_dim, const int32_t* pos,
          const RopeParams& p, RopeTable& cache);

}  // namespace llmrt::cpu
