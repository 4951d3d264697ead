// The avx512 build of the CPU kernels (flags set per file in CMakeLists.txt).
#define LLMRT_ARCH_NS avx512
#define LLMRT_ARCH_NAME "avx512"
#include "cpu/arch/kernels_impl.inc"

namespace llmrt::cpu {
const Kernels* kernels_avx512() { return &avx512::kTable; }
}  // namespace llmrt::cpu
