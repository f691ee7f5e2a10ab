// Prune plans: JSON round trip and validation against a model.
#include <algorithm>
#include <set>

#include "core/error.h"
#include "core/files.h"
#include "prune/prune.h"

namespace moec::prune {

bool PrunePlan::uniform() const {
  for (const auto& l : layers)
    if (l.keep.size() != layers.front().keep.size()) return false;
  return true;
}

int PrunePlan::kept_per_layer() const {
  if (layers.empty()) fail("prune plan has no layers");
  if (!uniform()) fail("prune plan keeps a different number of experts per layer (adaptive); a checkpoint needs the same count in every layer");
  return int(layers.front().keep.size());
}

namespace {
nlohmann::json num_or_null(double v) { return std::isfinite(v) ? nlohmann::json(v) : nlohmann::json(nullptr); }
}  // namespace

nlohmann::ordered_json plan_to_json(const PrunePlan& p) {
  nlohmann::ordered_json j;
  j["kind"] = "moec-prune-plan";
  j["version"] = 1;
  j["method"] = p.method;
  j["allocation"] = p.allocation;
  j["domains"] = p.domains;
  j["model_type"] = p.model_type;
  j["config_sha256"] = p.config_sha256;
  j["num_layers"] = p.num_layers;
  j["num_experts"] = p.num_experts;
  j["top_k"] = p.top_k;
  j["stats_file"] = p.stats_file;
  j["calib_file"] = p.calib_file;
  j["calib_tokens"] = p.calib_tokens;
  j["sequential"] = p.sequential;
  auto layers = nlohmann::ordered_json::array();
  for (const auto& l : p.layers) {
    nlohmann::ordered_json o;
    o["layer"] = l.layer;
    o["num_experts"] = l.num_experts;
    o["keep"] = l.keep;
    o["scores"] = l.scores;
    o["dropped_gate_mass"] = num_or_null(l.dropped_gate_mass);
    o["output_error"] = num_or_null(l.output_error);
    layers.push_back(o);
  }
  j["layers"] = layers;
  return j;
}

PrunePlan plan_from_json(const nlohmann::json& j, const std::string& ctx) {
  auto field = [&](const nlohmann::json& o, const char* k, const std::string& where) -> const nlohmann::json& {
    if (!o.is_object() || !o.contains(k)) fail(ctx, ": ", where, "missing field '", k, "'");
    return o[k];
  };
  auto integer = [&](const nlohmann::json& o, const char* k, const std::string& where) {
    const auto& v = field(o, k, where);
    if (!v.is_number_integer()) fail(ctx, ": ", where, "field '", k, "' must be an integer");
    return v.get<int64_t>();
  };
  auto str = [&](const nlohmann::json& o, const char* k) {
    const auto& v = field(o, k, "");
    if (!v.is_string()) fail(ctx, ": field '", k, "' must be a string");
    return v.get<std::string>();
  };
  if (!j.is_object() || j.value("kind", "") != "moec-prune-plan") fail(ctx, ": not a moec prune plan (\"kind\" must be \"moec-prune-plan\")");
  if (integer(j, "version", "") != 1) fail(ctx, ": plan version ", j["version"].dump(), " is not supported (expected 1)");
  PrunePlan p;
  p.method = str(j, "method");
  p.allocation = str(j, "allocation");
  p.model_type = str(j, "model_type");
  p.config_sha256 = str(j, "config_sha256");
  p.num_layers = int(integer(j, "num_layers", ""));
  p.num_experts = int(integer(j, "num_experts", ""));
  p.top_k = int(integer(j, "top_k", ""));
  if (j.contains("stats_file") && j["stats_file"].is_string()) p.stats_file = j["stats_file"];
  if (j.contains("calib_file") && j["calib_file"].is_string()) p.calib_file = j["calib_file"];
  if (j.contains("calib_tokens") && j["calib_tokens"].is_number_integer()) p.calib_tokens = j["calib_tokens"];
  if (j.contains("sequential") && j["sequential"].is_boolean()) p.sequential = j["sequential"];
  if (j.contains("domains")) {
    if (!j["domains"].is_array()) fail(ctx, ": field 'domains' must be an array of names");
    for (const auto& d : j["domains"]) {
      if (!d.is_string()) fail(ctx, ": field 'domains' must be an array of names");
      p.domains.push_back(d);
    }
  }
  const auto& layers = field(j, "layers", "");
  if (!layers.is_array()) fail(ctx, ": field 'layers' must be an array");
  for (size_t i = 0; i < layers.size(); ++i) {
    const std::string where = "layers[" + std::to_string(i) + "]: ";
    const auto& o = layers[i];
    LayerPlan l;
    l.layer = int(integer(o, "layer", where));
    l.num_experts = int(integer(o, "num_experts", where));
    const auto& keep = field(o, "keep", where);
    if (!keep.is_array()) fail(ctx, ": ", where, "field 'keep' must be an array of expert ids");
    for (const auto& e : keep) {
      if (!e.is_number_integer()) fail(ctx, ": ", where, "field 'keep' must hold integer expert ids, found ", e.dump());
      l.keep.push_back(e.get<int>());
    }
    if (o.contains("scores") && o["scores"].is_array())
      for (const auto& s : o["scores"]) l.scores.push_back(s.is_number() ? s.get<double>() : NAN);
    if (o.contains("dropped_gate_mass") && o["dropped_gate_mass"].is_number()) l.dropped_gate_mass = o["dropped_gate_mass"];
    if (o.contains("output_error") && o["output_error"].is_number()) l.output_error = o["output_error"];
    p.layers.push_back(std::move(l));
  }
  return p;
}

PrunePlan read_plan(const fs::path& path) {
  auto j = nlohmann::json::parse(read_file(path), nullptr, false);
  if (j.is_discarded()) fail(path.string(), ": not valid JSON");
  return plan_from_json(j, path.string());
}

void write_plan(const PrunePlan& p, const fs::path& path) { write_file_atomic(path, plan_to_json(p).dump(2) + "\n"); }

void validate_plan(const PrunePlan& p, const model::ModelSpec& spec, const std::string& config_sha256,
                   const std::string& ctx, bool uniform_only) {
  const auto& r = spec.routing;
  if (!p.config_sha256.empty() && p.config_sha256 != config_sha256)
    fail(ctx, ": plan was made for another model (config.json SHA-256 ", p.config_sha256, ", this model's is ", config_sha256, ")");
  if (p.num_layers != spec.num_layers || p.num_experts != r.num_experts)
    fail(ctx, ": plan is for ", p.num_layers, " layers of ", p.num_experts, " experts, the model has ", spec.num_layers,
         " layers of ", r.num_experts);
  if (r.method != model::TopkMethod::Greedy || r.n_group > 1)
    fail(ctx, ": the model uses group-limited routing (n_group ", r.n_group, "); removing experts would break its expert groups");
  std::vector<int> moe;
  for (int l = 0; l < spec.num_layers; ++l)
    if (spec.moe_layer[size_t(l)]) moe.push_back(l);
  if (p.layers.size() != moe.size()) fail(ctx, ": plan has ", p.layers.size(), " layer entries, the model has ", moe.size(), " MoE layers");
  for (size_t i = 0; i < moe.size(); ++i) {
    const auto& l = p.layers[i];
    const std::string where = ctx + ": layers[" + std::to_string(i) + "] (layer " + std::to_string(l.layer) + ")";
    if (l.layer != moe[i]) fail(where, ": expected MoE layer ", moe[i], " at this position");
    if (l.num_experts != r.num_experts) fail(where, ": num_experts ", l.num_experts, " but the model has ", r.num_experts);
    if (l.keep.empty()) fail(where, ": keeps no expert (at least one is needed)");
    std::set<int> seen;
    for (int e : l.keep) {
      if (e < 0 || e >= r.num_experts) fail(where, ": unknown expert ", e, " (the layer has experts 0..", r.num_experts - 1, ")");
      if (!seen.insert(e).second) fail(where, ": expert ", e, " listed twice");
    }
    if (!std::is_sorted(l.keep.begin(), l.keep.end())) fail(where, ": kept experts must be listed in ascending order (they are renumbered in that order)");
    if (!l.scores.empty() && int(l.scores.size()) != r.num_experts) fail(where, ": ", l.scores.size(), " scores for ", r.num_experts, " experts");
  }
  if (uniform_only && !p.uniform())
    fail(ctx, ": the plan keeps a different number of experts per layer (", p.allocation,
         "); Hugging Face configs, transformers, vLLM and llama.cpp need one expert count for every layer: re-plan with --per-layer uniform");
}

std::vector<LayerPlan> layer_plans(const model::ModelSpec& spec, const std::vector<std::vector<int>>& kept,
                                   const std::vector<std::vector<double>>& scores, const std::vector<double>& errors) {
  std::vector<LayerPlan> out;
  for (int l = 0; l < spec.num_layers; ++l) {
    if (!spec.moe_layer[size_t(l)]) continue;
    const size_t i = out.size();
    if (i >= kept.size()) fail("pruning plan: no kept set for MoE layer ", l);
    LayerPlan lp;
    lp.layer = l;
    lp.num_experts = spec.routing.num_experts;
    lp.keep = kept[i];
    if (i < scores.size()) lp.scores = scores[i];
    if (i < errors.size()) lp.output_error = errors[i];
    out.push_back(std::move(lp));
  }
  return out;
}

}  // namespace moec::prune
