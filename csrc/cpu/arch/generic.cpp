// The generic build of the CPU kernels (flags set per file in CMakeLists.txt).
#define LLMRT_ARCH_NS generic
#define LLMRT_ARCH_NAME "generic"
#include "cpu/arch/kernels_impl.inc"

namespace llmrt::cpu {
const Kernels* kernels_generic() { return &generic::kTable; }
}  // namespace llmrt::cpu
