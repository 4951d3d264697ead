// Non-owning views of weight matrices as stored in the GGUF file (mmap).
#pragma once

#include <cstddef>
#include <cstdint>

#include "core/dtype.h"

namespace llmrt {

// A row-major matrix (rows, cols) of `type`; each row is row_bytes(type, cols)
// bytes. GGUF names cols ne[0] and rows ne[1].
struct WeightView {
  DType type = DType::F32;
  int64_t rows = 0;
  int64_t cols = 0;
  const uint8_t* data = nullptr;
  // The L2 norm of each row's dequantized weights, where a backend keeps it
  // (the CPU backend for the output head: it bounds the rounding of the
  // head's 8-bit activations, see MatmulJob::precise); else nullptr.
  const float* row_l2 = nullptr;

  size_t row_stride() const { return row_bytes(type, cols); }
  const uint8_t* row(int64_t r) const { return data + static_cast<size_t>(r) * row_stride(); }
  bool empty() const { return data == nullptr; }
};

}  // namespace llmrt
