#pragma once

#include <memory>

#include "core/backend.h"

namespace llmrt {

// The CPU backend with its own pool of `threads` threads, using the kernel
// variant chosen at import.
std::unique_ptr<Backend> make_cpu_backend(int threads);

}  // namespace llmrt
