// Matrix products against GGUF-typed weights: each warp takes one weight
// row and up to kTok tokens; lanes take consecutive 32-weight sub-blocks
// (neighbouring memory), widen them in registers and dot them with each
// token's activations; a warp sum gives each output.
//
// With tensor cores (a backend built with them, kTensorCoreRows tokens or
// more): 64 weight rows x 64 tokens a block, each 32-wide block of the
// weights dequantised into shared memory as f16 beside the tokens'
// activations (f16), products by WMMA 16 x 16 x 16 tiles accumulated in f32.
#include <mma.h>

#include <algorithm>

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

// ---- tensor cores ------------------------------------------------------------------
constexpr int kTcRows = 64;        // weight rows a block
constexpr int kTcTok = 64;         // tokens a block
constexpr int kTcLd = 32 + 8;      // shared row pitch in halves (a multiple of 8)
constexpr int kTcThreads = 128;    // 4 warps, each 32 rows x 32 tokens of the tile

template <DType T>
__global__ void __launch_bounds__(kTcThreads)
tc_kernel(const uint8_t* __restrict__ w, size_t row_stride, int rows, int cols,
          const float* __restrict__ x, int n, float* __restrict__ y) {
  using namespace nvcuda;
  __shared__ __align__(32) half ws[kTcRows * kTcLd];
  __shared__ __align__(32) half xs[kTcTok * kTcLd];
  __shared__ __align__(32) float cs[kTcThreads / 32][32 * 32];
  const int tid = threadIdx.x, warp = tid >> 5, lane = tid & 31;
  const int r0 = blockIdx.x * kTcRows, t0 = blockIdx.y * kTcTok;
  const int wr = (warp >> 1) * 32, wt = (warp & 1) * 32;  // the warp's rows and tokens
  wmma::fragment<wmma::accumulator, 16, 16, 16, float> acc[2][2];
#pragma unroll
  for (int i = 0; i < 2; ++i)
#pragma unroll
    for (int j = 0; j < 2; ++j) wmma::fill_fragment(acc[i][j], 0.f);
  for (int kb = 0; kb < cols / 32; ++kb) {
    if (tid < kTcRows) {  // a weight row's 32-wide block, dequantised
      float wv[32];
      const int r = r0 + tid;
      if (r < rows) {
        load_sub<T>(w + (size_t)r * row_stride, kb, wv);
      } else {
#pragma unroll
        for (int i = 0; i < 32; ++i) wv[i] = 0.f;
      }
#pragma unroll
      for (int i = 0; i < 32; ++i) ws[tid * kTcLd + i] = __float2half(wv[i]);
    }
    // the tokens' 32 values: 16 a thread (two threads a token)
    {
      const int t = tid >> 1, h = (tid & 1) * 16;
      const bool in = t0 + t < n;
      const float* xp = x + (size_t)(t0 + t) * cols + 32 * kb + h;
#pragma unroll
      for (int i = 0; i < 16; i += 4) {
        const float4 v = in ? *reinterpret_cast<const float4*>(xp + i) : make_float4(0.f, 0.f, 0.f, 0.f);
        half* d = xs + t * kTcLd + h + i;
        d[0] = __float2half(v.x);
        d[1] = __float2half(v.y);
        d[2] = __float2half(v.z);
        d[3] = __float2half(v.w);
      }
    }
    __syncthreads();
#pragma unroll
    for (int kk = 0; kk < 32; kk += 16) {
      wmma::fragment<wmma::matrix_a, 16, 16, 16, half, wmma::row_major> a[2];
      wmma::fragment<wmma::matrix_b, 16, 16, 16, half, wmma::col_major> b[2];
#pragma unroll
      for (int i = 0; i < 2; ++i) wmma::load_matrix_sync(a[i], ws + (wr + 16 * i) * kTcLd + kk, kTcLd);
#pragma unroll
      for (int j = 0; j < 2; ++j) wmma::load_matrix_sync(b[j], xs + (wt + 16 * j) * kTcLd + kk, kTcLd);
#pragma unroll
      for (int i = 0; i < 2; ++i)
#pragma unroll
        for (int j = 0; j < 2; ++j) wmma::mma_sync(acc[i][j], a[i], b[j], acc[i][j]);
    }
    __syncthreads();  // the tiles are refilled next
  }
  // c[token * 32 + row] of the warp's 32 x 32, then y (n, rows) within bounds
  float* c = cs[warp];
#pragma unroll
  for (int i = 0; i < 2; ++i)
#pragma unroll
    for (int j = 0; j < 2; ++j)
      wmma::store_matrix_sync(c + 16 * j * 32 + 16 * i, acc[i][j], 32, wmma::mem_col_major);
  __syncwarp();
  for (int e = lane; e < 32 * 32; e += 32) {
    const int r = r0 + wr + (e & 31), t = t0 + wt + (e >> 5);
    if (r < rows && t < n) y[(size_t)t * rows + r] = c[e];
  }
}

template <DType T>
void launch_tc(const WeightView& w, const float* x, int n, float* y, cudaStream_t stream) {
  const dim3 grid((unsigned)((w.rows + kTcRows - 1) / kTcRows), (unsigned)((n + kTcTok - 1) / kTcTok));
  tc_kernel<T><<<grid, kTcThreads, 0, stream>>>(w.data, w.row_stride(), (int)w.rows, (int)w.cols,
                                               x, n, y);
  LLMRT_CUDA_LAUNCHED("tensor-core matmul");
}

template <DType T>
void launch(const WeightView& w, const float* x, int n, float* y, cudaStream_t stream) {
  const dim3 grid((unsigned)((w.rows + kWarps - 1) / kWarps), (unsigned)((n + kTok - 1) / kTok));
  matmul_kernel<T><<<grid, 32 * kWarps, 0, stream>>>(w.data, w.row_stride(), (int)w.rows,
                                                      (int)w.cols, x, n, y);
  LLMRT_CUDA_LAUNCHED("matmul");
}

// The normed rows in shared memory: each 32-value chunk padded to 36 floats,
// so the lanes' float4 reads of neighbouring chunks fall in different banks.
constexpr int kPad = 36;
__host__ __device__ constexpr size_t padded(int cols) { return (size_t)cols / 32 * kPad; }

// Shared memory the normed prologue takes: a block's rows (at most kTok) of
// the padded x; at most 96 KB (what every supported GPU grants a block).
size_t norm_bytes(int n, int cols) {
  return sizeof(float) * (size_t)std::min(n, kTok) * padded(cols);
}
bool norm_fits(int n, int cols) { return norm_bytes(n, cols) <= 96 * 1024; }

// ---- fused products: the normed x in the prologue, several weights a
// launch, bias / residual / SwiGLU in the epilogue ---------------------------------

// Up to three weights of one type multiplied by the same x in one launch.
struct Jobs {
  const uint8_t* w[3];
  size_t stride[3];
  int rows[3];
  float* y[3];
  const float* bias[3];
  int first_block[4];  // blocks of job j: [first_block[j], first_block[j + 1])
  int count;
};

// NORM: x is rmsnorm'd (weight norm_w) into shared memory first, each
// block for its own tokens. GLU: jobs 0 and 1 are gate and up, and the
// output is silu(gate) * up into job 0's y. Otherwise each job's y gets
// xW^T (+ bias), added to y when accumulate.
template <DType T, bool NORM, bool GLU>
__global__ void __launch_bounds__(32 * kWarps)
fused_kernel(Jobs jobs, const float* __restrict__ x, const float* __restrict__ norm_w, float eps,
             int cols, int n, bool accumulate) {
  extern __shared__ float xs[];  // NORM: (tokens of the block, padded(cols))
  const int lane = threadIdx.x & 31;
  int j = 0;
  while (j + 1 < jobs.count && (int)blockIdx.x >= jobs.first_block[j + 1]) ++j;
  const int r = (blockIdx.x - jobs.first_block[j]) * kWarps + (threadIdx.x >> 5);
  const int t0 = blockIdx.y * kTok;
  const int nt = min(kTok, n - t0);
  const float* xb = x + (size_t)t0 * cols;
  if constexpr (NORM) {
    __shared__ float part[kWarps];
    for (int t = 0; t < nt; ++t) {
      const float* xr = x + (size_t)(t0 + t) * cols;
      float ss = 0.f;
      for (int i = threadIdx.x; i < cols; i += blockDim.x) ss += xr[i] * xr[i];
      ss = warp_sum(ss);
      if (lane == 0) part[threadIdx.x >> 5] = ss;
      __syncthreads();
      float total = 0.f;
#pragma unroll
      for (int w = 0; w < kWarps; ++w) total += part[w];
      const float inv = rsqrtf(total / (float)cols + eps);
      for (int i = threadIdx.x; i < cols; i += blockDim.x)
        xs[(size_t)t * padded(cols) + i / 32 * kPad + i % 32] = xr[i] * inv * norm_w[i];
      __syncthreads();  // part is reused by the next token
    }
    xb = xs;
  }
  const int rows = jobs.rows[j];
  if (r >= rows) return;  // after the block's barriers
  const uint8_t* row = jobs.w[j] + (size_t)r * jobs.stride[j];
  const uint8_t* row_up = GLU ? jobs.w[1] + (size_t)r * jobs.stride[1] : nullptr;
  float acc[kTok], acc_up[GLU ? kTok : 1];
#pragma unroll
  for (int t = 0; t < kTok; ++t) {
    acc[t] = 0.f;
    if constexpr (GLU) acc_up[t] = 0.f;
  }
  float wv[32], uv[GLU ? 32 : 1];
  for (int sb = lane; sb < cols / 32; sb += 32) {
    load_sub<T>(row, sb, wv);
    if constexpr (GLU) load_sub<T>(row_up, sb, uv);
#pragma unroll
    for (int t = 0; t < kTok; ++t) {
      if (t >= nt) break;
      const float4* xp = reinterpret_cast<const float4*>(
          NORM ? xb + (size_t)t * padded(cols) + (size_t)kPad * sb : xb + (size_t)t * cols + 32 * sb);
      float s = 0.f, su = 0.f;
#pragma unroll
      for (int i = 0; i < 8; ++i) {
        const float4 v = xp[i];
        s += wv[4 * i] * v.x + wv[4 * i + 1] * v.y + wv[4 * i + 2] * v.z + wv[4 * i + 3] * v.w;
        if constexpr (GLU)
          su += uv[4 * i] * v.x + uv[4 * i + 1] * v.y + uv[4 * i + 2] * v.z + uv[4 * i + 3] * v.w;
      }
      acc[t] += s;
      if constexpr (GLU) acc_up[t] += su;
    }
  }
#pragma unroll
  for (int t = 0; t < kTok; ++t) {
    if (t >= nt) break;
    const float s = warp_sum(acc[t]);
    if constexpr (GLU) {
      const float u = warp_sum(acc_up[t]);
      if (lane == 0) jobs.y[0][(size_t)(t0 + t) * rows + r] = s / (1.f + expf(-s)) * u;
    } else {
      if (lane == 0) {
        float* o = jobs.y[j] + (size_t)(t0 + t) * rows + r;
        const float v = s + (jobs.bias[j] ? jobs.bias[j][r] : 0.f);
        *o = accumulate ? *o + v : v;
      }
    }
  }
}

template <DType T, bool NORM, bool GLU>
void launch_fused(const Jobs& jobs, int blocks, const float* x, const float* norm_w, float eps,
                  int cols, int n, bool accumulate, cudaStream_t stream) {
  const dim3 grid((unsigned)blocks, (unsigned)((n + kTok - 1) / kTok));
  size_t shared = 0;
  if constexpr (NORM) {
    shared = norm_bytes(n, cols);
    static size_t allowed = 48 * 1024;  // dynamic shared memory this instance may take
    if (shared > allowed) {
      LLMRT_CUDA_CHECK(cudaFuncSetAttribute(fused_kernel<T, NORM, GLU>,
                                            cudaFuncAttributeMaxDynamicSharedMemorySize,
                                            (int)shared));
      allowed = shared;
    }
  }
  fused_kernel<T, NORM, GLU><<<grid, 32 * kWarps, shared, stream>>>(jobs, x, norm_w, eps, cols,
                                                                     n, accumulate);
  LLMRT_CUDA_LAUNCHED("fused matmul");
}

template <bool NORM, bool GLU>
void dispatch_fused(DType t, const Jobs& jobs, int blocks, const float* x, const float* norm_w,
                    float eps, int cols, int n, bool accumulate, cudaStream_t stream) {
  switch (t) {
#define LLMRT_FUSED(D) \
  case D: launch_fused<D, NORM, GLU>(jobs, blocks, x, norm_w, eps, cols, n, accumulate, stream); break;
    LLMRT_FUSED(DType::F32)
    LLMRT_FUSED(DType::F16)
    LLMRT_FUSED(DType::BF16)
    LLMRT_FUSED(DType::Q8_0)
    LLMRT_FUSED(DType::Q4_0)
    LLMRT_FUSED(DType::Q4_1)
    LLMRT_FUSED(DType::Q4_K)
    LLMRT_FUSED(DType::Q5_K)
    LLMRT_FUSED(DType::Q6_K)
    LLMRT_FUSED(DType::MXFP4)
#undef LLMRT_FUSED
    default: throw std::invalid_argument("CUDA matmul: unsupported weight type");
  }
}

// The jobs as one launch's table; blocks: the launch's x blocks.
Jobs job_table(const MatmulJob* js, int count, int& blocks) {
  Jobs t{};
  t.count = count;
  blocks = 0;
  for (int i = 0; i < count; ++i) {
    const WeightView& w = *js[i].w;
    t.w[i] = w.data;
    t.stride[i] = w.row_stride();
    t.rows[i] = (int)w.rows;
    t.y[i] = js[i].y;
    t.bias[i] = js[i].bias;
    t.first_block[i] = blocks;
    blocks += (int)((w.rows + kWarps - 1) / kWarps);
  }
  t.first_block[count] = blocks;
  return t;
}


}  // namespace

bool matmul_supported(DType t) {
  switch (t) {
    case DType::F32: case DType::F16: case DType::BF16: case DType::Q8_0: case DType::Q4_0:
    case DType::Q4_1: case DType::Q4_K: case DType::Q5_K: case DType::Q6_K:
    case DType::MXFP4: return true;
    default: return false;
  }
}

void matmul(const WeightView& w, const float* x, int n, float* y, cudaStream_t stream,
            bool tensor_cores) {
  if (w.cols % 32 != 0) throw std::invalid_argument("CUDA matmul: cols must be a multiple of 32");
  if (tensor_cores && n >= kTensorCoreRows) {
    switch (w.type) {
      case DType::F32: return launch_tc<DType::F32>(w, x, n, y, stream);
      case DType::F16: return launch_tc<DType::F16>(w, x, n, y, stream);
      case DType::BF16: return launch_tc<DType::BF16>(w, x, n, y, stream);
      case DType::Q8_0: return launch_tc<DType::Q8_0>(w, x, n, y, stream);
      case DType::Q4_0: return launch_tc<DType::Q4_0>(w, x, n, y, stream);
      case DType::Q4_1: return launch_tc<DType::Q4_1>(w, x, n, y, stream);
      case DType::Q4_K: return launch_tc<DType::Q4_K>(w, x, n, y, stream);
      case DType::Q5_K: return launch_tc<DType::Q5_K>(w, x, n, y, stream);
      case DType::Q6_K: return launch_tc<DType::Q6_K>(w, x, n, y, stream);
      case DType::MXFP4: return launch_tc<DType::MXFP4>(w, x, n, y, stream);
      default: break;  // the float kernels below say what is unsupported
    }
  }
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
    case DType::MXFP4: launch<DType::MXFP4>(w, x, n, y, stream); break;
    default: throw std::invalid_argument("CUDA matmul: unsupported weight type");
  }
}

void norm_matmul_many(const float* x, const float* norm_w, int n, int cols, float eps,
                      const MatmulJob* jobs, int count, cudaStream_t stream) {
  if (cols % 32 != 0) throw std::invalid_argument("CUDA matmul: cols must be a multiple of 32");
  // weights of one type share a launch
  for (int i = 0; i < count;) {
    int k = i + 1;
    while (k < count && k - i < 3 && jobs[k].w->type == jobs[i].w->type) ++k;
    int blocks = 0;
    const Jobs t = job_table(jobs + i, k - i, blocks);
    if (norm_fits(n, cols))
      dispatch_fused<true, false>(jobs[i].w->type, t, blocks, x, norm_w, eps, cols, n, false,
                                  stream);
    else
      throw std::invalid_argument("CUDA norm_matmul: rows too wide for the normed prologue");
    i = k;
  }
}

void matmul_add(const WeightView& w, const float* x, int n, float* y, cudaStream_t stream) {
  if (w.cols % 32 != 0) throw std::invalid_argument("CUDA matmul: cols must be a multiple of 32");
  const MatmulJob job{&w, y};
  int blocks = 0;
  const Jobs t = job_table(&job, 1, blocks);
  dispatch_fused<false, false>(w.type, t, blocks, x, nullptr, 0.f, (int)w.cols, n, true, stream);
}

void norm_gate_up(const float* x, const float* norm_w, int n, int cols, float eps,
                  const WeightView& wg, const WeightView& wu, float* gate, cudaStream_t stream) {
  if (cols % 32 != 0) throw std::invalid_argument("CUDA matmul: cols must be a multiple of 32");
  const MatmulJob js[2] = {{&wg, gate}, {&wu, nullptr}};
  int blocks = 0;
  Jobs t = job_table(js, 2, blocks);
  blocks = t.first_block[1];  // the grid runs over gate's rows; each warp does both
  t.count = 1;
  dispatch_fused<true, true>(wg.type, t, blocks, x, norm_w, eps, cols, n, false, stream);
}

bool fused_supported(const WeightView& a, const WeightView& b, int n, int cols) {
  return a.type == b.type && a.rows == b.rows && a.cols == cols && b.cols == cols &&
         cols % 32 == 0 && norm_fits(n, cols);
}

bool norm_fits_cols(int n, int cols) { return cols % 32 == 0 && norm_fits(n, cols); }

}  // namespace llmrt::cuda
