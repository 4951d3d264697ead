// Causal GQA attention over the paged KV cache: the fused kernels are in
// arch/attention_kernels.inc; this file writes the cache and splits the work.
#include <algorithm>
#include <cmath>
#include <cstring>
#include <limits>
#include <stdexcept>
#include <vector>

#include "cpu/ops.h"

namespace llmrt::cpu {

namespace {

// One position's kvd values -> a cache row of the cache's type.
void write_row(const Kernels& k, KVType type, const float* x, uint8_t* dst, int kvd) {
  switch (type) {
    case KVType::F32: std::memcpy(dst, x, (size_t)kvd * sizeof(float)); break;
    case KVType::F16: k.f32_to_f16(x, reinterpret_cast<uint16_t*>(dst), kvd); break;
    case KVType::Q8_0:
      // 32-value blocks: d = max|x| / 127 (as half), q = round(x / d)
      for (int b = 0; b < kvd / 32; ++b, x += 32, dst += 34) {
        float amax = 0.f;
        for (int j = 0; j < 32; ++j) amax = std::max(amax, std::fabs(x[j]));
        const float d = amax / 127.f;
        const float id = d > 0.f ? 1.f / d : 0.f;
        uint16_t h;
        k.f32_to_f16(&d, &h, 1);
        std::memcpy(dst, &h, 2);
        for (int j = 0; j < 32; ++j) {
          const float r = std::nearbyint(x[j] * id);
          dst[2 + j] = (uint8_t)(int8_t)std::max(-127.f, std::min(127.f, r));
        }
      }
      break;
  }
}

}  // namespace

void kv_write(const Kernels& k, KVCache& cache, const int* table, int layer, int pos0, int n,
              const float* kx, const float* vx) {
  const int bt = cache.block_tokens();
  const int kvd = cache.n_kv_heads() * cache.head_dim();
  const size_t rb = cache.row_bytes();
  for (int t = 0; t < n; ++t) {
    const int pos = pos0 + t;
    const int b = table[pos / bt];
    const size_t off = (size_t)(pos % bt) * rb;
    write_row(k, cache.type(), kx + (size_t)t * kvd, cache.k_block(b, layer) + off, kvd);
    write_row(k, cache.type(), vx + (size_t)t * kvd, cache.v_block(b, layer) + off, kvd);
  }
}

// q (n, n_heads, hd) -> out (n, n_heads, hd)
//
// Work is split so that query rows sharing a kv head run together, reading
// each key and value once for all of them: one task per (kv head, block of
// kTokens tokens) with the GQA group's heads (one token when decoding). When
// that gives the threads too few tasks (decoding, short prompts), the cache
// blocks are split into ranges too (split-KV, as flash-decoding does): each
// task leaves an unnormalised partial result with its running max and sum,
// and the partials are merged at the end.
void attention(ThreadPool& pool, const Kernels& k, const KVCache& cache, const int* table,
               int layer, const float* q, int n, int pos0, int n_heads, float scale, float* out,
               AttnScratch& scr) {
  const int hd = cache.head_dim();
  const int n_kv = cache.n_kv_heads();
  const int group = n_heads / n_kv;
  const int bt = cache.block_tokens();
  constexpr int kTokens = 8;
  constexpr int kMaxRows = 8 * 64;  // query rows of one task: tokens x GQA group
  const int tokens_per_task = n == 1 ? 1 : kTokens;
  if ((int64_t)tokens_per_task * group > kMaxRows)
    throw std::invalid_argument("attention: GQA group too large");
  const int64_t token_blocks = (n + tokens_per_task - 1) / tokens_per_task;
  const int64_t base_tasks = token_blocks * n_kv;
  const int nb = (pos0 + n + bt - 1) / bt;  // cache blocks the last row reads

  // block pointers of each kv head, [kvh][block]
  const size_t head_off = cache.row_bytes() / n_kv;
  scr.kp.resize((size_t)n_kv * nb);
  scr.vp.resize((size_t)n_kv * nb);
  for (int b = 0; b < nb; ++b) {
    const uint8_t* kb = cache.k_block(table[b], layer);
    const uint8_t* vb = cache.v_block(table[b], layer);
    for (int h = 0; h < n_kv; ++h) {
      scr.kp[(size_t)h * nb + b] = kb + h * head_off;
      scr.vp[(size_t)h * nb + b] = vb + h * head_off;
    }
  }

  // split the blocks when there are few tasks; the split depends on the
  // shapes only, never on the thread count, so every thread count gives the
  // same sums in the same order (identical results)
  constexpr int64_t want = 16;
  int splits = 1;
  if (base_tasks < want && nb > 1)
    splits = (int)std::min<int64_t>(nb, (want + base_tasks - 1) / base_tasks);
  const size_t rows_all = (size_t)n * n_heads;
  if (splits > 1) {
    scr.po.resize((size_t)splits * rows_all * hd);
    scr.pm.resize((size_t)splits * rows_all);
    scr.pl.resize((size_t)splits * rows_all);
  }

  // One task per (token block, split, kv head), latest tokens first: causal
  // rows get longer with the position, so the big tasks go first and the
  // small ones even out the threads at the end.
  const int64_t n_tasks = base_tasks * splits;
  pool.run((int)n_tasks, [&](int task_index) {
    const int64_t task = n_tasks - 1 - task_index;
    const int kvh = (int)(task % n_kv);
    const int split = (int)((task / n_kv) % splits);
    const int t0 = (int)(task / ((int64_t)n_kv * splits)) * tokens_per_task;
    const int t1 = std::min(n, t0 + tokens_per_task);
    const float* qr[kMaxRows];
    float* orow[kMaxRows];
    int nk[kMaxRows];
    int rows = 0;
    for (int t = t0; t < t1; ++t)
      for (int h = kvh * group; h < (kvh + 1) * group; ++h, ++rows) {
        const size_t r = (size_t)t * n_heads + h;
        qr[rows] = q + r * hd;
        orow[rows] = splits > 1 ? scr.po.data() + ((size_t)split * rows_all + r) * hd : out + r * hd;
        nk[rows] = pos0 + t + 1;  // causal: keys at positions <= the query's
      }
    AttnBlock a{qr, orow, nk, rows, scr.kp.data() + (size_t)kvh * nb,
                scr.vp.data() + (size_t)kvh * nb, bt, cache.row_bytes(), (int)cache.type(),
                hd, scale, 0, nb};
    float ms[kMaxRows], ls[kMaxRows];
    if (splits > 1) {
      a.b_begin = (int)((int64_t)nb * split / splits);
      a.b_end = (int)((int64_t)nb * (split + 1) / splits);
      a.m_out = ms;
      a.l_out = ls;
    }
    k.attention_block(a);
    if (splits > 1) {
      int i = 0;
      for (int t = t0; t < t1; ++t)
        for (int h = kvh * group; h < (kvh + 1) * group; ++h, ++i) {
          const size_t r = (size_t)split * rows_all + (size_t)t * n_heads + h;
          scr.pm[r] = ms[i];
          scr.pl[r] = ls[i];
        }
    }
  });
  if (splits == 1) return;

  // merge: out = sum_s e^(m_s - M) o_s / sum_s e^(m_s - M) l_s
  for (size_t r = 0; r < rows_all; ++r) {
    float M = -std::numeric_limits<float>::infinity();
    for (int s = 0; s < splits; ++s) M = std::max(M, scr.pm[s * rows_all + r]);
    float* o = out + r * hd;
    std::fill(o, o + hd, 0.f);
    float L = 0.f;
    for (int s = 0; s < splits; ++s) {
      const float m = scr.pm[s * rows_all + r];
      if (m == -std::numeric_limits<float>::infinity()) continue;  // no keys in range
      const float w = std::exp(m - M);
      L += w * scr.pl[s * rows_all + r];
      k.axpy(w, scr.po.data() + (s * rows_all + r) * hd, o, hd);
    }
    k.scale(1.f / L, o, hd);
  }
}

}  // namespace llmrt::cpu
