// Embedding rows, RMSNorm, bias and residual adds, SwiGLU and RoPE.
#include <cmath>

#include "cuda/common.cuh"
#include "cuda/ops.h"

namespace llmrt::cuda {

namespace {

template <DType T>
__global__ void embed_kernel(const uint8_t* __restrict__ table, size_t row_stride, int cols,
                             const int32_t* __restrict__ ids, float* __restrict__ out) {
  // one block per token, one 32-weight sub-block per thread
  const int t = blockIdx.x;
  const uint8_t* row = table + (size_t)ids[t] * row_stride;
  float w[32];
  for (int sb = threadIdx.x; sb < cols / 32; sb += blockDim.x) {
    load_sub<T>(row, sb, w);
    float* o = out + (size_t)t * cols + 32 * sb;
#pragma unroll
    for (int i = 0; i < 32; ++i) o[i] = w[i];
  }
}

// one block of 256 threads per row
// y may be x (in place): each element is read before it is written, by one thread
__global__ void rmsnorm_kernel(const float* x, const float* __restrict__ w, int dim, float eps,
                               float* y) {
  __shared__ float part[8];
  const float* xr = x + (size_t)blockIdx.x * dim;
  float* yr = y + (size_t)blockIdx.x * dim;
  float s = 0.f;
  for (int i = threadIdx.x; i < dim; i += blockDim.x) s += xr[i] * xr[i];
  s = warp_sum(s);
  if ((threadIdx.x & 31) == 0) part[threadIdx.x >> 5] = s;
  __syncthreads();
  float total = 0.f;
  for (int i = 0; i < (int)(blockDim.x >> 5); ++i) total += part[i];
  const float inv = rsqrtf(total / (float)dim + eps);
  for (int i = threadIdx.x; i < dim; i += blockDim.x) yr[i] = xr[i] * inv * w[i];
}

// one block per row: the mean, then the variance about it
__global__ void layernorm_kernel(const float* x, const float* __restrict__ w,
                                 const float* __restrict__ b, int dim, float eps, float* y) {
  __shared__ float part[8];
  __shared__ float stat;
  const float* xr = x + (size_t)blockIdx.x * dim;
  float* yr = y + (size_t)blockIdx.x * dim;
  float s = 0.f;
  for (int i = threadIdx.x; i < dim; i += blockDim.x) s += xr[i];
  s = warp_sum(s);
  if ((threadIdx.x & 31) == 0) part[threadIdx.x >> 5] = s;
  __syncthreads();
  if (threadIdx.x == 0) {
    float total = 0.f;
    for (int i = 0; i < (int)(blockDim.x >> 5); ++i) total += part[i];
    stat = total / (float)dim;
  }
  __syncthreads();
  const float mean = stat;
  float v = 0.f;
  for (int i = threadIdx.x; i < dim; i += blockDim.x) v += (xr[i] - mean) * (xr[i] - mean);
  v = warp_sum(v);
  __syncthreads();  // every thread has read part[] and stat
  if ((threadIdx.x & 31) == 0) part[threadIdx.x >> 5] = v;
  __syncthreads();
  float total = 0.f;
  for (int i = 0; i < (int)(blockDim.x >> 5); ++i) total += part[i];
  const float inv = rsqrtf(total / (float)dim + eps);
  for (int i = threadIdx.x; i < dim; i += blockDim.x) yr[i] = (xr[i] - mean) * inv * w[i] + b[i];
}

__global__ void gelu_kernel(float* g, size_t count) {
  const size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x;
  if (i >= count) return;
  const float x = g[i];
  g[i] = x / (1.f + expf(-x * (1.5957691216f + 0.0713548163f * x * x)));
}

__global__ void add_bias_kernel(float* y, const float* b, int dim, size_t count) {
  const size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x;
  if (i < count) y[i] += b[i % dim];
}

__global__ void add_kernel(float* y, const float* x, size_t count) {
  const size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x;
  if (i < count) y[i] += x[i];
}

__global__ void swiglu_kernel(float* g, const float* u, size_t count) {
  const size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x;
  if (i < count) g[i] = g[i] / (1.f + expf(-g[i])) * u[i];
}

__global__ void swiglu_clamped_kernel(float* g, const float* u, size_t count, float alpha,
                                      float limit) {
  const size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x;
  if (i >= count) return;
  const float x = fminf(g[i], limit);
  const float y = fminf(fmaxf(u[i], -limit), limit);
  g[i] = x / (1.f + expf(-alpha * x)) * (y + 1.f);
}

// gelu (tanh form) as x / (1 + exp(-2 y)), y = sqrt(2 / pi) (x + 0.044715 x^3)
__global__ void geglu_kernel(float* g, const float* u, size_t count) {
  const size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x;
  if (i >= count) return;
  const float x = g[i];
  g[i] = x / (1.f + expf(-x * (1.5957691216f + 0.0713548163f * x * x))) * u[i];
}

__global__ void softcap_kernel(float* x, size_t count, float cap) {
  const size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x;
  if (i < count) x[i] = cap * tanhf(x[i] / cap);
}

__global__ void scale_kernel(float* x, size_t count, float s) {
  const size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x;
  if (i < count) x[i] *= s;
}

// one block per (token, head), one thread per rotated pair
__global__ void rope_kernel(float* x, int n_heads, int head_dim, const int32_t* pos,
                            const float* inv_freq, int half, float pos_scale, bool neox,
                            float mscale) {
  const int t = blockIdx.x / n_heads, h = blockIdx.x % n_heads;
  float* v = x + ((size_t)t * n_heads + h) * head_dim;
  const float p = (float)pos[t] * pos_scale;
  for (int i = threadIdx.x; i < half; i += blockDim.x) rotate_pair(v, i, p, inv_freq, half, neox, mscale);
}

__global__ void gather_rows_kernel(float* dst, const float* src, const int32_t* rows, int dim) {
  const float* s = src + (size_t)rows[blockIdx.x] * dim;
  float* d = dst + (size_t)blockIdx.x * dim;
  for (int i = threadIdx.x; i < dim; i += blockDim.x) d[i] = s[i];
}

__global__ void scatter_add_rows_kernel(float* dst, const float* src, const int32_t* rows,
                                        const float* w, int dim) {
  float* d = dst + (size_t)rows[blockIdx.x] * dim;
  const float* s = src + (size_t)blockIdx.x * dim;
  const float a = w[blockIdx.x];
  for (int i = threadIdx.x; i < dim; i += blockDim.x) d[i] += a * s[i];
}

// one block of 256 threads per row; ties go to the first index
__global__ void argmax_kernel(const float* __restrict__ x, int cols, int32_t* __restrict__ out) {
  __shared__ float bv[256];
  __shared__ int bi[256];
  const float* row = x + (size_t)blockIdx.x * cols;
  float v = -INFINITY;
  int idx = 0x7fffffff;
  for (int i = threadIdx.x; i < cols; i += blockDim.x)
    if (row[i] > v) {  // i grows: the first of equal values stays
      v = row[i];
      idx = i;
    }
  bv[threadIdx.x] = v;
  bi[threadIdx.x] = idx;
  __syncthreads();
  for (int s = blockDim.x / 2; s > 0; s >>= 1) {
    if ((int)threadIdx.x < s) {
      const float ov = bv[threadIdx.x + s];
      const int oi = bi[threadIdx.x + s];
      if (ov > bv[threadIdx.x] || (ov == bv[threadIdx.x] && oi < bi[threadIdx.x])) {
        bv[threadIdx.x] = ov;
        bi[threadIdx.x] = oi;
      }
    }
    __syncthreads();
  }
  if (threadIdx.x == 0) out[blockIdx.x] = bi[0] == 0x7fffffff ? 0 : bi[0];
}

unsigned blocks_for(size_t count, int threads) { return (unsigned)((count + threads - 1) / threads); }

}  // namespace

void embed(const WeightView& table, const int32_t* ids, int n, float* out, cudaStream_t stream) {
  if (table.cols % 32 != 0) throw std::invalid_argument("CUDA embed: cols must be a multiple of 32");
  const int threads = 64;
  switch (table.type) {
#define LLMRT_EMBED(T)                                                                     \
  case T:                                                                                  \
    embed_kernel<T><<<n, threads, 0, stream>>>(table.data, table.row_stride(), (int)table.cols, \
                                               ids, out);                                  \
    break;
    LLMRT_EMBED(DType::F32)
    LLMRT_EMBED(DType::F16)
    LLMRT_EMBED(DType::BF16)
    LLMRT_EMBED(DType::Q8_0)
    LLMRT_EMBED(DType::Q4_0)
    LLMRT_EMBED(DType::Q4_1)
    LLMRT_EMBED(DType::Q4_K)
    LLMRT_EMBED(DType::Q5_K)
    LLMRT_EMBED(DType::Q6_K)
    LLMRT_EMBED(DType::MXFP4)
#undef LLMRT_EMBED
    default: throw std::invalid_argument("CUDA embed: unsupported table type");
  }
  LLMRT_CUDA_LAUNCHED("embed");
}

void gather_rows(float* dst, const float* src, const int32_t* rows, int count, int dim,
                 cudaStream_t stream) {
  gather_rows_kernel<<<count, 128, 0, stream>>>(dst, src, rows, dim);
  LLMRT_CUDA_LAUNCHED("gather_rows");
}

void scatter_add_rows(float* dst, const float* src, const int32_t* rows, const float* weights,
                      int count, int dim, cudaStream_t stream) {
  scatter_add_rows_kernel<<<count, 128, 0, stream>>>(dst, src, rows, weights, dim);
  LLMRT_CUDA_LAUNCHED("scatter_add_rows");
}

void argmax(const float* x, int rows, int cols, int32_t* out, cudaStream_t stream) {
  argmax_kernel<<<rows, 256, 0, stream>>>(x, cols, out);
  LLMRT_CUDA_LAUNCHED("argmax");
}

void rmsnorm(const float* x, const float* w, int n, int dim, float eps, float* y,
             cudaStream_t stream) {
  rmsnorm_kernel<<<n, 256, 0, stream>>>(x, w, dim, eps, y);
  LLMRT_CUDA_LAUNCHED("rmsnorm");
}

void layernorm(const float* x, const float* w, const float* b, int n, int dim, float eps,
               float* y, cudaStream_t stream) {
  layernorm_kernel<<<n, 256, 0, stream>>>(x, w, b, dim, eps, y);
  LLMRT_CUDA_LAUNCHED("layernorm");
}

__global__ void gelu_erf_kernel(float* g, size_t count) {
  const size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x;
  if (i >= count) return;
  const float x = g[i];
  g[i] = 0.5f * x * (1.f + erff(x * 0.70710678118f));
}

void gelu_erf(float* x, size_t count, cudaStream_t stream) {
  gelu_erf_kernel<<<blocks_for(count, 256), 256, 0, stream>>>(x, count);
  LLMRT_CUDA_LAUNCHED("gelu_erf");
}

void gelu(float* x, size_t count, cudaStream_t stream) {
  gelu_kernel<<<blocks_for(count, 256), 256, 0, stream>>>(x, count);
  LLMRT_CUDA_LAUNCHED("gelu");
}

void add_bias(float* y, const float* bias, int n, int dim, cudaStream_t stream) {
  const size_t count = (size_t)n * dim;
  add_bias_kernel<<<blocks_for(count, 256), 256, 0, stream>>>(y, bias, dim, count);
  LLMRT_CUDA_LAUNCHED("add_bias");
}

void add(float* y, const float* x, size_t count, cudaStream_t stream) {
  add_kernel<<<blocks_for(count, 256), 256, 0, stream>>>(y, x, count);
  LLMRT_CUDA_LAUNCHED("add");
}

void swiglu(float* gate, const float* up, size_t count, cudaStream_t stream) {
  swiglu_kernel<<<blocks_for(count, 256), 256, 0, stream>>>(gate, up, count);
  LLMRT_CUDA_LAUNCHED("swiglu");
}

void swiglu_clamped(float* gate, const float* up, size_t count, float alpha, float limit,
                    cudaStream_t stream) {
  swiglu_clamped_kernel<<<blocks_for(count, 256), 256, 0, stream>>>(gate, up, count, alpha,
                                                                     limit);
  LLMRT_CUDA_LAUNCHED("swiglu_clamped");
}

void geglu(float* gate, const float* up, size_t count, cudaStream_t stream) {
  geglu_kernel<<<blocks_for(count, 256), 256, 0, stream>>>(gate, up, count);
  LLMRT_CUDA_LAUNCHED("geglu");
}

void softcap(float* x, size_t count, float cap, cudaStream_t stream) {
  softcap_kernel<<<blocks_for(count, 256), 256, 0, stream>>>(x, count, cap);
  LLMRT_CUDA_LAUNCHED("softcap");
}

void scale(float* x, size_t count, float s, cudaStream_t stream) {
  scale_kernel<<<blocks_for(count, 256), 256, 0, stream>>>(x, count, s);
  LLMRT_CUDA_LAUNCHED("scale");
}

void rope(float* x, int n, int n_heads, int head_dim, const int32_t* pos, const float* inv_freq,
          int n_rot, float pos_scale, bool neox, float mscale, cudaStream_t stream) {
  rope_kernel<<<n * n_heads, 64, 0, stream>>>(x, n_heads, head_dim, pos, inv_freq, n_rot / 2,
                                              pos_scale, neox, mscale);
  LLMRT_CUDA_LAUNCHED("rope");
}

}  // namespace llmrt::cuda
