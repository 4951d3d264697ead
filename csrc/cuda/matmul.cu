// Matrix products against GGUF-typed weights: each warp takes one weight
// row and up to kTok tokens; lanes take consecutive 32-weight sub-blocks
// (neighbouring memory), widen them in registers and dot them with each
// token's activations; a warp sum gives each output.
#include "cuda/common.cuh"
#include "cuda/ops.h"

namespace llmrt::cuda {

namespace {

constexpr int kWarps = 4;  // rows per thread block
constexpr int kTok = 8;    // tokens per warp

template <DType T>
__global__ void matmul_kernel(const uint8_t* __restrict__ w, size_t row_stride, int rows,
                              int cols, const float* __restrict__ x, int n,
                              float* __restrict__ y) {
  const int lane = threadIdx.x & 31;
  const int r = blockIdx.x * kWarps + (threadIdx.x >> 5);
  const int t0 = blockIdx.y * kTok;
  if (r >= rows) return;
  const int nt = min(kTok, n - t0);
  const uint8_t* row = w + (size_t)r * row_stride;
  float acc[kTok];
#pragma unroll
  for (int t = 0; t < kTok; ++t) acc[t] = 0.f;
  float wv[32];
  for (int sb = lane; sb < cols / 32; sb += 32) {
    load_sub<T>(row, sb, wv);
#pragma unroll
    for (int t = 0; t < kTok; ++t) {
      if (t >= nt) break;
      const float4* xp = reinterpret_cast<const float4*>(x + (size_t)(t0 + t) * cols + 32 * sb);
      float s = 0.f;
#pragma unroll
      for (int i = 0; i < 8; ++i) {
        const float4 v = xp[i];
        s += wv[4 * i] * v.x + wv[4 * i + 1] * v.y + wv[4 * i + 2] * v.z + wv[4 * i + 3] * v.w;
      }
      acc[t] += s;
    }
  }
#pragma unroll
  for (int t = 0; t < kTok; ++t) {
    if (t >= nt) break;
    const float s = warp_sum(acc[t]);
    if (lane == 0) y[(size_t)(t0 + t) * rows + r] = s;
  }
}

template <DType T>
void launch(const WeightView& w, const float* x, int n, float* y, cudaStream_t stream) {
  const dim3 grid((unsigned)((w.rows + kWarps - 1) / kWarps), (unsigned)((n + kTok - 1) / kTok));
  matmul_kernel<T><<<grid, 32 * kWarps, 0, stream>>>(w.data, w.row_stride(), (int)w.rows,
                                                      (int)w.cols, x, n, y);
  LLMRT_CUDA_LAUNCHED("matmul");
}

}  // namespace

bool matmul_supported(DType t) {
  switch (t) {
    case DType::F32: case DType::F16: case DType::BF16: case DType::Q8_0: case DType::Q4_0:
    case DType::Q4_1: case DType::Q4_K: case DType::Q5_K: case DType::Q6_K: return true;
    default: return false;
  }
}

void matmul(const WeightView& w, const float* x, int n, float* y, cudaStream_t stream) {
  if (w.cols % 32 != 0) throw std::invalid_argument("CUDA matmul: cols must be a multiple of 32");
  switch (w.type) {
    case DType::F32: launch<DType::F32>(w, x, n, y, stream); break;
    case DType::F16: launch<DType::F16>(w, x, n, y, stream); break;
    case DType::BF16: launch<DType::BF16>(w, x, n, y, stream); break;
    case DType::Q8_0: launch<DType::Q8_0>(w, x, n, y, stream); break;
    case DType::Q4_0: launch<DType::Q4_0>(w, x, n, y, stream); break;
    case DType::Q4_1: launch<DType::Q4_1>(w, x, n, y, stream); break;
    case DType::Q4_K: launch<DType::Q4_K>(w, x, n, y, stream); break;
    case DType::Q5_K: launch<DType::Q5_K>(w, x, n, y, stream); break;
    case DType::Q6_K: launch<DType::Q6_K>(w, x, n, y, stream); break;
    default: throw std::invalid_argument("CUDA matmul: unsupported weight type");
  }
}

}  // namespace llmrt::cuda
