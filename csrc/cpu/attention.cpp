// Causal GQA attention over the KV cache: the fused kernels are in
// arch/attention_kernels.inc; this file splits the work.
#include <algorithm>
#include <cmath>
#include <cstring>
#include <limits>
#include <stdexcept>
#include <vector>

#include "cpu/ops.h"

namespace llmrt::cpu {

void kv_write(KVCache& cache, int layer, int pos0, int n, const float* k, const float* v) {
  const size_t row = cache.row_size();
  std::memcpy(cache.k(layer, pos0), k, (size_t)n * row * sizeof(float));
  std::memcpy(cache.v(layer, pos0), v, (size_t)n * row * sizeof(float));
}

// q (n, n_heads, hd) -> out (n, n_heads, hd)
//
// Work is split so that query rows sharing a kv head run together, reading
// each key and value once for all of them: one task per (kv head, block of
// kTokens tokens) with the GQA group's heads (one token when decoding).
void attention(ThreadPool& pool, const Kernels& k, const KVCache& cache, int layer,
               const float* q, int n, int pos0, int n_heads, float scale, float* out) {
  const int hd = cache.head_dim();
  const int n_kv = cache.n_kv_heads();
  const int group = n_heads / n_kv;
  const int64_t kv_stride = (int64_t)cache.row_size();
  constexpr int kTokens = 8;
  constexpr int kMaxRows = 8 * 64;  // query rows of one task: tokens x GQA group
  const int tokens_per_task = n == 1 ? 1 : kTokens;
  const int heads_per_task = group;
  const int64_t token_blocks = (n + tokens_per_task - 1) / tokens_per_task;
  const int64_t head_blocks = n_heads / heads_per_task;
  if ((int64_t)tokens_per_task * heads_per_task > kMaxRows)
    throw std::invalid_argument("attention: GQA group too large");
  // One task per (token block, head block), handed out latest tokens first:
  // causal rows get longer with the position, so the big tasks go first and
  // the small ones even out the threads at the end.
  const int64_t n_tasks = token_blocks * head_blocks;
  pool.run((int)n_tasks, [&](int task_index) {
    const int64_t task = n_tasks - 1 - task_index;
    const float* qr[kMaxRows];
    float* orow[kMaxRows];
    int nk[kMaxRows];
    const int t0 = (int)(task / head_blocks) * tokens_per_task;
    const int h0 = (int)(task % head_blocks) * heads_per_task;
    const int t1 = std::min(n, t0 + tokens_per_task);
    int rows = 0;
    for (int t = t0; t < t1; ++t)
      for (int h = h0; h < h0 + heads_per_task; ++h, ++rows) {
        qr[rows] = q + ((size_t)t * n_heads + h) * hd;
        orow[rows] = out + ((size_t)t * n_heads + h) * hd;
        nk[rows] = pos0 + t + 1;  // causal: keys at positions <= the query's
      }
    const int kvh = h0 / group;
    AttnBlock a{qr, orow, nk, rows, cache.k(layer, 0) + (size_t)kvh * hd,
                cache.v(layer, 0) + (size_t)kvh * hd, kv_stride, hd, scale};
    k.attention_block(a);
  });
}

}  // namespace llmrt::cpu
