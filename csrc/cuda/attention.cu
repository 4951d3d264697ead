// KV-cache writes and causal GQA attention over the paged cache: one warp
// per (query row, head); keys in chunks of 32, one lane per key for the
// scores, an online softmax, and each lane accumulating its own output
// dimensions over the chunk's values.
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

// one warp per (token, 32 values of the row); Q8_0 blocks are 32 values
__global__ void kv_write_kernel(KVLayout L, const int64_t* __restrict__ offs, int kvd,
                                const float* __restrict__ k, const float* __restrict__ v) {
  const int t = blockIdx.x, c = blockIdx.y, lane = threadIdx.x;
  const int d = 32 * c + lane;
  for (int which = 0; which < 2; ++which) {
    const float* src = (which ? v : k) + (size_t)t * kvd;
    uint8_t* row = (which ? L.v : L.k) + offs[t];
    const float x = d < kvd ? src[d] : 0.f;
    if (L.type == 0) {
      if (d < kvd) reinterpret_cast<float*>(row)[d] = x;
    } else if (L.type == 1) {
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
}

__global__ void attention_kernel(KVLayout L, const int* __restrict__ tables,
                                 const int* __restrict__ info, int n_heads, float scale,
                                 const float* __restrict__ q, float* __restrict__ out) {
  __shared__ float qs[kMaxHeadDim];
  const int t = blockIdx.x, h = blockIdx.y, lane = threadIdx.x;
  const int hd = L.head_dim, kvh = h / (n_heads / L.n_kv_heads);
  const int nk = info[2 * t] + 1;
  const int* table = tables + info[2 * t + 1];
  const float* qr = q + ((size_t)t * n_heads + h) * hd;
  for (int d = lane; d < hd; d += 32) qs[d] = qr[d];
  __syncwarp();
  constexpr int kDims = kMaxHeadDim / 32;
  float acc[kDims];
#pragma unroll
  for (int i = 0; i < kDims; ++i) acc[i] = 0.f;
  float m = -INFINITY, l = 0.f;
  const size_t head_off = (size_t)kvh * L.head_bytes;
  for (int base = 0; base < nk; base += 32) {
    const int p = base + lane;
    float s = -INFINITY;
    if (p < nk) {
      const uint8_t* kr = L.k + (size_t)table[p / L.block_tokens] * L.block_bytes +
                          (size_t)(p % L.block_tokens) * L.row_bytes + head_off;
      float dot = 0.f;
      for (int d = 0; d < hd; ++d) dot += qs[d] * kv_elem(L.type, kr, d);
      s = dot * scale;
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
  const float inv = l > 0.f ? 1.f / l : 0.f;
#pragma unroll
  for (int i = 0; i < kDims; ++i) {
    const int d = lane + 32 * i;
    if (d < hd) o[d] = acc[i] * inv;
  }
}

}  // namespace

void kv_write(const KVLayout& L, const int64_t* offs, int n, const float* k, const float* v,
              cudaStream_t stream) {
  const int kvd = L.n_kv_heads * L.head_dim;
  const dim3 grid((unsigned)n, (unsigned)((kvd + 31) / 32));
  kv_write_kernel<<<grid, 32, 0, stream>>>(L, offs, kvd, k, v);
  LLMRT_CUDA_LAUNCHED("kv_write");
}

void attention(const KVLayout& L, const int* tables, const int* info, int rows, int n_heads,
               float scale, const float* q, float* out, cudaStream_t stream) {
  if (L.head_dim > kMaxHeadDim)
    throw std::invalid_argument("CUDA attention: head_dim above 256");
  const dim3 grid((unsigned)rows, (unsigned)n_heads);
  attention_kernel<<<grid, 32, 0, stream>>>(L, tables, info, n_heads, scale, q, out);
  LLMRT_CUDA_LAUNCHED("attention");
}

}  // namespace llmrt::cuda
