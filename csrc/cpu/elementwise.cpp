// RMSNorm, RoPE, SwiGLU and residual adds.
#include <cmath>
#include <vector>

#include "cpu/ops.h"

namespace llmrt::cpu {

void rmsnorm(ThreadPool& pool, const float* x, const float* w, int n, int dim, float eps,
             float* y) {
  pool.parallel_for(n, 16, [&](int64_t b, int64_t e) {
    for (int64_t t = b; t < e; ++t) {
      const float* xt = x + t * dim;
      float* yt = y + t * dim;
      double ss = 0.0;
      for (int i = 0; i < dim; ++i) ss += (double)xt[i] * xt[i];
      const float inv = (float)(1.0 / std::sqrt(ss / dim + eps));
      for (int i = 0; i < dim; ++i) yt[i] = xt[i] * inv * w[i];
    }
  });
}

void add_bias(float* y, const float* bias, int n, int dim) {
  for (int t = 0; t < n; ++t)
    for (int i = 0; i < dim; ++i) y[(size_t)t * dim + i] += bias[i];
}

void add(float* y, const float* x, size_t count) {
  for (size_t i = 0; i < count; ++i) y[i] += x[i];
}

void swiglu(ThreadPool& pool, const Kernels& k, float* gate, const float* up, size_t count) {
  pool.parallel_for((int64_t)count, 8192, [&](int64_t b, int64_t e) {
    k.swiglu(gate + b, up + b, e - b);
  });
}

void rope(ThreadPool& pool, float* x, int n, int n_heads, int head_dim, int pos0,
          const RopeParams& p) {
  const int half = p.n_rot / 2;
  // inv_freq[i] = base^(-2i / n_rot) [/ freq_factors[i]], in float as the
  // reference implementations compute it.
  std::vector<float> inv_freq(half);
  for (int i = 0; i < half; ++i) {
    float f = (float)(1.0 / std::pow((double)p.freq_base, (2.0 * i) / p.n_rot));
    if (p.freq_factors) f /= p.freq_factors[i];
    inv_freq[i] = f;
  }
  pool.parallel_for(n, 4, [&](int64_t b, int64_t e) {
    std::vector<float> cs(half), sn(half);
    for (int64_t t = b; t < e; ++t) {
      const float pos = (float)(pos0 + t) * p.pos_scale;
      for (int i = 0; i < half; ++i) {
        const float a = pos * inv_freq[i];
        cs[i] = std::cos(a);
        sn[i] = std::sin(a);
      }
      for (int h = 0; h < n_heads; ++h) {
        float* v = x + ((size_t)t * n_heads + h) * head_dim;
        for (int i = 0; i < half; ++i) {
          const int i0 = p.neox ? i : 2 * i;
          const int i1 = p.neox ? i + half : 2 * i + 1;
          const float a = v[i0], c = v[i1];
          v[i0] = a * cs[i] - c * sn[i];
          v[i1] = a * sn[i] + c * cs[i];
        }
      }
    }
  });
}

}  // namespace llmrt::cpu
