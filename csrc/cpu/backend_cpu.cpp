// The CPU implementation of core's Backend interface: a thread pool and the
// kernel table chosen at import (cpu/isa.cpp).
#include <cmath>
#include <cstdlib>
#include <cstring>
#include <new>
#include <vector>

#include "cpu/backend_cpu.h"
#include "cpu/ops.h"

namespace llmrt {

namespace {

class CpuBackend final : public Backend {
 public:
  CpuBackend(int threads, bool int8, bool invariant)
      : pool_(threads), k_(*cpu::active_kernels()), int8_(int8), invariant_(invariant) {}

  std::string name() const override {
    return std::string("cpu/") + k_.name + (int8_ ? "/int8" : "/f32") +
           (invariant_ ? "/invariant" : "");
  }
  int threads() const override { return pool_.size(); }

  float* alloc_floats(size_t n) override {
    // 64-byte aligned for full-width vector loads.
    void* p = std::aligned_alloc(64, ((n * sizeof(float) + 63) / 64) * 64);
    if (!p) throw std::bad_alloc();
    return static_cast<float*>(p);
  }
  void free_floats(float* p) override { std::free(p); }
  void copy(float* dst, const float* src, size_t n) override {
    std::memcpy(dst, src, n * sizeof(float));
  }
  void download(float* host, const float* src, size_t n) override { copy(host, src, n); }
  void argmax(const float* x, int rows, int cols, int32_t* host) override {
    for (int r = 0; r < rows; ++r) {
      const float* row = x + (size_t)r * cols;
      int best = 0;
      for (int i = 1; i < cols; ++i)
        if (row[i] > row[best]) best = i;
      host[r] = best;
    }
  }

  void host_parallel(int n, const std::function<void(int)>& fn) override {
    if (n > 1)
      pool_.run(n, fn);
    else if (n == 1)
      fn(0);
  }

  void embed(const WeightView& t, const int32_t* ids, int n, float* out) override {
    cpu::embed(pool_, k_, t, ids, n, out);
  }
  // Q4_0 / Q4_1 weights go to the repacked layouts of the integer kernels.
  WeightView prepare_weight(const WeightView& w) override {
    if (!int8_ || !cpu::can_repack(w)) return w;
    packed_.emplace_back();
    return cpu::repack(pool_, w, packed_.back());
  }

  // With 8-bit activations, F16 weights become 14-bit integer panels where
  // 16-bit integer products are faster (Kernels::i16_faster: VNNI's run at
  // twice the float multiply-adds' rate); else, and with float activations,
  // panels of halves (the exact float product).
  WeightView prepare_panels(const WeightView& w) override {
    if (w.type != DType::F16 || w.panels != nullptr || w.ipanels != nullptr) return w;
    packed_.emplace_back();
    if (int8_ && k_.i16_faster) return cpu::keep_i16_panels(pool_, k_, w, packed_.back());
    return cpu::keep_panels(pool_, w, packed_.back());
  }

  // The head: its rows' L2 norms beside the repacked weights, from the
  // weights as stored (they bound the 8-bit activations' rounding, so the
  // precise product recomputes only the logits that rounding could reorder).
  WeightView prepare_head(const WeightView& w) override {
    WeightView p = prepare_weight(w);
    if (!int8_ || !int8_dot(w.type)) return p;
    head_l2_.emplace_back((size_t)w.rows);
    float* l1 = head_l2_.back().data();
    const cpu::DequantFn dq = k_.dequant[(int)w.type];
    pool_.parallel_for(w.rows, 64, [&](int64_t b, int64_t e) {
      std::vector<float> row((size_t)w.cols);
      for (int64_t r = b; r < e; ++r) {
        dq(w.row(r), row.data(), w.cols);
        double s = 0;
        for (float v : row) s += (double)v * v;
        l1[r] = (float)(std::sqrt(s) * (1 + 1e-6));  // rounded up: a bound
      }
    });
    p.row_l2 = l1;
    return p;
  }

  void matmul_small(const WeightView& w, const float* x, int n, float* y) override {
    // below ~256K multiply-adds one thread is faster than a parallel pass
    if ((w.type != DType::F32 && w.type != DType::F16) || (int64_t)n * w.rows * w.cols > (1 << 18))
      return matmul(w, x, n, y);
    if (w.type == DType::F32) {
      k_.gemm_f32(reinterpret_cast<const float*>(w.data), w.rows, w.cols, x, n, y, w.rows);
      return;
    }
    if (n == 1) {  // one token: each row's halves against it, widened as read
      const cpu::VecDotFn dot = k_.vec_dot[(int)DType::F16];
      for (int64_t r = 0; r < w.rows; ++r) y[r] = dot(w.data + r * w.row_stride(), x, w.cols);
      return;
    }
    // several: widened into a buffer that stays in cache, then the float
    // product (the memory read is the halves')
    thread_local std::vector<float> wide;
    const size_t count = (size_t)w.rows * w.cols;  // rows end to end
    wide.resize(count);
    k_.dequant[(int)DType::F16](w.data, wide.data(), (int64_t)count);
    k_.gemm_f32(wide.data(), w.rows, w.cols, x, n, y, w.rows);
  }
  void matmul_many(const MatmulJob* jobs, int count, const float* x, int n) override {
    cpu::matmul_many(pool_, k_, jobs, count, x, n, act_, int8_, invariant_);
  }
  void matmul_grouped(const GroupedJob* jobs, int count, const float* x, int cols) override {
    int n = 0;
    for (int i = 0; i < count; ++i) n = std::max(n, jobs[i].row0 + jobs[i].n);
    cpu::matmul_grouped(pool_, k_, jobs, count, x, n, cols, act_, int8_, invariant_);
  }
  void rmsnorm(const float* x, const float* w, int n, int dim, float eps, float* y) override {
    cpu::rmsnorm(pool_, k_, x, w, n, dim, eps, y);
  }
  void add_bias(float* y, const float* b, int n, int dim) override { cpu::add_bias(pool_, y, b, n, dim); }
  void add_layernorm(float* x, float* t, const float* bias, const float* w, const float* b, int n,
                     int dim, float eps) override {
    cpu::add_layernorm(pool_, k_, x, t, bias, w, b, n, dim, eps);
  }
  void bias_gelu_erf(float* x, const float* bias, int n, int dim) override {
    cpu::bias_gelu_erf(pool_, k_, x, bias, n, dim);
  }
  void layernorm(const float* x, const float* w, const float* b, int n, int dim, float eps,
                 float* y) override {
    cpu::layernorm(pool_, k_, x, w, b, n, dim, eps, y);
  }
  void gelu(float* x, size_t count) override { cpu::gelu(pool_, k_, x, count); }
  void gelu_erf(float* x, size_t count) override { cpu::gelu_erf(pool_, k_, x, count); }
  void attention_dense(const float* q, const float* k, const float* v, int n_seq, int T,
                       int n_heads, int hd, float scale, float* out) override {
    cpu::attention_dense(pool_, k_, q, k, v, n_seq, T, n_heads, hd, scale, out);
  }
  void attention_ragged(const float* q, const float* k, const float* v, const int32_t* starts,
                        int n_seq, int n_heads, int hd, float scale, float* out) override {
    cpu::attention_ragged(pool_, k_, q, k, v, starts, n_seq, n_heads, hd, scale, out);
  }
  void add(float* y, const float* x, size_t count) override { cpu::add(pool_, y, x, count); }
  void gather_rows(float* dst, const float* src, const int32_t* rows, int count,
                   int dim) override {
    for (int i = 0; i < count; ++i)
      std::memcpy(dst + (size_t)i * dim, src + (size_t)rows[i] * dim, sizeof(float) * dim);
  }
  void scatter_add_rows(float* dst, const float* src, const int32_t* rows, const float* weights,
                        int count, int dim) override {
    for (int i = 0; i < count; ++i) k_.axpy(weights[i], src + (size_t)i * dim,
                                            dst + (size_t)rows[i] * dim, dim);
  }
  void swiglu(float* g, const float* u, size_t count) override { cpu::swiglu(pool_, k_, g, u, count); }
  void geglu(float* g, const float* u, size_t count) override { cpu::geglu(pool_, k_, g, u, count); }
  void swiglu_clamped(float* g, const float* u, size_t count, float alpha, float limit) override {
    cpu::swiglu_clamped(pool_, g, u, count, alpha, limit);
  }
  void softcap(float* x, size_t count, float cap) override {
    const float inv = 1.f / cap;
    pool_.parallel_for((int64_t)count, 16384, [&](int64_t b, int64_t e) {
      for (int64_t i = b; i < e; ++i) x[i] = cap * std::tanh(x[i] * inv);
    });
  }
  void scale(float* x, size_t count, float s) override { k_.scale(s, x, (int64_t)count); }
  void rope(float* x, int n, int n_heads, int head_dim, const int32_t* pos,
            const RopeParams& p) override {
    cpu::rope(pool_, x, n, n_heads, head_dim, pos, p, rope_);
  }
  void kv_write(KVCache& c, const AttnSeq* seqs, int count, int layer, const float* k,
                const float* v) override {
    const size_t kvd = (size_t)c.n_kv_heads() * c.head_dim();
    for (int i = 0, r = 0; i < count; r += seqs[i].n, ++i)
      cpu::kv_write(k_, c, seqs[i].table, layer, seqs[i].pos0, seqs[i].n, k + r * kvd,
                    v + r * kvd);
  }
  void attention(const KVCache& c, const AttnSeq* seqs, int count, int layer, const float* q,
                 int n_heads, const AttnParams& p, float* out) override {
    cpu::attention(pool_, k_, c, seqs, count, layer, q, n_heads, p, out, attn_);
  }

 private:
  ThreadPool pool_;
  const cpu::Kernels& k_;
  bool int8_;                  // quantize activations for the integer kernels
  bool invariant_;             // one-token matmuls in the several-token order
  cpu::ActBuffer act_;         // quantized activations, reused by every matmul
  cpu::RopeTable rope_;        // cos / sin of the current rows' positions
  cpu::AttnScratch attn_;      // block pointers and split-KV partials
  std::vector<cpu::PackedBytes> packed_;  // repacked weights
  std::vector<std::vector<float>> head_l2_;  // the head's row norms (WeightView::row_l2)
};

}  // namespace

std::unique_ptr<Backend> make_cpu_backend(int threads, bool int8_activations,
                                          bool batch_invariant) {
  return std::make_unique<CpuBackend>(threads, int8_activations, batch_invariant);
}

}  // namespace llmrt
