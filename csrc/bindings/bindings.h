#pragma once

#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>

#include <string>

#include "core/tensor.h"

namespace llmrt::bindings {

using Bytes = pybind11::array_t<uint8_t, pybind11::array::c_style>;

// A (rows, cols) weight of GGUF type `type` over the bytes of `data`; raises
// ValueError naming `what` if the type, shape or byte count is wrong.
WeightView weight_view(uint32_t type, int64_t rows, int64_t cols, const Bytes& data,
                       const std::string& what);

void bind_kernels(pybind11::module_& m);
void bind_model(pybind11::module_& m);
void bind_sampler(pybind11::module_& m);

}  // namespace llmrt::bindings
