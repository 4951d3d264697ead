// Element types and quantized block formats of GGUF tensors.
//
// The numeric values are GGUF's ggml_type ids, so a type read from a file maps
// straight onto DType. Block layouts (32 weights a block) are the ones GGUF
// files store; every struct is packed to the exact on-disk size.
#pragma once

#include <cstddef>
#include <cstdint>
#include <cstring>

namespace llmrt {

enum class DType : uint32_t {
  F32 = 0,
  F16 = 1,
  Q4_0 = 2,
  Q4_1 = 3,
  Q5_0 = 6,
  Q5_1 = 7,
  Q8_0 = 8,
  Q4_K = 12,
  Q5_K = 13,
  Q6_K = 14,
  BF16 = 30,
  MXFP4 = 39,  // OCP microscaling FP4 (gpt-oss's experts)
  // llmrt-internal layouts (never read from a file): Q4_0 / Q4_1 repacked by
  // the CPU backend for its integer kernels. A row is groups of 8 blocks,
  // [8 fp16 d][8 fp16 m (Q4_1R only)][4 x 32 bytes], then the remaining
  // blocks in pairs [d0 d1 (m0 m1)][32 bytes].
  // In a group, the blocks are interleaved 4 elements at a time, so that
  // each 32-bit lane of a 256-bit register belongs to one block: byte
  // 32c + 4b + i (c < 4, b < 8, i < 4) holds element 4c + i of block b (low
  // nibble) and element 16 + 4c + i (high nibble). A pair is interleaved
  // likewise: byte 8k + 4j + i (k < 4, j < 2) holds element 4k + i of its
  // block j (low nibble) and element 16 + 4k + i (high). Rows need an even
  // number of blocks; same size as the source.
  Q4_0R = 40,
  Q4_1R = 41,
  // Q8_0 regrouped: [8 fp16 d][256 bytes] per 8 blocks, then the remaining
  // blocks in pairs [d0 d1][64 bytes], an odd last block as stored ([d][32
  // int8]); same size as the source. The 256 bytes of a group are
  // interleaved as the Q4 groups' (byte 32m + 4b + i: element 4m + i of
  // block b, m < 8), a pair's 64 as the activations' pairs (byte 8k + 4j +
  // i: element 4k + i of its block j, k < 8), both biased to unsigned
  // (q + 128).
  Q8_0R = 42,
  // K-quants repacked for the integer kernels: a super-block of 256 weights
  // is a group of 8 blocks of 32 (its sub-blocks), interleaved as the Q4
  // groups are, so that 32-bit lane b of a 256-bit register always belongs
  // to sub-block b; super-blocks in the same order as the source.
  // Q4_KR (148 bytes): d, dmin (fp16), the 8 scales and the 8 mins unpacked
  // to a byte each, then 128 bytes: byte 32c + 4b + i holds element 4c + i
  // of sub-block b (low nibble) and element 16 + 4c + i (high nibble), c < 4,
  // i < 4.
  // Q5_KR (180 bytes): the Q4_KR header, then the fifth bits as a plane of 32
  // bytes (bit v of byte k: the fifth bit of byte k of weight vector v, where
  // vector v < 4 is the low nibbles of the 32 bytes at 32v, vector v >= 4
  // the high nibbles of those at 32(v - 4)), then the 128 bytes as Q4_KR.
  // Q6_KR (210 bytes, as Q6_K): d, the 16 int8 scales as in Q6_K, the 128
  // low-nibble bytes as Q4_KR, then two planes of 32 bytes with the top 2
  // bits: bits 2u, 2u + 1 of byte k of plane p belong to byte k of weight
  // vector 4p + u.
  Q4_KR = 43,
  Q5_KR = 44,
  Q6_KR = 45,
  // MXFP4 in the Q4_0R layout (the nibble codes where Q4_0R puts its
  // nibbles, fp16 d = half the block's E8M0 scale, so a weight is
  // kMxfp4Values[code] * d): for blocks whose scales fp16 holds exactly
  // (E8M0 exponents 104..143); one byte a block more than the source.
  MXFP4R = 46,
};

constexpr int kQK = 32;   // weights per block of the 32-wide formats
constexpr int kQKK = 256; // weights per super-block of the K-quants

#pragma pack(push, 1)
// Q4_0: w = d * (q - 8), q in [0, 15]; byte j holds q[j] (low nibble) and
// q[j + 16] (high nibble).
struct BlockQ4_0 {
  uint16_t d;  // fp16 scale
  uint8_t qs[kQK / 2];
};
// Q4_1: w = d * q + m, same nibble order as Q4_0.
struct BlockQ4_1 {
  uint16_t d;  // fp16 scale
  uint16_t m;  // fp16 minimum
  uint8_t qs[kQK / 2];
};
// Q5_0: w = d * (q - 16), q in [0, 31]: the low 4 bits in the Q4_0 nibble
// order, bit j of qh (little-endian) the fifth bit of element j.
struct BlockQ5_0 {
  uint16_t d;
  uint8_t qh[4];
  uint8_t qs[kQK / 2];
};
// Q5_1: w = d * q + m, q as in Q5_0.
struct BlockQ5_1 {
  uint16_t d;
  uint16_t m;
  uint8_t qh[4];
  uint8_t qs[kQK / 2];
};
// MXFP4 (OCP microscaling, E2M1 values with a shared E8M0 exponent): w =
// kMxfp4Values[q] * 2^(e - 128), q in [0, 15] (bit 3: the sign), the
// nibbles in Q4_0's order. The table holds the E2M1 values doubled, so they
// are integers, and the scale is halved to match.
struct BlockMXFP4 {
  uint8_t e;
  uint8_t qs[kQK / 2];
};
inline constexpr int8_t kMxfp4Values[16] = {0, 1, 2, 3, 4, 6, 8, 12, 0, -1, -2, -3, -4, -6, -8, -12};
// 2^(e - 128): half the E8M0 scale 2^(e - 127), exact (a subnormal for e < 2)
inline float e8m0_half(uint8_t e) {
  const uint32_t bits = e < 2 ? 0x00200000u << e : (uint32_t)(e - 1) << 23;
  float f;
  std::memcpy(&f, &bits, 4);
  return f;
}
// Q8_0: w = d * q, q in [-127, 127].
struct BlockQ8_0 {
  uint16_t d;  // fp16 scale
  int8_t qs[kQK];
};
// Q4_K: 8 sub-blocks of 32; w = d * sc[j] * q - dmin * m[j], q in [0, 15].
// scales packs the 6-bit sc[j] and m[j]: for j < 4 they are the low 6 bits
// of scales[j] and scales[j + 4]; for j >= 4 the low nibbles of scales[j + 4]
// (sc) and its high nibbles (m), with the top 2 bits taken from the high
// bits of scales[j - 4] (sc) and scales[j] (m). qs holds 64-element chunks:
// 32 bytes whose low nibbles are sub-block 2c and high nibbles 2c + 1.
struct BlockQ4_K {
  uint16_t d;
  uint16_t dmin;
  uint8_t scales[12];
  uint8_t qs[kQKK / 2];
};
// Q5_K: as Q4_K plus a fifth bit per weight: bit (2c) of qh[l] is the high
// bit of element l of sub-block 2c, bit (2c + 1) that of sub-block 2c + 1.
struct BlockQ5_K {
  uint16_t d;
  uint16_t dmin;
  uint8_t scales[12];
  uint8_t qh[kQKK / 8];
  uint8_t qs[kQKK / 2];
};
// Q6_K: 16 sub-blocks of 16; w = d * scales[j] * (q - 32), q in [0, 63]:
// low 4 bits in ql, high 2 bits in qh (layout in the dequantizer).
struct BlockQ6_K {
  uint8_t ql[kQKK / 2];
  uint8_t qh[kQKK / 4];
  int8_t scales[kQKK / 16];
  uint16_t d;
};
#pragma pack(pop)

// Callable from host and CUDA device code alike.
#if defined(__CUDACC__)
#define LLMRT_HD __host__ __device__
#else
#define LLMRT_HD
#endif

// The 6-bit scale and min of sub-block j (0..7) of a Q4_K / Q5_K block's
// 12 scale bytes (layout above).
LLMRT_HD inline void kq_scale_min(const uint8_t* q, int j, int& sc, int& m) {
  if (j < 4) {
    sc = q[j] & 63;
    m = q[j + 4] & 63;
  } else {
    sc = (q[j + 4] & 0x0f) | ((q[j - 4] >> 6) << 4);
    m = (q[j + 4] >> 4) | ((q[j] >> 6) << 4);
  }
}

// Activations quantized on the fly for the integer dot products, per row of
// n values (n % 32 == 0), in four parts:
//   1. qs: n int8 values, x ~= d * q per block of 32;
//   2. their n absolute values (the kernels of signed weights use them);
//   3. the n values with each group of 8 blocks interleaved as the Q4_0R /
//      Q4_1R groups are (byte 32m + 4b + i holds element 4m + i of block b,
//      m < 8), then pairs of blocks likewise (byte 8k + 4j + i: element
//      4k + i of block j, k < 8), an odd last block as it is;
//   4. n / 16 int16: the sum of each 16 values of part 1 (Q6_KR's offset).
// Parts 3 and 4 are written only for products whose weights are repacked.
// Per block of 32: d and s = d * sum(q) (for the formats with an offset).
// Rows of a batch follow each other in each array (qs rows are
// act_row_bytes(n) bytes apart).
constexpr int64_t act_row_bytes(int64_t n) { return 3 * n + n / 8; }
struct QActs {
  const int8_t* qs;
  const float* d;
  const float* s;
  int64_t n;  // values per row
  const int8_t* row_qs(int64_t t) const { return qs + t * act_row_bytes(n); }
  const float* row_d(int64_t t) const { return d + t * (n / kQK); }
  const float* row_s(int64_t t) const { return s + t * (n / kQK); }
};
// Part 4 of a row whose part 1 starts at q.
inline const int16_t* act_sums16(const int8_t* q, int64_t n) {
  return reinterpret_cast<const int16_t*>(q + 3 * n);
}

static_assert(sizeof(BlockQ4_K) == 144, "Q4_K block is 144 bytes");
static_assert(sizeof(BlockQ5_K) == 176, "Q5_K block is 176 bytes");
static_assert(sizeof(BlockQ6_K) == 210, "Q6_K block is 210 bytes");
static_assert(sizeof(BlockQ4_0) == 18, "Q4_0 block is 18 bytes");
static_assert(sizeof(BlockQ4_1) == 20, "Q4_1 block is 20 bytes");
static_assert(sizeof(BlockQ8_0) == 34, "Q8_0 block is 34 bytes");
static_assert(sizeof(BlockQ5_0) == 22, "Q5_0 block is 22 bytes");
static_assert(sizeof(BlockQ5_1) == 24, "Q5_1 block is 24 bytes");
static_assert(sizeof(BlockMXFP4) == 17, "MXFP4 block is 17 bytes");

// Elements per block and bytes per block; 0 for an unsupported type.
constexpr int block_elems(DType t) {
  switch (t) {
    case DType::Q4_0: case DType::Q4_1: case DType::Q8_0: return kQK;
    case DType::Q5_0: case DType::Q5_1: case DType::MXFP4: return kQK;
    case DType::Q4_0R: case DType::Q4_1R: case DType::Q8_0R: case DType::MXFP4R: return kQK;
    case DType::Q4_K: case DType::Q5_K: case DType::Q6_K: return kQKK;
    case DType::Q4_KR: case DType::Q5_KR: case DType::Q6_KR: return kQKK;
    default: return 1;
  }
}
// Whether matmuls with this weight type run as integer dot products against
// activations quantized to 8 bits (QActs); the float types use float FMA.
constexpr bool int8_dot(DType t) {
  return t == DType::Q4_0 || t == DType::Q4_1 || t == DType::Q5_0 || t == DType::Q5_1 ||
         t == DType::Q8_0 || t == DType::MXFP4 || t == DType::Q4_K ||
         t == DType::Q5_K || t == DType::Q6_K || t == DType::Q4_0R || t == DType::Q4_1R ||
         t == DType::Q8_0R || t == DType::Q4_KR || t == DType::Q5_KR || t == DType::Q6_KR ||
         t == DType::MXFP4R;
}
// The layouts whose groups read the interleaved activations (QActs).
constexpr bool interleaved_layout(DType t) {
  return t == DType::Q4_0R || t == DType::Q4_1R || t == DType::Q8_0R || t == DType::Q4_KR ||
         t == DType::Q5_KR || t == DType::Q6_KR || t == DType::MXFP4R;
}
// The repacked K-quants: their decode runs through the tile kernel too.
constexpr bool kquant_repacked(DType t) {
  return t == DType::Q4_KR || t == DType::Q5_KR || t == DType::Q6_KR;
}
constexpr size_t block_bytes(DType t) {
  switch (t) {
    case DType::F32: return 4;
    case DType::F16: return 2;
    case DType::BF16: return 2;
    case DType::Q4_0: return sizeof(BlockQ4_0);
    case DType::Q4_1: return sizeof(BlockQ4_1);
    case DType::Q5_0: return sizeof(BlockQ5_0);
    case DType::Q5_1: return sizeof(BlockQ5_1);
    case DType::Q8_0: return sizeof(BlockQ8_0);
    case DType::MXFP4: return sizeof(BlockMXFP4);
    case DType::Q4_K: return sizeof(BlockQ4_K);
    case DType::Q5_K: return sizeof(BlockQ5_K);
    case DType::Q6_K: return sizeof(BlockQ6_K);
    case DType::Q4_0R: return sizeof(BlockQ4_0);
    case DType::MXFP4R: return sizeof(BlockQ4_0);
    case DType::Q4_1R: return sizeof(BlockQ4_1);
    case DType::Q8_0R: return sizeof(BlockQ8_0);
    case DType::Q4_KR: return sizeof(BlockQ4_K) + 4;  // scales unpacked: 16 bytes, not 12
    case DType::Q5_KR: return sizeof(BlockQ5_K) + 4;
    case DType::Q6_KR: return sizeof(BlockQ6_K);
  }
  return 0;
}
inline bool dtype_supported(uint32_t raw) {
  switch (static_cast<DType>(raw)) {
    case DType::F32: case DType::F16: case DType::BF16:
    case DType::Q4_0: case DType::Q4_1: case DType::Q5_0: case DType::Q5_1: case DType::Q8_0:
    case DType::Q4_K: case DType::Q5_K: case DType::Q6_K: case DType::MXFP4:
      return true;
    case DType::Q4_0R: case DType::Q4_1R: case DType::Q8_0R:
    case DType::Q4_KR: case DType::Q5_KR: case DType::Q6_KR: case DType::MXFP4R:
      return false;  // internal layouts, never valid in a file
  }
  return false;
}
// Bytes of one row of n elements (n must be a multiple of block_elems).
constexpr size_t row_bytes(DType t, int64_t n) {
  return static_cast<size_t>(n / block_elems(t)) * block_bytes(t);
}
const char* dtype_name(DType t);

// IEEE half -> float, portable (no F16C needed).
inline float fp16_to_fp32(uint16_t h) {
  uint32_t sign = (uint32_t)(h & 0x8000) << 16;
  uint32_t exp = (h >> 10) & 0x1f;
  uint32_t mant = h & 0x3ff;
  uint32_t bits;
  if (exp == 0) {
    if (mant == 0) {
      bits = sign;
    } else {  // subnormal: renormalise
      int e = -1;
      do { mant <<= 1; ++e; } while ((mant & 0x400) == 0);
      bits = sign | ((uint32_t)(127 - 15 - e) << 23) | ((mant & 0x3ff) << 13);
    }
  } else if (exp == 31) {
    bits = sign | 0x7f800000u | (mant << 13);
  } else {
    bits = sign | ((exp + 127 - 15) << 23) | (mant << 13);
  }
  float f;
  std::memcpy(&f, &bits, 4);
  return f;
}

inline float bf16_to_fp32(uint16_t h) {
  uint32_t bits = (uint32_t)h << 16;
  float f;
  std::memcpy(&f, &bits, 4);
  return f;
}

}  // namespace llmrt
