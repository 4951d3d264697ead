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

namespace {

// Keys are visited in ranges of this many positions; a row's result is the
// left fold, range after range, of the ranges' partial results (running max,
// sum and unnormalised output). Every path (one token or many, alone or
// batched, any thread count) computes each range the same way and folds in
// the same order, so a row's result depends only on its query and its keys.
constexpr int kRangePositions = 256;

constexpr float kNegInf = -std::numeric_limits<float>::infinity();

// (O, L, M) <- (O, L, M) folded with the partial (o, l, m) of the next range.
inline void fold(const Kernels& k, float* O, float& L, float& M, const float* o, float l, float m,
                 int hd) {
  if (m == kNegInf) return;  // no keys of this row in the range
  const float mn = std::max(M, m);
  const float a = std::exp(M - mn), b = std::exp(m - mn);
  L = L * a + l * b;
  k.scale(a, O, hd);
  k.axpy(b, o, O, hd);
  M = mn;
}

inline void finish(const Kernels& k, float* O, float L, int hd) {
  k.scale(L > 0.f ? 1.f / L : 0.f, O, hd);
}

}  // namespace

// q (rows, n_heads, hd) -> out (rows, n_heads, hd), the rows of every
// sequence of `seqs` end to end.
//
// Query rows sharing a kv head run together, reading each key and value once
// for all of them. A sequence of several rows (a prompt chunk, a speculative
// verification) gets one task per (block of kTokens tokens, kv head) with the
// GQA group's heads, each task folding its rows over the key ranges in turn.
// A one-row sequence (a decode step) gets one task per (kv head, key range),
// as flash-decoding splits the keys, and its partials are folded afterwards.
// All the sequences' tasks go to the threads in one pass.
void attention(ThreadPool& pool, const Kernels& k, const KVCache& cache, const AttnSeq* seqs,
               int count, int layer, const float* q, int n_heads, const AttnParams& ap,
               float* out, AttnScratch& scr) {
  const int hd = cache.head_dim();
  const int n_kv = cache.n_kv_heads();
  const int group = n_heads / n_kv;
  const int bt = cache.block_tokens();
  const int G = std::max(1, kRangePositions / bt);  // cache blocks per range
  constexpr int kTokens = 8;
  constexpr int kMaxRows = 8 * 64;  // query rows of one task: tokens x GQA group
  if ((int64_t)kTokens * group > kMaxRows)
    throw std::invalid_argument("attention: GQA group too large");

  using Plan = AttnPlan;
  std::vector<Plan>& plans = scr.plans;
  plans.resize(count);
  size_t rows = 0, ptrs = 0, parts = 0;
  int64_t tasks = 0;
  for (int i = 0; i < count; ++i) {
    Plan& P = plans[i];
    P.n = seqs[i].n;
    P.pos0 = seqs[i].pos0;
    P.nb = (P.pos0 + P.n + bt - 1) / bt;  // cache blocks the last row reads
    P.ranges = (P.nb + G - 1) / G;
    // a decode row with a window: the ranges wholly behind it get no task
    P.range0 = ap.window > 0 ? std::max(0, P.pos0 + 1 - ap.window) / (G * bt) : 0;
    P.row0 = rows;
    P.ptr0 = ptrs;
    P.part0 = parts;
    P.task0 = tasks;
    if (P.n == 1) {
      P.tasks = (int64_t)n_kv * (P.ranges - P.range0);
      parts += (size_t)P.ranges * n_heads;
    } else {
      P.tasks = (int64_t)((P.n + kTokens - 1) / kTokens) * n_kv;
    }
    rows += (size_t)P.n * n_heads;
    ptrs += (size_t)n_kv * P.nb;
    tasks += P.tasks;
  }

  // block pointers of each sequence and kv head, [seq][kvh][block]
  const size_t head_off = cache.row_bytes() / n_kv;
  scr.kp.resize(ptrs);
  scr.vp.resize(ptrs);
  for (int i = 0; i < count; ++i) {
    const Plan& P = plans[i];
    const int* table = seqs[i].table;
    for (int b = 0; b < P.nb; ++b) {
      const bool gone = table[b] < 0;  // behind every row's window: never read
      const uint8_t* kb = gone ? nullptr : cache.k_block(table[b], layer);
      const uint8_t* vb = gone ? nullptr : cache.v_block(table[b], layer);
      for (int h = 0; h < n_kv; ++h) {
        scr.kp[P.ptr0 + (size_t)h * P.nb + b] = gone ? nullptr : kb + h * head_off;
        scr.vp[P.ptr0 + (size_t)h * P.nb + b] = gone ? nullptr : vb + h * head_off;
      }
    }
  }
  scr.po.resize(parts * hd);
  scr.pm.resize(parts);
  scr.pl.resize(parts);
  scr.task_seq.resize(tasks);
  for (int i = 0; i < count; ++i)
    std::fill(scr.task_seq.begin() + plans[i].task0,
              scr.task_seq.begin() + plans[i].task0 + plans[i].tasks, i);

  // A sequence's tasks run latest tokens / ranges first: causal rows get
  // longer with the position, so the big tasks go first and the small ones
  // even out the threads at the end.
  pool.run((int)tasks, [&](int task_index) {
    const int si = scr.task_seq[task_index];
    const Plan& P = plans[si];
    const int64_t task = P.tasks - 1 - (task_index - P.task0);
    const int n = P.n, nb = P.nb;
    const int kvh = (int)(task % n_kv);
    AttnBlock a{nullptr, nullptr, nullptr, 0, scr.kp.data() + P.ptr0 + (size_t)kvh * nb,
                scr.vp.data() + P.ptr0 + (size_t)kvh * nb, bt, cache.row_bytes(),
                (int)cache.type(), hd, ap.scale, 0, nb};
    a.window = ap.window;
    a.softcap = ap.softcap;
    const float* qr[kMaxRows];
    float* orow[kMaxRows];
    int nk[kMaxRows];
    float ms[kMaxRows], ls[kMaxRows];
    a.q_rows = qr;
    a.out_rows = orow;
    a.n_keys = nk;
    a.m_out = ms;
    a.l_out = ls;
    if (n == 1) {  // one range of one decode row's keys -> a partial
      const int range = P.range0 + (int)(task / n_kv);
      int r = 0;
      for (int h = kvh * group; h < (kvh + 1) * group; ++h, ++r) {
        const size_t pr = P.part0 + (size_t)range * n_heads + h;
        qr[r] = q + (P.row0 + h) * hd;
        orow[r] = scr.po.data() + pr * hd;
        nk[r] = P.pos0 + 1;
      }
      a.n_q = r;
      a.b_begin = range * G;
      a.b_end = std::min(nb, (range + 1) * G);
      k.attention_block(a);
      for (int i = 0; i < r; ++i) {
        const size_t pr = P.part0 + (size_t)range * n_heads + kvh * group + i;
        scr.pm[pr] = ms[i];
        scr.pl[pr] = ls[i];
      }
      return;
    }
    // several rows: every range in turn, folded into the output rows
    const int t0 = (int)(task / n_kv) * kTokens;
    const int t1 = std::min(n, t0 + kTokens);
    int r = 0;
    for (int t = t0; t < t1; ++t)
      for (int h = kvh * group; h < (kvh + 1) * group; ++h, ++r) {
        const size_t row = P.row0 + (size_t)t * n_heads + h;
        qr[r] = q + row * hd;
        orow[r] = out + row * hd;
        nk[r] = P.pos0 + t + 1;  // causal: keys at positions <= the query's
      }
    a.n_q = r;
    const int ranges = (P.pos0 + t1 + G * bt - 1) / (G * bt);  // those the last row reads
    // with a window, the ranges wholly behind the first row's are skipped
    const int first_key = ap.window > 0 ? std::max(0, P.pos0 + t0 + 1 - ap.window) : 0;
    const int j0 = first_key / (G * bt);
    a.b_begin = j0 * G;
    a.b_end = std::min(nb, (j0 + 1) * G);
    k.attention_block(a);  // the first range straight into the output rows
    float M[kMaxRows], L[kMaxRows];
    std::copy(ms, ms + r, M);
    std::copy(ls, ls + r, L);
    if (ranges > j0 + 1) {
      thread_local std::vector<float> tmp;
      tmp.resize((size_t)r * hd);
      float* O[kMaxRows];
      std::copy(orow, orow + r, O);
      for (int i = 0; i < r; ++i) orow[i] = tmp.data() + (size_t)i * hd;
      for (int j = j0 + 1; j < ranges; ++j) {
        a.b_begin = j * G;
        a.b_end = std::min(nb, (j + 1) * G);
        k.attention_block(a);
        for (int i = 0; i < r; ++i) fold(k, O[i], L[i], M[i], orow[i], ls[i], ms[i], hd);
      }
      std::copy(O, O + r, orow);
    }
    for (int i = 0; i < r; ++i) finish(k, orow[i], L[i], hd);
  });

  // decode rows: fold the ranges' partials in order
  std::vector<int>& dec = scr.decode;
  dec.clear();
  for (int si = 0; si < count; ++si)
    if (plans[si].n == 1) dec.push_back(si);
  pool.parallel_for((int64_t)dec.size() * n_heads, 4, [&](int64_t r0, int64_t r1) {
    for (int64_t r = r0; r < r1; ++r) {
      const Plan& P = plans[dec[r / n_heads]];
      const int h = (int)(r % n_heads);
      float* O = out + (P.row0 + h) * hd;
      const size_t p0 = P.part0 + (size_t)P.range0 * n_heads + h;
      std::copy(scr.po.data() + p0 * hd, scr.po.data() + (p0 + 1) * hd, O);
      float M = scr.pm[p0], L = scr.pl[p0];
      for (int j = P.range0 + 1; j < P.ranges; ++j) {
        const size_t pj = P.part0 + (size_t)j * n_heads + h;
        fold(k, O, L, M, scr.po.data() + pj * hd, scr.pl[pj], scr.pm[pj], hd);
      }
      finish(k, O, L, hd);
    }
  });
}

}  // namespace llmrt::cpu
