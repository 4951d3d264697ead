// The avx2 build of the CPU kernels (flags set per file in CMakeLists.txt).
#define LLMRT_ARCH_NS avx2
#define LLMRT_ARCH_NAME "avx2"
#include "cpu/arch/kernels_impl.inc"

namespace llmrt::cpu {
// Built on first use, never at load time: code of this file may only run
// once the CPU has been checked for the instructions it was compiled for.
const Kernels* kernels_avx2() {
  static const Kernels table = avx2::make_table();
  return &table;
}
}  // namespace llmrt::cpu
