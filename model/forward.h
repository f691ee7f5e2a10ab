// The streaming CPU forward pass. A batch of equal-length sequences runs layer by layer: one
// layer's weights are read from the source at a time (experts one at a time inside the MoE block),
// so peak memory is about one layer plus activations, whatever the model size.
#pragma once
#include <cstdint>
#include <functional>
#include <vector>

#include "core/matrix.h"
#include "model/router.h"
#include "model/source.h"

namespace moec::model {

// Observers of the MoE blocks (profiling, calibration). All matrices have one row per token of the
// current batch; token indices refer to those rows.
struct ForwardHooks {
  virtual ~ForwardHooks() = default;
  // Normalised MoE input x (n x H), router logits (n x E) and the routing decision.
  virtual void on_moe(int layer, const Matrix& x, const Matrix& logits, const Routing& routing) {}
  // Called per expert when want_expert_detail(): the tokens it received, its input rows (n_e x H),
  // intermediate activation silu(gate) * up (n_e x I) and output before gate weighting (n_e x H).
  virtual bool want_expert_detail(int layer) const { return false; }
  virtual void on_expert(int layer, int expert, const std::vector<int>& tokens, const Matrix& x,
                         const Matrix& act, const Matrix& out) {}
  // The MoE block's output (weighted routed experts + shared expert), before the residual add.
  virtual void on_moe_output(int layer, const Matrix& x, const Matrix& y) {}
};

// Attention-side weights of one decoder layer (experts are fetched one at a time).
struct LayerWeights {
  Vector attn_norm, ffn_norm;
  Matrix q, k, v, o;
  Vector q_bias, k_bias, v_bias, o_bias, q_norm, k_norm;
  Matrix router;        // E x H (empty for dense layers)
  Vector router_bias;   // DeepSeek-V3 correction bias
};

class Forward {
 public:
  explicit Forward(const WeightSource& src);
  const ModelSpec& spec() const { return spec_; }
  const WeightSource& source() const { return src_; }

  Matrix embed(const int32_t* tokens, int64_t n) const;
  LayerWeights load_layer(int l) const;
  // Runs decoder layer l in place on h: rows are tokens, sequences of seq_len rows back to back.
  void run_layer(int l, const LayerWeights& w, Matrix& h, int seq_len, ForwardHooks* hooks = nullptr) const;
  // The pieces of a layer, for stages that need the MoE input of a layer (profile, compress).
  void attention(int l, const LayerWeights& w, Matrix& h, int seq_len) const;
  Matrix moe_input(const LayerWeights& w, const Matrix& h) const;  // post-attention RMSNorm
  // y = MoE block output for normalised input x (routed experts weighted + shared expert).
  Matrix moe(int l, const LayerWeights& w, const Matrix& x, ForwardHooks* hooks = nullptr) const;
  // Final norm + lm_head for rows [begin, end) of h: logits (rows x vocab).
  Matrix logits(const Matrix& h, int64_t begin, int64_t end) const;

  // One SwiGLU expert on rows X: act = silu(X Wg^T) * (X Wu^T), out = act Wd^T.
  static void swiglu(const Linear& gate, const Linear& up, const Linear& down, const Matrix& X, Matrix& act, Matrix& out);

 private:
  const WeightSource& src_;
  const ModelSpec& spec_;
  mutable int rope_len_ = 0;
  void ensure_rope(int seq_len) const;
  mutable Matrix cos_cache_, sin_cache_;  // seq x head_dim/2
};

void rms_norm_rows(const Matrix& x, const Vector& w, float eps, Matrix& out);

struct EvalOptions {
  int window = 256;
  int64_t max_tokens = -1;          // use only the first N tokens (-1 = all)
  int64_t chunk_tokens = 1 << 16;   // windows processed together, layer by layer
  bool progress = true;
};
struct EvalResult {
  int64_t tokens_scored = 0;
  int64_t windows = 0;
  double nll_sum = 0;
  double seconds = 0;
  double nll() const { return tokens_scored ? nll_sum / double(tokens_scored) : 0; }
  double ppl() const;
  double tokens_per_second() const { return seconds > 0 ? double(tokens_processed) / seconds : 0; }
  int64_t tokens_processed = 0;
};

// Perplexity over non-overlapping windows: each window starts fresh at position 0 and scores its
// tokens 1..W-1; a trailing partial window is dropped (the protocol of ../shared/fixtures.md).
EvalResult evaluate(const WeightSource& src, const std::vector<int32_t>& tokens, const EvalOptions& opt,
                    ForwardHooks* hooks = nullptr);

// Validates token ids against the vocabulary (message names the file and position).
void check_tokens(const std::vector<int32_t>& tokens, int vocab, const std::string& what);

}  // namespace moec::model
