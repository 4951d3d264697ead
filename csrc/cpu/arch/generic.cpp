// The generic build of the CPU kernels (flags set per file in CMakeLists.txt).
#define LLMRT_ARCH_NS generic
#define LLMRT_ARCH_NAME "generic"
#include "cpu/arch/kernels_impl.inc"

namespace llmrt::cpu {
// Built on first use, never at load time: code of this file may only run
// once the CPU has been checked for the instructions it was compiled for.
const Kernels* kernels_generic() {
  static const Kernels table = generic::make_table();
  return &table;
}
}  // namespace llmrt::cpu
