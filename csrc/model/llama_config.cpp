#include "model/llama_config.h"

#include <algorithm>
#include <cmath>
#include <stdexcept>

namespace llmrt {

namespace {

int int_value(const ConfigValues& v, const char* key, bool required, int dflt = 0) {
  auto it = v.find(key);
  if (it == v.end()) {
    if (required) throw std::invalid_argument(std::string("config is missing '") + key + "'");
    return dflt;
  }
  const double x = it->second;
  if (!(x == std::floor(x)) || x < -2147483648.0 || x > 2147483647.0)
    throw std::invalid_argument(std::string("config '") + key + "' must be an integer");
  return (int)x;
}

float float_value(const ConfigValues& v, const char* key, float dflt) {
  auto it = v.find(key);
  if (it == v.end()) return dflt;
  if (!std::isfinite(it->second))
    throw std::invalid_argument(std::string("config '") + key + "' must be finite");
  return (float)it->second;
}

// Expert tensors are sliced into one view per expert: their pages are
// shared by several views.
bool sliced(const std::string& role) {
  const size_t dot = role.rfind('.');
  return role.compare(dot == std::string::npos ? 0 : dot + 1, 2, "e_") == 0;
}

// The roles a table may hold: a name it does not know is an error (a loader
// out of step with the model), not a tensor silently left unused.
const char* const kGlobalRoles[] = {"tok_embd",   "output_norm",       "output",
                                    "rope_freqs", "rope_factors_long", "rope_factors_short"};
const char* const kLayerRoles[] = {
    "attn_norm", "wqkv", "wq", "wk", "wv", "wo", "bq", "bk", "bv", "bo", "sinks", "q_norm",
    "k_norm", "ffn_norm", "post_attn_norm", "post_ffn_norm", "router", "router_b", "e_gate",
    "e_up", "e_down", "e_gate_b", "e_up_b", "e_down_b",
    "s_gate_inp", "s_gate", "s_up", "s_down", "w_gate", "w_up", "w_gate_up", "w_down"};

void check_roles(const TensorTable& tensors, int n_layer) {
  for (const auto& item : tensors) {
    const std::string& name = item.first;
    bool known = false;
    if (name.compare(0, 7, "layers.") == 0) {
      const size_t dot = name.find('.', 7);
      const std::string idx = name.substr(7, dot == std::string::npos ? 0 : dot - 7);
      const bool digits = !idx.empty() && idx.size() < 9 &&
                          idx.find_first_not_of("0123456789") == std::string::npos;
      if (digits && std::stoi(idx) < n_layer)
        for (const char* r : kLayerRoles) known |= name.compare(dot + 1, std::string::npos, r) == 0;
    } else {
      for (const char* r : kGlobalRoles) known |= name == r;
    }
    if (!known) throw std::invalid_argument("unknown tensor role '" + name + "'");
  }
}

}  // namespace

LlamaConfig llama_config(const ConfigValues& v) {
  LlamaConfig c;
  c.n_vocab = int_value(v, "n_vocab", true);
  c.n_embd = int_value(v, "n_embd", true);
  c.n_layer = int_value(v, "n_layer", true);
  c.n_head = int_value(v, "n_head", true);
  c.n_head_kv = int_value(v, "n_head_kv", true);
  c.head_dim = int_value(v, "head_dim", true);
  c.n_ff = int_value(v, "n_ff", true);
  c.n_ctx = int_value(v, "n_ctx", true);
  c.rms_eps = float_value(v, "rms_eps", 1e-5f);
  c.rope.n_rot = int_value(v, "n_rot", true);
  c.rope.freq_base = float_value(v, "rope_freq_base", 10000.f);
  c.rope.pos_scale = float_value(v, "rope_pos_scale", 1.f);
  c.rope.neox = int_value(v, "rope_neox", false) != 0;
  c.rope.mscale = float_value(v, "rope_mscale", 1.f);
  if (!(c.rope.mscale > 0.f)) throw std::invalid_argument("rope_mscale must be positive");
  c.n_expert = int_value(v, "n_expert", false);
  c.n_expert_used = int_value(v, "n_expert_used", false);
  c.n_ff_exp = int_value(v, "n_ff_exp", false);
  c.n_ff_shexp = int_value(v, "n_ff_shexp", false);
  c.expert_norm = int_value(v, "expert_norm", false, 1) != 0;
  c.swiglu_limit = float_value(v, "swiglu_limit", 0.f);
  c.swiglu_alpha = float_value(v, "swiglu_alpha", 1.f);
  if (c.swiglu_limit < 0.f || !(c.swiglu_alpha > 0.f))
    throw std::invalid_argument("swiglu_limit must not be negative, swiglu_alpha must be positive");
  if (c.n_ff_exp < 0 || c.n_ff_shexp < 0)
    throw std::invalid_argument("n_ff_exp and n_ff_shexp must not be negative");
  if (c.n_ff_exp == 0) c.n_ff_exp = int_value(v, "n_ff", true);
  c.rope_orig_ctx = int_value(v, "rope_orig_ctx", false, c.n_ctx);
  c.embd_scale = float_value(v, "embd_scale", 0.f);
  c.gelu = int_value(v, "ffn_gelu", false) != 0;
  c.embeds_bidirectional = int_value(v, "embeds_bidirectional", false) != 0;
  c.attn_scale = float_value(v, "attn_scale", 0.f);
  c.attn_softcap = float_value(v, "attn_softcap", 0.f);
  c.final_softcap = float_value(v, "final_softcap", 0.f);
  c.window = int_value(v, "sliding_window", false);
  // layer l slides unless (l + 1) % pattern == 0 (gemma 2: 2, gemma 3: 6); 1: none, 0: all
  const int pattern = int_value(v, "swa_pattern", false, 1);
  if (c.window < 0 || pattern < 0 || c.embd_scale < 0.f || c.attn_scale < 0.f ||
      c.attn_softcap < 0.f || c.final_softcap < 0.f)
    throw std::invalid_argument("sliding_window, swa_pattern, scales and soft-caps must not be "
                                "negative");
  if (c.window > 0 && pattern != 1) {
    c.sliding.resize(c.n_layer > 0 ? c.n_layer : 0);
    for (int l = 0; l < c.n_layer; ++l) c.sliding[l] = pattern == 0 || (l + 1) % pattern != 0;
  }
  c.rope_swa = c.rope;
  c.rope_swa.freq_base = float_value(v, "rope_freq_base_swa", c.rope.freq_base);
  c.rope_swa.pos_scale = float_value(v, "rope_pos_scale_swa", c.rope.pos_scale);
  for (int x : {c.n_vocab, c.n_embd, c.n_layer, c.n_head, c.n_head_kv, c.head_dim, c.n_ff, c.n_ctx})
    if (x <= 0) throw std::invalid_argument("config values must be positive");
  if (!(c.rms_eps > 0.f) || !(c.rope.freq_base > 0.f) || !(c.rope.pos_scale > 0.f) ||
      !(c.rope_swa.freq_base > 0.f) || !(c.rope_swa.pos_scale > 0.f))
    throw std::invalid_argument("rms_eps, rope_freq_base and rope_pos_scale must be positive");
  return c;
}

LlamaWeights llama_weights(LlamaConfig& c, const TensorTable& tensors) {
  auto view = [&](const std::string& name, bool required) -> WeightView {
    auto it = tensors.find(name);
    if (it == tensors.end()) {
      if (required) throw std::invalid_argument("missing tensor '" + name + "'");
      return WeightView{};
    }
    return it->second;
  };
  auto vec = [&](const std::string& name, int64_t n, bool required) -> const float* {
    const WeightView w = view(name, required);
    if (w.empty()) return nullptr;
    if (w.type != DType::F32 || w.rows * w.cols != n)
      throw std::invalid_argument("tensor '" + name + "' must be F32 with " + std::to_string(n) +
                                  " elements");
    return reinterpret_cast<const float*>(w.data);
  };
  // (n_expert x rows, cols) tensors: one view per expert
  auto experts = [&](const std::string& name, std::vector<WeightView>& out) {
    const WeightView all = view(name, true);
    if (all.rows % c.n_expert != 0)
      throw std::invalid_argument("tensor '" + name + "' does not split into " +
                                  std::to_string(c.n_expert) + " experts");
    const int64_t rows = all.rows / c.n_expert;
    for (int e = 0; e < c.n_expert; ++e) {
      WeightView v = all;
      v.rows = rows;
      v.data = all.data + (size_t)e * rows * all.row_stride();
      out.push_back(v);
    }
  };

  // rows [first, first + count) of a fused tensor (phi3's q/k/v and gate/up)
  auto rows = [&](const std::string& name, const WeightView& all, int64_t first, int64_t count) {
    if (first + count > all.rows)
      throw std::invalid_argument("tensor '" + name + "' has " + std::to_string(all.rows) +
                                  " rows, fewer than its parts need");
    WeightView v = all;
    v.rows = count;
    v.data = all.data + (size_t)first * all.row_stride();
    return v;
  };

  check_roles(tensors, c.n_layer);
  LlamaWeights w;
  w.tok_embd = view("tok_embd", true);
  w.output_norm = vec("output_norm", c.n_embd, true);
  w.output = view("output", false);
  if (w.output.empty()) w.output = w.tok_embd;  // tied embeddings
  c.rope.freq_factors = vec("rope_freqs", c.rope.n_rot / 2, false);
  // LongRoPE (phi3): the long factors where the context runs past the
  // original one, else the short ones (as llama.cpp chooses)
  if (!view("rope_factors_long", false).empty())
    c.rope.freq_factors =
        vec(c.n_ctx > c.rope_orig_ctx ? "rope_factors_long" : "rope_factors_short",
            c.rope.n_rot / 2, true);
  c.rope_swa.freq_factors = c.rope.freq_factors;
  const int64_t qd = (int64_t)c.n_head * c.head_dim, kvd = (int64_t)c.n_head_kv * c.head_dim;
  for (int i = 0; i < c.n_layer; ++i) {
    const std::string p = "layers." + std::to_string(i) + ".";
    LayerWeights L;
    L.attn_norm = vec(p + "attn_norm", c.n_embd, true);
    const WeightView qkv = view(p + "wqkv", false);
    if (!qkv.empty()) {  // q, k and v rows in one tensor
      L.wq = rows(p + "wqkv", qkv, 0, qd);
      L.wk = rows(p + "wqkv", qkv, qd, kvd);
      L.wv = rows(p + "wqkv", qkv, qd + kvd, kvd);
    } else {
      L.wq = view(p + "wq", true);
      L.wk = view(p + "wk", true);
      L.wv = view(p + "wv", true);
    }
    L.wo = view(p + "wo", true);
    L.bq = vec(p + "bq", qd, false);
    L.bk = vec(p + "bk", kvd, false);
    L.bv = vec(p + "bv", kvd, false);
    L.bo = vec(p + "bo", c.n_embd, false);
    L.sinks = vec(p + "sinks", c.n_head, false);
    L.q_norm = vec(p + "q_norm", c.head_dim, false);
    L.k_norm = vec(p + "k_norm", c.head_dim, false);
    L.post_attn_norm = vec(p + "post_attn_norm", c.n_embd, false);
    L.post_ffn_norm = vec(p + "post_ffn_norm", c.n_embd, false);
    L.ffn_norm = vec(p + "ffn_norm", c.n_embd, true);
    if (c.n_expert > 0) {
      L.router = view(p + "router", true);
      experts(p + "e_gate", L.e_gate);
      experts(p + "e_up", L.e_up);
      experts(p + "e_down", L.e_down);
      L.router_b = vec(p + "router_b", c.n_expert, false);
      L.e_gate_b = vec(p + "e_gate_b", (int64_t)c.n_expert * c.n_ff_exp, false);
      L.e_up_b = vec(p + "e_up_b", (int64_t)c.n_expert * c.n_ff_exp, false);
      L.e_down_b = vec(p + "e_down_b", (int64_t)c.n_expert * c.n_embd, false);
      if (c.n_ff_shexp > 0) {
        L.s_gate_inp = view(p + "s_gate_inp", true);
        L.s_gate = view(p + "s_gate", true);
        L.s_up = view(p + "s_up", true);
        L.s_down = view(p + "s_down", true);
      }
    } else {
      const WeightView gu = view(p + "w_gate_up", false);
      if (!gu.empty()) {  // gate and up rows in one tensor, gate first
        L.w_gate = rows(p + "w_gate_up", gu, 0, c.n_ff);
        L.w_up = rows(p + "w_gate_up", gu, c.n_ff, c.n_ff);
      } else {
        L.w_gate = view(p + "w_gate", true);
        L.w_up = view(p + "w_up", true);
      }
      L.w_down = view(p + "w_down", true);
    }
    w.layers.push_back(std::move(L));
  }
  return w;
}

std::vector<std::string> released_tensors(const TensorTable& tensors,
                                          const std::vector<const uint8_t*>& replaced) {
  std::vector<std::string> out;
  for (const auto& [name, w] : tensors)
    if (!sliced(name) && std::find(replaced.begin(), replaced.end(), w.data) != replaced.end())
      out.push_back(name);
  return out;
}

}  // namespace llmrt
