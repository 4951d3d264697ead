// Non-owning views of weight matrices as stored in the GGUF file (mmap).
#pragma once

#include <cstddef>
#include <cstdint>

#if defined(__linux__)
#include <sys/mman.h>
#include <unistd.h>
#endif

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
  // F16 weights also laid out as the CPU float product's panels (halves,
  // Kernels::pack_f32's layout, rows padded to whole panels), where a backend
  // keeps them (Backend::prepare_panels); else nullptr.
  const uint16_t* panels = nullptr;
  // F16 weights also as 14-bit integer panels (cpu/arch/kernels.h,
  // kI16Block), where a backend keeps them for 16-bit integer products
  // (Backend::prepare_panels with 8-bit activations); else nullptr.
  const uint8_t* ipanels = nullptr;

  size_t row_stride() const { return row_bytes(type, cols); }
  const uint8_t* row(int64_t r) const { return data + static_cast<size_t>(r) * row_stride(); }
  bool empty() const { return data == nullptr; }
  size_t nbytes() const { return static_cast<size_t>(rows) * row_stride(); }
};

// Source bytes a backend has copied (repacked, or uploaded to a device): ask
// the OS to reclaim their pages now, so a load does not hold the file's pages
// and the copies at once. MADV_PAGEOUT keeps the contents (file pages are
// dropped and read again if touched; anonymous ones go to swap or stay), so
// it is safe whatever memory the view lies in. A hint: no-op where missing.
inline void page_out(const void* p, size_t n) {
#if defined(__linux__) && defined(MADV_PAGEOUT)
  const uintptr_t page = static_cast<uintptr_t>(sysconf(_SC_PAGESIZE));
  const uintptr_t a = reinterpret_cast<uintptr_t>(p);
  const uintptr_t lo = (a + page - 1) & ~(page - 1), hi = (a + n) & ~(page - 1);
  if (hi > lo) madvise(reinterpret_cast<void*>(lo), hi - lo, MADV_PAGEOUT);
#else
  (void)p;
  (void)n;
#endif
}

}  // namespace llmrt
