#pragma once

#include <memory>

#include "core/backend.h"

namespace llmrt {

// The CPU backend with its own pool of `threads` threads, using the kernel
// variant chosen at import. int8_activations: matmuls with quantized weights
// quantize activations to 8 bits and use integer dot products (fast);
// otherwise they run in float32 on the exact activations.
// batch_invariant: one-token matmuls sum in the same order as several-token
// ones, so a sequence's results never depend on what it is batched with.
std::unique_ptr<Backend> make_cpu_backend(int threads, bool int8_activations,
                                          bool batch_invariant = false);

}  // namespace llmrt
