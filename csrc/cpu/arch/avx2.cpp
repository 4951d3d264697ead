// The avx2 build of the CPU kernels (flags set per file in CMakeLists.txt).
#define LLMRT_ARCH_NS avx2
#define LLMRT_ARCH_NAME "avx2"
#include "cpu/arch/kernels_impl.inc"

namespace llmrt::cpu {
const Kernels* kernels_avx2() { return &avx2::kTable; }
}  // namespace llmrt::cpu
