// The CUDA backend: weights copied to the GPU once (as stored: the kernels
// dequantise in registers), activations and the KV pool in device memory,
// every kernel on one stream; a pass's host data (token ids, positions,
// block tables) is uploaded once, to fixed addresses, so that decode steps
// can be captured as CUDA graphs and replayed.
#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <cstring>
#include <functional>
#include <string>
#include <unordered_map>
#include <utility>
#include <vector>

#include "cuda/backend_cuda.h"
#include "cuda/common.cuh"
#include "cuda/ops.h"

namespace llmrt {

int cuda_device_count() {
  int n = 0;
  if (cudaGetDeviceCount(&n) != cudaSuccess) {
    cudaGetLastError();  // clear: no driver or no device
    return 0;
  }
  return n;
}

std::string cuda_device_name(int device) {
  cudaDeviceProp p{};
  if (cudaGetDeviceProperties(&p, device) != cudaSuccess) {
    cudaGetLastError();
    return "unavailable";
  }
  return std::string(p.name) + " (sm_" + std::to_string(p.major) + std::to_string(p.minor) +
         ", " + std::to_string(p.totalGlobalMem >> 20) + " MiB)";
}

namespace {

using cuda::check;

class DevicePool : public PoolMemory {
 public:
  explicit DevicePool(cudaStream_t s) : stream_(s) {}
  void* alloc(size_t bytes) override {
    void* p = nullptr;
    LLMRT_CUDA_CHECK(cudaMalloc(&p, bytes));
    return p;
  }
  void free(void* p) override { cudaFree(p); }
  void copy(void* dst, const void* src, size_t bytes) override {
    LLMRT_CUDA_CHECK(cudaMemcpyAsync(dst, src, bytes, cudaMemcpyDeviceToDevice, stream_));
  }

 private:
  cudaStream_t stream_;
};

// A pass's host data at fixed device addresses (so that a captured graph
// can be replayed with new values): token ids, positions, (position, table
// offset) per row, byte offsets of each row's K/V slot within a layer, and
// the sequences' block tables at a fixed stride. Staged in pinned memory,
// copied with two asynchronous copies per pass.
struct PassBuffers {
  int rows_cap = 0, seqs_cap = 0, stride = 0;
  uint8_t* host = nullptr;  // pinned
  uint8_t* dev = nullptr;
  size_t bytes = 0;
  // byte offsets of the regions; offs2 / tables2: the sliding pool's
  size_t ids = 0, pos = 0, info = 0, offs = 0, offs2 = 0, tables = 0, tables2 = 0;
  void release() {
    if (host) cudaFreeHost(host);
    if (dev) cudaFree(dev);
    host = dev = nullptr;
  }
  void layout(int rows, int seqs, int stride_) {
    rows_cap = rows;
    seqs_cap = seqs;
    stride = stride_;
    offs = 0;  // int64 first: aligned
    offs2 = offs + sizeof(int64_t) * rows;
    ids = offs2 + sizeof(int64_t) * rows;
    pos = ids + sizeof(int32_t) * rows;
    info = pos + sizeof(int32_t) * rows;
    tables = info + sizeof(int32_t) * 3 * rows;
    tables2 = tables + sizeof(int32_t) * (size_t)seqs * stride;
    bytes = tables2 + sizeof(int32_t) * (size_t)seqs * stride;
    LLMRT_CUDA_CHECK(cudaHostAlloc(reinterpret_cast<void**>(&host), bytes, cudaHostAllocDefault));
    LLMRT_CUDA_CHECK(cudaMalloc(reinterpret_cast<void**>(&dev), bytes));
  }
  template <class T>
  T* h(size_t off) const { return reinterpret_cast<T*>(host + off); }
  template <class T>
  T* d(size_t off) const { return reinterpret_cast<T*>(dev + off); }
};

class CudaBackend : public Backend {
 public:
  CudaBackend(int device, bool tensor_cores) : device_(device), tc_(tensor_cores) {
    if (device < 0 || device >= cuda_device_count())
      throw std::runtime_error("no CUDA device " + std::to_string(device));
    LLMRT_CUDA_CHECK(cudaSetDevice(device));
    LLMRT_CUDA_CHECK(cudaStreamCreateWithFlags(&stream_, cudaStreamNonBlocking));
    LLMRT_CUDA_CHECK(cudaDeviceGetAttribute(&sm_count_, cudaDevAttrMultiProcessorCount, device));
    // LLMRT_CUDA_FUSED=0: one kernel per primitive and unsplit attention (the
    // kernels before the fused ones, kept to tell a kernel's fault apart)
    const char* fused = std::getenv("LLMRT_CUDA_FUSED");
    fused_ = !(fused && std::string(fused) == "0");
    pool_ = std::make_unique<DevicePool>(stream_);
  }
  ~CudaBackend() override {
    cudaStreamSynchronize(stream_);
    forget_graphs();
    pass_.release();
    if (argmax_dev_) cudaFree(argmax_dev_);
    if (part_) cudaFree(part_);
    if (sample_buf_) cudaFree(sample_buf_);
    if (work_) cudaFree(work_);
    for (int32_t* p : small_)
      if (p) cudaFree(p);
    for (void* p : owned_) cudaFree(p);
    cudaStreamDestroy(stream_);
  }

  std::string name() const override {
    return "cuda/" + cuda_device_name(device_) + (tc_ ? "/f16" : "");
  }
  int threads() const override { return 1; }

  float* alloc_floats(size_t n) override {
    void* p = nullptr;
    LLMRT_CUDA_CHECK(cudaMalloc(&p, n * sizeof(float)));
    return static_cast<float*>(p);
  }
  void free_floats(float* p) override {
    cudaStreamSynchronize(stream_);
    cudaFree(p);
  }
  bool host_memory() const override { return false; }
  PoolMemory* pool_memory() override { return pool_.get(); }
  void copy(float* dst, const float* src, size_t n) override {
    LLMRT_CUDA_CHECK(
        cudaMemcpyAsync(dst, src, n * sizeof(float), cudaMemcpyDeviceToDevice, stream_));
  }
  void download(float* host, const float* src, size_t n) override {
    LLMRT_CUDA_CHECK(
        cudaMemcpyAsync(host, src, n * sizeof(float), cudaMemcpyDeviceToHost, stream_));
    LLMRT_CUDA_CHECK(cudaStreamSynchronize(stream_));
  }

  void argmax(const float* x, int rows, int cols, int32_t* host) override {
    if (argmax_cap_ < rows) {
      cudaStreamSynchronize(stream_);
      if (argmax_dev_) cudaFree(argmax_dev_);
      LLMRT_CUDA_CHECK(cudaMalloc(reinterpret_cast<void**>(&argmax_dev_), sizeof(int32_t) * rows));
      argmax_cap_ = rows;
    }
    cuda::argmax(x, rows, cols, argmax_dev_, stream_);
    LLMRT_CUDA_CHECK(cudaMemcpyAsync(host, argmax_dev_, sizeof(int32_t) * rows,
                                     cudaMemcpyDeviceToHost, stream_));
    LLMRT_CUDA_CHECK(cudaStreamSynchronize(stream_));
  }

  bool can_sample() const override { return fused_; }
  void sample_rows(const float* x, int cols, const DeviceDraw* draws, int n,
                   const LogitMod* mods, int n_mods, int32_t* host) override {
    // draws, mods and the ids in one device buffer; n rows of scratch
    const size_t bytes_d = sizeof(DeviceDraw) * n, bytes_m = sizeof(LogitMod) * n_mods;
    const size_t need = bytes_d + bytes_m + sizeof(int32_t) * n;
    if (need > sample_cap_ || (size_t)n * cols > work_cap_) {
      LLMRT_CUDA_CHECK(cudaStreamSynchronize(stream_));
      if (need > sample_cap_) {
        if (sample_buf_) cudaFree(sample_buf_);
        sample_buf_ = nullptr;
        sample_cap_ = 0;
        const size_t cap = std::max(need, 2 * need);
        LLMRT_CUDA_CHECK(cudaMalloc(reinterpret_cast<void**>(&sample_buf_), cap));
        sample_cap_ = cap;
      }
      if ((size_t)n * cols > work_cap_) {
        if (work_) cudaFree(work_);
        work_ = nullptr;
        work_cap_ = 0;
        LLMRT_CUDA_CHECK(cudaMalloc(reinterpret_cast<void**>(&work_), sizeof(float) * n * cols));
        work_cap_ = (size_t)n * cols;
      }
    }
    auto* d_draws = reinterpret_cast<DeviceDraw*>(sample_buf_);
    auto* d_mods = reinterpret_cast<LogitMod*>(sample_buf_ + bytes_d);
    auto* d_out = reinterpret_cast<int32_t*>(sample_buf_ + bytes_d + bytes_m);
    LLMRT_CUDA_CHECK(cudaMemcpyAsync(d_draws, draws, bytes_d, cudaMemcpyHostToDevice, stream_));
    if (n_mods)
      LLMRT_CUDA_CHECK(cudaMemcpyAsync(d_mods, mods, bytes_m, cudaMemcpyHostToDevice, stream_));
    cuda::sample(x, cols, d_draws, n, d_mods, work_, d_out, stream_);
    LLMRT_CUDA_CHECK(
        cudaMemcpyAsync(host, d_out, sizeof(int32_t) * n, cudaMemcpyDeviceToHost, stream_));
    LLMRT_CUDA_CHECK(cudaStreamSynchronize(stream_));
  }

  WeightView prepare_weight(const WeightView& w) override {
    if (!cuda::matmul_supported(w.type))
      throw std::invalid_argument(std::string("the CUDA backend has no kernel for ") +
                                  dtype_name(w.type));
    WeightView d = w;
    d.data = upload_bytes(w.data, w.row_stride() * (size_t)w.rows);
    return d;
  }

  void begin_pass(const KVCache& c, const AttnSeq* seqs, const AttnSeq* local, int count,
                  const int32_t* ids, const int32_t* pos, int rows) override {
    const int stride = c.n_blocks();  // no table is longer than the pool
    if (rows > pass_.rows_cap || count > pass_.seqs_cap || stride != pass_.stride) {
      // the device addresses change: graphs captured with the old ones go
      cudaStreamSynchronize(stream_);
      forget_graphs();
      pass_.release();
      const int cap = std::max(64, std::max(rows, 2 * pass_.rows_cap));
      pass_.layout(cap, cap, stride);
    }
    cudaStreamSynchronize(stream_);  // the staging buffer may still be read
    const int bt = c.block_tokens();
    // the main pool's tables and row offsets; with sliding layers, the
    // sliding pool's too (same positions, other blocks)
    for (int which = 0; which < (local ? 2 : 1); ++which) {
      const AttnSeq* sq = which ? local : seqs;
      const size_t bb = c.pool_block_bytes(which == 1);
      int64_t* offs = pass_.h<int64_t>(which ? pass_.offs2 : pass_.offs);
      int32_t* info = pass_.h<int32_t>(pass_.info);
      int32_t* tables = pass_.h<int32_t>(which ? pass_.tables2 : pass_.tables);
      for (int i = 0, r = 0; i < count; ++i) {
        const AttnSeq& q = sq[i];
        const int nb = (q.pos0 + q.n + bt - 1) / bt;
        std::memcpy(tables + (size_t)i * stride, q.table, sizeof(int32_t) * nb);
        for (int t = 0; t < q.n; ++t, ++r) {
          const int p = q.pos0 + t;
          offs[r] = (int64_t)q.table[p / bt] * (int64_t)bb + (int64_t)(p % bt) * (int64_t)c.row_bytes();
          info[3 * r] = p;
          info[3 * r + 1] = i * stride;
          info[3 * r + 2] = q.last ? q.last[t] : p;  // the last key the row sees
        }
      }
    }
    std::memcpy(pass_.h<int32_t>(pass_.ids), ids, sizeof(int32_t) * rows);
    std::memcpy(pass_.h<int32_t>(pass_.pos), pos, sizeof(int32_t) * rows);
    // rows' data, then the used part of the tables
    LLMRT_CUDA_CHECK(cudaMemcpyAsync(pass_.dev, pass_.host, pass_.tables,
                                     cudaMemcpyHostToDevice, stream_));
    for (size_t region : {pass_.tables, pass_.tables2}) {
      if (region == pass_.tables2 && !local) break;
      LLMRT_CUDA_CHECK(cudaMemcpyAsync(pass_.dev + region, pass_.host + region,
                                       sizeof(int32_t) * (size_t)count * stride,
                                       cudaMemcpyHostToDevice, stream_));
    }
    pass_rows_ = rows;
  }

  bool graphs() const override { return true; }
  bool run_graph(const std::string& key, const std::function<void()>& fn) override {
    Graph& g = graphs_[key];
    if (g.exec) {
      LLMRT_CUDA_CHECK(cudaGraphLaunch(g.exec, stream_));
      return true;
    }
    if (g.seen++ == 0) {  // first time: run directly, filling every cache
      fn();
      return false;
    }
    LLMRT_CUDA_CHECK(cudaStreamBeginCapture(stream_, cudaStreamCaptureModeThreadLocal));
    try {
      fn();
    } catch (...) {
      cudaGraph_t broken = nullptr;
      cudaStreamEndCapture(stream_, &broken);
      if (broken) cudaGraphDestroy(broken);
      throw;
    }
    cudaGraph_t graph = nullptr;
    LLMRT_CUDA_CHECK(cudaStreamEndCapture(stream_, &graph));
    const cudaError_t e = cudaGraphInstantiate(&g.exec, graph, 0);
    cudaGraphDestroy(graph);
    LLMRT_CUDA_CHECK(e);
    LLMRT_CUDA_CHECK(cudaGraphLaunch(g.exec, stream_));
    return true;
  }
  void forget_graphs() override {
    for (auto& [key, g] : graphs_)
      if (g.exec) cudaGraphExecDestroy(g.exec);
    graphs_.clear();
  }

  void embed(const WeightView& t, const int32_t* ids, int n, float* out) override {
    (void)ids;  // the pass's, uploaded by begin_pass
    check_pass(n);
    // the table stays as stored in the file: its device copy is made once
    auto it = tables_.find(t.data);
    if (it == tables_.end())
      it = tables_.emplace(t.data, upload_bytes(t.data, t.row_stride() * (size_t)t.rows)).first;
    WeightView d = t;
    d.data = it->second;
    cuda::embed(d, pass_.d<int32_t>(pass_.ids), n, out, stream_);
  }
  void matmul_many(const MatmulJob* jobs, int count, const float* x, int n) override {
    for (int i = 0; i < count; ++i) cuda::matmul(*jobs[i].w, x, n, jobs[i].y, stream_, tc_);
  }
  void rmsnorm(const float* x, const float* w, int n, int dim, float eps, float* y) override {
    cuda::rmsnorm(x, device_copy(w, dim), n, dim, eps, y, stream_);
  }
  void add_bias(float* y, const float* b, int n, int dim) override {
    cuda::add_bias(y, device_copy(b, dim), n, dim, stream_);
  }
  void add(float* y, const float* x, size_t count) override { cuda::add(y, x, count, stream_); }
  void upload(float* dst, const float* host, size_t n) override {
    LLMRT_CUDA_CHECK(cudaMemcpyAsync(dst, host, n * sizeof(float), cudaMemcpyHostToDevice,
                                     stream_));
    LLMRT_CUDA_CHECK(cudaStreamSynchronize(stream_));  // host may be reused at once
  }
  void layernorm(const float* x, const float* w, const float* b, int n, int dim, float eps,
                 float* y) override {
    cuda::layernorm(x, device_copy(w, dim), device_copy(b, dim), n, dim, eps, y, stream_);
  }
  void gelu(float* x, size_t count) override { cuda::gelu(x, count, stream_); }
  void gelu_erf(float* x, size_t count) override { cuda::gelu_erf(x, count, stream_); }
  void attention_dense(const float* q, const float* k, const float* v, int n_seq, int T,
                       int n_heads, int hd, float scale, float* out) override {
    cuda::attention_dense(q, k, v, n_seq, T, n_heads, hd, scale, out, stream_);
  }
  void geglu(float* g, const float* u, size_t count) override {
    cuda::geglu(g, u, count, stream_);
  }
  void swiglu_clamped(float* g, const float* u, size_t count, float alpha, float limit) override {
    cuda::swiglu_clamped(g, u, count, alpha, limit, stream_);
  }
  void softcap(float* x, size_t count, float cap) override {
    cuda::softcap(x, count, cap, stream_);
  }
  void scale(float* x, size_t count, float s) override { cuda::scale(x, count, s, stream_); }
  void swiglu(float* g, const float* u, size_t count) override {
    cuda::swiglu(g, u, count, stream_);
  }
  // mixture of experts: the routing comes from the host (no graph is
  // captured for such models)
  void gather_rows(float* dst, const float* src, const int32_t* rows, int count,
                   int dim) override {
    cuda::gather_rows(dst, src, upload_small(rows, count, 0), count, dim, stream_);
  }
  void scatter_add_rows(float* dst, const float* src, const int32_t* rows, const float* weights,
                        int count, int dim) override {
    const int32_t* r = upload_small(rows, count, 0);
    const float* w = reinterpret_cast<const float*>(
        upload_small(reinterpret_cast<const int32_t*>(weights), count, 1));
    cuda::scatter_add_rows(dst, src, r, w, count, dim, stream_);
  }
  // Several-token products on tensor cores: through the primitives (norm,
  // product, residual, SwiGLU), the products by cuda::matmul's tensor-core kernel.
  bool on_tensor_cores(int n) const { return tc_ && n >= cuda::kTensorCoreRows; }

  // ---- fused operations: fewer kernels a layer ----
  void norm_matmul_many(const float* x, const float* weight, int n, int dim, float eps,
                        const MatmulJob* jobs, int count, float* xn) override {
    if (!fused_ || on_tensor_cores(n) || !cuda::norm_fits_cols(n, dim))
      return Backend::norm_matmul_many(x, weight, n, dim, eps, jobs, count, xn);
    std::vector<MatmulJob> js(jobs, jobs + count);
    for (MatmulJob& j : js)
      if (j.bias) j.bias = device_copy(j.bias, (int)j.w->rows);
    cuda::norm_matmul_many(x, device_copy(weight, dim), n, dim, eps, js.data(), count, stream_);
  }
  void matmul_add(const WeightView& w, const float* x, int n, float* y, float* tmp) override {
    if (!fused_ || on_tensor_cores(n)) return Backend::matmul_add(w, x, n, y, tmp);
    cuda::matmul_add(w, x, n, y, stream_);
  }
  void norm_gate_up(const float* x, const float* weight, int n, int dim, float eps,
                    const WeightView& wg, const WeightView& wu, float* xn, float* gate,
                    float* up) override {
    if (!fused_ || on_tensor_cores(n) || !cuda::fused_supported(wg, wu, n, dim))
      return Backend::norm_gate_up(x, weight, n, dim, eps, wg, wu, xn, gate, up);
    cuda::norm_gate_up(x, device_copy(weight, dim), n, dim, eps, wg, wu, gate, stream_);
  }
  void rope_kv_write(KVCache& c, const AttnSeq* seqs, int count, int layer, float* q, float* k,
                     const float* v, int n, int n_heads, int n_kv_heads, int head_dim,
                     const int32_t* pos, const RopeParams& p) override {
    if (!fused_)
      return Backend::rope_kv_write(c, seqs, count, layer, q, k, v, n, n_heads, n_kv_heads,
                                    head_dim, pos, p);
    (void)seqs, (void)count, (void)pos, (void)n_kv_heads, (void)head_dim;
    check_pass(n);
    cuda::rope_kv_write(layout(c, layer), offs_of(c, layer), n,
                        pass_.d<int32_t>(pass_.pos), inv_freq(p), p.n_rot, p.pos_scale, p.neox,
                        p.mscale, n_heads, q, k, v, stream_);
  }

  void rope(float* x, int n, int n_heads, int head_dim, const int32_t* pos,
            const RopeParams& p) override {
    // in a decoder's pass, the pass's positions (uploaded by begin_pass);
    // outside one (an encoder, which begins none), the given host ones
    const int32_t* dpos = nullptr;
    if (pass_rows_ > 0) {
      check_pass(n);
      dpos = pass_.d<int32_t>(pass_.pos);
    } else {
      dpos = upload_small(pos, n, 0);
    }
    cuda::rope(x, n, n_heads, head_dim, dpos, inv_freq(p), p.n_rot, p.pos_scale, p.neox,
               p.mscale, stream_);
  }
  void kv_write(KVCache& c, const AttnSeq* seqs, int count, int layer, const float* k,
                const float* v) override {
    int n = 0;
    for (int i = 0; i < count; ++i) n += seqs[i].n;
    check_pass(n);
    cuda::kv_write(layout(c, layer), offs_of(c, layer), n, k, v, stream_);
  }
  void attention(const KVCache& c, const AttnSeq* seqs, int count, int layer, const float* q,
                 int n_heads, const AttnParams& params, float* out) override {
    AttnParams p = params;  // the sinks in device memory
    if (p.sinks) p.sinks = device_copy(p.sinks, n_heads);
    int n = 0;
    for (int i = 0; i < count; ++i) n += seqs[i].n;
    check_pass(n);
    const cuda::KVLayout L = layout(c, layer);
    if (!fused_) {
      cuda::attention(L, tables_of(c, layer), pass_.d<int32_t>(pass_.info), n,
                      n_heads, p, q, out, stream_);
      return;
    }
    const int S = cuda::attention_splits(n, L.n_kv_heads, n_heads, sm_count_);
    float *ml = nullptr, *acc = nullptr;
    if (S > 1) {
      const size_t parts = (size_t)n * n_heads * S;
      const size_t need = parts * (2 + (size_t)L.head_dim);
      if (need > part_cap_) {
        // the partials move: graphs that hold the old address go (a pass
        // is first run without capture, so this never happens in a capture)
        LLMRT_CUDA_CHECK(cudaStreamSynchronize(stream_));
        forget_graphs();
        if (part_) cudaFree(part_);
        LLMRT_CUDA_CHECK(cudaMalloc(reinterpret_cast<void**>(&part_), sizeof(float) * need));
        part_cap_ = need;
      }
      ml = part_;
      acc = part_ + 2 * parts;
    }
    cuda::split_attention(L, tables_of(c, layer), pass_.d<int32_t>(pass_.info), n,
                          n_heads, S, p, q, out, ml, acc, stream_);
  }

 private:
  struct Graph {
    int seen = 0;
    cudaGraphExec_t exec = nullptr;
  };
  void check_pass(int n) const {
    if (n != pass_rows_)
      throw std::logic_error("CUDA backend: a pass's rows differ from begin_pass's");
  }
  // small host arrays into one of two reusable device buffers (slot 0 / 1),
  // after the work that may still read them
  const int32_t* upload_small(const int32_t* host, int n, int slot) {
    LLMRT_CUDA_CHECK(cudaStreamSynchronize(stream_));
    if (small_cap_[slot] < n) {
      if (small_[slot]) cudaFree(small_[slot]);
      LLMRT_CUDA_CHECK(cudaMalloc(reinterpret_cast<void**>(&small_[slot]), sizeof(int32_t) * n));
      small_cap_[slot] = n;
    }
    LLMRT_CUDA_CHECK(cudaMemcpy(small_[slot], host, sizeof(int32_t) * n, cudaMemcpyHostToDevice));
    return small_[slot];
  }
  uint8_t* upload_bytes(const uint8_t* host, size_t bytes) {
    void* p = nullptr;
    LLMRT_CUDA_CHECK(cudaMalloc(&p, bytes));
    owned_.push_back(p);
    LLMRT_CUDA_CHECK(cudaMemcpy(p, host, bytes, cudaMemcpyHostToDevice));
    return static_cast<uint8_t*>(p);
  }
  // norm weights and biases: host float arrays, copied once
  const float* device_copy(const float* host, int n) {
    auto it = vectors_.find(host);
    if (it == vectors_.end())
      it = vectors_.emplace(host, reinterpret_cast<float*>(upload_bytes(
                                      reinterpret_cast<const uint8_t*>(host), n * sizeof(float))))
               .first;
    return it->second;
  }
  // RoPE frequencies, computed as the CPU backend computes them, copied once
  // per set of parameters (gemma 3's local and global layers have two)
  const float* inv_freq(const RopeParams& p) {
    for (const auto& [key, dev] : freqs_)
      if (p.n_rot == key.n_rot && p.freq_base == key.freq_base &&
          p.freq_factors == key.freq_factors)
        return dev;
    const int half = p.n_rot / 2;
    std::vector<float> f(half);
    for (int i = 0; i < half; ++i) {
      float v = (float)(1.0 / std::pow((double)p.freq_base, (2.0 * i) / p.n_rot));
      if (p.freq_factors) v /= p.freq_factors[i];
      f[i] = v;
    }
    float* dev = reinterpret_cast<float*>(
        upload_bytes(reinterpret_cast<const uint8_t*>(f.data()), half * sizeof(float)));
    freqs_.emplace_back(p, dev);
    return dev;
  }
  // the pass's row offsets and block tables for a layer's pool
  const int64_t* offs_of(const KVCache& c, int layer) const {
    return pass_.d<int64_t>(c.sliding(layer) ? pass_.offs2 : pass_.offs);
  }
  const int* tables_of(const KVCache& c, int layer) const {
    return pass_.d<int32_t>(c.sliding(layer) ? pass_.tables2 : pass_.tables);
  }
  static cuda::KVLayout layout(const KVCache& c, int layer) {
    return cuda::KVLayout{c.k_block(0, layer), c.v_block(0, layer), c.block_bytes(layer),
                          c.row_bytes(), c.row_bytes() / c.n_kv_heads(), c.block_tokens(),
                          c.n_kv_heads(), c.head_dim(), (int)c.type()};
  }

  int device_;
  cudaStream_t stream_ = nullptr;
  std::unique_ptr<DevicePool> pool_;
  std::vector<void*> owned_;
  std::unordered_map<const void*, uint8_t*> tables_;
  std::unordered_map<const float*, float*> vectors_;
  std::vector<std::pair<RopeParams, float*>> freqs_;  // (owned_ frees them)
  PassBuffers pass_;
  int pass_rows_ = -1;
  int32_t* argmax_dev_ = nullptr;
  int argmax_cap_ = 0;
  int32_t* small_[2] = {nullptr, nullptr};
  int small_cap_[2] = {0, 0};
  int sm_count_ = 1;
  bool fused_ = true;
  bool tc_ = false;  // several-token products on tensor cores (activations="f16")
  float* part_ = nullptr;  // split attention's partials
  size_t part_cap_ = 0;
  uint8_t* sample_buf_ = nullptr;  // device sampling: draws, mods, ids
  size_t sample_cap_ = 0;
  float* work_ = nullptr;  // device sampling: the rows' changed logits
  size_t work_cap_ = 0;
  std::unordered_map<std::string, Graph> graphs_;
};

}  // namespace

std::unique_ptr<Backend> make_cuda_backend(int device, bool tensor_cores) {
  return std::make_unique<CudaBackend>(device, tensor_cores);
}

}  // namespace llmrt
