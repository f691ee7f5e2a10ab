// moec compress: one recipe, profile -> prune or merge -> quantize -> evaluate, streamed layer by layer.
// A recipe reads like a faiss factory string:
//   prune:easyep:keep=6,quant:gptq:bits=ternary:scale=minmax:subbit
//   merge:subspace:keep=6,quant:mixed:budget=1.2
//   quant:mixed:budget=2.5
// or the same as JSON ({"stages": [{"stage": "prune", "method": "easyep", "keep": 6}, ...]}).
#pragma once
#include <filesystem>
#include <map>
#include <nlohmann/json.hpp>
#include <optional>
#include <string>
#include <vector>

namespace moec::compress {

struct Stage {
  std::string stage;   // "prune" | "merge" | "quant"
  std::string method;  // prune: a criterion; merge: subspace | msmoe | average | frequency; quant: gptq | rtn | mixed
  std::map<std::string, std::string> params;  // key=value; flags have value "1"
};

struct Recipe {
  std::vector<Stage> stages;
  const Stage* find(const std::string& stage) const;
  std::string str() const;               // canonical factory string
  nlohmann::ordered_json to_json() const;
};

// Parses a factory string or a JSON recipe (text starting with '{' or a path to a .json file), and
// validates it completely: unknown stage, method or parameter, bad values, impossible orders. Errors list
// what is allowed.
Recipe parse_recipe(const std::string& text);
Recipe recipe_from_json(const nlohmann::json& j);
std::string recipe_help();  // the grammar, for --help

// The default recipe of the README's main job.
inline const char* kDefaultRecipe = "prune:easyep:keep=6,quant:gptq:bits=ternary:scale=minmax:subbit";

struct Options {
  std::filesystem::path model, out;
  std::filesystem::path calib, eval;  // eval optional
  int64_t max_calib_tokens = -1, max_eval_tokens = -1;
  int seq_len = 256;
  bool resume = false, force = false, progress = true;
  std::string command_line;
};

struct Result {
  double ppl_before = 0, ppl_after = 0;
  int64_t eval_tokens_scored = 0;
  double expert_bits_per_weight = 0;         // stored bits per routed-expert weight of the result
  double expert_bits_per_source_weight = 0;  // the same storage per routed-expert weight of the source
  uint64_t bytes_before = 0, bytes_after = 0;
  double seconds = 0;
  std::vector<std::pair<std::string, double>> stage_seconds;
  nlohmann::ordered_json to_json() const;
};

// Runs the recipe; writes OUT (checkpoint, report.json, report.html). Work in progress is kept under
// OUT/.work (finished stages, and each quantized layer as soon as it is final) so that --resume continues
// after an interruption, even kill -9, with byte-identical output.
Result run(const Recipe& recipe, const Options& opt);

}  // namespace moec::compress
