// Key/value cache of one sequence: per layer, (n_ctx, n_kv_heads, head_dim)
// float32 for keys and for values.
//
// Pages are allocated untouched (no zero fill), so memory is committed only
// as positions are written: a long context costs what the sequence uses.
#pragma once

#include <cstddef>
#include <cstdint>
#include <memory>

namespace llmrt {

class KVCache {
 public:
  KVCache(int n_layer, int n_ctx, int n_kv_heads, int head_dim);

  int n_layer() const { return n_layer_; }
  int n_ctx() const { return n_ctx_; }
  int n_kv_heads() const { return n_kv_heads_; }
  int head_dim() const { return head_dim_; }
  // Floats of one position (all kv heads).
  size_t row_size() const { return (size_t)n_kv_heads_ * head_dim_; }
  size_t bytes() const { return 2 * (size_t)n_layer_ * n_ctx_ * row_size() * sizeof(float); }

  float* k(int layer, int pos) { return base(layer, pos, 0); }
  float* v(int layer, int pos) { return base(layer, pos, 1); }
  const float* k(int layer, int pos) const { return base(layer, pos, 0); }
  const float* v(int layer, int pos) const { return base(layer, pos, 1); }

 private:
  float* base(int layer, int pos, int which) const {
    return data_.get() + (((size_t)layer * 2 + which) * n_ctx_ + pos) * row_size();
  }
  int n_layer_, n_ctx_, n_kv_heads_, head_dim_;
  std::unique_ptr<float[]> data_;
};

}  // namespace llmrt
