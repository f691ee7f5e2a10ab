#include "model/spec.h"

#include <algorithm>

#include "core/error.h"
#include "core/files.h"

namespace moec::model {

const char* family_name(Family f) {
  switch (f) {
    case Family::Mixtral: return "mixtral";
    case Family::Qwen2Moe: return "qwen2_moe";
    case Family::Qwen3Moe: return "qwen3_moe";
    case Family::Olmoe: return "olmoe";
    case Family::DeepseekV2: return "deepseek_v2";
    case Family::DeepseekV3: return "deepseek_v3";
  }
  return "?";
}
const char* proj_name(Proj p) { return p == Proj::Gate ? "gate" : p == Proj::Up ? "up" : "down"; }
std::string supported_model_types() { return "mixtral, qwen2_moe, qwen3_moe, olmoe (deepseek_v2/deepseek_v3 routing is implemented, their MLA attention is not)"; }

namespace {
struct Reader {
  const nlohmann::json& j;
  std::string ctx;
  bool has(const char* k) const { return j.contains(k) && !j[k].is_null(); }
  int64_t integer(const char* k) const {
    if (!has(k)) fail(ctx, ": missing field '", k, "'");
    if (!j[k].is_number_integer()) fail(ctx, ": field '", k, "' must be an integer");
    return j[k].get<int64_t>();
  }
  int64_t integer(const char* k, int64_t dflt) const { return has(k) ? integer(k) : dflt; }
  int positive(const char* k) const {
    int64_t v = integer(k);
    if (v <= 0 || v > (1 << 30)) fail(ctx, ": field '", k, "' = ", v, " is out of range");
    return int(v);
  }
  double number(const char* k, double dflt) const {
    if (!has(k)) return dflt;
    if (!j[k].is_number()) fail(ctx, ": field '", k, "' must be a number");
    return j[k].get<double>();
  }
  bool boolean(const char* k, bool dflt) const {
    if (!has(k)) return dflt;
    if (!j[k].is_boolean()) fail(ctx, ": field '", k, "' must be true or false");
    return j[k].get<bool>();
  }
  std::string string(const char* k, const std::string& dflt) const {
    if (!has(k)) return dflt;
    if (!j[k].is_string()) fail(ctx, ": field '", k, "' must be a string");
    return j[k].get<std::string>();
  }
};
}  // namespace

ModelSpec parse_spec(const nlohmann::json& cfg, const std::string& ctx) {
  if (!cfg.is_object()) fail(ctx, ": not a JSON object");
  Reader r{cfg, ctx};
  ModelSpec s;
  s.config = cfg;
  s.model_type = r.string("model_type", "");
  if (s.model_type.empty()) fail(ctx, ": missing field 'model_type' (supported: ", supported_model_types(), ")");
  if (s.model_type == "mixtral") s.family = Family::Mixtral;
  else if (s.model_type == "qwen2_moe") s.family = Family::Qwen2Moe;
  else if (s.model_type == "qwen3_moe") s.family = Family::Qwen3Moe;
  else if (s.model_type == "olmoe") s.family = Family::Olmoe;
  else if (s.model_type == "deepseek_v2" || s.model_type == "deepseek_v3")
    fail(ctx, ": model_type '", s.model_type, "' uses Multi-head Latent Attention (kv_lora_rank, q_lora_rank), which moec does not implement; supported: ", supported_model_types());
  else fail(ctx, ": unknown model_type '", s.model_type, "' (supported: ", supported_model_types(), ")");

  s.num_layers = r.positive("num_hidden_layers");
  s.hidden = r.positive("hidden_size");
  s.vocab = r.positive("vocab_size");
  s.n_heads = r.positive("num_attention_heads");
  s.n_kv_heads = r.has("num_key_value_heads") ? r.positive("num_key_value_heads") : s.n_heads;
  if (s.n_heads % s.n_kv_heads != 0) fail(ctx, ": num_attention_heads (", s.n_heads, ") is not a multiple of num_key_value_heads (", s.n_kv_heads, ")");
  s.head_dim = r.has("head_dim") ? r.positive("head_dim") : s.hidden / s.n_heads;
  if (!r.has("head_dim") && s.hidden % s.n_heads != 0) fail(ctx, ": hidden_size is not a multiple of num_attention_heads and no head_dim is given");
  if (s.head_dim % 2 != 0) fail(ctx, ": head_dim ", s.head_dim, " must be even for RoPE");
  s.rms_eps = float(r.number("rms_norm_eps", 1e-6));
  s.rope_theta = r.number("rope_theta", 10000.0);
  if (r.has("rope_scaling")) {
    const auto& rs = cfg["rope_scaling"];
    std::string t = rs.is_object() ? (rs.contains("rope_type") ? rs["rope_type"].get<std::string>() : rs.value("type", std::string("?"))) : "?";
    if (t != "default") fail(ctx, ": rope_scaling type '", t, "' is not supported (only plain RoPE)");
  }
  s.tie_embeddings = r.boolean("tie_word_embeddings", false);
  if (r.string("hidden_act", "silu") != "silu") fail(ctx, ": hidden_act '", r.string("hidden_act", ""), "' is not supported (silu only)");
  s.moe_layer.assign(size_t(s.num_layers), true);
  auto& R = s.routing;
  R.top_k = r.positive("num_experts_per_tok");

  switch (s.family) {
    case Family::Mixtral:
      R.num_experts = r.positive("num_local_experts");
      s.moe_intermediate = r.positive("intermediate_size");
      R.norm_topk = true;  // Mixtral always renormalises
      if (r.has("sliding_window")) s.sliding_window = int(r.integer("sliding_window"));
      break;
    case Family::Qwen2Moe:
    case Family::Qwen3Moe: {
      R.num_experts = r.positive("num_experts");
      s.moe_intermediate = r.positive("moe_intermediate_size");
      s.dense_intermediate = int(r.integer("intermediate_size", 0));
      R.norm_topk = r.boolean("norm_topk_prob", s.family == Family::Qwen3Moe);
      if (s.family == Family::Qwen2Moe) {
        s.qkv_bias = r.boolean("qkv_bias", true);
        s.shared_intermediate = int(r.integer("shared_expert_intermediate_size", 0));
        s.shared_expert_gate = s.shared_intermediate > 0;
      } else {
        s.qkv_bias = r.boolean("attention_bias", false);
        s.o_bias = s.qkv_bias;
        s.qk_norm = ModelSpec::QkNorm::PerHead;
      }
      if (r.boolean("use_sliding_window", false) && r.has("sliding_window"))
        fail(ctx, ": use_sliding_window with per-layer windows is not supported");
      int step = int(r.integer("decoder_sparse_step", 1));
      if (step <= 0) fail(ctx, ": decoder_sparse_step must be positive");
      std::vector<int> mlp_only;
      if (r.has("mlp_only_layers")) {
        if (!cfg["mlp_only_layers"].is_array()) fail(ctx, ": mlp_only_layers must be an array");
        for (auto& v : cfg["mlp_only_layers"]) mlp_only.push_back(v.get<int>());
      }
      for (int l = 0; l < s.num_layers; ++l) {
        bool dense = std::find(mlp_only.begin(), mlp_only.end(), l) != mlp_only.end() || (l + 1) % step != 0;
        s.moe_layer[size_t(l)] = !dense;
        if (dense && s.dense_intermediate <= 0) fail(ctx, ": layer ", l, " is dense but intermediate_size is missing");
      }
      break;
    }
    case Family::Olmoe:
      R.num_experts = r.positive("num_experts");
      s.moe_intermediate = r.positive("intermediate_size");
      R.norm_topk = r.boolean("norm_topk_prob", false);
      s.qkv_bias = r.boolean("attention_bias", false);
      s.o_bias = s.qkv_bias;
      s.qk_norm = ModelSpec::QkNorm::Full;
      s.clip_qkv = float(r.number("clip_qkv", 0.0));
      break;
    default: break;
  }
  if (R.top_k > R.num_experts) fail(ctx, ": num_experts_per_tok (", R.top_k, ") exceeds the number of experts (", R.num_experts, ")");
  return s;
}

ModelSpec load_spec(const std::filesystem::path& dir) {
  auto p = dir / "config.json";
  if (!std::filesystem::exists(p)) fail(dir.string(), ": no config.json (is this a Hugging Face model directory?)");
  nlohmann::json j;
  try {
    j = nlohmann::json::parse(read_file(p));
  } catch (const nlohmann::json::exception& e) {
    fail(p.string(), ": not valid JSON: ", e.what());
  }
  return parse_spec(j, p.string());
}

static std::string L(int l) { return "model.layers." + std::to_string(l) + "."; }

std::string ModelSpec::input_norm(int l) const { return L(l) + "input_layernorm.weight"; }
std::string ModelSpec::post_attn_norm(int l) const { return L(l) + "post_attention_layernorm.weight"; }
std::string ModelSpec::attn(int l, char w) const { return L(l) + "self_attn." + w + (w == 'o' ? "_proj.weight" : "_proj.weight"); }
std::string ModelSpec::attn_bias(int l, char w) const { return L(l) + "self_attn." + w + "_proj.bias"; }
std::string ModelSpec::qk_norm_weight(int l, char w) const { return L(l) + "self_attn." + w + "_norm.weight"; }
std::string ModelSpec::router(int l) const {
  return L(l) + (family == Family::Mixtral ? "block_sparse_moe.gate.weight" : "mlp.gate.weight");
}
std::string ModelSpec::router_bias(int l) const { return L(l) + "mlp.gate.e_score_correction_bias"; }
std::string ModelSpec::expert(int l, int e, Proj p) const {
  if (family == Family::Mixtral)
    return L(l) + "block_sparse_moe.experts." + std::to_string(e) + (p == Proj::Gate ? ".w1.weight" : p == Proj::Up ? ".w3.weight" : ".w2.weight");
  return L(l) + "mlp.experts." + std::to_string(e) + "." + proj_name(p) + "_proj.weight";
}
std::string ModelSpec::shared_expert(int l, Proj p) const {
  return L(l) + (family == Family::Qwen2Moe ? "mlp.shared_expert." : "mlp.shared_experts.") + proj_name(p) + "_proj.weight";
}
std::string ModelSpec::shared_gate(int l) const { return L(l) + "mlp.shared_expert_gate.weight"; }
std::string ModelSpec::dense_mlp(int l, Proj p) const { return L(l) + "mlp." + proj_name(p) + "_proj.weight"; }
std::string ModelSpec::experts_key() const { return family == Family::Mixtral ? "num_local_experts" : "num_experts"; }
int ModelSpec::num_moe_layers() const {
  int n = 0;
  for (bool b : moe_layer) n += b;
  return n;
}

}  // namespace moec::model
