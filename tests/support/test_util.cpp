#include "tests/support/test_util.h"

#include <sys/wait.h>
#include <unistd.h>

#include <cstdio>
#include <fstream>
#include <sstream>

#include "core/files.h"
#include "core/half.h"
#include "io/safetensors.h"
#include "model/forward.h"

namespace moec::test {

TempDir::TempDir(const std::string& tag) {
  static int counter = 0;
  path = fs::path(MOEC_BINARY_DIR) / "test-tmp" / (tag + "-" + std::to_string(::getpid()) + "-" + std::to_string(counter++));
  fs::remove_all(path);
  fs::create_directories(path);
}
TempDir::~TempDir() {
  std::error_code ec;
  if (!std::getenv("MOEC_KEEP_TEST_DIRS")) fs::remove_all(path, ec);
}

void TensorMap::add(const std::string& name, std::vector<int64_t> shape, std::mt19937& rng, float stddev, float mean) {
  int64_t n = 1;
  for (auto d : shape) n *= d;
  std::normal_distribution<float> nd(mean, stddev);
  std::vector<float> v(static_cast<size_t>(n));
  for (auto& x : v) x = round_bf16(stddev == 0 ? mean : nd(rng));
  t[name] = {shape, v};
}
const std::vector<float>& TensorMap::at(const std::string& name) const {
  auto it = t.find(name);
  if (it == t.end()) throw std::runtime_error("test model has no tensor " + name);
  return it->second.second;
}

TinyModel make_tiny_model(const std::string& family, unsigned seed, const nlohmann::json& overrides) {
  TinyModel m;
  auto& c = m.config;
  c = {{"model_type", family}, {"hidden_size", 48}, {"num_hidden_layers", 2}, {"num_attention_heads", 4},
       {"num_key_value_heads", 2}, {"head_dim", 12}, {"vocab_size", 40}, {"rms_norm_eps", 1e-5}, {"rope_theta", 10000.0},
       {"num_experts_per_tok", 2}, {"hidden_act", "silu"}, {"tie_word_embeddings", false}};
  if (family == "mixtral") {
    c["num_local_experts"] = 6;
    c["intermediate_size"] = 40;
  } else if (family == "qwen2_moe") {
    c["num_experts"] = 6;
    c["moe_intermediate_size"] = 40;
    c["shared_expert_intermediate_size"] = 56;
    c["intermediate_size"] = 64;
    c["norm_topk_prob"] = false;
    c["decoder_sparse_step"] = 1;
    c["mlp_only_layers"] = nlohmann::json::array();
  } else if (family == "qwen3_moe") {
    c["num_experts"] = 6;
    c["moe_intermediate_size"] = 40;
    c["intermediate_size"] = 64;
    c["norm_topk_prob"] = true;
    c["attention_bias"] = false;
  } else if (family == "olmoe") {
    c["num_experts"] = 6;
    c["intermediate_size"] = 40;
    c["norm_topk_prob"] = false;
    c["clip_qkv"] = nullptr;
  }
  if (overrides.is_object()) c.merge_patch(overrides);
  const int H = c["hidden_size"], L = c["num_hidden_layers"], nh = c["num_attention_heads"], nkv = c["num_key_value_heads"],
            hd = c["head_dim"], V = c["vocab_size"];
  const int E = family == "mixtral" ? int(c["num_local_experts"]) : int(c["num_experts"]);
  const int I = family == "mixtral" || family == "olmoe" ? int(c["intermediate_size"]) : int(c["moe_intermediate_size"]);
  std::mt19937 rng(seed);
  auto& t = m.tensors;
  const float sd = 0.15f;
  t.add("model.embed_tokens.weight", {V, H}, rng, 1.0f);
  t.add("model.norm.weight", {H}, rng, 0.1f, 1.0f);
  if (!c["tie_word_embeddings"].get<bool>()) t.add("lm_head.weight", {V, H}, rng, sd);
  for (int l = 0; l < L; ++l) {
    std::string p = "model.layers." + std::to_string(l) + ".";
    t.add(p + "input_layernorm.weight", {H}, rng, 0.1f, 1.0f);
    t.add(p + "post_attention_layernorm.weight", {H}, rng, 0.1f, 1.0f);
    t.add(p + "self_attn.q_proj.weight", {nh * hd, H}, rng, sd);
    t.add(p + "self_attn.k_proj.weight", {nkv * hd, H}, rng, sd);
    t.add(p + "self_attn.v_proj.weight", {nkv * hd, H}, rng, sd);
    t.add(p + "self_attn.o_proj.weight", {H, nh * hd}, rng, sd);
    if (family == "qwen2_moe") {
      t.add(p + "self_attn.q_proj.bias", {nh * hd}, rng, sd);
      t.add(p + "self_attn.k_proj.bias", {nkv * hd}, rng, sd);
      t.add(p + "self_attn.v_proj.bias", {nkv * hd}, rng, sd);
    }
    if (family == "qwen3_moe") {
      t.add(p + "self_attn.q_norm.weight", {hd}, rng, 0.1f, 1.0f);
      t.add(p + "self_attn.k_norm.weight", {hd}, rng, 0.1f, 1.0f);
    }
    if (family == "olmoe") {
      t.add(p + "self_attn.q_norm.weight", {nh * hd}, rng, 0.1f, 1.0f);
      t.add(p + "self_attn.k_norm.weight", {nkv * hd}, rng, 0.1f, 1.0f);
    }
    std::string moe = family == "mixtral" ? p + "block_sparse_moe." : p + "mlp.";
    bool dense = false;
    if (c.contains("mlp_only_layers"))
      for (auto& d : c["mlp_only_layers"]) dense |= d.get<int>() == l;
    if (dense) {
      int DI = c["intermediate_size"];
      t.add(p + "mlp.gate_proj.weight", {DI, H}, rng, sd);
      t.add(p + "mlp.up_proj.weight", {DI, H}, rng, sd);
      t.add(p + "mlp.down_proj.weight", {H, DI}, rng, sd);
      continue;
    }
    t.add(moe + "gate.weight", {E, H}, rng, 0.5f);
    for (int e = 0; e < E; ++e) {
      std::string ep = moe + "experts." + std::to_string(e) + ".";
      if (family == "mixtral") {
        t.add(ep + "w1.weight", {I, H}, rng, sd);
        t.add(ep + "w3.weight", {I, H}, rng, sd);
        t.add(ep + "w2.weight", {H, I}, rng, sd);
      } else {
        t.add(ep + "gate_proj.weight", {I, H}, rng, sd);
        t.add(ep + "up_proj.weight", {I, H}, rng, sd);
        t.add(ep + "down_proj.weight", {H, I}, rng, sd);
      }
    }
    if (family == "qwen2_moe") {
      int S = c["shared_expert_intermediate_size"];
      t.add(p + "mlp.shared_expert.gate_proj.weight", {S, H}, rng, sd);
      t.add(p + "mlp.shared_expert.up_proj.weight", {S, H}, rng, sd);
      t.add(p + "mlp.shared_expert.down_proj.weight", {H, S}, rng, sd);
      t.add(p + "mlp.shared_expert_gate.weight", {1, H}, rng, 0.5f);
    }
  }
  return m;
}

void write_model_dir(const TinyModel& m, const fs::path& dir, uint64_t max_shard_bytes) {
  fs::create_directories(dir);
  write_file_atomic(dir / "config.json", m.config.dump(2));
  io::SafetensorsWriter w(dir, max_shard_bytes);
  for (auto& [name, sv] : m.tensors.t) w.add_f32(name, io::DType::BF16, sv.first, sv.second.data());
  w.finish();
}

CliResult run_cli(const std::string& args) {
  static int n = 0;
  fs::path base = fs::path(MOEC_BINARY_DIR) / "test-tmp";
  fs::create_directories(base);
  std::string o = (base / ("cli-" + std::to_string(::getpid()) + "-" + std::to_string(n) + ".out")).string();
  std::string e = (base / ("cli-" + std::to_string(::getpid()) + "-" + std::to_string(n++) + ".err")).string();
  std::string cmd = std::string(MOEC_CLI) + " " + args + " >" + o + " 2>" + e + " </dev/null";
  int st = std::system(cmd.c_str());
  CliResult r;
  r.code = WIFEXITED(st) ? WEXITSTATUS(st) : -1;
  auto slurp = [](const std::string& p) {
    std::ifstream in(p);
    std::stringstream ss;
    ss << in.rdbuf();
    return ss.str();
  };
  r.out = slurp(o);
  r.err = slurp(e);
  fs::remove(o);
  fs::remove(e);
  return r;
}

std::string shared_dir() { return MOEC_SHARED_DIR; }
std::string source_dir() { return MOEC_SOURCE_DIR; }
std::string tiny_mixtral() { return std::string(MOEC_SOURCE_DIR) + "/examples/tiny-mixtral"; }

std::vector<int32_t> random_tokens(int n, int vocab, unsigned seed) {
  std::mt19937 rng(seed);
  std::vector<int32_t> t(static_cast<size_t>(n));
  for (auto& v : t) v = int32_t(rng() % unsigned(vocab));
  return t;
}

Matrix all_logits(const model::WeightSource& src, const std::vector<int32_t>& tokens, int seq) {
  model::Forward f(src);
  Matrix h = f.embed(tokens.data(), int64_t(tokens.size()));
  for (int l = 0; l < src.spec().num_layers; ++l) f.run_layer(l, f.load_layer(l), h, seq);
  return f.logits(h, 0, h.rows());
}

}  // namespace moec::test
