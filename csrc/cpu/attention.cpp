// Causal GQA attention over the KV cache, one pass per (query row, head)
// with an online softmax: scores are never stored for the whole sequence.
#include <cmath>
#include <cstring>
#include <limits>
#include <vector>

#include "cpu/ops.h"

namespace llmrt::cpu {

void kv_write(KVCache& cache, int layer, int pos0, int n, const float* k, const float* v) {
  const size_t row = cache.row_size();
  std::memcpy(cache.k(layer, pos0), k, (size_t)n * row * sizeof(float));
  std::memcpy(cache.v(layer, pos0), v, (size_t)n * row * sizeof(float));
}

// q (n, n_heads, hd) -> out (n, n_heads, hd)
void attention(ThreadPool& pool, const Kernels& k, const KVCache& cache, int layer,
               const float* q, int n, int pos0, int n_heads, float scale, float* out) {
  const int hd = cache.head_dim();
  const int n_kv = cache.n_kv_heads();
  const int group = n_heads / n_kv;
  const size_t kv_stride = cache.row_size();
  pool.parallel_for((int64_t)n * n_heads, 1, [&](int64_t b, int64_t e) {
    std::vector<float> acc(hd);
    for (int64_t task = b; task < e; ++task) {
      const int t = (int)(task / n_heads);
      const int h = (int)(task % n_heads);
      const int kvh = h / group;
      const float* qh = q + ((size_t)t * n_heads + h) * hd;
      const float* kp = cache.k(layer, 0) + (size_t)kvh * hd;
      const float* vp = cache.v(layer, 0) + (size_t)kvh * hd;
      const int n_keys = pos0 + t + 1;  // causal: keys at positions <= this query's
      std::fill(acc.begin(), acc.end(), 0.f);
      float m = -std::numeric_limits<float>::infinity();
      float l = 0.f;
      for (int j = 0; j < n_keys; ++j) {
        const float s = k.dot_f32(qh, kp + (size_t)j * kv_stride, hd) * scale;
        if (s > m) {
          const float c = std::exp(m - s);  // rescale what was summed so far
          l *= c;
          k.scale(c, acc.data(), hd);
          m = s;
        }
        const float p = std::exp(s - m);
        l += p;
        k.axpy(p, vp + (size_t)j * kv_stride, acc.data(), hd);
      }
      float* o = out + ((size_t)t * n_heads + h) * hd;
      const float inv = 1.f / l;
      for (int i = 0; i < hd; ++i) o[i] = acc[i] * inv;
    }
  });
}

}  // namespace llmrt::cpu
