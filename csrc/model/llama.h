// The llama-family decoder (llama, mistral, qwen2/3, phi3, gemma 2/3):
// embeddings, N blocks of [RMSNorm, q/k/v (+bias), (q/k norms), RoPE, KV
// write, GQA attention, o-proj, (post-norm), residual, RMSNorm, gate/up,
// SwiGLU or GeGLU, down, (post-norm), residual], final norm and output head.
// Written against core/backend.h only.
#pragma once

#include <cstdint>
#include <memory>
#include <vector>

#include "core/backend.h"
#include "core/kv_cache.h"
#include "core/sampler.h"
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
  int n_ff_exp = 0;       // an expert's FFN width (0: n_ff)
  int n_ff_shexp = 0;     // the shared expert's (0: none)
  // the chosen experts' weights: softmax over all experts, then renormalised
  // over the chosen ones (true: Mixtral, qwen3moe) or not (qwen2moe)
  bool expert_norm = true;
  // the experts' activation: SwiGLU, or with swiglu_limit > 0 gpt-oss's
  // clamped form (see Backend::swiglu_clamped)
  float swiglu_limit = 0.f;
  float swiglu_alpha = 1.f;
  float rms_eps = 1e-5f;
  RopeParams rope;
  int rope_orig_ctx = 0;      // LongRoPE: the context its short factors are for
  // gemma 2 / 3
  float embd_scale = 0.f;     // embeddings times this (0: as stored)
  bool gelu = false;          // FFN gate activation GELU (tanh form) instead of SiLU
  float attn_scale = 0.f;     // scores scale (0: 1 / sqrt(head_dim))
  float attn_softcap = 0.f;   // attention scores soft-capped (0: not)
  float final_softcap = 0.f;  // logits soft-capped (0: not)
  // Sliding-window attention: layer l attends to the last `window`
  // positions where sliding[l] (empty: no layer does), with RoPE rope_swa.
  int window = 0;
  std::vector<uint8_t> sliding;
  RopeParams rope_swa;
  // Rows given as embeddings (BatchEntry::embeds, an image's tokens): a run
  // of them sees the whole run, not only the rows before (gemma 3), where
  // set; otherwise they are causal like any row.
  bool embeds_bidirectional = false;
};

// The paged KV cache's shape (see core/kv_cache.h).
struct CacheOptions {
  int64_t tokens = 0;  // pool capacity in positions, rounded up to whole blocks (0: n_ctx)
  int64_t bytes = 0;   // or the pool's size in bytes, rounded down to whole blocks
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
  const float* bo = nullptr;         // optional (n_embd,): the output projection's (gpt-oss)
  const float* sinks = nullptr;      // optional (n_head,): attention sink logits (gpt-oss)
  const float* q_norm = nullptr;     // optional (head_dim,): RMSNorm of each head of q
  const float* k_norm = nullptr;     // and of k, before RoPE (qwen3)
  const float* post_attn_norm = nullptr;  // optional (n_embd,): RMSNorm of the attention's
  const float* post_ffn_norm = nullptr;   // and the FFN's output before the residual (gemma)
  const float* ffn_norm = nullptr;   // (n_embd,)
  WeightView w_gate, w_up, w_down;   // (n_ff, n_embd), (n_ff, n_embd), (n_embd, n_ff)
  // Mixture of experts (instead of w_gate / w_up / w_down): the router
  // (n_expert, n_embd) and each expert's FFN (n_ff_exp wide).
  WeightView router;
  std::vector<WeightView> e_gate, e_up, e_down;
  // optional biases (gpt-oss): the router's (n_expert,) and each expert's
  // gate / up (n_expert, n_ff_exp) and down (n_expert, n_embd)
  const float* router_b = nullptr;
  const float* e_gate_b = nullptr;
  const float* e_up_b = nullptr;
  const float* e_down_b = nullptr;
  // A shared expert beside them (n_ff_shexp wide), scaled by the sigmoid of
  // s_gate_inp (1, n_embd) . x (qwen2moe).
  WeightView s_gate_inp, s_gate, s_up, s_down;
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
  // With kLast: instead of returning the last row's logits, each of these
  // samplers draws a next token from them (the penalties see the sequence's
  // tokens; n_generated of them were generated), so the row never leaves
  // the model. Several samplers draw independently from the same row (n
  // samples of one prompt).
  Sampler* const* samplers = nullptr;
  int n_samplers = 0;
  int n_generated = 0;
  // When set (host memory): the final normed hidden states of the n rows
  // (n, n_embd), the input of the output head (embeddings).
  float* hidden = nullptr;
  // Rows given as input embeddings instead of token ids (an image's tokens):
  // every token id >= n_vocab takes the next row of embeds (host memory,
  // n_embd floats each, in order), never scaled by embd_scale. The id
  // itself only keys the prefix cache (the same image, the same ids).
  const float* embeds = nullptr;
};

// Where forward_batch puts its results, entry after entry.
struct BatchOutput {
  float* logits = nullptr;      // the wanted rows of entries without samplers (n_vocab each)
  int32_t* tokens = nullptr;    // one token per sampler
  TopLogprobs* logprobs = nullptr;  // one per sampler, filled where its config asks
};

// One sequence of a multi-step decode: the token to feed first (the last one
// drawn), its sampler, how many tokens it has generated and how many more it
// may draw (at least 1).
struct DecodeEntry {
  int seq = 0;
  int32_t token = 0;
  Sampler* sampler = nullptr;
  int n_generated = 0;
  int budget = 1;
};

// The matrices a LoRA adapter may adapt, per layer.
enum LoraTarget { kLoraQ, kLoraK, kLoraV, kLoraO, kLoraGate, kLoraUp, kLoraDown, kLoraTargets };

// One adapter's low-rank pair for one weight: y += B (A x), A (rank, cols)
// and B (rows, rank), float32 or float16 (the views' type), B already scaled.
struct LoraPair {
  WeightView a, b;
  std::vector<uint8_t> a_bytes, b_bytes;  // the host copies the views were prepared from
};

class LlamaModel {
 public:
  // Rows of one sequence in one pass at most (a longer prompt runs in
  // pieces); a run of rows that see each other (an image) must fit in one.
  static constexpr int kPassRows = 256;
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

  // Several sequences at once: the rows of all entries go through each
  // matmul together (the weights are read once per pass, not once per
  // sequence); every sequence attends to its own cache blocks. out.logits
  // receives, entry after entry, n rows (kAll), one (kLast) or none (kNone)
  // of n_vocab floats, except for entries with samplers, whose draws go to
  // out.tokens (and out.logprobs). A sequence's results do not depend on
  // the others in the batch except through the matmuls' summation order for
  // rows that would otherwise run alone (one-token steps use the
  // matrix-vector kernels). Throws std::out_of_range when a token id is
  // outside the vocabulary or positions exceed n_ctx, KVCacheFull when the
  // pool has no room. Checks everything before changing anything; on an
  // error every sequence is left as it was.
  void forward_batch(const BatchEntry* entries, int count, const BatchOutput& out);
  // Up to max_steps decode steps of every entry in one call: each step feeds
  // every running entry's token and draws its next one (as forward_batch
  // with one sampler an entry); an entry stops after drawing one of its
  // sampler's end tokens or its budget. tokens (max_steps, count) receives
  // the draws, -1 where an entry had stopped; logprobs (same shape, may be
  // null) where a sampler asks. Returns the steps run. An error in a step
  // after the first ends the loop there (the steps before it stand); in the
  // first it is thrown, nothing changed.
  int decode(const DecodeEntry* entries, int count, int max_steps, int32_t* tokens,
             TopLogprobs* logprobs);
  // A LoRA adapter: pairs[(layer, target)]; returns its id (1, 2, ...), which
  // KVCache::set_adapter gives a sequence. Throws std::invalid_argument on
  // shapes that do not fit the model.
  int add_adapter(std::vector<std::tuple<int, int, LoraPair>> pairs);
  int adapters() const { return (int)adapters_.size(); }
  // Rows of an entry given as embeddings (its token ids >= n_vocab).
  int64_t embed_rows(const int32_t* tokens, int n) const;
  // Rows forward_batch writes to out.logits, and tokens to out.tokens.
  static int64_t logit_rows(const BatchEntry* entries, int count);
  static int64_t draws(const BatchEntry* entries, int count);

 private:
  struct Scratch;
  struct Segment;  // up to kChunk tokens of one entry
  struct Pass;     // what one forward pass runs on
  void forward_pass(const Segment* segs, int count);
  // the steps of a pass: staging its rows; per layer the attention and the
  // feed-forward block; the head; the results out of the backend
  Pass begin_pass(const Segment* segs, int count);
  void attention_block(const Pass& p, int layer);
  void ffn_block(const Pass& p, int layer);
  void residual_projection(const Pass& p, int layer, const WeightView& w, LoraTarget t,
                           const float* in, int in_cols, const float* bias,
                           const float* post_norm);
  void output_head(const Pass& p);
  void end_pass(const Pass& p);
  // x's rows given as embeddings, from the segments' entries
  void given_rows(const Pass& p);
  // rows of the next piece of an entry (see forward_batch)
  int chunk_length(const BatchEntry& e, int done) const;
  // the draws of a pass's entries with samplers, from its head output
  void draw(const Segment* segs, int count, int rows);
  // x += the layer's mixture-of-experts FFN of xn, n rows
  void moe_ffn(int layer, int n);
  // a weight in the backend's layout (the source's pages given back)
  void prepare(WeightView& v, bool head = false);
  // expert e of a layer prepared, the first time it is chosen
  void prepare_expert(int layer, int e);
  // the chosen experts of the pass's rows (rows, weights: per expert)
  void run_experts(int layer, int n, const std::vector<std::vector<int32_t>>& rows,
                   const std::vector<std::vector<float>>& weights);
  // x += its shared expert's FFN of xn, scaled by its gate
  void shared_expert(const LayerWeights& L, int n);
  void ensure_scratch(int n);
  // y (rows of the pass, out) += B (A x) for the segments whose sequence uses
  // an adapter with a pair for (layer, target); x (rows, cols).
  void lora_add(int layer, LoraTarget t, const float* x, int cols, float* y, int out,
                const Segment* segs, int count, const std::vector<int>& adapter);

  LlamaConfig cfg_;
  LlamaWeights w_;
  std::unique_ptr<Backend> backend_;
  KVCache kv_;
  std::unique_ptr<Scratch> s_;
  std::vector<const uint8_t*> replaced_;
  // adapters_[id - 1][layer * kLoraTargets + target]; empty views where absent
  std::vector<std::vector<LoraPair>> adapters_;
  int lora_rank_ = 0;  // the largest rank of any adapter
  int64_t tokens_computed_ = 0;
  std::vector<uint8_t> expert_ready_;  // [layer * n_expert + e]: prepared
};

}  // namespace llmrt
