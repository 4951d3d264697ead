// The llama-family model's config and weights from what the Python loader
// hands over: hyperparameters by name, and weight views by role (the names of
// LlamaWeights' and LayerWeights' fields; llmrt/families.py maps the GGUF
// tensor names to them). Every value and view is checked here.
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
// Tensors by role: "tok_embd", "output_norm", "output", "rope_freqs",
// "rope_factors_long" / "_short", and "layers.N.<field>" with a LayerWeights
// field's name, or "wqkv" / "w_gate_up" for fused rows (q, k, v; gate, up).
// 2-D (rows, cols) views over the file's bytes; 1-D vectors as F32 (1, n);
// expert tensors (e_gate, e_up, e_down) as their experts' rows end to end.
using TensorTable = std::map<std::string, WeightView>;

// Throws std::invalid_argument naming a missing or out-of-range value.
LlamaConfig llama_config(const ConfigValues& values);

// The weights a LlamaModel runs (tied output head: the token embedding;
// expert tensors sliced into one view per expert). Throws
// std::invalid_argument naming a missing, unknown or mis-shaped tensor;
// freq_factors of cfg.rope point into the table's rope_freqs when present.
LlamaWeights llama_weights(LlamaConfig& cfg, const TensorTable& tensors);

// Roles of the table's tensors whose bytes the model no longer reads (the
// backend replaced every view of them by a copy of its own).
std::vector<std::string> released_tensors(const TensorTable& tensors,
                                          const std::vector<const uint8_t*>& replaced);

}  // namespace llmrt
