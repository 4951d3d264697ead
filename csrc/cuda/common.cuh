// Shared pieces of the CUDA kernels: error checks, half/bfloat conversion,
// warp reductions, and the dequantisation of one 32-weight sub-block of
// every GGUF type (the layouts of core/dtype.h).
#pragma once

#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <cstdint>
#include <stdexcept>
#include <string>

#include "core/dtype.h"

namespace llmrt::cuda {

inline void check(cudaError_t e, const char* what) {
  if (e != cudaSuccess)
    throw std::runtime_error(std::string("CUDA error in ") + what + ": " + cudaGetErrorString(e));
}
#define LLMRT_CUDA_CHECK(x) ::llmrt::cuda::check((x), #x)
#define LLMRT_CUDA_LAUNCHED(what) ::llmrt::cuda::check(cudaGetLastError(), what)

__device__ __forceinline__ float h2f(uint16_t h) { return __half2float(__ushort_as_half(h)); }
__device__ __forceinline__ float bf2f(uint16_t h) { return __uint_as_float((uint32_t)h << 16); }

__device__ __forceinline__ float warp_sum(float v) {
  for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
  return v;
}
__device__ __forceinline__ float warp_max(float v) {
  for (int o = 16; o > 0; o >>= 1) v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, o));
  return v;
}


// RoPE: rotates pair i of one head (i, i + half when neox, else 2i, 2i + 1)
// by the angle p * inv_freq[i].
__device__ __forceinline__ void rotate_pair(float* head, int i, float p,
                                            const float* __restrict__ inv_freq, int half,
                                            bool neox, float mscale) {
  float sn, cs;
  sincosf(p * inv_freq[i], &sn, &cs);
  sn *= mscale;
  cs *= mscale;
  const int i0 = neox ? i : 2 * i, i1 = neox ? i + half : 2 * i + 1;
  const float a = head[i0], b = head[i1];
  head[i0] = a * cs - b * sn;
  head[i1] = a * sn + b * cs;
}

// An MXFP4 code's value, doubled (kMxfp4Values without a table).
__device__ __forceinline__ float mxfp4_value(int q) {
  const int m = q & 7;
  const int v = m < 4 ? m : (2 + (m & 1)) << ((m >> 1) - 1);
  return (float)(q & 8 ? -v : v);
}

// Weights [32 sb, 32 sb + 32) of a row of type T -> w[0..32).
template <DType T>
__device__ __forceinline__ void load_sub(const uint8_t* row, int sb, float* w) {
  if constexpr (T == DType::F32) {
    const float* p = reinterpret_cast<const float*>(row) + 32 * sb;
#pragma unroll
    for (int i = 0; i < 32; ++i) w[i] = p[i];
  } else if constexpr (T == DType::F16 || T == DType::BF16) {
    const uint16_t* p = reinterpret_cast<const uint16_t*>(row) + 32 * sb;
#pragma unroll
    for (int i = 0; i < 32; ++i) w[i] = T == DType::F16 ? h2f(p[i]) : bf2f(p[i]);
  } else if constexpr (T == DType::Q8_0) {
    const BlockQ8_0* b = reinterpret_cast<const BlockQ8_0*>(row) + sb;
    const float d = h2f(b->d);
#pragma unroll
    for (int i = 0; i < 32; ++i) w[i] = d * (float)b->qs[i];
  } else if constexpr (T == DType::Q4_0) {
    const BlockQ4_0* b = reinterpret_cast<const BlockQ4_0*>(row) + sb;
    const float d = h2f(b->d);
#pragma unroll
    for (int i = 0; i < 16; ++i) {
      w[i] = d * (float)((b->qs[i] & 0x0f) - 8);
      w[i + 16] = d * (float)((b->qs[i] >> 4) - 8);
    }
  } else if constexpr (T == DType::MXFP4) {
    // E2M1 codes (bit 3 the sign) of doubled magnitudes {0,1,2,3,4,6,8,12},
    // times 2^(e - 128): low nibbles the first 16 weights, high the rest
    const BlockMXFP4* b = reinterpret_cast<const BlockMXFP4*>(row) + sb;
    const float d = ldexpf(1.f, (int)b->e - 128);
#pragma unroll
    for (int i = 0; i < 16; ++i) {
      w[i] = d * mxfp4_value(b->qs[i] & 0x0f);
      w[i + 16] = d * mxfp4_value(b->qs[i] >> 4);
    }
  } else if constexpr (T == DType::Q4_1) {
    const BlockQ4_1* b = reinterpret_cast<const BlockQ4_1*>(row) + sb;
    const float d = h2f(b->d), m = h2f(b->m);
#pragma unroll
    for (int i = 0; i < 16; ++i) {
      w[i] = d * (float)(b->qs[i] & 0x0f) + m;
      w[i + 16] = d * (float)(b->qs[i] >> 4) + m;
    }
  } else if constexpr (T == DType::Q4_K || T == DType::Q5_K) {
    using B = std::conditional_t<T == DType::Q4_K, BlockQ4_K, BlockQ5_K>;
    const B* b = reinterpret_cast<const B*>(row) + sb / 8;
    const int j = sb % 8;
    int sc, mn;
    kq_scale_min(b->scales, j, sc, mn);
    const float d = h2f(b->d) * (float)sc, m = h2f(b->dmin) * (float)mn;
    const uint8_t* q = b->qs + 32 * (j / 2);
#pragma unroll
    for (int l = 0; l < 32; ++l) {
      int v = (j & 1) ? (q[l] >> 4) : (q[l] & 0x0f);
      if constexpr (T == DType::Q5_K) v |= ((b->qh[l] >> j) & 1) << 4;
      w[l] = d * (float)v - m;
    }
  } else if constexpr (T == DType::Q6_K) {
    const BlockQ6_K* b = reinterpret_cast<const BlockQ6_K*>(row) + sb / 8;
    const int j0 = 32 * (sb % 8);  // first weight of the sub-block in its block
    const int h = j0 / 128, k = (j0 % 128) / 32;
    const uint8_t* ql = b->ql + 64 * h + (k & 1) * 32;
    const uint8_t* qh = b->qh + 32 * h;
    const float d = h2f(b->d);
#pragma unroll
    for (int l = 0; l < 32; ++l) {
      const int lo = (k < 2) ? (ql[l] & 0x0f) : (ql[l] >> 4);
      const int q = lo | (((qh[l] >> (2 * k)) & 3) << 4);
      w[l] = d * (float)b->scales[8 * h + 2 * k + l / 16] * (float)(q - 32);
    }
  }
}

}  // namespace llmrt::cuda
