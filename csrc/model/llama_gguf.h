// The llama-family model as GGUF files name it: hyperparameters from the
// loader's config values and weight views from the tensor table, under
// llama.cpp's tensor names (blk.N.attn_q.weight, ...).
#pragma once

#include <cstdint>
#include <map>
#include <string>
#include <vector>

#include "model/llama.h"

namespace llmrt {

// Hyperparameters by name, as the Python loader (llmrt/gguf_loader.py)
// reads and validates them: n_vocab, n_embd, n_layer, n_head, n_head_kv,
// head_dim, n_ff, n_ctx, n_rot (required); rms_eps, rope_freq_base,
// rope_pos_scale, rope_neox, n_expert, n_expert_used (optional).
using ConfigValues = std::map<std::string, double>;
// Tensors by GGUF name: 2-D (rows, cols) views over the file's bytes; 1-D
// vectors as F32 (1, n); expert tensors as their experts' rows end to end.
using TensorTable = std::map<std::string, WeightView>;

// Throws std::invalid_argument naming a missing or out-of-range value.
LlamaConfig llama_config(const ConfigValues& values);

// The weights a LlamaModel runs (tied output head: the token embedding;
// expert tensors sliced into one view per expert). Throws
// std::invalid_argument naming a missing or mis-shaped tensor; freq_factors
// of cfg.rope point into the table's rope_freqs.weight when present.
LlamaWeights llama_weights(LlamaConfig& cfg, const TensorTable& tensors);

// Names of the table's tensors whose bytes the model no longer reads (the
// backend replaced every view of them by a copy of its own).
std::vector<std::string> released_tensors(const TensorTable& tensors,
                                          const std::vector<const uint8_t*>& replaced);

}  // namespace llmrt
