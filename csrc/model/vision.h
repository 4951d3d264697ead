// A vision encoder (SigLIP's ViT) and the projector that turns its patches
// into a decoder's input embeddings (gemma 3, idefics3 / SmolVLM): patch
// embedding, learned positions, N pre-LayerNorm blocks of bidirectional
// attention and a GELU MLP, a post-LayerNorm; then the projection, an
// optional RMSNorm and one product. Written against core/backend.h only.
// What sits between the two (gemma 3's 4x4 average pooling, idefics3's
// pixel shuffle) is a reordering of rows the caller does.
#pragma once

#include <map>
#include <memory>
#include <string>
#include <vector>

#include "core/backend.h"
#include "core/tensor.h"

namespace llmrt {

struct VisionConfig {
  int n_embd = 0;     // the tower's width
  int n_ff = 0;
  int n_layer = 0;
  int n_head = 0;
  int patch_dim = 0;  // 3 * patch * patch: one patch's pixels, (channel, y, x)
  int n_patches = 0;  // patches of one image (the position table's rows)
  float eps = 1e-6f;  // the LayerNorms'
  int proj_in = 0;    // the projector's input width (n_embd, or n_embd * s^2)
  int proj_out = 0;   // the decoder's width
  bool proj_norm = false;  // RMSNorm before the projection (gemma 3)
  float proj_eps = 1e-6f;
};

struct VisionLayer {
  const float *ln1_w = nullptr, *ln1_b = nullptr, *ln2_w = nullptr, *ln2_b = nullptr;
  WeightView wq, wk, wv, wo, w_up, w_down;  // (D, D) x 4, (F, D), (D, F)
  const float *bq = nullptr, *bk = nullptr, *bv = nullptr, *bo = nullptr;
  const float *b_up = nullptr, *b_down = nullptr;
};

struct VisionWeights {
  WeightView patch;               // (D, patch_dim)
  const float* patch_b = nullptr; // (D,)
  const float* pos = nullptr;     // (n_patches, D)
  std::vector<VisionLayer> layers;
  const float *post_w = nullptr, *post_b = nullptr;
  WeightView proj;                // (proj_out, proj_in)
  const float* proj_norm = nullptr;  // (proj_in,), the RMSNorm's weight as applied
};

class VisionTower {
 public:
  // Shapes checked (std::invalid_argument on a mismatch).
  VisionTower(const VisionConfig& cfg, VisionWeights w, std::unique_ptr<Backend> backend);
  ~VisionTower();
  const VisionConfig& config() const { return cfg_; }
  Backend& backend() { return *be_; }
  // patches (n_img * n_patches, patch_dim), host memory -> out (n_img *
  // n_patches, n_embd), host memory: each image's encoded patches.
  void encode(const float* patches, int n_img, float* out);
  // x (m, proj_in) -> out (m, proj_out), both host memory.
  void project(const float* x, int m, float* out);

 private:
  void ensure(int rows);
  VisionConfig cfg_;
  VisionWeights w_;
  std::unique_ptr<Backend> be_;
  int cap_ = 0;  // rows the buffers hold
  float *x_ = nullptr, *xn_ = nullptr, *q_ = nullptr, *k_ = nullptr, *v_ = nullptr;
  float *att_ = nullptr, *ff_ = nullptr, *in_ = nullptr;
};

using ConfigValues = std::map<std::string, double>;
// Config from the loader's numbers (n_embd, n_ff, n_layer, n_head,
// patch_dim, n_patches, eps, proj_in, proj_out, proj_norm, proj_eps).
VisionConfig vision_config(const ConfigValues& v);
// Weights from role -> view: patch, patch_b, pos, post_w, post_b, proj,
// proj_norm and blk.N.{ln1_w, ln1_b, ln2_w, ln2_b, wq, bq, wk, bk, wv, bv,
// wo, bo, up, b_up, down, b_down}; float vectors must be F32 views.
VisionWeights vision_weights(const VisionConfig& c, const std::map<std::string, WeightView>& t);

}  // namespace llmrt
