#include "core/kv_cache.h"

#include <new>
#include <stdexcept>

namespace llmrt {

KVCache::KVCache(int n_layer, int n_ctx, int n_kv_heads, int head_dim)
    : n_layer_(n_layer), n_ctx_(n_ctx), n_kv_heads_(n_kv_heads), head_dim_(head_dim) {
  if (n_layer <= 0 || n_ctx <= 0 || n_kv_heads <= 0 || head_dim <= 0)
    throw std::invalid_argument("KVCache: sizes must be positive");
  // new float[] without () leaves the pages untouched until written.
  data_.reset(new (std::nothrow) float[2 * (size_t)n_layer * n_ctx * row_size()]);
  if (!data_) throw std::bad_alloc();
}

}  // namespace llmrt
