// Matrix products against quantized weights.
//
// Decode (n == 1): each thread takes a band of rows and runs the fused
// dequantise-and-dot kernel, reading every weight byte once.
// Prompt (n > 1): each weight row is dequantised once into a thread-local
// buffer and dotted with all n activation rows, so the weights are read once
// per call rather than once per token.
#include <vector>

#include "cpu/ops.h"

namespace llmrt::cpu {

void embed(ThreadPool& pool, const Kernels& k, const WeightView& table, const int32_t* ids,
           int n, float* out) {
  DequantFn dq = k.dequant[(int)table.type];
  const int64_t d = table.cols;
  pool.parallel_for(n, 8, [&](int64_t b, int64_t e) {
    for (int64_t t = b; t < e; ++t) dq(table.row(ids[t]), out + t * d, d);
  });
}

// W (rows, cols) @ x (n, cols)^T -> y (n, rows)
void matmul(ThreadPool& pool, const Kernels& k, const WeightView& w, const float* x, int n,
            float* y) {
  const int64_t rows = w.rows, cols = w.cols;
  if (n == 1) {
    VecDotFn dot = k.vec_dot[(int)w.type];
    pool.parallel_for(rows, 16, [&](int64_t b, int64_t e) {
      for (int64_t r = b; r < e; ++r) y[r] = dot(w.row(r), x, cols);
    });
    return;
  }
  DequantFn dq = k.dequant[(int)w.type];
  auto dot = k.dot_f32;
  // Rows are dequantised in groups of 4 so each activation row, once loaded
  // into cache, serves four weight rows.
  constexpr int64_t kGroup = 4;
  pool.parallel_for((rows + kGroup - 1) / kGroup, 4, [&](int64_t gb, int64_t ge) {
    std::vector<float> buf((size_t)(kGroup * cols));
    for (int64_t g = gb; g < ge; ++g) {
      const int64_t r0 = g * kGroup;
      const int64_t nr = std::min<int64_t>(kGroup, rows - r0);
      for (int64_t i = 0; i < nr; ++i) dq(w.row(r0 + i), buf.data() + i * cols, cols);
      for (int64_t t = 0; t < n; ++t) {
        const float* xt = x + t * cols;
        float* yt = y + t * rows + r0;
        for (int64_t i = 0; i < nr; ++i) yt[i] = dot(buf.data() + i * cols, xt, cols);
      }
    }
  });
}

}  // namespace llmrt::cpu
