// A uniform description of an MoE checkpoint, parsed from its config.json: architecture sizes,
// routing semantics, and the mapping from uniform roles (router, expert e gate/up/down, shared
// expert, attention q/k/v/o, norms) to the tensor names each family uses.
#pragma once
#include <filesystem>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

namespace moec::model {

enum class Family { Mixtral, Qwen2Moe, Qwen3Moe, Olmoe, DeepseekV2, DeepseekV3 };
enum class Proj { Gate, Up, Down };  // SwiGLU: down(silu(gate(x)) * up(x))
enum class Scoring { Softmax, Sigmoid };
enum class TopkMethod { Greedy, GroupLimited /* DeepSeek-V2 group_limited_greedy */, NoAuxTc /* DeepSeek-V3 */ };

const char* family_name(Family f);
const char* proj_name(Proj p);  // "gate", "up", "down"
// The model_type values moec understands, for error messages.
std::string supported_model_types();

struct RoutingSpec {
  int num_experts = 0;
  int top_k = 0;
  Scoring scoring = Scoring::Softmax;  // over all experts, before top-k
  bool norm_topk = true;               // renormalise the selected weights to sum 1
  TopkMethod method = TopkMethod::Greedy;
  int n_group = 1, topk_group = 1;       // group-limited selection (DeepSeek)
  float routed_scaling_factor = 1.0f;    // DeepSeek: multiplies the final weights
  bool correction_bias = false;          // DeepSeek-V3 e_score_correction_bias (selection only)
};

struct ModelSpec {
  Family family = Family::Mixtral;
  std::string model_type;
  int num_layers = 0, hidden = 0, vocab = 0;
  int n_heads = 0, n_kv_heads = 0, head_dim = 0;
  int moe_intermediate = 0;     // routed expert width
  int dense_intermediate = 0;   // width of dense MLP layers (if any)
  int shared_intermediate = 0;  // total width of the shared expert(s), 0 = none
  bool shared_expert_gate = false;  // Qwen2-MoE: sigmoid(shared_expert_gate(x)) scales the shared expert
  float rms_eps = 1e-5f;
  double rope_theta = 10000.0;
  int sliding_window = 0;       // 0 = full causal attention
  bool qkv_bias = false, o_bias = false;
  enum class QkNorm { None, PerHead /* Qwen3 */, Full /* OLMoE: over the whole projection */ } qk_norm = QkNorm::None;
  float clip_qkv = 0.0f;  // OLMoE: clamp q, k, v to [-clip, clip] when > 0
  bool tie_embeddings = false;
  std::vector<bool> moe_layer;  // per layer: sparse MoE block (true) or dense MLP (false)
  RoutingSpec routing;
  nlohmann::json config;        // the raw config.json

  // Tensor names, as the family's Hugging Face checkpoints spell them.
  std::string embed() const { return "model.embed_tokens.weight"; }
  std::string final_norm() const { return "model.norm.weight"; }
  std::string lm_head() const { return tie_embeddings ? embed() : "lm_head.weight"; }
  std::string input_norm(int l) const;
  std::string post_attn_norm(int l) const;
  std::string attn(int l, char which /* q k v o */) const;       // weight
  std::string attn_bias(int l, char which) const;                // bias
  std::string qk_norm_weight(int l, char which /* q k */) const;
  std::string router(int l) const;
  std::string router_bias(int l) const;  // DeepSeek-V3 e_score_correction_bias
  std::string expert(int l, int e, Proj p) const;
  std::string shared_expert(int l, Proj p) const;
  std::string shared_gate(int l) const;
  std::string dense_mlp(int l, Proj p) const;
  // The config key holding the routed expert count (what pruning rewrites).
  std::string experts_key() const;

  int num_moe_layers() const;
  int64_t expert_params() const { return 3LL * hidden * moe_intermediate; }
};

// Parses and validates config.json (errors name the file and the field).
ModelSpec parse_spec(const nlohmann::json& config, const std::string& context = "config.json");
ModelSpec load_spec(const std::filesystem::path& model_dir);

}  // namespace moec::model
