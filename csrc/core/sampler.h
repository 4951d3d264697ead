// Choosing the next token from logits: a chain of small stages in one order.
//
//   [token mask of a structured-output constraint, when one is expected]
//   -> penalties (repetition / presence / frequency over the last N tokens)
//   -> logit bias -> min_new_tokens (end tokens masked)
//   -> top-k -> typical-p -> top-p -> min-p -> temperature -> draw
//
// The filters cut on the model's own distribution (temperature 1), and
// temperature only reshapes what survives, so a filter's meaning does not
// change with the temperature (llama.cpp's default chain orders them the
// same way). Temperature 0 (or top_k = 1) is greedy: argmax after penalties
// and bias. Mirostat (v1 or v2) replaces top-k..min-p: penalties -> bias ->
// temperature -> mirostat truncation -> draw.
//
// The first filter scans the whole vocabulary in vectorised passes and keeps
// only a window of logits that provably holds its result; later stages work
// on those candidates, with sorted prefixes grown on demand (64, 256, ...),
// never a sort of the vocabulary.
#pragma once

#include <atomic>
#include <condition_variable>
#include <cstdint>
#include <mutex>
#include <random>
#include <utility>
#include <vector>

namespace llmrt {

struct SamplingConfig {
  float temperature = 0.f;  // 0: greedy
  int top_k = 0;            // 0: off
  float top_p = 1.f;        // 1: off
  float min_p = 0.f;        // 0: off
  float typical_p = 1.f;    // 1: off
  float repetition_penalty = 1.f;  // 1: off; > 1 discourages repeats
  float presence_penalty = 0.f;
  float frequency_penalty = 0.f;
  int penalty_last_n = 64;  // tokens of history the penalties see; -1: all
  std::vector<std::pair<int32_t, float>> logit_bias;
  int mirostat = 0;  // 0 off, 1 or 2
  float mirostat_tau = 5.f;
  float mirostat_eta = 0.1f;
  int min_new_tokens = 0;
  std::vector<int32_t> end_ids;  // masked until min_new_tokens are made
  uint64_t seed = 0;
  // Not a stage: when >= 0, a step that draws with this sampler also reports
  // the drawn token's log-probability and the top `logprobs` alternatives.
  int logprobs = -1;
};

// What a device needs to run the chain for one draw (cuda/sampler.cu): the
// parameters, the uniform number the draw uses, and the sparse changes to
// the row's logits (mods [mods_begin, mods_end) of a list).
struct DeviceDraw {
  int row = 0;  // the row of the logits it draws from
  float temperature = 0.f;
  int top_k = 0;
  float top_p = 1.f, min_p = 0.f, typical_p = 1.f;
  float repetition_penalty = 1.f, presence_penalty = 0.f, frequency_penalty = 0.f;
  double u = 0.0;  // in [0, 1)
  int mods_begin = 0, mods_end = 0;
};
struct LogitMod {
  enum Kind : int32_t { kPenalty = 0, kBias = 1, kMask = 2 };
  int32_t token;
  int32_t kind;
  float value;  // kPenalty: the token's count in the window; kBias: the bias
};

class Sampler {
 public:
  Sampler(const SamplingConfig& cfg, int n_vocab);

  // The next token. history: the tokens so far (prompt and generated);
  // n_generated: how many of them were generated.
  int32_t sample(const float* logits, const int32_t* history, int n_history, int n_generated);

  // The distribution sample() draws from, without drawing: probs (n_vocab)
  // sums to 1 (one-hot when greedy). Not for mirostat, whose truncation
  // adapts with each draw.
  void distribution(const float* logits, const int32_t* history, int n_history, int n_generated,
                    float* probs);
  const SamplingConfig& config() const { return cfg_; }
  int n_vocab() const { return n_vocab_; }
  float mirostat_mu() const { return mu_; }
  // Whether the next draw (after n_generated tokens) is the first index of
  // the largest raw logit: greedy with nothing reshaping the logits and no
  // log-probabilities wanted, so a device may take the argmax where the
  // logits are.
  bool argmax_only(int n_generated) const;
  // Whether a device can run this sampler's chain (all but mirostat,
  // log-probabilities and a token mask, which need the logits on the host).
  bool device_capable() const {
    return cfg_.mirostat == 0 && cfg_.logprobs < 0 && !mask_expected();
  }
  // The next draw as a device runs it: parameters, the sparse changes of the
  // logits (appended to mods), and the uniform number (taken from this
  // sampler's stream as sample() would take it).
  DeviceDraw device_draw(const int32_t* history, int n_history, int n_generated,
                         std::vector<LogitMod>& mods);
  // The random stream's state, to put a draw that did not happen back.
  const std::mt19937_64& stream() const { return rng_; }
  void set_stream(const std::mt19937_64& s) { rng_ = s; }

  // ---- the token mask (structured output) ----
  // A constraint's allowed tokens for the next draw: bit t % 32 of word
  // t / 32 set when token t may be drawn. Another thread writes it while the
  // forward pass runs: expect_mask() before the step, mask_done() once the
  // words are written. The next draw waits for it (up to a timeout), applies
  // it before every other stage (disallowed tokens get -inf, greedy
  // included) and uses it once. Without expect_mask() a draw is unmasked.
  void enable_mask();  // allocates the words (once; they never move)
  uint32_t* mask_words() { return mask_.data(); }
  int mask_word_count() const { return (int)mask_.size(); }
  void expect_mask();
  void mask_done();
  void clear_mask();  // an expected mask that no draw will use
  bool mask_expected() const { return mask_state_.load() != kMaskOff; }
  // The logits the last draw started from: the masked copy when it was
  // masked, else `raw` (its log-probabilities are those of this row).
  const float* drawn_from(const float* raw) const { return last_masked_ ? masked_.data() : raw; }
  // Seconds a draw waits for its mask before it fails.
  static constexpr int kMaskTimeoutSeconds = 120;

 private:
  struct Cand {
    int32_t id;
    float logit;
    float p;
  };
  enum { kFromVocab = -1, kFromCands = -2, kMirostat = -3 };
  bool penalizes() const;                   // any penalty is active
  bool masks_end(int n_generated) const;    // min_new_tokens not reached yet
  int filter(const float* logits, const int32_t* history, int n_history, int n_generated,
             double& total);
  void apply_penalties(const int32_t* history, int n_history);
  // Sorts cands_ by key (descending) until the sorted prefix holds `mass` of
  // the probability, returning that prefix's length.
  template <class Key>
  size_t sorted_prefix_for_mass(Key key, float mass);
  void softmax(float temperature);
  int32_t draw();
  int32_t draw_all(double total);
  int32_t mirostat_step(const float* logits, float max_logit, float temperature);
  // cands_ = tokens with logits in [lo, hi] / the k largest (p unset)
  void gather(const float* logits, float lo, float hi);
  void gather_top(const float* logits, float max_logit, int k);

  SamplingConfig cfg_;
  int n_vocab_;
  std::mt19937_64 rng_;
  float mu_;
  const float* L_ = nullptr;  // mirostat's input, from filter()
  float mx_ = 0.f, mirostat_t_ = 1.f;
  std::vector<float> work_;  // logits after penalties and bias
  std::vector<Cand> cands_;
  std::vector<float> e_;     // exp(logit - max) of the whole vocabulary
  std::vector<int> counts_;  // per token, in the penalty window

  enum { kMaskOff = 0, kMaskPending = 1, kMaskReady = 2 };
  const float* apply_mask(const float* logits);  // waits, then masks into masked_
  std::vector<uint32_t> mask_;
  std::vector<float> masked_;
  std::atomic<int> mask_state_{kMaskOff};
  std::mutex mask_mu_;
  std::condition_variable mask_cv_;
  bool last_masked_ = false;
};

// Log-probabilities of the model's distribution (log_softmax of the raw
// logits, or of the masked ones under a constraint): the given token's and
// the top n (ids and values, best first; tokens at -inf are left out).
struct TopLogprobs {
  float token_logprob;
  std::vector<int32_t> ids;
  std::vector<float> logprobs;
};
TopLogprobs top_logprobs(const float* logits, int n_vocab, int32_t token, int n);

}  // namespace llmrt
