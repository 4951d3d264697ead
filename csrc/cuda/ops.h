// Launchers of the CUDA kernels (matmul.cu, attention.cu, elementwise.cu),
// used by backend_cuda.cu. Every pointer is device memory unless named
// host_*; every launch goes to `stream`.
#pragma once

#include <cuda_runtime.h>

#include <cstddef>
#include <cstdint>

#include "core/backend.h"
#include "core/kv_cache.h"
#include "core/sampler.h"

namespace llmrt::cuda {

// ---- matmul.cu ----
// y (n, w.rows) = x (n, w.cols) @ W^T, W dequantised in registers; with
// tensor_cores and at least kTensorCoreRows tokens, on tensor cores (f16
// operands, f32 sums).
constexpr int kTensorCoreRows = 16;
void matmul(const WeightView& w, const float* x, int n, float* y, cudaStream_t stream,
            bool tensor_cores = false);
// Whether a weight type has a kernel.
bool matmul_supported(DType t);
// Fused products (see Backend's fused operations): every job's y = rmsnorm(x)
// @ W^T (+ bias), weights of one type in one launch; y += x @ W^T; gate =
// silu(rmsnorm(x) @ Wg^T) * (rmsnorm(x) @ Wu^T). The normed x lives in
// shared memory: norm_fits_cols says whether n rows of `cols` fit, and
// fused_supported whether gate and up can run together.
void norm_matmul_many(const float* x, const float* norm_w, int n, int cols, float eps,
                      const MatmulJob* jobs, int count, cudaStream_t stream);
void matmul_add(const WeightView& w, const float* x, int n, float* y, cudaStream_t stream);
void norm_gate_up(const float* x, const float* norm_w, int n, int cols, float eps,
                  const WeightView& wg, const WeightView& wu, float* gate, cudaStream_t stream);
bool norm_fits_cols(int n, int cols);
bool fused_supported(const WeightView& a, const WeightView& b, int n, int cols);

// ---- elementwise.cu ----
// out[r] = first index of the largest of row r of x (rows, cols)
void argmax(const float* x, int rows, int cols, int32_t* out, cudaStream_t stream);
void embed(const WeightView& table, const int32_t* ids, int n, float* out, cudaStream_t stream);
void rmsnorm(const float* x, const float* w, int n, int dim, float eps, float* y,
             cudaStream_t stream);
void add_bias(float* y, const float* bias, int n, int dim, cudaStream_t stream);
void add(float* y, const float* x, size_t count, cudaStream_t stream);
void swiglu(float* gate, const float* up, size_t count, cudaStream_t stream);
void geglu(float* gate, const float* up, size_t count, cudaStream_t stream);  // GELU (tanh)
// gpt-oss: min(g, limit) * sigmoid(alpha * min(g, limit)) * (clamp(u, +-limit) + 1)
void swiglu_clamped(float* gate, const float* up, size_t count, float alpha, float limit,
                    cudaStream_t stream);
void softcap(float* x, size_t count, float cap, cudaStream_t stream);  // cap tanh(x / cap)
void scale(float* x, size_t count, float s, cudaStream_t stream);
// dst row i = src row rows[i]; dst row rows[i] += weights[i] * src row i
void gather_rows(float* dst, const float* src, const int32_t* rows, int count, int dim,
                 cudaStream_t stream);
void scatter_add_rows(float* dst, const float* src, const int32_t* rows, const float* weights,
                      int count, int dim, cudaStream_t stream);
// inv_freq: (n_rot / 2) frequencies (already divided by any factors).
// y (n, dim) = LayerNorm(x) * w + b, row by row (w, b device memory).
void layernorm(const float* x, const float* w, const float* b, int n, int dim, float eps,
               float* y, cudaStream_t stream);
// x = gelu(x), the tanh form.
void gelu(float* x, size_t count, cudaStream_t stream);
// x = x Phi(x), the exact form.
void gelu_erf(float* x, size_t count, cudaStream_t stream);
void rope(float* x, int n, int n_heads, int head_dim, const int32_t* pos, const float* inv_freq,
          int n_rot, float pos_scale, bool neox, float mscale, cudaStream_t stream);

// ---- sampler.cu ----
// For each of n draws (device memory, like mods): the token its chain
// draws from row draws[i].row of logits (rows, V) -> out[i] (-1 when every
// token is masked or the logits are NaN); work: n * V floats of scratch.
void sample(const float* logits, int V, const DeviceDraw* draws, int n, const LogitMod* mods,
            float* work, int32_t* out, cudaStream_t stream);

// ---- attention.cu ----
// Where one layer's keys and values live in the pool: block b's key row at
// slot j of kv head h is at k + b * block_bytes + j * row_bytes + h * head_bytes.
struct KVLayout {
  uint8_t* k;
  uint8_t* v;
  size_t block_bytes, row_bytes, head_bytes;
  int block_tokens, n_kv_heads, head_dim;
  int type;  // KVType
};
// RoPE of q (n, n_heads, head_dim) and k (n, n_kv_heads, head_dim) in
// place, then k and v into the cache rows at offs[t], one kernel.
void rope_kv_write(const KVLayout& L, const int64_t* offs, int n, const int32_t* pos,
                   const float* inv_freq, int n_rot, float pos_scale, bool neox, float mscale,
                   int n_heads,
                   float* q, float* k, const float* v, cudaStream_t stream);
// k, v (n, n_kv_heads * head_dim) -> the rows at byte offsets offs[t] (from
// the layer's k / v base).
void kv_write(const KVLayout& L, const int64_t* offs, int n, const float* k, const float* v,
              cudaStream_t stream);
// q (rows, n_heads, head_dim) -> out: row t, at position info[3t], attends
// to positions [0, info[3t + 2]] (its own, or an image's last) of the
// sequence whose block table starts at tables + info[3t + 1] (with p.window
// set, only the keys after info[3t] - p.window; scores soft-capped when
// p.softcap is).
void attention(const KVLayout& L, const int* tables, const int* info, int rows, int n_heads,
               const AttnParams& p, const float* q, float* out, cudaStream_t stream);
// The same, split-KV: each row's keys cut into S slices run by separate
// blocks (with the query heads of a KV head together), merged through
// part_ml (rows * n_heads * S * 2 floats) and part_acc (rows * n_heads * S *
// head_dim floats) when S > 1.
constexpr int kMaxSplits = 32;
void split_attention(const KVLayout& L, const int* tables, const int* info, int rows,
                     int n_heads, int S, const AttnParams& p, const float* q, float* out,
                     float* part_ml, float* part_acc, cudaStream_t stream);
// The slices for a pass of `rows` rows: enough blocks to fill the GPU (a
// function of rows only, so a captured graph keeps its grid).
int attention_splits(int rows, int n_kv_heads, int n_heads, int sm_count);
// Bidirectional attention without a cache: n_seq sequences of T rows; q, k,
// v, out (n_seq * T, n_heads * hd); out = softmax(q k^T * scale) v per
// sequence and head.
void attention_dense(const float* q, const float* k, const float* v, int n_seq, int T,
                     int n_heads, int hd, float scale, float* out, cudaStream_t stream);

}  // namespace llmrt::cuda
