// The llama-family decoder (llama, mistral, qwen2): embeddings, N blocks of
// [RMSNorm, q/k/v (+bias), RoPE, KV write, GQA attention, o-proj, residual,
// RMSNorm, gate/up, SwiGLU, down, residual], final norm and output head.
// Written against core/backend.h only.
#pragma once

#include <cstdint>
#include <memory>
#include <vector>

#include "core/backend.h"
#include "core/kv_cache.h"
#include "core/tensor.h"

namespace llmrt {

struct LlamaConfig {
  int n_vocab = 0;
  int n_embd = 0;
  int n_layer = 0;
  int n_head = 0;
  int n_head_kv = 0;
  int head_dim = 0;
  int n_ff = 0;
  int n_ctx = 0;  // positions of one sequence
  int n_expert = 0;       // Mixture-of-Experts FFN: experts per layer (0: dense)
  int n_expert_used = 0;  // experts each token goes through
  float rms_eps = 1e-5f;
  RopeParams rope;
};

// The paged KV cache's shape (see core/kv_cache.h).
struct CacheOptions {
  int tokens = 0;  // pool capacity in positions (rounded up to whole blocks)
  KVType type = KVType::F16;
  int block_tokens = 32;
  bool prefix_caching = true;
};

struct LayerWeights {
  const float* attn_norm = nullptr;  // (n_embd,)
  WeightView wq, wk, wv, wo;         // (n_head*hd, n_embd) ... (n_embd, n_head*hd)
  const float* bq = nullptr;         // optional biases (qwen2)
  const float* bk = nullptr;
  const float* bv = nullptr;
  const float* ffn_norm = nullptr;   // (n_embd,)
  WeightView w_gate, w_up, w_down;   // (n_ff, n_embd), (n_ff, n_embd), (n_embd, n_ff)
  // Mixture of experts (instead of w_gate / w_up / w_down): the router
  // (n_expert, n_embd) and each expert's FFN.
  WeightView router;
  std::vector<WeightView> e_gate, e_up, e_down;
};

struct LlamaWeights {
  WeightView tok_embd;                // (n_vocab, n_embd)
  const float* output_norm = nullptr; // (n_embd,)
  WeightView output;                  // (n_vocab, n_embd); tok_embd when tied
  std::vector<LayerWeights> layers;
};

// One sequence's part of a batched forward: n tokens appended to sequence
// seq, and which of their logits are wanted.
struct BatchEntry {
  enum Logits { kNone, kLast, kAll };
  int seq = 0;
  const int32_t* tokens = nullptr;
  int n = 0;
  Logits logits = kLast;
};

class LlamaModel {
 public:
  // Shapes must have been validated by the loader; the constructor checks
  // them again (cheaply) and throws std::invalid_argument on a mismatch.
  LlamaModel(const LlamaConfig& cfg, LlamaWeights weights, std::unique_ptr<Backend> backend,
             const CacheOptions& cache);
  ~LlamaModel();

  const LlamaConfig& config() const { return cfg_; }
  // Source weights the backend replaced by copies of its own (their file
  // pages are no longer read).
  const std::vector<const uint8_t*>& replaced_weights() const { return replaced_; }
  Backend& backend() { return *backend_; }
  KVCache& cache() { return kv_; }
  // Positions run through forward() so far (prompt and decode).
  int64_t tokens_computed() const { return tokens_computed_; }
  const KVCache& cache() const { return kv_; }

  // Appends tokens[0..n) to sequence seq of the cache (positions [len, len +
  // n)), writing their keys and values. logits receives (n, n_vocab) when
  // all_logits, else (n_vocab,) for the last token. Throws std::out_of_range
  // when a token id is outside the vocabulary or the positions exceed n_ctx,
  // KVCacheFull when the pool has no room (the sequence is then unchanged).
  void forward(int seq, const int32_t* tokens, int n, bool all_logits, float* logits);

  // Several sequences at once: the rows of all entries go through each
  // matmul together (the weights are read once per pass, not once per
  // sequence); every sequence attends to its own cache blocks. logits
  // receives, entry after entry, n rows (kAll), one (kLast) or none (kNone)
  // of n_vocab floats. A sequence's results do not depend on the others in
  // the batch except through the matmuls' summation order for rows that
  // would otherwise run alone (one-token steps use the matrix-vector kernels).
  // Checks everything before changing anything; on an error every sequence
  // is left as it was (KVCacheFull included).
  // With `greedy` given, the wanted rows' argmax token ids go there instead
  // (logits may then be null): the logits never leave the backend.
  void forward_batch(const BatchEntry* entries, int count, float* logits,
                     int32_t* greedy = nullptr);
  // Rows forward_batch writes to logits.
  static int64_t logit_rows(const BatchEntry* entries, int count);

  // Wall time per stage of forward() since profiling was switched on:
  // [matmul, attention, output head, other].
  enum Stage { kStageMatmul, kStageAttention, kStageHead, kStageOther, kStages };
  void set_profiling(bool on) {
    profiling_ = on;
    for (double& t : profile_) t = 0.0;
  }
  const double* profile() const { return profile_; }

 private:
  struct Scratch;
  struct Segment;  // up to kChunk tokens of one entry
  void forward_pass(const Segment* segs, int count, float* logits, int32_t* greedy);
  // x += the layer's mixture-of-experts FFN of xn, n rows
  void moe_ffn(const LayerWeights& L, int n);
  void ensure_scratch(int n);

  LlamaConfig cfg_;
  LlamaWeights w_;
  std::unique_ptr<Backend> backend_;
  KVCache kv_;
  std::unique_ptr<Scratch> s_;
  std::vector<const uint8_t*> replaced_;
  int64_t tokens_computed_ = 0;
  bool profiling_ = false;
  double profile_[kStages] = {};
};

}  // namespace llmrt
