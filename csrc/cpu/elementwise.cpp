// RMSNorm, LayerNorm, RoPE, SwiGLU / GELU and residual adds.
#include <algorithm>
#include <cmath>
#include <vector>

#include "cpu/ops.h"

namespace llmrt::cpu {

void rmsnorm(ThreadPool& pool, const Kernels& k, const float* x, const float* w, int n, int dim,
             float eps, float* y) {
  pool.parallel_for(n, 16, [&](int64_t b, int64_t e) {
    for (int64_t t = b; t < e; ++t) {
      const float* xt = x + t * dim;
      const float inv = 1.f / std::sqrt(k.dot_f32(xt, xt, dim) / (float)dim + eps);
      float* yt = y + t * dim;
      for (int i = 0; i < dim; ++i) yt[i] = xt[i] * inv * w[i];
    }
  });
}

void layernorm(ThreadPool& pool, const Kernels& k, const float* x, const float* w, const float* b,
               int n, int dim, float eps, float* y) {
  pool.parallel_for(n, 16, [&](int64_t lo, int64_t hi) {
    for (int64_t t = lo; t < hi; ++t) k.layernorm(x + t * dim, w, b, dim, eps, y + t * dim);
  });
}

void gelu(ThreadPool& pool, const Kernels& k, float* x, size_t count) {
  constexpr int64_t kPiece = 4096;
  static const std::vector<float> ones(kPiece, 1.f);  // gelu(x) = geglu(x, 1)
  pool.parallel_for((int64_t)count, 8192, [&](int64_t b, int64_t e) {
    for (int64_t i = b; i < e; i += kPiece) k.geglu(x + i, ones.data(), std::min(kPiece, e - i));
  });
}

void gelu_erf(ThreadPool& pool, const Kernels& k, float* x, size_t count) {
  pool.parallel_for((int64_t)count, 8192, [&](int64_t b, int64_t e) { k.gelu_erf(x + b, e - b); });
}

void add_bias(ThreadPool& pool, float* y, const float* bias, int n, int dim) {
  pool.parallel_for(n, 64, [&](int64_t lo, int64_t hi) {
    for (int64_t t = lo; t < hi; ++t)
      for (int i = 0; i < dim; ++i) y[t * dim + i] += bias[i];
  });
}

void add(ThreadPool& pool, float* y, const float* x, size_t count) {
  pool.parallel_for((int64_t)count, 1 << 14, [&](int64_t lo, int64_t hi) {
    for (int64_t i = lo; i < hi; ++i) y[i] += x[i];
  });
}

void add_layernorm(ThreadPool& pool, const Kernels& k, float* x, const float* t, const float* bias,
                   const float* w, const float* b, int n, int dim, float eps) {
  pool.parallel_for(n, 16, [&](int64_t lo, int64_t hi) {
    for (int64_t r = lo; r < hi; ++r) {
      float* xr = x + r * dim;
      const float* tr = t + r * dim;
      if (bias) {
        for (int i = 0; i < dim; ++i) xr[i] += tr[i] + bias[i];
      } else {
        for (int i = 0; i < dim; ++i) xr[i] += tr[i];
      }
      k.layernorm(xr, w, b, dim, eps, xr);
    }
  });
}

void bias_gelu_erf(ThreadPool& pool, const Kernels& k, float* x, const float* bias, int n, int dim) {
  pool.parallel_for(n, 16, [&](int64_t lo, int64_t hi) {
    for (int64_t r = lo; r < hi; ++r) {
      float* xr = x + r * dim;
      if (bias)
        for (int i = 0; i < dim; ++i) xr[i] += bias[i];
      k.gelu_erf(xr, dim);
    }
  });
}

void swiglu(ThreadPool& pool, const Kernels& k, float* gate, const float* up, size_t count) {
  pool.parallel_for((int64_t)count, 8192, [&](int64_t b, int64_t e) {
    k.swiglu(gate + b, up + b, e - b);
  });
}

void swiglu_clamped(ThreadPool& pool, float* gate, const float* up, size_t count, float alpha,
                    float limit) {
  pool.parallel_for((int64_t)count, 8192, [&](int64_t b, int64_t e) {
    for (int64_t i = b; i < e; ++i) {
      const float g = std::min(gate[i], limit);
      const float u = std::min(std::max(up[i], -limit), limit);
      gate[i] = g / (1.f + std::exp(-alpha * g)) * (u + 1.f);
    }
  });
}

void geglu(ThreadPool& pool, const Kernels& k, float* gate, const float* up, size_t count) {
  pool.parallel_for((int64_t)count, 8192, [&](int64_t b, int64_t e) {
    k.geglu(gate + b, up + b, e - b);
  });
}

// cos / sin of pos[t] * inv_freq[i] for t < n, i < n_rot / 2, computed
// once per forward pass and reused by every layer's q and k.
const RopeTable::Entry& rope_table(RopeTable& tables, int n, const int32_t* pos,
                                   const RopeParams& p) {
  const int half = p.n_rot / 2;
  for (int i = 0; i < 2; ++i) {
    const RopeTable::Entry& c = tables.e[i];
    if ((int)c.pos.size() == n && std::equal(pos, pos + n, c.pos.begin()) && c.half == half &&
        c.base == p.freq_base && c.scale == p.pos_scale && c.factors == p.freq_factors &&
        c.mscale == p.mscale) {
      tables.last = i;
      return c;
    }
  }
  tables.last ^= 1;  // the entry not used last
  RopeTable::Entry& cache = tables.e[tables.last];
  // inv_freq[i] = base^(-2i / n_rot) [/ freq_factors[i]], in float as the
  // reference implementations compute it
  std::vector<float> inv_freq(half);
  for (int i = 0; i < half; ++i) {
    float f = (float)(1.0 / std::pow((double)p.freq_base, (2.0 * i) / p.n_rot));
    if (p.freq_factors) f /= p.freq_factors[i];
    inv_freq[i] = f;
  }
  cache.cs.resize((size_t)n * half);
  cache.sn.resize((size_t)n * half);
  for (int t = 0; t < n; ++t) {
    const float pt = (float)pos[t] * p.pos_scale;
    for (int i = 0; i < half; ++i) {
      const float a = pt * inv_freq[i];
      cache.cs[(size_t)t * half + i] = std::cos(a) * p.mscale;
      cache.sn[(size_t)t * half + i] = std::sin(a) * p.mscale;
    }
  }
  cache.pos.assign(pos, pos + n);
  cache.half = half;
  cache.base = p.freq_base;
  cache.scale = p.pos_scale;
  cache.factors = p.freq_factors;
  cache.mscale = p.mscale;
  return cache;
}

void rope(ThreadPool& pool, float* x, int n, int n_heads, int head_dim, const int32_t* pos,
          const RopeParams& p, RopeTable& cache) {
  const int half = p.n_rot / 2;
  const RopeTable::Entry& tab = rope_table(cache, n, pos, p);
  pool.parallel_for(n, 16, [&](int64_t b, int64_t e) {
    for (int64_t t = b; t < e; ++t) {
      const float* cs = tab.cs.data() + (size_t)t * half;
      const float* sn = tab.sn.data() + (size_t)t * half;
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
