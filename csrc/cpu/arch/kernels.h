// The per-ISA kernel table of the CPU backend.
//
// arch/kernels_impl.inc is compiled four times (generic.cpp, avx2.cpp,
// avx512.cpp, avx512_vnni.cpp), each with its own target flags, into its own namespace. Only
// the table crosses TU boundaries, so no code built for a wider ISA can be
// picked by the linker for a narrower one. The generic build is the plain C++
// twin every other variant is tested against.
#pragma once

#include <cstdint>

#include "core/dtype.h"

namespace llmrt::cpu {

// Avx512Vnni: AVX-512 (F, BW, VL, DQ) with VNNI's vpdpbusd and 512-bit tiles
// in the integer-dot kernels.
enum class Isa : int { Generic = 0, Avx2 = 1, Avx512 = 2, Avx512Vnni = 3 };
// Every variant, narrowest first.
inline constexpr Isa kAllIsas[] = {Isa::Generic, Isa::Avx2, Isa::Avx512, Isa::Avx512Vnni};

// Number of DType slots in the per-type tables (max GGUF id we index + 1).
constexpr int kDTypeSlots = 47;

using VecDotFn = float (*)(const void* row, const float* x, int64_t n);
using DequantFn = void (*)(const void* row, float* out, int64_t n);
// Integer-dot forms against activations quantized to 8 bits: one row of n
// values as qs (2n: values, then absolute values), d and s (n / 32 each),
// see QActs.
using VecDotQFn = float (*)(const uint8_t* row, const int8_t* qs, const float* d, const float* s,
                            int64_t n);
// Tile: y[t * y_stride + r] = W row r . X row t, for r < nr, t < nt; W rows are
// w_stride bytes apart.
using GemmQFn = void (*)(const uint8_t* w, size_t w_stride, int64_t nr, const QActs& x,
                         int64_t nt, float* y, int64_t y_stride);

// Query rows that read the same kv head (one head's rows of several tokens,
// or several heads of one token): out_i = softmax(q_i k^T * scale) v over the
// keys [0, n_keys[i]) (causal), restricted to the cache blocks [b_begin,
// b_end). Key j of this kv head is the row at k_blocks[j / block_tokens] +
// (j % block_tokens) * row_bytes, of kv_type (KVType: F32, F16 or Q8_0 rows
// of hd values); values likewise. With m_out / l_out set (split-KV), out_i is
// left unnormalised and the row's running max and sum of exponentials are
// stored for the merge; a row with no key in range gets -inf and 0.
struct AttnBlock {
  const float* const* q_rows;
  float* const* out_rows;
  const int* n_keys;
  int n_q;
  const uint8_t* const* k_blocks;
  const uint8_t* const* v_blocks;
  int block_tokens;
  size_t row_bytes;
  int kv_type;
  int hd;
  float scale;
  int b_begin, b_end;
  // Sliding window: row i sees keys [n_keys[i] - window, n_keys[i]) only
  // (0: all). Rows that go through a group together share n_keys.
  int window = 0;
  // optional: the first key of each row, instead of the window's start
  // (rows that see keys past their own position, gemma 3's image tokens)
  const int* k_first = nullptr;
  float softcap = 0.f;  // scores -> softcap * tanh(scores / softcap) (0: none)
  float* m_out = nullptr;
  float* l_out = nullptr;
};

// Rows a panel of the packed float weights holds (Kernels::pack_f32).
constexpr int64_t kPanel = 16;

// F16 weights held as integers (Kernels::gemm_i16p): columns in blocks of
// kI16Block, zeros past the last column. Weights round to |q| <= kI16WMax
// (14 bits) with a scale per row and block, activations to |q| <= kI16XMax
// (13 bits) with a scale per token and block: a block's 64 products sum to
// under 2^31 exactly. Panel p of kPanel rows, block b, at (p * nb + b) *
// kI16BlockBytes: for each column pair j, the 16 rows' values 2j and 2j + 1
// (int16 at 32 j + 2 i + {0, 1} for row i), then the 16 rows' float scales.
constexpr int64_t kI16Block = 64;
constexpr int kI16WMax = 8191, kI16XMax = 4095;
constexpr int64_t kI16BlockBytes = kPanel * kI16Block * 2 + kPanel * 4;

struct Kernels {
  const char* name;
  // sum_i W[i] * x[i] over one quantized row of n elements.
  VecDotFn vec_dot[kDTypeSlots];
  // One quantized row of n elements -> n floats.
  DequantFn dequant[kDTypeSlots];
  // x (n floats, n % 32 == 0) -> qs (n, then |qs| in qs[n..2n)), d and s (n / 32)
  void (*quantize_act)(const float* x, int8_t* qs, float* d, float* s, int64_t n);
  // qs (n values) -> out (n bytes, then n / 16 int16): the interleaved copy
  // the repacked groups read and the sums of 16 (parts 3 and 4 of a QActs
  // row); only products with such weights need them
  void (*interleave_act)(const int8_t* qs, int8_t* out, int64_t n);
  // per weight type (those with int8_dot(type)); the tile kernel reads each
  // weight block once for all the tokens of the tile
  VecDotQFn vec_dot_q[kDTypeSlots];
  GemmQFn gemm_q[kDTypeSlots];
  void (*attention_block)(const AttnBlock& a);
  // gate[i] = silu(gate[i]) * up[i]
  void (*swiglu)(float* gate, const float* up, int64_t n);
  // gate[i] = gelu(gate[i]) * up[i], GELU's tanh form
  void (*geglu)(float* gate, const float* up, int64_t n);
  // x[i] = exp(x[i] - m); returns sum_i x[i]
  float (*exp_sum)(float* x, float m, int64_t n);
  // sum_i a[i] * b[i]
  float (*dot_f32)(const float* a, const float* b, int64_t n);
  // Float products. pack_f32: nr float rows w (stride ws) -> panels of
  // kPanel rows, element (k, i) of panel p at p * cols * kPanel + k * kPanel
  // + i, the rows past nr zero. gemm_f32p: y[t * ys + r] = w_r . x_t for
  // the packed rows and n tokens x (stride xs); each (row, token) sum runs
  // over k in order: the same whatever the tile, thread count or batch.
  // gemm_f32: the same for row-major w (stride cols), packed on the way.
  void (*pack_f32)(const float* w, int64_t nr, int64_t cols, int64_t ws, float* panels);
  void (*gemm_f32p)(const float* panels, int64_t nr, int64_t cols, const float* x, int64_t xs,
                    int64_t n, float* y, int64_t ys);
  void (*gemm_f32)(const float* w, int64_t nr, int64_t cols, const float* x, int64_t n,
                   float* y, int64_t ys);
  // gemm_f32p on panels of halves (WeightView::panels): the same results as
  // the widened panels
  void (*gemm_h16p)(const uint16_t* panels, int64_t nr, int64_t cols, const float* x, int64_t xs,
                    int64_t n, float* y, int64_t ys);
  // One row of cols floats -> q (whole blocks of kI16Block, zeros past cols)
  // and a scale per block: q = round(x / s), s = max|x| / qmax (a block with
  // an infinity or NaN: a NaN scale)
  void (*quantize_i16)(const float* x, int64_t cols, int qmax, int16_t* q, float* s);
  // y[t * ys + r] = w_r . x_t for nr rows of 14-bit panels (nb blocks a
  // row) and n tokens quantized by quantize_i16 (token t's values at xq + t
  // nb kI16Block, its scales at xs + t nb); each block's sum exact, the
  // blocks taken in order: the same bits whatever the tile, batch or ISA
  void (*gemm_i16p)(const uint8_t* panels, int64_t nr, int64_t nb, const int16_t* xq,
                    const float* xs, int64_t n, float* y, int64_t ys);
  // Whether gemm_i16p beats the float product here (VNNI's vpdpwssd, or
  // AVX2's vpmaddwd against its 8-lane FMAs; not AVX-512's vpmaddwd plus
  // vpaddd, 0.7x of its FMAs, nor the plain loops)
  bool i16_faster;
  // x[i] = x[i] (1 + erf(x[i] / sqrt 2)) / 2, GELU's exact form
  void (*gelu_erf)(float* x, int64_t n);
  // one row: y = (x - mean) / sqrt(var + eps) * w + b (y may be x)
  void (*layernorm)(const float* x, const float* w, const float* b, int64_t dim, float eps,
                    float* y);
  // max_i x[i] (-inf for n == 0)
  float (*max_f32)(const float* x, int64_t n);
  // y[i] += a * x[i]
  void (*axpy)(float a, const float* x, float* y, int64_t n);
  // y[i] *= a
  void (*scale)(float a, float* y, int64_t n);
  // n floats -> IEEE half (round to nearest even)
  void (*f32_to_f16)(const float* x, uint16_t* y, int64_t n);
};

const Kernels* kernels_generic();
const Kernels* kernels_avx2();    // nullptr when not compiled in
const Kernels* kernels_avx512();  // nullptr when not compiled in
const Kernels* kernels_avx512_vnni();

// What the running CPU (and OS) can execute.
bool cpu_supports(Isa isa);
const char* isa_name(Isa isa);
// Whether the variant's kernels were compiled into this build.
bool compiled_in(Isa isa);
// Best ISA the CPU runs, or the one named by LLMRT_ISA (throws
// std::runtime_error if the name is unknown or the CPU cannot run it).
Isa select_isa_from_env();
// Kernels of an ISA; throws if not compiled in or unsupported by this CPU.
const Kernels* kernels_for(Isa isa);
// Kernels chosen once at import (select_isa_from_env).
const Kernels* active_kernels();
Isa active_isa();
void set_active_isa(Isa isa);

}  // namespace llmrt::cpu
