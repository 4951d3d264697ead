// KV-cache writes and causal GQA attention over the paged cache.
//
// Attention is split-KV (flash-decoding): a block of 4 warps takes one query
// row, one KV head with up to G query heads of its group (the keys and
// values are read once for all of them) and one of S slices of the row's
// keys; S is set from the rows of the pass so that a decode step of one
// sequence still fills the GPU, and each row's keys are cut into S equal
// slices whatever its context. Each warp runs an online softmax over its
// keys (lanes over the head's dimensions), the block merges its warps, and
// with S > 1 a second kernel merges the slices' (max, sum, output) partials.
#include <algorithm>
#include <cmath>

#include "cuda/common.cuh"
#include "cuda/ops.h"

namespace llmrt::cuda {

namespace {

constexpr int kMaxHeadDim = 256;

// element d of a cached row of type t (0 F32, 1 F16, 2 Q8_0)
__device__ __forceinline__ float kv_elem(int t, const uint8_t* row, int d) {
  if (t == 0) return reinterpret_cast<const float*>(row)[d];
  if (t == 1) return h2f(reinterpret_cast<const uint16_t*>(row)[d]);
  const uint8_t* b = row + (d / 32) * 34;
  return h2f(*reinterpret_cast<const uint16_t*>(b)) * (float)(int8_t)b[2 + d % 32];
}

// Values [32 c, 32 c + 32) of one position's row (x: this lane's value,
// lane = its index in the chunk) into the cache row at `row` (F32, F16, or a
// Q8_0 block of the 32). The whole warp calls it.
__device__ __forceinline__ void store_chunk(int type, uint8_t* row, int c, int lane, int d,
                                            int kvd, float x) {
  if (type == 0) {
    if (d < kvd) reinterpret_cast<float*>(row)[d] = x;
  } else if (type == 1) {
    if (d < kvd) reinterpret_cast<__half*>(row)[d] = __float2half_rn(x);
  } else {
    const float amax = warp_max(fabsf(x));
    const float dq = amax / 127.f;
    const float id = dq > 0.f ? 1.f / dq : 0.f;
    uint8_t* b = row + (size_t)c * 34;
    if (lane == 0) *reinterpret_cast<__half*>(b) = __float2half_rn(dq);
    const float r = fminf(127.f, fmaxf(-127.f, rintf(x * id)));
    b[2 + lane] = (uint8_t)(int8_t)r;
  }
}

// one warp per (token, 32 values of the row); Q8_0 blocks are 32 values
__global__ void kv_write_kernel(KVLayout L, const int64_t* __restrict__ offs, int kvd,
                                const float* __restrict__ k, const float* __restrict__ v) {
  const int t = blockIdx.x, c = blockIdx.y, lane = threadIdx.x;
  const int d = 32 * c + lane;
  for (int which = 0; which < 2; ++which) {
    const float* src = (which ? v : k) + (size_t)t * kvd;
    store_chunk(L.type, (which ? L.v : L.k) + offs[t], c, lane, d, kvd, d < kvd ? src[d] : 0.f);
  }
}

// RoPE of one row's q and k heads (in place; a thread a rotated pair), then
// its k and v into the cache: one block a row.
__global__ void rope_kv_write_kernel(KVLayout L, const int64_t* __restrict__ offs,
                                     const int32_t* __restrict__ pos,
                                     const float* __restrict__ inv_freq, int half,
                                     float pos_scale, bool neox, float mscale, int n_heads,
                                     float* __restrict__ q, float* __restrict__ k,
                                     const float* __restrict__ v) {
  const int t = blockIdx.x, hd = L.head_dim, kvd = L.n_kv_heads * hd;
  const float p = (float)pos[t] * pos_scale;
  float* qr = q + (size_t)t * n_heads * hd;
  for (int e = threadIdx.x; e < n_heads * half; e += blockDim.x)
    rotate_pair(qr + (size_t)(e / half) * hd, e % half, p, inv_freq, half, neox, mscale);
  float* kr = k + (size_t)t * kvd;
  for (int e = threadIdx.x; e < L.n_kv_heads * half; e += blockDim.x)
    rotate_pair(kr + (size_t)(e / half) * hd, e % half, p, inv_freq, half, neox, mscale);
  __syncthreads();  // the block's writes to kr are visible to the block
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, warps = blockDim.x >> 5;
  const float* vr = v + (size_t)t * kvd;
  for (int c = warp; c < (kvd + 31) / 32; c += warps) {
    const int d = 32 * c + lane;
    store_chunk(L.type, L.k + offs[t], c, lane, d, kvd, d < kvd ? kr[d] : 0.f);
    store_chunk(L.type, L.v + offs[t], c, lane, d, kvd, d < kvd ? vr[d] : 0.f);
  }
}

// cap * tanh(s / cap) where a soft-cap is set
__device__ __forceinline__ float capped(float s, float cap) {
  return cap > 0.f ? cap * tanhf(s / cap) : s;
}

// The factor that normalises an output accumulated relative to the running
// max m with sum l: 1 / l, or, with head h's sink logit (gpt-oss), the
// sink's exponential joining the sum first (no keys: m = -inf, output 0).
__device__ __forceinline__ float normaliser(float m, float l, const float* sinks, int h) {
  if (!sinks) return l > 0.f ? 1.f / l : 0.f;
  const float s = sinks[h];
  const float mn = fmaxf(m, s);
  const float a = m > -INFINITY ? __expf(m - mn) : 0.f;
  return a / (l * a + __expf(s - mn));
}

__global__ void attention_kernel(KVLayout L, const int* __restrict__ tables,
                                 const int* __restrict__ info, int n_heads, AttnParams ap,
                                 const float* __restrict__ q, float* __restrict__ out) {
  __shared__ float qs[kMaxHeadDim];
  const int t = blockIdx.x, h = blockIdx.y, lane = threadIdx.x;
  const int hd = L.head_dim, kvh = h / (n_heads / L.n_kv_heads);
  const int nk = info[3 * t + 2] + 1, own = info[3 * t] + 1;
  const int* table = tables + info[3 * t + 1];
  const float* qr = q + ((size_t)t * n_heads + h) * hd;
  for (int d = lane; d < hd; d += 32) qs[d] = qr[d];
  __syncwarp();
  constexpr int kDims = kMaxHeadDim / 32;
  float acc[kDims];
#pragma unroll
  for (int i = 0; i < kDims; ++i) acc[i] = 0.f;
  float m = -INFINITY, l = 0.f;
  const size_t head_off = (size_t)kvh * L.head_bytes;
  const int k0 = ap.window > 0 && own > ap.window ? own - ap.window : 0;  // the window's start
  for (int base = k0; base < nk; base += 32) {
    const int p = base + lane;
    float s = -INFINITY;
    if (p < nk) {
      const uint8_t* kr = L.k + (size_t)table[p / L.block_tokens] * L.block_bytes +
                          (size_t)(p % L.block_tokens) * L.row_bytes + head_off;
      float dot = 0.f;
      for (int d = 0; d < hd; ++d) dot += qs[d] * kv_elem(L.type, kr, d);
      s = capped(dot * ap.scale, ap.softcap);
    }
    const float mn = fmaxf(m, warp_max(s));
    const float alpha = __expf(m - mn);  // 0 on the first chunk
    const float e = p < nk ? __expf(s - mn) : 0.f;
    l = l * alpha + warp_sum(e);
#pragma unroll
    for (int i = 0; i < kDims; ++i) acc[i] *= alpha;
    const int cn = min(32, nk - base);
    for (int j = 0; j < cn; ++j) {
      const float pj = __shfl_sync(0xffffffffu, e, j);
      const int pp = base + j;
      const uint8_t* vr = L.v + (size_t)table[pp / L.block_tokens] * L.block_bytes +
                          (size_t)(pp % L.block_tokens) * L.row_bytes + head_off;
#pragma unroll
      for (int i = 0; i < kDims; ++i) {
        const int d = lane + 32 * i;
        if (d < hd) acc[i] += pj * kv_elem(L.type, vr, d);
      }
    }
    m = mn;
  }
  float* o = out + ((size_t)t * n_heads + h) * hd;
  const float inv = normaliser(m, l, ap.sinks, h);
#pragma unroll
  for (int i = 0; i < kDims; ++i) {
    const int d = lane + 32 * i;
    if (d < hd) o[d] = acc[i] * inv;
  }
}


// ---- split-KV attention -------------------------------------------------------------

constexpr int kWarps = 4;

// Block (row t, kv head kvh and head tile, slice s): query heads
// [h0, h0 + G) of the kv head's group, keys [k0, k1) of the row's slice s
// of S. DPL: the head dimensions each lane holds (hd <= 32 * DPL).
template <int G, int DPL>
__global__ void __launch_bounds__(32 * kWarps)
split_attention_kernel(KVLayout L, const int* __restrict__ tables, const int* __restrict__ info,
                       int n_heads, int tiles, int S, AttnParams ap, const float* __restrict__ q,
                       float* __restrict__ out, float* __restrict__ part_ml,
                       float* __restrict__ part_acc) {
  extern __shared__ float sh[];
  const int t = blockIdx.x, s = blockIdx.z;
  const int kvh = blockIdx.y / tiles, tile = blockIdx.y % tiles;
  const int group = n_heads / L.n_kv_heads, hd = L.head_dim;
  const int h0 = kvh * group + tile * G;
  const int ng = min(G, group - tile * G);  // query heads of this tile
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  float* qs = sh;                                  // [G][hd]
  float* wm = qs + G * hd;                         // [kWarps][G] maxima
  float* wl = wm + kWarps * G;                     // [kWarps][G] sums
  float* wacc = wl + kWarps * G;                   // [kWarps][G][hd]
  for (int i = threadIdx.x; i < G * hd; i += blockDim.x) {
    const int g = i / hd, d = i % hd;
    qs[i] = g < ng ? q[((size_t)t * n_heads + h0 + g) * hd + d] : 0.f;
  }
  __syncthreads();

  // causal: positions [0, pos], or to an image's last for its rows
  const int nk = info[3 * t + 2] + 1, own = info[3 * t] + 1;
  const int* table = tables + info[3 * t + 1];
  const int kw = ap.window > 0 && own > ap.window ? own - ap.window : 0;  // the window's start
  const int chunk = (nk - kw + S - 1) / S;
  const int k0 = min(nk, kw + s * chunk), k1 = min(nk, k0 + chunk);
  const size_t head_off = (size_t)kvh * L.head_bytes;

  float m[G], l[G], acc[G][DPL];
#pragma unroll
  for (int g = 0; g < G; ++g) {
    m[g] = -INFINITY;
    l[g] = 0.f;
#pragma unroll
    for (int i = 0; i < DPL; ++i) acc[g][i] = 0.f;
  }
  for (int p = k0 + warp; p < k1; p += kWarps) {
    const size_t slot = (size_t)table[p / L.block_tokens] * L.block_bytes +
                        (size_t)(p % L.block_tokens) * L.row_bytes + head_off;
    float kv[DPL];
#pragma unroll
    for (int i = 0; i < DPL; ++i) {
      const int d = lane + 32 * i;
      kv[i] = d < hd ? kv_elem(L.type, L.k + slot, d) : 0.f;
    }
    float pr[G];
#pragma unroll
    for (int g = 0; g < G; ++g) {
      float dot = 0.f;
#pragma unroll
      for (int i = 0; i < DPL; ++i) {
        const int d = lane + 32 * i;
        if (d < hd) dot += qs[g * hd + d] * kv[i];
      }
      const float sc = capped(warp_sum(dot) * ap.scale, ap.softcap);
      const float mn = fmaxf(m[g], sc);
      const float alpha = __expf(m[g] - mn);  // 0 on a warp's first key
      pr[g] = __expf(sc - mn);
      l[g] = l[g] * alpha + pr[g];
      m[g] = mn;
#pragma unroll
      for (int i = 0; i < DPL; ++i) acc[g][i] *= alpha;
    }
#pragma unroll
    for (int i = 0; i < DPL; ++i) {
      const int d = lane + 32 * i;
      kv[i] = d < hd ? kv_elem(L.type, L.v + slot, d) : 0.f;
    }
#pragma unroll
    for (int g = 0; g < G; ++g)
#pragma unroll
      for (int i = 0; i < DPL; ++i) acc[g][i] += pr[g] * kv[i];
  }

  // merge the warps
#pragma unroll
  for (int g = 0; g < G; ++g) {
    if (lane == 0) {
      wm[warp * G + g] = m[g];
      wl[warp * G + g] = l[g];
    }
#pragma unroll
    for (int i = 0; i < DPL; ++i) {
      const int d = lane + 32 * i;
      if (d < hd) wacc[(warp * G + g) * hd + d] = acc[g][i];
    }
  }
  __syncthreads();
  for (int i = threadIdx.x; i < ng * hd; i += blockDim.x) {
    const int g = i / hd, d = i % hd;
    float mx = -INFINITY;
    for (int w = 0; w < kWarps; ++w) mx = fmaxf(mx, wm[w * G + g]);
    float sum = 0.f, o = 0.f;
    if (mx > -INFINITY) {
      for (int w = 0; w < kWarps; ++w) {
        const float f = __expf(wm[w * G + g] - mx);  // 0 for a warp without keys
        sum += f * wl[w * G + g];
        o += f * wacc[(w * G + g) * hd + d];
      }
    }
    const size_t row_head = (size_t)t * n_heads + h0 + g;
    if (S == 1) {
      out[row_head * hd + d] = o * normaliser(mx, sum, ap.sinks, h0 + g);
    } else {
      const size_t part = row_head * S + s;
      part_acc[part * hd + d] = o;
      if (d == 0) {
        part_ml[2 * part] = mx;
        part_ml[2 * part + 1] = sum;
      }
    }
  }
}

// out (row t, head h) = the slices' outputs weighted by exp(m_s - M) and
// normalised by the weighted sums.
__global__ void combine_kernel(int n_heads, int hd, int S, const float* __restrict__ part_ml,
                               const float* __restrict__ part_acc, const float* __restrict__ sinks,
                               float* __restrict__ out) {
  const size_t row_head = (size_t)blockIdx.x * n_heads + blockIdx.y;
  const float* ml = part_ml + 2 * row_head * S;
  float mx = -INFINITY;
  for (int s = 0; s < S; ++s) mx = fmaxf(mx, ml[2 * s]);
  for (int d = threadIdx.x; d < hd; d += blockDim.x) {
    float sum = 0.f, o = 0.f;
    if (mx > -INFINITY) {
      for (int s = 0; s < S; ++s) {
        if (!(ml[2 * s] > -INFINITY)) continue;  // a slice without keys
        const float f = __expf(ml[2 * s] - mx);
        sum += f * ml[2 * s + 1];
        o += f * part_acc[(row_head * S + s) * hd + d];
      }
    }
    out[row_head * hd + d] = o * normaliser(mx, sum, sinks, blockIdx.y);
  }
}

template <int G, int DPL>
void launch_split(const KVLayout& L, const int* tables, const int* info, int rows, int n_heads,
                  int S, const AttnParams& ap, const float* q, float* out, float* part_ml,
                  float* part_acc, cudaStream_t stream) {
  const int group = n_heads / L.n_kv_heads, tiles = (group + G - 1) / G;
  const size_t shared = sizeof(float) * ((size_t)G * L.head_dim * (1 + kWarps) + 2 * kWarps * G);
  const dim3 grid((unsigned)rows, (unsigned)(L.n_kv_heads * tiles), (unsigned)S);
  split_attention_kernel<G, DPL><<<grid, 32 * kWarps, shared, stream>>>(
      L, tables, info, n_heads, tiles, S, ap, q, out, part_ml, part_acc);
  LLMRT_CUDA_LAUNCHED("split attention");
  if (S > 1) {
    combine_kernel<<<dim3((unsigned)rows, (unsigned)n_heads), 32, 0, stream>>>(
        n_heads, L.head_dim, S, part_ml, part_acc, ap.sinks, out);
    LLMRT_CUDA_LAUNCHED("attention combine");
  }
}

template <int DPL>
void launch_split_dpl(const KVLayout& L, const int* tables, const int* info, int rows,
                      int n_heads, int S, const AttnParams& ap, const float* q, float* out,
                      float* part_ml, float* part_acc, cudaStream_t stream) {
  // head tiles: the whole group when it is small, else tiles of 4 (the
  // registers of G x DPL accumulators a lane)
  const int group = n_heads / L.n_kv_heads;
  if (group == 1)
    launch_split<1, DPL>(L, tables, info, rows, n_heads, S, ap, q, out, part_ml, part_acc, stream);
  else if (group == 2)
    launch_split<2, DPL>(L, tables, info, rows, n_heads, S, ap, q, out, part_ml, part_acc, stream);
  else
    launch_split<4, DPL>(L, tables, info, rows, n_heads, S, ap, q, out, part_ml, part_acc, stream);
}
// Bidirectional attention without a cache: one block per (query row, head,
// sequence). The row's T scores live in shared memory; the block's max and
// sum go through warp reductions; then each thread owns output dims.
constexpr int kDenseThreads = 128;

__device__ float block_reduce(float v, bool is_max, float* red) {
  v = is_max ? warp_max(v) : warp_sum(v);
  const int w = threadIdx.x >> 5, lane = threadIdx.x & 31;
  if (lane == 0) red[w] = v;
  __syncthreads();
  float r = red[0];
  for (int i = 1; i < kDenseThreads / 32; ++i) r = is_max ? fmaxf(r, red[i]) : r + red[i];
  __syncthreads();  // red[] free for the next reduction
  return r;
}

__global__ void __launch_bounds__(kDenseThreads)
attention_dense_kernel(const float* __restrict__ q, const float* __restrict__ k,
                       const float* __restrict__ v, int T, int n_heads, int hd, float scale,
                       float* __restrict__ out) {
  extern __shared__ float sc[];  // T scores, then hd query values
  __shared__ float red[kDenseThreads / 32];
  const int t = blockIdx.x, h = blockIdx.y, sq = blockIdx.z;
  const size_t ld = (size_t)n_heads * hd, base = (size_t)sq * T;
  float* qs = sc + T;
  for (int d = threadIdx.x; d < hd; d += blockDim.x) qs[d] = q[(base + t) * ld + h * hd + d];
  __syncthreads();
  float mx = -INFINITY;
  for (int j = threadIdx.x; j < T; j += blockDim.x) {
    const float* kr = k + (base + j) * ld + h * hd;
    float dot = 0.f;
    for (int d = 0; d < hd; ++d) dot += qs[d] * kr[d];
    sc[j] = dot * scale;
    mx = fmaxf(mx, sc[j]);
  }
  mx = block_reduce(mx, true, red);
  float sum = 0.f;
  for (int j = threadIdx.x; j < T; j += blockDim.x) {
    const float e = __expf(sc[j] - mx);
    sc[j] = e;
    sum += e;
  }
  sum = block_reduce(sum, false, red);  // its barrier publishes sc[]
  const float inv = 1.f / sum;
  for (int d = threadIdx.x; d < hd; d += blockDim.x) {
    float acc = 0.f;
    for (int j = 0; j < T; ++j) acc += sc[j] * v[(base + j) * ld + h * hd + d];
    out[(base + t) * ld + h * hd + d] = acc * inv;
  }
}

// The same, tiled (head_dim <= 128): a block holds kRowsPerBlock query rows,
// a warp each, and walks the keys 32 at a time; each tile of keys and values
// is loaded once into shared memory (coalesced) for all the block's rows.
// Lane j scores key j of the tile; the running max / sum (online softmax)
// rescale the output, whose dims lane + 32 i each lane holds.
constexpr int kRowsPerBlock = 8, kKeyTile = 32, kTiledMaxDim = 128;

__global__ void __launch_bounds__(32 * kRowsPerBlock)
attention_dense_tiled(const float* __restrict__ q, const float* __restrict__ k,
                      const float* __restrict__ v, int T, int n_heads, int hd, float scale,
                      float* __restrict__ out) {
  extern __shared__ float sm[];
  const int ks = hd + 1;                        // a key row's stride: no bank conflicts
  float* kt = sm;                               // [kKeyTile][hd + 1]
  float* vt = kt + kKeyTile * ks;               // [kKeyTile][hd]
  float* qs = vt + kKeyTile * hd;               // [kRowsPerBlock][hd]
  const int w = threadIdx.x >> 5, lane = threadIdx.x & 31;
  const int h = blockIdx.y, sq = blockIdx.z, t = blockIdx.x * kRowsPerBlock + w;
  const size_t ld = (size_t)n_heads * hd, base = (size_t)sq * T;
  const bool row = t < T;
  float* qr = qs + w * hd;
  for (int d = lane; d < hd; d += 32) qr[d] = row ? q[(base + t) * ld + h * hd + d] * scale : 0.f;
  constexpr int kDims = kTiledMaxDim / 32;
  float acc[kDims];
#pragma unroll
  for (int i = 0; i < kDims; ++i) acc[i] = 0.f;
  float m = -INFINITY, l = 0.f;
  for (int j0 = 0; j0 < T; j0 += kKeyTile) {
    const int n = min(kKeyTile, T - j0);
    __syncthreads();  // the previous tile is read by every warp
    for (int i = threadIdx.x; i < n * hd; i += blockDim.x) {
      const int j = i / hd, d = i % hd;
      const size_t src = (base + j0 + j) * ld + h * hd + d;
      kt[j * ks + d] = k[src];
      vt[j * hd + d] = v[src];
    }
    __syncthreads();
    float s = -INFINITY;
    if (lane < n) {
      const float* kr = kt + lane * ks;
      float dot = 0.f;
      for (int d = 0; d < hd; ++d) dot += qr[d] * kr[d];
      s = dot;
    }
    const float mn = fmaxf(m, warp_max(s));
    const float p = lane < n ? __expf(s - mn) : 0.f;
    const float corr = m == -INFINITY ? 0.f : __expf(m - mn);
    l = l * corr + warp_sum(p);
    m = mn;
#pragma unroll
    for (int i = 0; i < kDims; ++i) acc[i] *= corr;
    for (int j = 0; j < n; ++j) {
      const float pj = __shfl_sync(0xffffffffu, p, j);
      const float* vr = vt + j * hd;
#pragma unroll
      for (int i = 0; i < kDims; ++i) {
        const int d = lane + 32 * i;
        if (d < hd) acc[i] += pj * vr[d];
      }
    }
  }
  if (!row) return;
  const float inv = 1.f / l;
#pragma unroll
  for (int i = 0; i < kDims; ++i) {
    const int d = lane + 32 * i;
    if (d < hd) out[(base + t) * ld + h * hd + d] = acc[i] * inv;
  }
}

}  // namespace

void attention_dense(const float* q, const float* k, const float* v, int n_seq, int T,
                     int n_heads, int hd, float scale, float* out, cudaStream_t stream) {
  if (hd <= kTiledMaxDim) {
    const size_t shared = sizeof(float) * ((size_t)kKeyTile * (2 * hd + 1) +
                                           (size_t)kRowsPerBlock * hd);
    const dim3 grid((unsigned)((T + kRowsPerBlock - 1) / kRowsPerBlock), (unsigned)n_heads,
                    (unsigned)n_seq);
    attention_dense_tiled<<<grid, 32 * kRowsPerBlock, shared, stream>>>(q, k, v, T, n_heads, hd,
                                                                         scale, out);
    LLMRT_CUDA_LAUNCHED("attention_dense");
    return;
  }
  const size_t shared = sizeof(float) * ((size_t)T + hd);
  if (shared > 48 * 1024)
    throw std::invalid_argument("CUDA dense attention: more than 12K rows a sequence");
  const dim3 grid((unsigned)T, (unsigned)n_heads, (unsigned)n_seq);
  attention_dense_kernel<<<grid, kDenseThreads, shared, stream>>>(q, k, v, T, n_heads, hd, scale,
                                                                  out);
  LLMRT_CUDA_LAUNCHED("attention_dense");
}

void kv_write(const KVLayout& L, const int64_t* offs, int n, const float* k, const float* v,
              cudaStream_t stream) {
  const int kvd = L.n_kv_heads * L.head_dim;
  const dim3 grid((unsigned)n, (unsigned)((kvd + 31) / 32));
  kv_write_kernel<<<grid, 32, 0, stream>>>(L, offs, kvd, k, v);
  LLMRT_CUDA_LAUNCHED("kv_write");
}

void rope_kv_write(const KVLayout& L, const int64_t* offs, int n, const int32_t* pos,
                   const float* inv_freq, int n_rot, float pos_scale, bool neox, float mscale,
                   int n_heads,
                   float* q, float* k, const float* v, cudaStream_t stream) {
  rope_kv_write_kernel<<<n, 128, 0, stream>>>(L, offs, pos, inv_freq, n_rot / 2, pos_scale,
                                               neox, mscale, n_heads, q, k, v);
  LLMRT_CUDA_LAUNCHED("rope_kv_write");
}

void attention(const KVLayout& L, const int* tables, const int* info, int rows, int n_heads,
               const AttnParams& ap, const float* q, float* out, cudaStream_t stream) {
  if (L.head_dim > kMaxHeadDim)
    throw std::invalid_argument("CUDA attention: head_dim above 256");
  const dim3 grid((unsigned)rows, (unsigned)n_heads);
  attention_kernel<<<grid, 32, 0, stream>>>(L, tables, info, n_heads, ap, q, out);
  LLMRT_CUDA_LAUNCHED("attention");
}

int attention_splits(int rows, int n_kv_heads, int n_heads, int sm_count) {
  const int group = n_heads / n_kv_heads;
  const int tiles = group <= 2 ? 1 : (group + 3) / 4;
  const int blocks = rows * n_kv_heads * tiles;
  const int want = (2 * sm_count + blocks - 1) / blocks;  // about two blocks an SM
  return std::max(1, std::min(kMaxSplits, want));
}

void split_attention(const KVLayout& L, const int* tables, const int* info, int rows,
                     int n_heads, int S, const AttnParams& ap, const float* q, float* out,
                     float* part_ml, float* part_acc, cudaStream_t stream) {
  if (L.head_dim > kMaxHeadDim)
    throw std::invalid_argument("CUDA attention: head_dim above 256");
  if (S < 1 || S > kMaxSplits) throw std::invalid_argument("CUDA attention: bad split count");
  if (L.head_dim <= 64)
    launch_split_dpl<2>(L, tables, info, rows, n_heads, S, ap, q, out, part_ml, part_acc, stream);
  else if (L.head_dim <= 128)
    launch_split_dpl<4>(L, tables, info, rows, n_heads, S, ap, q, out, part_ml, part_acc, stream);
  else
    launch_split_dpl<8>(L, tables, info, rows, n_heads, S, ap, q, out, part_ml, part_acc, stream);
}

}  // namespace llmrt::cuda
