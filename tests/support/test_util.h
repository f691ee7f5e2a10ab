// Test helpers: temp dirs, random checkpoints in Hugging Face layout, running the CLI.
#pragma once
#include <filesystem>
#include <map>
#include <nlohmann/json.hpp>
#include <random>
#include <string>
#include <vector>

#include "core/matrix.h"
#include "model/source.h"

namespace moec::test {
namespace fs = std::filesystem;

// r x c matrix of i.i.d. N(0, sd^2) values drawn from g in storage order.
inline Matrix randn(int r, int c, std::mt19937& g, float sd = 1.f) {
  std::normal_distribution<float> nd(0.f, sd);
  Matrix m(r, c);
  for (Eigen::Index i = 0; i < m.size(); ++i) m.data()[i] = nd(g);
  return m;
}

// A fresh directory under the build tree, removed at destruction.
struct TempDir {
  fs::path path;
  explicit TempDir(const std::string& tag);
  ~TempDir();
  fs::path operator/(const std::string& s) const { return path / s; }
};

// fp32 tensors by name with shapes, written as BF16 (or another dtype) safetensors + config.json.
struct TensorMap {
  std::map<std::string, std::pair<std::vector<int64_t>, std::vector<float>>> t;
  void add(const std::string& name, std::vector<int64_t> shape, std::mt19937& rng, float stddev, float mean = 0.0f);
  const std::vector<float>& at(const std::string& name) const;
};

// Random tiny MoE checkpoints with Hugging Face tensor names for a family ("mixtral", "qwen2_moe",
// "qwen3_moe", "olmoe"); `overrides` patch the config. Values are rounded to bf16 in `tensors`,
// so what the test holds equals what the file holds.
struct TinyModel {
  nlohmann::json config;
  TensorMap tensors;
};
TinyModel make_tiny_model(const std::string& family, unsigned seed, const nlohmann::json& overrides = {});
void write_model_dir(const TinyModel& m, const fs::path& dir, uint64_t max_shard_bytes = uint64_t(1) << 40);

// Runs the moec CLI with arguments; returns exit code, captures stdout and stderr.
struct CliResult {
  int code;
  std::string out, err;
};
CliResult run_cli(const std::string& args);

// n tokens drawn uniformly from [0, vocab) by std::mt19937(seed).
std::vector<int32_t> random_tokens(int n, int vocab, unsigned seed);
// Logits [n x vocab] of a plain forward pass (windows of `seq` tokens) over all layers of src.
Matrix all_logits(const model::WeightSource& src, const std::vector<int32_t>& tokens, int seq);

std::string shared_dir();   // ../shared
std::string source_dir();   // repository root
std::string tiny_mixtral(); // examples/tiny-mixtral

}  // namespace moec::test
