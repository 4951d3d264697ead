// A text encoder (BERT, XLM-RoBERTa, nomic-bert): the embeddings' LayerNorm
// (the caller sums the token, position and token-type rows, a lookup that
// stays on the host), then N post-LayerNorm blocks
// of bidirectional attention (absolute positions, or rotary ones for
// nomic-bert) and a GELU or SwiGLU MLP. A batch is many texts of their own
// lengths end to end, padded nowhere, no KV cache kept; the output is every
// token's final hidden state (pooling and heads are the caller's). Written
// against core/backend.h only.
#pragma once

#include <map>
#include <memory>
#include <string>
#include <vector>

#include "core/backend.h"
#include "core/tensor.h"

namespace llmrt {

struct EncoderConfig {
  int n_embd = 0;
  int n_ff = 0;
  int n_layer = 0;
  int n_head = 0;
  int n_vocab = 0;
  int n_pos = 0;          // rows of the absolute position table (0: rotary positions)
  int n_types = 0;        // rows of the token-type table (0: none)
  float eps = 1e-12f;     // the LayerNorms'
  float rope_base = 10000.f;  // rotary positions (n_pos == 0), neox pairs over whole heads
  bool swiglu = false;    // up * silu(gate) (nomic-bert); else gelu(up), the exact form
};

struct EncoderLayer {
  WeightView wq, wk, wv, wo, w_up, w_gate, w_down;  // w_gate: SwiGLU only
  const float *bq = nullptr, *bk = nullptr, *bv = nullptr, *bo = nullptr;  // optional
  const float *b_up = nullptr, *b_down = nullptr;                          // optional
  const float *ln1_w = nullptr, *ln1_b = nullptr;  // after attention + residual
  const float *ln2_w = nullptr, *ln2_b = nullptr;  // after the MLP + residual
};

struct EncoderWeights {
  WeightView tok, pos, types;  // (V, D), (n_pos, D), (n_types, D); pos / types may be empty
  const float *embd_norm_w = nullptr, *embd_norm_b = nullptr;
  std::vector<EncoderLayer> layers;
};

class Encoder {
 public:
  // Shapes checked (std::invalid_argument on a mismatch).
  Encoder(const EncoderConfig& cfg, EncoderWeights w, std::unique_ptr<Backend> backend);
  ~Encoder();
  const EncoderConfig& config() const { return cfg_; }
  Backend& backend() { return *be_; }
  // n_seq texts end to end: text s is rows [starts[s], starts[s + 1]) of
  // x0, the summed token (+ position + token-type) embeddings, (rows,
  // n_embd), and of pos, each token's position in its text (the rotary
  // positions); all host memory, checked by the caller. out (rows, n_embd),
  // host memory: every token's final hidden state.
  void encode(const float* x0, const int32_t* pos, const int32_t* starts, int n_seq, float* out);

 private:
  void ensure(int rows);
  EncoderConfig cfg_;
  EncoderWeights w_;
  std::unique_ptr<Backend> be_;
  int cap_ = 0;  // rows the buffers hold
  float *x_ = nullptr, *t_ = nullptr, *q_ = nullptr, *k_ = nullptr, *v_ = nullptr;
  float *att_ = nullptr, *ff_ = nullptr, *gate_ = nullptr;
};

using EncoderValues = std::map<std::string, double>;
// Config from the loader's numbers (n_embd, n_ff, n_layer, n_head, n_vocab,
// n_pos, n_types, eps, rope_base, swiglu).
EncoderConfig encoder_config(const EncoderValues& v);
// Weights from role -> view: tok, pos, types, embd_norm_w, embd_norm_b and
// blk.N.{wq, bq, wk, bk, wv, bv, wqkv, bqkv, wo, bo, ln1_w, ln1_b, up, b_up,
// gate, down, b_down, ln2_w, ln2_b}; wqkv / bqkv (q, k and v rows in one
// tensor) stand for the three; float vectors must be F32 views.
EncoderWeights encoder_weights(const EncoderConfig& c, const std::map<std::string, WeightView>& t);

}  // namespace llmrt
