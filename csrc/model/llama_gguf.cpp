#include "model/llama_gguf.h"

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
bool sliced(const std::string& name) {
  return name.size() > 12 && name.compare(name.size() - 12, 12, "_exps.weight") == 0;
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
  c.rope_orig_ctx = int_value(v, "rope_orig_ctx", false, c.n_ctx);
  c.embd_scale = float_value(v, "embd_scale", 0.f);
  c.gelu = int_value(v, "ffn_gelu", false) != 0;
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

  LlamaWeights w;
  w.tok_embd = view("token_embd.weight", true);
  w.output_norm = vec("output_norm.weight", c.n_embd, true);
  w.output = view("output.weight", false);
  if (w.output.empty()) w.output = w.tok_embd;  // tied embeddings
  c.rope.freq_factors = vec("rope_freqs.weight", c.rope.n_rot / 2, false);
  // LongRoPE (phi3): the long factors where the context runs past the
  // original one, else the short ones (as llama.cpp chooses)
  const WeightView long_f = view("rope_factors_long.weight", false);
  if (!long_f.empty())
    c.rope.freq_factors = vec(c.n_ctx > c.rope_orig_ctx ? "rope_factors_long.weight"
                                                        : "rope_factors_short.weight",
                              c.rope.n_rot / 2, true);
  c.rope_swa.freq_factors = c.rope.freq_factors;
  const int64_t qd = (int64_t)c.n_head * c.head_dim, kvd = (int64_t)c.n_head_kv * c.head_dim;
  for (int i = 0; i < c.n_layer; ++i) {
    const std::string p = "blk." + std::to_string(i) + ".";
    LayerWeights L;
    L.attn_norm = vec(p + "attn_norm.weight", c.n_embd, true);
    const WeightView qkv = view(p + "attn_qkv.weight", false);
    if (!qkv.empty()) {  // phi3: q, k and v rows in one tensor
      L.wq = rows(p + "attn_qkv.weight", qkv, 0, qd);
      L.wk = rows(p + "attn_qkv.weight", qkv, qd, kvd);
      L.wv = rows(p + "attn_qkv.weight", qkv, qd + kvd, kvd);
    } else {
      L.wq = view(p + "attn_q.weight", true);
      L.wk = view(p + "attn_k.weight", true);
      L.wv = view(p + "attn_v.weight", true);
    }
    L.wo = view(p + "attn_output.weight", true);
    L.bq = vec(p + "attn_q.bias", qd, false);
    L.bk = vec(p + "attn_k.bias", kvd, false);
    L.bv = vec(p + "attn_v.bias", kvd, false);
    L.q_norm = vec(p + "attn_q_norm.weight", c.head_dim, false);
    L.k_norm = vec(p + "attn_k_norm.weight", c.head_dim, false);
    L.post_attn_norm = vec(p + "post_attention_norm.weight", c.n_embd, false);
    L.post_ffn_norm = vec(p + "post_ffw_norm.weight", c.n_embd, false);
    L.ffn_norm = vec(p + "ffn_norm.weight", c.n_embd, true);
    if (c.n_expert > 0) {
      L.router = view(p + "ffn_gate_inp.weight", true);
      experts(p + "ffn_gate_exps.weight", L.e_gate);
      experts(p + "ffn_up_exps.weight", L.e_up);
      experts(p + "ffn_down_exps.weight", L.e_down);
    } else {
      L.w_gate = view(p + "ffn_gate.weight", false);
      L.w_up = view(p + "ffn_up.weight", true);
      if (L.w_gate.empty()) {  // phi3: gate and up rows in one tensor, gate first
        const WeightView gu = L.w_up;
        L.w_gate = rows(p + "ffn_up.weight", gu, 0, c.n_ff);
        L.w_up = rows(p + "ffn_up.weight", gu, c.n_ff, c.n_ff);
      }
      L.w_down = view(p + "ffn_down.weight", true);
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
