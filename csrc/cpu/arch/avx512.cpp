// The avx512 build of the CPU kernels (flags set per file in CMakeLists.txt).
#define LLMRT_ARCH_NS avx512
#define LLMRT_ARCH_NAME "avx512"
#include "cpu/arch/kernels_impl.inc"

namespace llmrt::cpu {
// Built on first use, never at load time: code of this file may only run
// once the CPU has been checked for the instructions it was compiled for.
const Kernels* kernels_avx512() {
  static const Kernels table = avx512::make_table();
  return &table;
}
}  // namespace llmrt::cpu
