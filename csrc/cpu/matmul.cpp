// Matrix products against quantized weights.
//
// Quantized weights: the activations are quantized to 8-bit blocks and the
// inner loops are integer dot products. Decode (n == 1): each thread takes a
// band of rows, reading every weight byte once. Prompt (n > 1): tile kernels
// unpack each weight block once for several tokens.
#include <algorithm>
#include <cmath>
#include <cstring>
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
  // decode: one row at a time, several blocks in flight (the repacked
  // K-quants' tiles take several rows at a time instead)
  if (n == 1 && !invariant && !kquant_repacked(w.type)) {
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

// The float product's cache blocks: a block of packed weight rows and one
// of tokens, each about this many floats (256 KB; an L2 holds both).
constexpr int64_t kBlockFloats = 65536;

void rows_float(const Kernels& k, const WeightView& w, const float* x, int n, float* y,
                int64_t r0, int64_t r1, bool invariant) {
  const int64_t rows = w.rows, cols = w.cols;
  if (n == 1 && !invariant) {
    VecDotFn dot = k.vec_dot[(int)w.type];
    for (int64_t r = r0; r < r1; ++r) y[r] = dot(w.row(r), x, cols);
    return;
  }
  // Weight rows are widened to float and packed (Kernels::pack_f32) a block
  // at a time and kept in cache while the tokens pass by in blocks that stay
  // in cache too (every token streamed for every few rows ran from memory
  // once the tokens outgrew the cache: half the speed at 4096 tokens). Each
  // (row, token) sum runs over cols in the kernel's own order: the same alone
  // or among others.
  const int64_t row_block =
      std::clamp<int64_t>((kBlockFloats / cols) & ~(kPanel - 1), 4 * kPanel, 8 * kPanel);
  const int64_t tok_block = std::max<int64_t>(32, (kBlockFloats / 2 / cols) / 8 * 8);
  // F16 rows kept as panels from load (WeightView::panels) need neither;
  // a band that starts inside a panel (matmul_grouped's may) widens and
  // packs as the others do
  const bool kept = w.panels != nullptr && r0 % kPanel == 0;
  const bool f32 = w.type == DType::F32;
  DequantFn dq = k.dequant[(int)w.type];
  thread_local std::vector<float> wide, panels;
  if (!kept) {
    wide.resize((size_t)(kPanel * cols));
    panels.resize((size_t)(row_block * cols));
  }
  for (int64_t g0 = r0; g0 < r1; g0 += row_block) {
    const int64_t nr = std::min<int64_t>(row_block, r1 - g0);
    for (int64_t p = 0; !kept && p * kPanel < nr; ++p) {
      const int64_t first = g0 + p * kPanel, count = std::min<int64_t>(kPanel, nr - p * kPanel);
      float* dst = panels.data() + p * kPanel * cols;
      if (f32) {
        k.pack_f32(reinterpret_cast<const float*>(w.row(first)), count, cols,
                   (int64_t)(w.row_stride() / sizeof(float)), dst);
        continue;
      }
      for (int64_t i = 0; i < count; ++i) dq(w.row(first + i), wide.data() + i * cols, cols);
      k.pack_f32(wide.data(), count, cols, cols, dst);
    }
    for (int64_t t0 = 0; t0 < n; t0 += tok_block) {
      const int64_t nt = std::min<int64_t>(tok_block, n - t0);
      float* yt = y + t0 * rows + g0;
      if (kept)
        k.gemm_h16p(w.panels + g0 * cols, nr, cols, x + t0 * cols, cols, nt, yt, rows);
      else
        k.gemm_f32p(panels.data(), nr, cols, x + t0 * cols, cols, nt, yt, rows);
    }
  }
}

// Rows [r0, r1) of F16 weights kept as 14-bit integer panels
// (WeightView::ipanels) against the tokens quantized once (xq, xs), in
// cache blocks as rows_float. r0 starts a panel (matmul_many's bands do).
void rows_i16(const Kernels& k, const WeightView& w, const int16_t* xq, const float* xs, int n,
              float* y, int64_t r0, int64_t r1) {
  const int64_t rows = w.rows, cols = w.cols, nb = (cols + kI16Block - 1) / kI16Block;
  const int64_t pbytes = nb * kI16BlockBytes;
  if (r0 % kPanel != 0) throw std::logic_error("rows_i16: a band inside a panel");
  const int64_t row_block =
      std::clamp<int64_t>((kBlockFloats / cols) & ~(2 * kPanel - 1), 4 * kPanel, 8 * kPanel);
  const int64_t tok_block = std::max<int64_t>(24, (kBlockFloats / cols) / 24 * 24);
  for (int64_t g0 = r0; g0 < r1; g0 += row_block) {
    const int64_t nr = std::min<int64_t>(row_block, r1 - g0);
    for (int64_t t0 = 0; t0 < n; t0 += tok_block)
      k.gemm_i16p(w.ipanels + g0 / kPanel * pbytes, nr, nb, xq + t0 * nb * kI16Block,
                  xs + t0 * nb, std::min<int64_t>(tok_block, n - t0), y + t0 * rows + g0, rows);
  }
}

// A token's activations as two rows of 8-bit blocks, x ~= d1 q1 + d2 q2 with
// q2 the rounding q1 left (about 15 bits a value): row 0 copied from a
// quantized row `q1` (parts 1-4, d, s), row 1 quantized here. out: two rows
// of act_row_bytes(n) bytes, d2 / s2: 2 n / 32 floats each.
void two_rows(const Kernels& k, const float* x, const int8_t* q1, const float* d1,
              const float* s1, int64_t n, bool interleaved, int8_t* out, float* d2, float* s2,
              std::vector<float>& rest) {
  const int64_t nb = n / kQK, row = act_row_bytes(n);
  std::memcpy(out, q1, (size_t)row);
  std::memcpy(d2, d1, sizeof(float) * nb);
  std::memcpy(s2, s1, sizeof(float) * nb);
  rest.resize((size_t)n);
  for (int64_t i = 0; i < n; ++i) rest[i] = x[i] - d1[i / kQK] * (float)q1[i];
  k.quantize_act(rest.data(), out + row, d2 + nb, s2 + nb, n);
  if (interleaved) k.interleave_act(out + row, out + row + 2 * n, n);
}

// The precise product (MatmulJob::precise) with the int8 kernels. The 8-bit
// product is computed as usual; then, for each token, the rounding e its
// activations were given (known: x - d q) moves row r's result by at most
// E_r = |w_r|_2 |e|_2 (Cauchy-Schwarz; WeightView::row_l2), so only the rows
// with y_r + E_r >= max_s (y_s - E_s) can hold the largest exact value, and
// those are recomputed with the two-row activations (twice the integer work,
// within float32 rounding of the exact product at these magnitudes). For
// the output head that is a few of the vocabulary's rows: the top of the
// distribution, and so greedy decoding, as with float activations, at about
// the cost of the 8-bit product. Without row norms every row is recomputed.
void matmul_precise(ThreadPool& pool, const Kernels& k, const MatmulJob& job, const float* x,
                    int n, ActBuffer& act, bool invariant) {
  const WeightView& w = *job.w;
  const int64_t cols = w.cols, nb = cols / kQK, rows = w.rows;
  const size_t row = (size_t)act_row_bytes(cols);
  const bool interleaved = interleaved_layout(w.type);
  const GemmQFn gemm = k.gemm_q[(int)w.type];
  if (w.row_l2 == nullptr) {  // every row, all tokens' two rows in one pass
    const int64_t n2 = 2 * (int64_t)n;
    if (act.qs.size() < row * n2) act.qs.resize(row * n2);
    if (act.d.size() < (size_t)(n2 * nb)) {
      act.d.resize((size_t)(n2 * nb));
      act.s.resize((size_t)(n2 * nb));
    }
    if (act.y2.size() < (size_t)(n2 * rows)) act.y2.resize((size_t)(n2 * rows));
    pool.parallel_for(n, 4, [&](int64_t b, int64_t e) {
      thread_local std::vector<float> rest;
      thread_local std::vector<int8_t> q1;
      thread_local std::vector<float> d1, s1;
      q1.resize(row);
      d1.resize((size_t)nb);
      s1.resize((size_t)nb);
      for (int64_t t = b; t < e; ++t) {
        k.quantize_act(x + t * cols, q1.data(), d1.data(), s1.data(), cols);
        if (interleaved) k.interleave_act(q1.data(), q1.data() + 2 * cols, cols);
        two_rows(k, x + t * cols, q1.data(), d1.data(), s1.data(), cols, interleaved,
                 act.qs.data() + row * 2 * t, act.d.data() + 2 * t * nb, act.s.data() + 2 * t * nb,
                 rest);
      }
    });
    const QActs xq{act.qs.data(), act.d.data(), act.s.data(), cols};
    float* y2 = act.y2.data();
    pool.parallel_for(rows, 16, [&](int64_t b, int64_t e) {
      gemm(w.row(b), w.row_stride(), e - b, xq, n2, y2 + b, rows);
      for (int64_t t = 0; t < n; ++t)
        for (int64_t r = b; r < e; ++r)
          job.y[t * rows + r] = y2[2 * t * rows + r] + y2[(2 * t + 1) * rows + r];
    });
    return;
  }
  MatmulJob plain = job;
  plain.precise = false;
  matmul_many(pool, k, &plain, 1, x, n, act, true, invariant);  // leaves the tokens' rows in act
  pool.parallel_for(n, 1, [&](int64_t b, int64_t e) {
    thread_local std::vector<float> rest, d2, s2;
    thread_local std::vector<int8_t> q2;
    q2.resize(2 * row);
    d2.resize((size_t)(2 * nb));
    s2.resize((size_t)(2 * nb));
    for (int64_t t = b; t < e; ++t) {
      const int8_t* q1 = act.qs.data() + row * t;
      const float* d1 = act.d.data() + t * nb;
      two_rows(k, x + t * cols, q1, d1, act.s.data() + t * nb, cols, interleaved, q2.data(),
               d2.data(), s2.data(), rest);
      double e2 = 0;  // |e|_2 of the rounding, rounded up: a bound
      for (int64_t i = 0; i < cols; ++i) e2 += (double)rest[i] * rest[i];
      const float h = (float)(std::sqrt(e2) * (1 + 1e-5));
      float* yt = job.y + t * rows;
      float floor = -INFINITY, top = 0.f;
      for (int64_t r = 0; r < rows; ++r) {
        floor = std::max(floor, yt[r] - h * w.row_l2[r]);
        top = std::max(top, std::fabs(yt[r]));
      }
      floor -= 1e-5f * top;  // the float rounding of the 8-bit sums themselves
      const QActs xq{q2.data(), d2.data(), s2.data(), cols};
      for (int64_t r = 0; r < rows; ++r) {
        if (!(yt[r] + h * w.row_l2[r] >= floor)) continue;
        float y2[2];
        gemm(w.row(r), w.row_stride(), 1, xq, 2, y2, 1);
        yt[r] = y2[0] + y2[1];
      }
    }
  });
}

}  // namespace

namespace {

// The n rows of x as 8-bit blocks in act (interleaved too where a repacked
// layout reads them).
QActs quantize_rows(ThreadPool& pool, const Kernels& k, const float* x, int64_t n, int64_t cols,
                    ActBuffer& act, bool interleaved) {
  const int64_t nb = cols / kQK;
  const size_t row = (size_t)act_row_bytes(cols);
  if (act.qs.size() < row * n) act.qs.resize(row * n);
  if (act.d.size() < (size_t)(n * nb)) {
    act.d.resize((size_t)(n * nb));
    act.s.resize((size_t)(n * nb));
  }
  pool.parallel_for(n, 4, [&](int64_t b, int64_t e) {
    for (int64_t t = b; t < e; ++t) {
      int8_t* q = act.qs.data() + act_row_bytes(cols) * t;
      k.quantize_act(x + t * cols, q, act.d.data() + t * nb, act.s.data() + t * nb, cols);
      if (interleaved) k.interleave_act(q, q + 2 * cols, cols);
    }
  });
  return QActs{act.qs.data(), act.d.data(), act.s.data(), cols};
}

}  // namespace

void matmul_many(ThreadPool& pool, const Kernels& k, const MatmulJob* jobs, int count,
                 const float* x, int n, ActBuffer& act, bool int8, bool invariant) {
  if (count <= 0 || n <= 0) return;
  if (count == 1 && jobs[0].precise && int8 && int8_dot(jobs[0].w->type))
    return matmul_precise(pool, k, jobs[0], x, n, act, invariant);
  const int64_t cols = jobs[0].w->cols;
  bool any_int8 = false, interleaved = false, any_i16 = false, any_panels = false;
  if (count > 8) throw std::invalid_argument("matmul_many: at most 8 jobs");
  for (int i = 0; i < count; ++i) {
    if (jobs[i].w->cols != cols) throw std::invalid_argument("matmul_many: cols differ");
    any_int8 |= int8 && int8_dot(jobs[i].w->type);
    // the repacked groups read interleaved activations
    interleaved |= int8 && interleaved_layout(jobs[i].w->type);
    any_i16 |= int8 && jobs[i].w->ipanels != nullptr;
    any_panels |= jobs[i].w->ipanels != nullptr || jobs[i].w->panels != nullptr;
  }
  QActs xq{nullptr, nullptr, nullptr, cols};
  if (any_int8) xq = quantize_rows(pool, k, x, n, cols, act, interleaved);
  const int64_t nb16 = (cols + kI16Block - 1) / kI16Block;
  if (any_i16) {  // 16-bit blocks for the integer panels
    act.q16.resize((size_t)(n * nb16 * kI16Block));
    act.s16.resize((size_t)(n * nb16));
    pool.parallel_for(n, 4, [&](int64_t b, int64_t e) {
      for (int64_t t = b; t < e; ++t)
        k.quantize_i16(x + t * cols, cols, kI16XMax, act.q16.data() + t * nb16 * kI16Block,
                       act.s16.data() + t * nb16);
    });
  }
  // The rows of all jobs, end to end, split into bands across the threads,
  // in units of a row (bands of 16 rows or more), or, where weights are kept
  // as panels, of two panels of each job's own (a band starts on a panel).
  const int64_t unit = any_panels ? 2 * kPanel : 1;
  int64_t start[9] = {0};  // job i's first unit
  for (int i = 0; i < count; ++i) start[i + 1] = start[i] + (jobs[i].w->rows + unit - 1) / unit;
  pool.parallel_for(start[count], any_panels ? 1 : 16, [&](int64_t b, int64_t e) {
    for (int i = 0; i < count; ++i) {
      const int64_t ub = std::max(b, start[i]), ue = std::min(e, start[i + 1]);
      if (ub >= ue) continue;
      const WeightView& w = *jobs[i].w;
      const int64_t lo = (ub - start[i]) * unit, hi = std::min(w.rows, (ue - start[i]) * unit);
      if (int8 && w.ipanels != nullptr)
        rows_i16(k, w, act.q16.data(), act.s16.data(), n, jobs[i].y, lo, hi);
      else if (int8 && int8_dot(w.type))
        rows_int8(k, w, xq, n, jobs[i].y, lo, hi, invariant);
      else
        rows_float(k, w, x, n, jobs[i].y, lo, hi, invariant);
    }
  });
}

// Each job's slice of x (rows [row0, row0 + n)) against its weight: x is
// quantized once for all of them, and the threads share every job's weight
// rows in one pass. A row's results are those of a matmul of its slice alone.
void matmul_grouped(ThreadPool& pool, const Kernels& k, const GroupedJob* jobs, int count,
                    const float* x, int n, int cols, ActBuffer& act, bool int8, bool invariant) {
  if (count <= 0 || n <= 0) return;
  bool any_int8 = false, interleaved = false;
  std::vector<int64_t>& start = act.group_start;
  start.assign(count + 1, 0);
  for (int i = 0; i < count; ++i) {
    const WeightView& w = *jobs[i].w;
    if (w.cols != cols || jobs[i].row0 < 0 || jobs[i].n < 0 || jobs[i].row0 + jobs[i].n > n)
      throw std::invalid_argument("matmul_grouped: a job outside x or of other cols");
    any_int8 |= int8 && int8_dot(w.type);
    interleaved |= int8 && interleaved_layout(w.type);
    start[i + 1] = start[i] + (jobs[i].n > 0 ? w.rows : 0);
  }
  QActs xq{nullptr, nullptr, nullptr, cols};
  if (any_int8) xq = quantize_rows(pool, k, x, n, cols, act, interleaved);
  const int64_t nb = cols / kQK;
  pool.parallel_for(start[count], 16, [&](int64_t b, int64_t e) {
    // the first job whose rows reach past b
    int i = (int)(std::upper_bound(start.begin(), start.end(), b) - start.begin()) - 1;
    for (; i < count && start[i] < e; ++i) {
      const int64_t lo = std::max(b, start[i]), hi = std::min(e, start[i + 1]);
      if (lo >= hi) continue;
      const GroupedJob& j = jobs[i];
      const WeightView& w = *j.w;
      if (int8 && int8_dot(w.type)) {
        const QActs part{xq.qs + act_row_bytes(cols) * j.row0, xq.d + nb * j.row0,
                         xq.s + nb * j.row0, cols};
        rows_int8(k, w, part, j.n, j.y, lo - start[i], hi - start[i], invariant);
      } else {
        rows_float(k, w, x + (size_t)j.row0 * cols, j.n, j.y, lo - start[i], hi - start[i],
                   invariant);
      }
    }
  });
}

}  // namespace llmrt::cpu
