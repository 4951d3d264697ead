// Load-time repacking of Q4_0 / Q4_1 / Q8_0 weights into the layouts the integer
// kernels read fastest (DType::Q4_0R / Q4_1R, described in core/dtype.h).
// Same size as the source; the copy replaces the file's bytes for the
// model's lifetime.
#include <cstdlib>
#include <cstring>
#include <new>
#include <new>

#include "cpu/ops.h"

namespace llmrt::cpu {

bool can_repack(const WeightView& w) {
  if (w.type == DType::Q8_0) return true;
  return (w.type == DType::Q4_0 || w.type == DType::Q4_1) && (w.cols / kQK) % 2 == 0;
}

namespace {

// Element j (0..31) of block b of a source row, 0..15.
inline uint8_t q4_elem(const uint8_t* row, size_t bytes, size_t qoff, int64_t b, int j) {
  const uint8_t* qs = row + b * bytes + qoff;
  return j < 16 ? (qs[j] & 0x0f) : (qs[j - 16] >> 4);
}

void repack_row(const uint8_t* src, uint8_t* dst, int64_t nb, bool has_m) {
  const size_t bytes = has_m ? sizeof(BlockQ4_1) : sizeof(BlockQ4_0);
  const size_t qoff = has_m ? 4 : 2;
  const size_t gbytes = has_m ? 160 : 144, pbytes = has_m ? 40 : 36;
  const int64_t groups = nb / 8, pairs = (nb % 8) / 2;
  // blocks b0, b0 + 1 -> 32 bytes: byte 8k + 4j + i holds element 4k + i of
  // block b0 + j (low nibble) and element 16 + 4k + i (high)
  auto put_pair = [&](uint8_t* out, int64_t b0) {
    for (int k = 0; k < 4; ++k)
      for (int j = 0; j < 2; ++j)
        for (int i = 0; i < 4; ++i)
          out[8 * k + 4 * j + i] = (uint8_t)(q4_elem(src, bytes, qoff, b0 + j, 4 * k + i) |
                                             (q4_elem(src, bytes, qoff, b0 + j, 16 + 4 * k + i) << 4));
  };
  for (int64_t g = 0; g < groups; ++g) {
    uint8_t* base = dst + g * gbytes;
    for (int i = 0; i < 8; ++i) {
      const uint8_t* blk = src + (8 * g + i) * bytes;
      std::memcpy(base + 2 * i, blk, 2);                  // d
      if (has_m) std::memcpy(base + 16 + 2 * i, blk + 2, 2);  // m
    }
    // byte 32c + 4b + i: element 4c + i (low nibble) and 16 + 4c + i (high) of block b
    uint8_t* qs = base + (has_m ? 32 : 16);
    for (int c = 0; c < 4; ++c)
      for (int b = 0; b < 8; ++b)
        for (int i = 0; i < 4; ++i)
          qs[32 * c + 4 * b + i] = (uint8_t)(q4_elem(src, bytes, qoff, 8 * g + b, 4 * c + i) |
                                             (q4_elem(src, bytes, qoff, 8 * g + b, 16 + 4 * c + i) << 4));
  }
  for (int64_t p = 0; p < pairs; ++p) {
    uint8_t* base = dst + groups * gbytes + p * pbytes;
    const int64_t b0 = groups * 8 + 2 * p;
    for (int i = 0; i < 2; ++i) {
      const uint8_t* blk = src + (b0 + i) * bytes;
      std::memcpy(base + 2 * i, blk, 2);
      if (has_m) std::memcpy(base + 4 + 2 * i, blk + 2, 2);
    }
    put_pair(base + (has_m ? 8 : 4), b0);
  }
}

void repack_row_q8(const uint8_t* src, uint8_t* dst, int64_t nb) {
  const BlockQ8_0* b = reinterpret_cast<const BlockQ8_0*>(src);
  const int64_t groups = nb / 8;
  // The kernels negate weights by the activation's sign; -128 has no int8
  // negation. Quantizers emit [-127, 127]; a file holding -128 gets -127.
  auto q = [&](int64_t k, int j) { return b[k].qs[j] == -128 ? -127 : (int)b[k].qs[j]; };
  for (int64_t g = 0; g < groups; ++g) {
    uint8_t* base = dst + g * 8 * sizeof(BlockQ8_0);
    uint8_t* qs = base + 16;
    for (int i = 0; i < 8; ++i) std::memcpy(base + 2 * i, &b[8 * g + i].d, 2);
    for (int m = 0; m < 8; ++m)
      for (int k = 0; k < 8; ++k)
        for (int i = 0; i < 4; ++i) qs[32 * m + 4 * k + i] = (uint8_t)(q(8 * g + k, 4 * m + i) + 128);
  }
  BlockQ8_0* tail = reinterpret_cast<BlockQ8_0*>(dst);
  for (int64_t k = groups * 8; k < nb; ++k) {
    tail[k].d = b[k].d;
    for (int j = 0; j < kQK; ++j) tail[k].qs[j] = (int8_t)q(k, j);
  }
}

}  // namespace

WeightView repack(ThreadPool& pool, const WeightView& w, PackedBytes& storage) {
  const bool q8 = w.type == DType::Q8_0;
  const bool has_m = w.type == DType::Q4_1;
  const size_t stride = w.row_stride();
  const size_t bytes = (stride * (size_t)w.rows + 63) / 64 * 64;
  storage.reset(static_cast<uint8_t*>(std::aligned_alloc(64, bytes)));
  if (!storage) throw std::bad_alloc();
  uint8_t* out = storage.get();
  const int64_t nb = w.cols / kQK;
  pool.parallel_for(w.rows, 64, [&](int64_t b, int64_t e) {
    for (int64_t r = b; r < e; ++r) {
      if (q8)
        repack_row_q8(w.row(r), out + r * stride, nb);
      else
        repack_row(w.row(r), out + r * stride, nb, has_m);
    }
  });
  WeightView v = w;
  v.type = q8 ? DType::Q8_0R : has_m ? DType::Q4_1R : DType::Q4_0R;
  v.data = out;
  return v;
}

}  // namespace llmrt::cpu
