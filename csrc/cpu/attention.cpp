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

// O /= L; with a sink logit (gpt-oss), exp(sink) joins L first (O, L
// relative to the running max M; the sink has no value).
inline void finish(const Kernels& k, float* O, float L, float M, const float* sink, int hd) {
  if (sink) {
    const float mn = std::max(M, *sink);
    const float a = M == kNegInf ? 0.f : std::exp(M - mn);
    L = L * a + std::exp(*sink - mn);
    k.scale(a / L, O, hd);
    return;
  }
  k.scale(L > 0.f ? 1.f / L : 0.f, O, hd);
}

}  // namespace

namespace {

constexpr int kTokens = 8;         // query tokens of one prefill task
constexpr int kMaxRows = 8 * 64;   // query rows of one task: tokens x GQA group

// The shape of one attention call, shared by its tasks.
struct AttnCall {
  const Kernels& k;
  const KVCache& cache;
  const AttnParams& ap;
  AttnScratch& scr;
  const float* q;
  float* out;
  int n_heads, n_kv, group, hd, bt;
  int blocks_per_range;  // cache blocks per key range
};

// Each sequence's rows, block pointers, partial rows and tasks; the scratch
// sized for them. Returns the tasks of the call.
int64_t plan_attention(const AttnCall& c, const AttnSeq* seqs, int count, int layer) {
  AttnScratch& scr = c.scr;
  const int per_range = c.blocks_per_range;
  std::vector<AttnPlan>& plans = scr.plans;
  plans.resize(count);
  size_t rows = 0, ptrs = 0, parts = 0;
  int64_t tasks = 0;
  for (int i = 0; i < count; ++i) {
    AttnPlan& sp = plans[i];
    sp.n = seqs[i].n;
    sp.pos0 = seqs[i].pos0;
    sp.last = seqs[i].last;
    sp.nb = (sp.pos0 + sp.n + c.bt - 1) / c.bt;  // cache blocks the last row reads
    sp.ranges = (sp.nb + per_range - 1) / per_range;
    // a decode row with a window: the ranges wholly behind it get no task
    sp.range0 = c.ap.window > 0 ? std::max(0, sp.pos0 + 1 - c.ap.window) / (per_range * c.bt) : 0;
    sp.row0 = rows;
    sp.ptr0 = ptrs;
    sp.part0 = parts;
    sp.task0 = tasks;
    if (sp.n == 1) {
      sp.tasks = (int64_t)c.n_kv * (sp.ranges - sp.range0);
      parts += (size_t)sp.ranges * c.n_heads;
    } else {
      sp.tasks = (int64_t)((sp.n + kTokens - 1) / kTokens) * c.n_kv;
    }
    rows += (size_t)sp.n * c.n_heads;
    ptrs += (size_t)c.n_kv * sp.nb;
    tasks += sp.tasks;
  }

  // block pointers of each sequence and kv head, [seq][kvh][block]
  const size_t head_off = c.cache.row_bytes() / c.n_kv;
  scr.kp.resize(ptrs);
  scr.vp.resize(ptrs);
  for (int i = 0; i < count; ++i) {
    const AttnPlan& sp = plans[i];
    const int* table = seqs[i].table;
    for (int b = 0; b < sp.nb; ++b) {
      const bool gone = table[b] < 0;  // behind every row's window: never read
      const uint8_t* kb = gone ? nullptr : c.cache.k_block(table[b], layer);
      const uint8_t* vb = gone ? nullptr : c.cache.v_block(table[b], layer);
      for (int h = 0; h < c.n_kv; ++h) {
        scr.kp[sp.ptr0 + (size_t)h * sp.nb + b] = gone ? nullptr : kb + h * head_off;
        scr.vp[sp.ptr0 + (size_t)h * sp.nb + b] = gone ? nullptr : vb + h * head_off;
      }
    }
  }
  scr.part_out.resize(parts * c.hd);
  scr.part_max.resize(parts);
  scr.part_sum.resize(parts);
  scr.task_seq.resize(tasks);
  for (int i = 0; i < count; ++i)
    std::fill(scr.task_seq.begin() + plans[i].task0,
              scr.task_seq.begin() + plans[i].task0 + plans[i].tasks, i);
  return tasks;
}

// The per-row arrays a task hands the fused kernel.
struct TaskRows {
  const float* q[kMaxRows];
  float* out[kMaxRows];
  int n_keys[kMaxRows];
  int k_first[kMaxRows];
  float m[kMaxRows], l[kMaxRows];
};

AttnBlock block_for(const AttnCall& c, const AttnPlan& sp, int kvh, TaskRows& tr) {
  AttnBlock a{nullptr, nullptr, nullptr, 0, c.scr.kp.data() + sp.ptr0 + (size_t)kvh * sp.nb,
              c.scr.vp.data() + sp.ptr0 + (size_t)kvh * sp.nb, c.bt, c.cache.row_bytes(),
              (int)c.cache.type(), c.hd, c.ap.scale, 0, sp.nb};
  a.window = c.ap.window;
  a.softcap = c.ap.softcap;
  a.q_rows = tr.q;
  a.out_rows = tr.out;
  a.n_keys = tr.n_keys;
  a.m_out = tr.m;
  a.l_out = tr.l;
  return a;
}

// One key range of a decode row's GQA group -> its partials.
void decode_task(const AttnCall& c, const AttnPlan& sp, int64_t task) {
  const int kvh = (int)(task % c.n_kv);
  const int range = sp.range0 + (int)(task / c.n_kv);
  TaskRows tr;
  AttnBlock a = block_for(c, sp, kvh, tr);
  int r = 0;
  for (int h = kvh * c.group; h < (kvh + 1) * c.group; ++h, ++r) {
    const size_t pr = sp.part0 + (size_t)range * c.n_heads + h;
    tr.q[r] = c.q + (sp.row0 + h) * c.hd;
    tr.out[r] = c.scr.part_out.data() + pr * c.hd;
    tr.n_keys[r] = sp.pos0 + 1;
  }
  a.n_q = r;
  a.b_begin = range * c.blocks_per_range;
  a.b_end = std::min(sp.nb, (range + 1) * c.blocks_per_range);
  c.k.attention_block(a);
  for (int i = 0; i < r; ++i) {
    const size_t pr = sp.part0 + (size_t)range * c.n_heads + kvh * c.group + i;
    c.scr.part_max[pr] = tr.m[i];
    c.scr.part_sum[pr] = tr.l[i];
  }
}

// Up to kTokens rows of a prompt chunk with one kv head's GQA group: every
// key range in turn, folded into the output rows.
void prefill_task(const AttnCall& c, const AttnPlan& sp, int64_t task) {
  const int kvh = (int)(task % c.n_kv);
  const int span = c.blocks_per_range * c.bt;  // positions of a range
  const int t0 = (int)(task / c.n_kv) * kTokens;
  const int t1 = std::min(sp.n, t0 + kTokens);
  TaskRows tr;
  AttnBlock a = block_for(c, sp, kvh, tr);
  int r = 0;
  for (int t = t0; t < t1; ++t)
    for (int h = kvh * c.group; h < (kvh + 1) * c.group; ++h, ++r) {
      const size_t row = sp.row0 + (size_t)t * c.n_heads + h;
      tr.q[r] = c.q + row * c.hd;
      tr.out[r] = c.out + row * c.hd;
      // causal: keys at positions <= the query's; an image's rows see the
      // whole image (last, never before their own)
      tr.n_keys[r] = (sp.last ? sp.last[t] : sp.pos0 + t) + 1;
      tr.k_first[r] = c.ap.window > 0 ? std::max(0, sp.pos0 + t + 1 - c.ap.window) : 0;
    }
  a.n_q = r;
  if (sp.last) a.k_first = tr.k_first;  // the window from the row's own position
  // the ranges the last row reads (rows' last keys never decrease)
  const int ranges = (tr.n_keys[r - 1] + span - 1) / span;
  // with a window, the ranges wholly behind the first row's are skipped
  const int first_key = c.ap.window > 0 ? std::max(0, sp.pos0 + t0 + 1 - c.ap.window) : 0;
  const int j0 = first_key / span;
  a.b_begin = j0 * c.blocks_per_range;
  a.b_end = std::min(sp.nb, (j0 + 1) * c.blocks_per_range);
  c.k.attention_block(a);  // the first range straight into the output rows
  float M[kMaxRows], L[kMaxRows];
  std::copy(tr.m, tr.m + r, M);
  std::copy(tr.l, tr.l + r, L);
  if (ranges > j0 + 1) {
    thread_local std::vector<float> tmp;
    tmp.resize((size_t)r * c.hd);
    float* O[kMaxRows];
    std::copy(tr.out, tr.out + r, O);
    for (int i = 0; i < r; ++i) tr.out[i] = tmp.data() + (size_t)i * c.hd;
    for (int j = j0 + 1; j < ranges; ++j) {
      a.b_begin = j * c.blocks_per_range;
      a.b_end = std::min(sp.nb, (j + 1) * c.blocks_per_range);
      c.k.attention_block(a);
      for (int i = 0; i < r; ++i) fold(c.k, O[i], L[i], M[i], tr.out[i], tr.l[i], tr.m[i], c.hd);
    }
    std::copy(O, O + r, tr.out);
  }
  for (int i = 0; i < r; ++i) {
    const float* sink = c.ap.sinks ? c.ap.sinks + kvh * c.group + i % c.group : nullptr;
    finish(c.k, tr.out[i], L[i], M[i], sink, c.hd);
  }
}

// Decode rows: each head's range partials folded in order into its output.
void merge_decode_partials(ThreadPool& pool, const AttnCall& c, int count) {
  AttnScratch& scr = c.scr;
  std::vector<int>& dec = scr.decode;
  dec.clear();
  for (int si = 0; si < count; ++si)
    if (scr.plans[si].n == 1) dec.push_back(si);
  const int hd = c.hd, n_heads = c.n_heads;
  pool.parallel_for((int64_t)dec.size() * n_heads, 4, [&](int64_t r0, int64_t r1) {
    for (int64_t r = r0; r < r1; ++r) {
      const AttnPlan& sp = scr.plans[dec[r / n_heads]];
      const int h = (int)(r % n_heads);
      float* O = c.out + (sp.row0 + h) * hd;
      const size_t p0 = sp.part0 + (size_t)sp.range0 * n_heads + h;
      std::copy(scr.part_out.data() + p0 * hd, scr.part_out.data() + (p0 + 1) * hd, O);
      float M = scr.part_max[p0], L = scr.part_sum[p0];
      for (int j = sp.range0 + 1; j < sp.ranges; ++j) {
        const size_t pj = sp.part0 + (size_t)j * n_heads + h;
        fold(c.k, O, L, M, scr.part_out.data() + pj * hd, scr.part_sum[pj], scr.part_max[pj], hd);
      }
      finish(c.k, O, L, M, c.ap.sinks ? c.ap.sinks + h : nullptr, hd);
    }
  });
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
  const int n_kv = cache.n_kv_heads();
  const int group = n_heads / n_kv;
  if ((int64_t)kTokens * group > kMaxRows)
    throw std::invalid_argument("attention: GQA group too large");
  const int bt = cache.block_tokens();
  const AttnCall c{k,      cache, ap, scr, q, out, n_heads, n_kv, group, cache.head_dim(), bt,
                   std::max(1, kRangePositions / bt)};
  const int64_t tasks = plan_attention(c, seqs, count, layer);
  // A sequence's tasks run latest tokens / ranges first: causal rows get
  // longer with the position, so the big tasks go first and the small ones
  // even out the threads at the end.
  pool.run((int)tasks, [&](int task_index) {
    const AttnPlan& sp = scr.plans[scr.task_seq[task_index]];
    const int64_t task = sp.tasks - 1 - (task_index - sp.task0);
    if (sp.n == 1) decode_task(c, sp, task);
    else prefill_task(c, sp, task);
  });
  merge_decode_partials(pool, c, count);
}

// ---- bidirectional attention without a cache (encoders, vision towers) ----
//
// Per (sequence, head): its keys (T, hd) and values transposed (hd, T) are
// gathered once as the float product's panels (Kernels::pack_f32's layout:
// keys 16 to a panel, element (d, i) of panel p the key 16 p + i's d; values
// 16 dimensions to a panel, element (t, i) token t's dimension 16 p + i);
// then each task, a tile of query rows, forms its scores (rows, T) with the
// panel product, exponentiates them against each row's max and multiplies
// by the values with the same product. The whole row of scores fits: T is a
// text's tokens or an image's patches (a few thousand).
void attention_ragged(ThreadPool& pool, const Kernels& k, const float* q, const float* kx,
                      const float* v, const int32_t* starts, int n_seq, int n_heads, int hd,
                      float scale, float* out) {
  constexpr int kTile = 32;  // query rows of a task
  const int64_t ld = (int64_t)n_heads * hd, heads = (int64_t)n_seq * n_heads;
  auto up = [](int64_t a) { return (a + kPanel - 1) / kPanel * kPanel; };
  // (sequence, head) pairs' panels, end to end, each pair's keys T' hd and
  // values hd' T floats (T', hd': T, hd up to whole panels)
  std::vector<int64_t> kbase((size_t)heads + 1, 0), vbase((size_t)heads + 1, 0);
  for (int64_t sh = 0; sh < heads; ++sh) {
    const int64_t T = starts[sh / n_heads + 1] - starts[sh / n_heads];
    kbase[(size_t)sh + 1] = kbase[(size_t)sh] + up(T) * hd;
    vbase[(size_t)sh + 1] = vbase[(size_t)sh] + up(hd) * T;
  }
  std::vector<float> keys((size_t)kbase[(size_t)heads]), vals((size_t)vbase[(size_t)heads]);
  struct Task {
    int s, h, t0;
  };
  std::vector<Task> tasks;
  for (int s = 0; s < n_seq; ++s)
    for (int h = 0; h < n_heads; ++h)
      for (int t0 = 0; t0 < starts[s + 1] - starts[s]; t0 += kTile) tasks.push_back({s, h, t0});
  pool.parallel_for(heads, 1, [&](int64_t b, int64_t e) {
    for (int64_t sh = b; sh < e; ++sh) {
      const int s = (int)(sh / n_heads), h = (int)(sh % n_heads), T = starts[s + 1] - starts[s];
      const float* ks = kx + (size_t)starts[s] * ld + (size_t)h * hd;
      k.pack_f32(ks, T, hd, ld, keys.data() + kbase[(size_t)sh]);
      float* vd = vals.data() + vbase[(size_t)sh];
      std::fill(vd, vd + up(hd) * T, 0.f);
      for (int t = 0; t < T; ++t) {
        const float* src = v + (size_t)(starts[s] + t) * ld + (size_t)h * hd;
        for (int d = 0; d < hd; ++d) vd[(d / kPanel) * kPanel * T + t * kPanel + d % kPanel] = src[d];
      }
    }
  });
  pool.parallel_for((int64_t)tasks.size(), 1, [&](int64_t b, int64_t e) {
    thread_local std::vector<float> qs, sc, o;
    qs.resize((size_t)kTile * hd);
    o.resize((size_t)kTile * hd);
    for (int64_t task = b; task < e; ++task) {
      const Task tk = tasks[(size_t)task];
      const int T = starts[tk.s + 1] - starts[tk.s], t0 = tk.t0, m = std::min(kTile, T - t0);
      const size_t sh = (size_t)tk.s * n_heads + tk.h;
      if (sc.size() < (size_t)kTile * T) sc.resize((size_t)kTile * T);
      for (int i = 0; i < m; ++i) {  // the tile's queries, scaled
        const float* src = q + (size_t)(starts[tk.s] + t0 + i) * ld + (size_t)tk.h * hd;
        for (int d = 0; d < hd; ++d) qs[(size_t)i * hd + d] = src[d] * scale;
      }
      // scores (m, T) = q K^T
      k.gemm_f32p(keys.data() + kbase[sh], T, hd, qs.data(), hd, m, sc.data(), T);
      float inv[kTile];
      for (int i = 0; i < m; ++i) {
        float* row = sc.data() + (size_t)i * T;
        inv[i] = 1.f / k.exp_sum(row, k.max_f32(row, T), T);
      }
      // out (m, hd) = P V
      k.gemm_f32p(vals.data() + vbase[sh], hd, T, sc.data(), T, m, o.data(), hd);
      for (int i = 0; i < m; ++i) {
        float* dst = out + (size_t)(starts[tk.s] + t0 + i) * ld + (size_t)tk.h * hd;
        for (int d = 0; d < hd; ++d) dst[d] = o[(size_t)i * hd + d] * inv[i];
      }
    }
  });
}

void attention_dense(ThreadPool& pool, const Kernels& k, const float* q, const float* kx,
                     const float* v, int n_seq, int T, int n_heads, int hd, float scale,
                     float* out) {
  std::vector<int32_t> starts((size_t)n_seq + 1);
  for (int s = 0; s <= n_seq; ++s) starts[(size_t)s] = s * T;
  attention_ragged(pool, k, q, kx, v, starts.data(), n_seq, n_heads, hd, scale, out);
}

}  // namespace llmrt::cpu
