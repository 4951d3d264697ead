// The avx512_vnni build of the CPU kernels: the avx512 flags plus VNNI
// (vpdpbusd), which the integer-dot kernels use with 512-bit tiles.
#define LLMRT_ARCH_NS avx512_vnni
#define LLMRT_ARCH_NAME "avx512_vnni"
#include "cpu/arch/kernels_impl.inc"

namespace llmrt::cpu {
// Built on first use, never at load time: code of this file may only run
// once the CPU has been checked for the instructions it was compiled for.
const Kernels* kernels_avx512_vnni() {
  static const Kernels table = avx512_vnni::make_table();
  return &table;
}
}  // namespace llmrt::cpu
