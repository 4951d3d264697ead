// Load-time repacking of Q4_0 / Q4_1 / Q8_0 and Q4_K / Q5_K / Q6_K weights
// into the layouts the integer kernels read fastest (DType::Q4_0R / Q4_1R /
// Q8_0R / Q4_KR / Q5_KR / Q6_KR, described in core/dtype.h). The same size
// as the source but for Q4_KR / Q5_KR (4 bytes more a super-block: their
// scales unpacked); the copy replaces the file's bytes for the model's
// lifetime.
#include <algorithm>
#include <cstdlib>
#include <cstring>
#include <new>
#include <vector>

#include "cpu/ops.h"

namespace llmrt::cpu {

namespace {

// fp16 bits of 2^(e - 128), half an E8M0 scale, where fp16 holds it exactly
// (e in [104, 143]: subnormal below 114); 0 elsewhere.
uint16_t e8m0_half_fp16(uint8_t e) {
  if (e < 104 || e > 143) return 0;
  return e >= 114 ? (uint16_t)((e - 113) << 10) : (uint16_t)(1u << (e - 104));
}

}  // namespace

bool can_repack(const WeightView& w) {
  if (w.type == DType::Q8_0 || w.type == DType::Q4_K || w.type == DType::Q5_K ||
      w.type == DType::Q6_K)
    return true;
  if (w.type == DType::MXFP4) {  // every block's scale must be exact in fp16
    if ((w.cols / kQK) % 2 != 0) return false;
    for (int64_t r = 0; r < w.rows; ++r) {
      const BlockMXFP4* b = reinterpret_cast<const BlockMXFP4*>(w.row(r));
      for (int64_t k = 0; k < w.cols / kQK; ++k)
        if (e8m0_half_fp16(b[k].e) == 0) return false;
    }
    return true;
  }
  return (w.type == DType::Q4_0 || w.type == DType::Q4_1) && (w.cols / kQK) % 2 == 0;
}

namespace {

// Element j (0..31) of block b of a source row, 0..15.
inline uint8_t q4_elem(const uint8_t* row, size_t bytes, size_t qoff, int64_t b, int j) {
  const uint8_t* qs = row + b * bytes + qoff;
  return j < 16 ? (qs[j] & 0x0f) : (qs[j - 16] >> 4);
}

// Q4_0 / Q4_1 -> Q4_0R / Q4_1R; MXFP4 (mx) -> MXFP4R: the same nibbles, the
// scale as fp16 (its bytes where Q4_0R keeps d).
void repack_row(const uint8_t* src, uint8_t* dst, int64_t nb, bool has_m, bool mx = false) {
  const size_t bytes = mx ? sizeof(BlockMXFP4) : has_m ? sizeof(BlockQ4_1) : sizeof(BlockQ4_0);
  const size_t qoff = mx ? 1 : has_m ? 4 : 2;
  auto put_d = [&](uint8_t* out, const uint8_t* blk) {
    if (!mx) {
      std::memcpy(out, blk, 2);
      return;
    }
    const uint16_t h = e8m0_half_fp16(blk[0]);
    std::memcpy(out, &h, 2);
  };
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
      put_d(base + 2 * i, blk);                           // d
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
      put_d(base + 2 * i, blk);
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
  // pairs of the blocks left: both scales, then 64 bytes interleaved as the
  // activations' pairs (byte 8k + 4j + i: element 4k + i of block j), biased
  const int64_t pairs = (nb - groups * 8) / 2;
  for (int64_t p = 0; p < pairs; ++p) {
    const int64_t k0 = groups * 8 + 2 * p;
    uint8_t* base = dst + k0 * sizeof(BlockQ8_0);
    std::memcpy(base, &b[k0].d, 2);
    std::memcpy(base + 2, &b[k0 + 1].d, 2);
    for (int k = 0; k < 8; ++k)
      for (int j = 0; j < 2; ++j)
        for (int i = 0; i < 4; ++i) base[4 + 8 * k + 4 * j + i] = (uint8_t)(q(k0 + j, 4 * k + i) + 128);
  }
  BlockQ8_0* tail = reinterpret_cast<BlockQ8_0*>(dst);
  for (int64_t k = groups * 8 + 2 * pairs; k < nb; ++k) {  // an odd last block as stored
    tail[k].d = b[k].d;
    for (int j = 0; j < kQK; ++j) tail[k].qs[j] = (int8_t)q(k, j);
  }
}

// ---- K-quants ------------------------------------------------------------------
// Element j (0..31) of sub-block b lands in weight vector kr_vector(j) (0..3:
// the low nibbles of the 32 bytes at 32c, c = vector; 4..7: their high
// nibbles, c = vector - 4), at byte 4b + j % 4 of it.
inline int kr_vector(int j) { return (j < 16 ? 0 : 4) + (j % 16) / 4; }

// The 256 values of a super-block (0..15, or the low 4 bits) -> 128 bytes.
void put_nibbles(const uint8_t* q, uint8_t* out) {
  for (int c = 0; c < 4; ++c)
    for (int b = 0; b < 8; ++b)
      for (int i = 0; i < 4; ++i)
        out[32 * c + 4 * b + i] =
            (uint8_t)((q[32 * b + 4 * c + i] & 0x0f) | ((q[32 * b + 16 + 4 * c + i] & 0x0f) << 4));
}

void repack_row_q45k(const uint8_t* src, uint8_t* dst, int64_t nsb, bool q5) {
  const size_t bytes = q5 ? sizeof(BlockQ5_K) : sizeof(BlockQ4_K);
  const size_t out_bytes = bytes + 4;
  uint8_t q[kQKK];
  for (int64_t k = 0; k < nsb; ++k, src += bytes, dst += out_bytes) {
    const BlockQ4_K& h = *reinterpret_cast<const BlockQ4_K*>(src);  // d, dmin, scales
    const uint8_t* qs = q5 ? reinterpret_cast<const BlockQ5_K*>(src)->qs : h.qs;
    for (int j = 0; j < 8; ++j)  // sub-block j: low nibbles (j even) or high of chunk j / 2
      for (int l = 0; l < 32; ++l)
        q[32 * j + l] = (uint8_t)((j & 1) ? (qs[32 * (j / 2) + l] >> 4) : (qs[32 * (j / 2) + l] & 0x0f));
    std::memcpy(dst, src, 4);  // d, dmin
    for (int j = 0; j < 8; ++j) {
      int sc, m;
      kq_scale_min(h.scales, j, sc, m);
      dst[4 + j] = (uint8_t)sc;
      dst[12 + j] = (uint8_t)m;
    }
    if (q5) {
      const uint8_t* qh = reinterpret_cast<const BlockQ5_K*>(src)->qh;
      uint8_t* plane = dst + 20;
      std::memset(plane, 0, 32);
      for (int b = 0; b < 8; ++b)
        for (int j = 0; j < 32; ++j)
          plane[4 * b + j % 4] |= (uint8_t)(((qh[j] >> b) & 1) << kr_vector(j));
    }
    put_nibbles(q, dst + (q5 ? 52 : 20));
  }
}

void repack_row_q6k(const uint8_t* src, uint8_t* dst, int64_t nsb) {
  uint8_t q[kQKK];
  for (int64_t k = 0; k < nsb; ++k, src += sizeof(BlockQ6_K), dst += sizeof(BlockQ6_K)) {
    const BlockQ6_K& b = *reinterpret_cast<const BlockQ6_K*>(src);
    // Q6_K: per half of 128, four runs of 32 from ql (low / high nibbles of
    // two 32-byte rows) with their top bits at bits 2r, 2r + 1 of qh
    for (int j = 0; j < kQKK; ++j) {
      const int h = j / 128, r = (j % 128) / 32, l = j % 32;
      const uint8_t lb = b.ql[64 * h + 32 * (r & 1) + l];
      const int lo = r < 2 ? (lb & 0x0f) : (lb >> 4);
      q[j] = (uint8_t)(lo | (((b.qh[32 * h + l] >> (2 * r)) & 3) << 4));
    }
    std::memcpy(dst, &b.d, 2);
    std::memcpy(dst + 2, b.scales, 16);
    put_nibbles(q, dst + 18);
    uint8_t* planes = dst + 146;
    std::memset(planes, 0, 64);
    for (int blk = 0; blk < 8; ++blk)
      for (int j = 0; j < 32; ++j) {
        const int v = kr_vector(j);
        planes[32 * (v / 4) + 4 * blk + j % 4] |= (uint8_t)((q[32 * blk + j] >> 4) << (2 * (v % 4)));
      }
  }
}

}  // namespace

WeightView repack(ThreadPool& pool, const WeightView& w, PackedBytes& storage) {
  const DType t = w.type;
  const bool kq = t == DType::Q4_K || t == DType::Q5_K || t == DType::Q6_K;
  const bool q8 = t == DType::Q8_0;
  const bool has_m = t == DType::Q4_1;
  const bool mx = t == DType::MXFP4;
  WeightView v = w;
  v.type = t == DType::Q4_K   ? DType::Q4_KR
           : t == DType::Q5_K ? DType::Q5_KR
           : t == DType::Q6_K ? DType::Q6_KR
           : q8               ? DType::Q8_0R
           : has_m            ? DType::Q4_1R
           : mx               ? DType::MXFP4R
                              : DType::Q4_0R;
  const size_t stride = v.row_stride();
  const size_t bytes = (stride * (size_t)w.rows + 63) / 64 * 64;
  storage.reset(static_cast<uint8_t*>(std::aligned_alloc(64, bytes)));
  if (!storage) throw std::bad_alloc();
  uint8_t* out = storage.get();
  const int64_t nb = w.cols / kQK;
  pool.parallel_for(w.rows, 64, [&](int64_t b, int64_t e) {
    for (int64_t r = b; r < e; ++r) {
      if (t == DType::Q6_K)
        repack_row_q6k(w.row(r), out + r * stride, w.cols / kQKK);
      else if (kq)
        repack_row_q45k(w.row(r), out + r * stride, w.cols / kQKK, t == DType::Q5_K);
      else if (q8)
        repack_row_q8(w.row(r), out + r * stride, nb);
      else
        repack_row(w.row(r), out + r * stride, nb, has_m, mx);
    }
  });
  v.data = out;
  return v;
}

WeightView keep_panels(ThreadPool& pool, const WeightView& w, PackedBytes& storage) {
  const int64_t np = (w.rows + kPanel - 1) / kPanel, cols = w.cols;
  const size_t bytes = ((size_t)(np * kPanel * cols) * sizeof(uint16_t) + 63) / 64 * 64;
  storage.reset(static_cast<uint8_t*>(std::aligned_alloc(64, bytes)));
  if (!storage) throw std::bad_alloc();
  uint16_t* out = reinterpret_cast<uint16_t*>(storage.get());
  pool.parallel_for(np, 1, [&](int64_t b, int64_t e) {
    for (int64_t p = b; p < e; ++p) {
      uint16_t* dst = out + p * kPanel * cols;
      for (int64_t i = 0; i < kPanel; ++i) {
        const int64_t r = p * kPanel + i;
        const uint16_t* src = r < w.rows ? reinterpret_cast<const uint16_t*>(w.row(r)) : nullptr;
        for (int64_t k = 0; k < cols; ++k) dst[k * kPanel + i] = src ? src[k] : 0;
      }
    }
  });
  WeightView v = w;
  v.panels = out;
  return v;
}

WeightView keep_i16_panels(ThreadPool& pool, const Kernels& k, const WeightView& w,
                            PackedBytes& storage) {
  const int64_t np = (w.rows + kPanel - 1) / kPanel, cols = w.cols;
  const int64_t nb = (cols + kI16Block - 1) / kI16Block;
  const size_t bytes = (size_t)(np * nb * kI16BlockBytes);
  storage.reset(static_cast<uint8_t*>(std::aligned_alloc(64, bytes)));
  if (!storage) throw std::bad_alloc();
  uint8_t* out = storage.get();
  pool.parallel_for(np, 1, [&](int64_t b, int64_t e) {
    std::vector<float> row((size_t)cols);
    std::vector<int16_t> q((size_t)(nb * kI16Block));
    std::vector<float> s((size_t)nb);
    for (int64_t p = b; p < e; ++p) {
      uint8_t* panel = out + p * nb * kI16BlockBytes;
      for (int64_t i = 0; i < kPanel; ++i) {
        const int64_t r = p * kPanel + i;
        if (r < w.rows) {
          k.dequant[(int)DType::F16](w.row(r), row.data(), cols);
          k.quantize_i16(row.data(), cols, kI16WMax, q.data(), s.data());
        } else {  // rows past the last: zeros
          std::fill(q.begin(), q.end(), int16_t{0});
          std::fill(s.begin(), s.end(), 0.f);
        }
        for (int64_t blk = 0; blk < nb; ++blk) {
          int16_t* dst = reinterpret_cast<int16_t*>(panel + blk * kI16BlockBytes);
          for (int64_t j = 0; j < kI16Block / 2; ++j) {
            dst[j * 32 + 2 * i] = q[(size_t)(blk * kI16Block + 2 * j)];
            dst[j * 32 + 2 * i + 1] = q[(size_t)(blk * kI16Block + 2 * j + 1)];
          }
          reinterpret_cast<float*>(panel + blk * kI16BlockBytes + kPanel * kI16Block * 2)[i] =
              s[(size_t)blk];
        }
      }
    }
  });
  WeightView v = w;
  v.ipanels = out;
  return v;
}

}  // namespace llmrt::cpu
