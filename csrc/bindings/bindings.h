// Shared pieces of the pybind11 module llmrt._core: module.cpp plus one file
// per bound class or group (tensors, model, sampler, testing).
#pragma once

#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>

#include <cstdint>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "core/backend.h"
#include "core/tensor.h"

namespace llmrt::cpu {
struct Kernels;
}

namespace llmrt::bindings {

using Bytes = pybind11::array_t<uint8_t, pybind11::array::c_style>;

// A (rows, cols) weight of GGUF type `type` over the bytes of `data`; raises
// ValueError naming `what` if the type, shape or byte count is wrong.
WeightView weight_view(uint32_t type, int64_t rows, int64_t cols, const Bytes& data,
                       const std::string& what);

// The tensors the loader hands over, name -> (type, rows, cols, bytes), as
// weight views; each array is appended to `keep` (the views point into it).
std::map<std::string, WeightView> weight_table(const pybind11::dict& tensors,
                                               std::vector<pybind11::object>& keep);

// The CPU kernel table of an ISA by name ("generic", "avx2", "avx512", "avx512_vnni"), or
// the active one for ""; ValueError for an unknown name, RuntimeError when
// the CPU lacks it.
const cpu::Kernels& kernels_named(const std::string& isa);

// Model(...)'s keywords, one struct at the binding edge.
struct ModelOptions {
  std::string device = "cpu";
  int threads = 1;
  bool int8_activations = true;
  bool tensor_cores = false;  // CUDA: several-token products in f16 on tensor cores
  bool batch_invariant = false;
  int64_t kv_cache_tokens = 0;  // 0: the context length
  int64_t kv_cache_bytes = 0;   // 0: from kv_cache_tokens
  std::string kv_cache_dtype = "f16";
  int kv_block_tokens = 32;
  bool prefix_caching = true;
};

// The backend the options name (ValueError for a bad device or thread count).
std::unique_ptr<Backend> make_backend(const ModelOptions& o);

void bind_tensors(pybind11::module_& m);   // ggml_types, dequantize
void bind_model(pybind11::module_& m);     // ModelOptions, LlamaModel
void bind_vision(pybind11::module_& m);    // VisionModel (after bind_model: its options)
void bind_encoder(pybind11::module_& m);   // EncoderModel (after bind_model: its options)
void bind_sampler(pybind11::module_& m);   // Sampler, top_logprobs
void bind_testing(pybind11::module_& m);   // single kernels, for tests and microbenchmarks

}  // namespace llmrt::bindings
