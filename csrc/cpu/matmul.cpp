// Matrix products against quantized weights.
//
// Quantized weights: the activations are quantized to 8-bit blocks and the
// inner loops are integer dot products. Decode (n == 1): each thread takes a
// band of rows, reading every weight byte once. Prompt (n > 1): tile kernels
// unpack each weight block once for several tokens.
#include <algorithm>
#include <stdexcept>
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

namespace {

// Rows [r0, r1) of one job: y[t * rows + r] for every token t.
void rows_int8(const Kernels& k, const WeightView& w, const QActs& x, int n, float* y,
               int64_t r0, int64_t r1, bool invariant) {
  if (n == 1 && !invariant) {  // decode: one row at a time, several blocks in flight
    VecDotQFn dot = k.vec_dot_q[(int)w.type];
    for (int64_t r = r0; r < r1; ++r) y[r] = dot(w.row(r), x.qs, x.d, x.s, x.n);
    return;
  }
  // the tile kernel reads each weight block once for all n tokens; the
  // quantized activations stay in cache. A token's sums run in the same
  // order whatever tile it falls in, so rows of several tokens get the same
  // results alone or among others (one token alone takes the matrix-vector
  // kernel above, whose order differs).
  k.gemm_q[(int)w.type](w.row(r0), w.row_stride(), r1 - r0, x, n, y + r0, w.rows);
}

void rows_float(const Kernels& k, const WeightView& w, const float* x, int n, float* y,
                int64_t r0, int64_t r1, bool invariant) {
  const int64_t rows = w.rows, cols = w.cols;
  if (n == 1 && !invariant) {
    VecDotFn dot = k.vec_dot[(int)w.type];
    for (int64_t r = r0; r < r1; ++r) y[r] = dot(w.row(r), x, cols);
    return;
  }
  // rows are widened to float 4 at a time, then a register-tiled product
  // with every token (the same sums for a token alone or among others)
  constexpr int64_t kGroup = 4;
  DequantFn dq = k.dequant[(int)w.type];
  thread_local std::vector<float> buf;
  buf.resize((size_t)(kGroup * cols));
  for (int64_t g = r0; g < r1; g += kGroup) {
    const int64_t nr = std::min<int64_t>(kGroup, r1 - g);
    for (int64_t i = 0; i < nr; ++i) dq(w.row(g + i), buf.data() + i * cols, cols);
    k.gemm_f32(buf.data(), nr, cols, x, n, y + g, rows);
  }
}

}  // namespace

void matmul_many(ThreadPool& pool, const Kernels& k, const MatmulJob* jobs, int count,
                 const float* x, int n, ActBuffer& act, bool int8, bool invariant) {
  if (count <= 0 || n <= 0) return;
  const int64_t cols = jobs[0].w->cols;
  bool any_int8 = false, interleaved = false;
  int64_t total = 0;
  int64_t start[8];
  if (count > 8) throw std::invalid_argument("matmul_many: at most 8 jobs");
  for (int i = 0; i < count; ++i) {
    if (jobs[i].w->cols != cols) throw std::invalid_argument("matmul_many: cols differ");
    any_int8 |= int8 && int8_dot(jobs[i].w->type);
    const DType t = jobs[i].w->type;  // the repacked groups read interleaved activations
    interleaved |= int8 && (t == DType::Q4_0R || t == DType::Q4_1R || t == DType::Q8_0R);
    start[i] = total;
    total += jobs[i].w->rows;
  }
  QActs xq{nullptr, nullptr, nullptr, cols};
  if (any_int8) {
    const int64_t nb = cols / kQK;
    if (act.qs.size() < (size_t)(kActBytes * n * cols)) act.qs.resize((size_t)(kActBytes * n * cols));
    if (act.d.size() < (size_t)(n * nb)) {
      act.d.resize((size_t)(n * nb));
      act.s.resize((size_t)(n * nb));
    }
    xq = QActs{act.qs.data(), act.d.data(), act.s.data(), cols};
    pool.parallel_for(n, 4, [&](int64_t b, int64_t e) {
      for (int64_t t = b; t < e; ++t) {
        int8_t* q = act.qs.data() + kActBytes * t * cols;
        k.quantize_act(x + t * cols, q, act.d.data() + t * nb, act.s.data() + t * nb, cols);
        if (interleaved) k.interleave_act(q, q + 2 * cols, cols);
      }
    });
  }
  // The rows of all jobs, end to end, split into bands across the threads.
  pool.parallel_for(total, 16, [&](int64_t b, int64_t e) {
    for (int i = 0; i < count; ++i) {
      const int64_t lo = std::max(b, start[i]), hi = std::min(e, start[i] + jobs[i].w->rows);
      if (lo >= hi) continue;
      const WeightView& w = *jobs[i].w;
      if (int8 && int8_dot(w.type))
        rows_int8(k, w, xq, n, jobs[i].y, lo - start[i], hi - start[i], invariant);
      else
        rows_float(k, w, x, n, jobs[i].y, lo - start[i], hi - start[i], invariant);
    }
  });
}

}  // namespace llmrt::cpu
