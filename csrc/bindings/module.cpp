// llmrt._core: the native extension. Picks the CPU kernel variant at import
// (LLMRT_ISA forces one; an unusable choice makes the import fail loudly).
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include "bindings/bindings.h"
#include "cpu/arch/kernels.h"
#if defined(LLMRT_WITH_CUDA)
#include "cuda/backend_cuda.h"
#endif

namespace py = pybind11;
using namespace llmrt;

#ifndef LLMRT_VERSION
#define LLMRT_VERSION "0.0.0"
#endif

PYBIND11_MODULE(_core, m) {
  m.doc() = "llmrt native core: CPU kernels and the llama-family forward pass";
  cpu::set_active_isa(cpu::select_isa_from_env());  // throws -> ImportError

  m.def("build_info", [] {
    py::dict d;
    d["version"] = LLMRT_VERSION;
    py::list compiled, supported;
    for (auto isa : cpu::kAllIsas) {
      if (cpu::compiled_in(isa)) compiled.append(cpu::isa_name(isa));
      if (cpu::cpu_supports(isa)) supported.append(cpu::isa_name(isa));
    }
    d["cpu_isa_compiled"] = compiled;
    d["cpu_isa_supported"] = supported;
    d["cpu_isa"] = cpu::isa_name(cpu::active_isa());
#if defined(LLMRT_WITH_CUDA)
    d["cuda"] = true;  // the CUDA backend is compiled in
    const int n = cuda_device_count();
    py::list devs;
    for (int i = 0; i < n; ++i) devs.append(cuda_device_name(i));
    d["cuda_devices"] = devs;
#else
    d["cuda"] = false;
    d["cuda_devices"] = py::list();
#endif
#if defined(__VERSION__)
    d["compiler"] = __VERSION__;
#endif
    return d;
  }, "What this build contains and which CPU kernel variant is in use.");

  bindings::bind_tensors(m);
  bindings::bind_model(m);
  bindings::bind_vision(m);
  bindings::bind_encoder(m);
  bindings::bind_sampler(m);
  py::module_ testing = m.def_submodule(
      "testing", "Single kernels with the ISA to use, for tests and microbenchmarks.");
  bindings::bind_testing(testing);
}
