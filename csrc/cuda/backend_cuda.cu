// The CUDA backend: weights copied to the GPU once (as stored: the kernels
// dequantise in registers), activations and the KV pool in device memory,
// every kernel on one stream; host data (token ids, positions, block
// tables) is uploaded once per distinct content.
#include <cmath>
#include <cstring>
#include <unordered_map>
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

// Device copies of small host arrays, reused while their content repeats
// (a pass's positions and block tables are the same for every layer).
class Uploads {
 public:
  explicit Uploads(cudaStream_t s) : stream_(s) {}
  ~Uploads() {
    for (auto& e : entries_) cudaFree(e.dev);
  }
  template <class T>
  const T* get(const std::vector<T>& host) {
    const size_t bytes = host.size() * sizeof(T);
    for (auto& e : entries_)
      if (e.host.size() == bytes && std::memcmp(e.host.data(), host.data(), bytes) == 0) {
        e.used = ++clock_;
        return static_cast<const T*>(e.dev);
      }
    Entry* slot = nullptr;
    if (entries_.size() < kEntries) {
      entries_.push_back({});
      slot = &entries_.back();
    } else {
      slot = &entries_[0];
      for (auto& e : entries_)
        if (e.used < slot->used) slot = &e;
    }
    if (slot->cap < bytes) {
      if (slot->dev) cudaFree(slot->dev);
      LLMRT_CUDA_CHECK(cudaMalloc(&slot->dev, bytes ? bytes : 1));
      slot->cap = bytes;
    }
    slot->host.assign(reinterpret_cast<const uint8_t*>(host.data()),
                      reinterpret_cast<const uint8_t*>(host.data()) + bytes);
    slot->used = ++clock_;
    LLMRT_CUDA_CHECK(cudaMemcpyAsync(slot->dev, host.data(), bytes, cudaMemcpyHostToDevice,
                                     stream_));
    return static_cast<const T*>(slot->dev);
  }

 private:
  static constexpr size_t kEntries = 256;
  struct Entry {
    std::vector<uint8_t> host;
    void* dev = nullptr;
    size_t cap = 0;
    uint64_t used = 0;
  };
  cudaStream_t stream_;
  std::vector<Entry> entries_;
  uint64_t clock_ = 0;
};

class CudaBackend : public Backend {
 public:
  explicit CudaBackend(int device) : device_(device) {
    if (device < 0 || device >= cuda_device_count())
      throw std::runtime_error("no CUDA device " + std::to_string(device));
    LLMRT_CUDA_CHECK(cudaSetDevice(device));
    LLMRT_CUDA_CHECK(cudaStreamCreateWithFlags(&stream_, cudaStreamNonBlocking));
    pool_ = std::make_unique<DevicePool>(stream_);
    up_ = std::make_unique<Uploads>(stream_);
  }
  ~CudaBackend() override {
    up_.reset();
    for (void* p : owned_) cudaFree(p);
    cudaStreamDestroy(stream_);
  }

  std::string name() const override { return "cuda/" + cuda_device_name(device_); }
  int threads() const override { return 1; }

  float* alloc_floats(size_t n) override {
    void* p = nullptr;
    LLMRT_CUDA_CHECK(cudaMalloc(&p, n * sizeof(float)));
    return static_cast<float*>(p);
  }
  void free_floats(float* p) override { cudaFree(p); }
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

  WeightView prepare_weight(const WeightView& w) override {
    if (!cuda::matmul_supported(w.type))
      throw std::invalid_argument(std::string("the CUDA backend has no kernel for ") +
                                  dtype_name(w.type));
    WeightView d = w;
    d.data = upload_bytes(w.data, w.row_stride() * (size_t)w.rows);
    return d;
  }

  void embed(const WeightView& t, const int32_t* ids, int n, float* out) override {
    // the table stays as stored in the file: its device copy is made once
    auto it = tables_.find(t.data);
    if (it == tables_.end())
      it = tables_.emplace(t.data, upload_bytes(t.data, t.row_stride() * (size_t)t.rows)).first;
    WeightView d = t;
    d.data = it->second;
    ids_.assign(ids, ids + n);
    cuda::embed(d, up_->get(ids_), n, out, stream_);
  }
  void matmul_many(const MatmulJob* jobs, int count, const float* x, int n) override {
    for (int i = 0; i < count; ++i) cuda::matmul(*jobs[i].w, x, n, jobs[i].y, stream_);
  }
  void rmsnorm(const float* x, const float* w, int n, int dim, float eps, float* y) override {
    cuda::rmsnorm(x, device_copy(w, dim), n, dim, eps, y, stream_);
  }
  void add_bias(float* y, const float* b, int n, int dim) override {
    cuda::add_bias(y, device_copy(b, dim), n, dim, stream_);
  }
  void add(float* y, const float* x, size_t count) override { cuda::add(y, x, count, stream_); }
  void swiglu(float* g, const float* u, size_t count) override {
    cuda::swiglu(g, u, count, stream_);
  }
  void rope(float* x, int n, int n_heads, int head_dim, const int32_t* pos,
            const RopeParams& p) override {
    const int half = p.n_rot / 2;
    std::vector<float> f(half);  // as the CPU backend computes them
    for (int i = 0; i < half; ++i) {
      float v = (float)(1.0 / std::pow((double)p.freq_base, (2.0 * i) / p.n_rot));
      if (p.freq_factors) v /= p.freq_factors[i];
      f[i] = v;
    }
    pos_.assign(pos, pos + n);
    cuda::rope(x, n, n_heads, head_dim, up_->get(pos_), up_->get(f), p.n_rot, p.pos_scale,
               p.neox, stream_);
  }
  void kv_write(KVCache& c, const int* table, int layer, int pos0, int n, const float* k,
                const float* v) override {
    const int bt = c.block_tokens();
    offs_.resize(n);
    for (int t = 0; t < n; ++t) {
      const int p = pos0 + t;
      offs_[t] = (int64_t)table[p / bt] * (int64_t)c.block_bytes() +
                 (int64_t)(p % bt) * (int64_t)c.row_bytes();
    }
    cuda::kv_write(layout(c, layer), up_->get(offs_), n, k, v, stream_);
  }
  void attention(const KVCache& c, const AttnSeq* seqs, int count, int layer, const float* q,
                 int n_heads, float scale, float* out) override {
    const int bt = c.block_tokens();
    tables_h_.clear();
    info_.clear();
    int rows = 0;
    for (int i = 0; i < count; ++i) {
      const int off = (int)tables_h_.size();
      const int nb = (seqs[i].pos0 + seqs[i].n + bt - 1) / bt;
      tables_h_.insert(tables_h_.end(), seqs[i].table, seqs[i].table + nb);
      for (int t = 0; t < seqs[i].n; ++t) {
        info_.push_back(seqs[i].pos0 + t);
        info_.push_back(off);
      }
      rows += seqs[i].n;
    }
    const int* tables = up_->get(tables_h_);
    cuda::attention(layout(c, layer), tables, up_->get(info_), rows, n_heads, scale, q, out,
                    stream_);
  }

 private:
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
  static cuda::KVLayout layout(const KVCache& c, int layer) {
    return cuda::KVLayout{c.k_block(0, layer), c.v_block(0, layer), c.block_bytes(),
                          c.row_bytes(), c.row_bytes() / c.n_kv_heads(), c.block_tokens(),
                          c.n_kv_heads(), c.head_dim(), (int)c.type()};
  }

  int device_;
  cudaStream_t stream_ = nullptr;
  std::unique_ptr<DevicePool> pool_;
  std::unique_ptr<Uploads> up_;
  std::vector<void*> owned_;
  std::unordered_map<const void*, uint8_t*> tables_;
  std::unordered_map<const float*, float*> vectors_;
  std::vector<int32_t> ids_, pos_, tables_h_, info_;
  std::vector<int64_t> offs_;
};

}  // namespace

std::unique_ptr<Backend> make_cuda_backend(int device) {
  return std::make_unique<CudaBackend>(device);
}

}  // namespace llmrt
