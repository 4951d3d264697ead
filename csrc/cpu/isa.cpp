// Run-time choice of the CPU kernel variant: cpuid for the instruction sets,
// xgetbv for the OS saving the wide registers, LLMRT_ISA to force one.
#include <cstdlib>
#include <stdexcept>
#include <string>

#include "cpu/arch/kernels.h"

#if defined(__x86_64__) || defined(_M_X64)
#include <cpuid.h>
#define LLMRT_X86 1
#endif

namespace llmrt::cpu {

namespace {

#if LLMRT_X86
struct CpuFlags {
  bool avx2 = false, fma = false, f16c = false;
  bool avx512f = false, avx512bw = false, avx512vl = false, avx512dq = false, avx512vnni = false;
  bool os_ymm = false, os_zmm = false;
};

uint64_t xgetbv0() {
  uint32_t eax, edx;
  __asm__ volatile("xgetbv" : "=a"(eax), "=d"(edx) : "c"(0));
  return ((uint64_t)edx << 32) | eax;
}

CpuFlags read_flags() {
  CpuFlags f;
  unsigned a, b, c, d;
  if (!__get_cpuid(1, &a, &b, &c, &d)) return f;
  const bool osxsave = (c >> 27) & 1;
  f.fma = (c >> 12) & 1;
  f.f16c = (c >> 29) & 1;
  const bool avx = (c >> 28) & 1;
  if (osxsave && avx) {
    uint64_t xcr0 = xgetbv0();
    f.os_ymm = (xcr0 & 0x6) == 0x6;     // SSE + AVX state
    f.os_zmm = (xcr0 & 0xe6) == 0xe6;   // + opmask, ZMM_Hi256, Hi16_ZMM
  }
  if (__get_cpuid_max(0, nullptr) >= 7) {
    __cpuid_count(7, 0, a, b, c, d);
    f.avx2 = (b >> 5) & 1;
    f.avx512f = (b >> 16) & 1;
    f.avx512dq = (b >> 17) & 1;
    f.avx512bw = (b >> 30) & 1;
    f.avx512vl = (b >> 31) & 1;
    f.avx512vnni = (c >> 11) & 1;
  }
  return f;
}
#endif

Isa g_active = Isa::Generic;
const Kernels* g_kernels = nullptr;

}  // namespace

bool cpu_supports(Isa isa) {
  switch (isa) {
    case Isa::Generic:
      return true;
#if LLMRT_X86
    case Isa::Avx2: {
      static const CpuFlags f = read_flags();
      return f.avx2 && f.fma && f.f16c && f.os_ymm;
    }
    case Isa::Avx512: {
      static const CpuFlags f = read_flags();
      return f.avx2 && f.fma && f.f16c && f.os_ymm && f.os_zmm && f.avx512f && f.avx512bw &&
             f.avx512vl && f.avx512dq;
    }
    case Isa::Avx512Vnni: {
      static const CpuFlags f = read_flags();
      return cpu_supports(Isa::Avx512) && f.avx512vnni;
    }
#else
    default:
      return false;
#endif
  }
  return false;
}

const char* isa_name(Isa isa) {
  switch (isa) {
    case Isa::Generic: return "generic";
    case Isa::Avx2: return "avx2";
    case Isa::Avx512: return "avx512";
    case Isa::Avx512Vnni: return "avx512_vnni";
  }
  return "?";
}

bool compiled_in(Isa isa) {
  switch (isa) {
    case Isa::Generic: return true;
#if defined(LLMRT_HAVE_AVX2)
    case Isa::Avx2: return true;
#endif
#if defined(LLMRT_HAVE_AVX512)
    case Isa::Avx512: return true;
    case Isa::Avx512Vnni: return true;
#endif
    default: return false;
  }
}

// Only called once the CPU is known to run the variant: building a table runs
// code compiled for that ISA.
static const Kernels* table_of(Isa isa) {
  switch (isa) {
#if defined(LLMRT_HAVE_AVX2)
    case Isa::Avx2: return kernels_avx2();
#endif
#if defined(LLMRT_HAVE_AVX512)
    case Isa::Avx512: return kernels_avx512();
    case Isa::Avx512Vnni: return kernels_avx512_vnni();
#endif
    default: return kernels_generic();
  }
}

const Kernels* kernels_for(Isa isa) {
  if (!compiled_in(isa))
    throw std::runtime_error(std::string("CPU kernels for '") + isa_name(isa) +
                             "' were not compiled into this build");
  if (!cpu_supports(isa))
    throw std::runtime_error(std::string("this CPU cannot run the '") + isa_name(isa) +
                             "' kernels (missing instructions or OS support)");
  return table_of(isa);
}

Isa select_isa_from_env() {
  const char* env = std::getenv("LLMRT_ISA");
  if (env && *env) {
    std::string s(env);
    for (Isa isa : kAllIsas) {
      if (s == isa_name(isa)) {
        kernels_for(isa);  // throws when unusable
        return isa;
      }
    }
    throw std::runtime_error("LLMRT_ISA='" + s +
                             "' is not one of generic, avx2, avx512, avx512_vnni");
  }
  for (Isa isa : {Isa::Avx512Vnni, Isa::Avx512, Isa::Avx2})
    if (compiled_in(isa) && cpu_supports(isa)) return isa;
  return Isa::Generic;
}

void set_active_isa(Isa isa) {
  g_kernels = kernels_for(isa);
  g_active = isa;
}

const Kernels* active_kernels() {
  if (!g_kernels) set_active_isa(select_isa_from_env());
  return g_kernels;
}

Isa active_isa() {
  active_kernels();
  return g_active;
}

}  // namespace llmrt::cpu
