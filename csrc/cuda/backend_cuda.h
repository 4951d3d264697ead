// The CUDA backend: the model's activations, weights and KV pool in the
// memory of one GPU, every operation a kernel on one stream. Plain C++
// header (no CUDA types), so the model and the bindings need no CUDA.
#pragma once

#include <memory>
#include <string>

#include "core/backend.h"

namespace llmrt {

// GPUs the CUDA runtime sees (0 without a driver or a device; never throws).
int cuda_device_count();
// "name (compute capability, memory)" of a device.
std::string cuda_device_name(int device);
// Throws std::runtime_error when the device cannot be used.
// tensor_cores: products of kTensorCoreRows tokens or more on tensor cores
// (f16 operands, f32 sums); else float32 throughout.
std::unique_ptr<Backend> make_cuda_backend(int device, bool tensor_cores = false);

}  // namespace llmrt
