// Merge plans: a plain value, validated, that round-trips through JSON.
#include <algorithm>
#include <cmath>
#include <nlohmann/json.hpp>

#include "core/error.h"
#include "merge/merge.h"

namespace moec::merge {

namespace {
constexpr const char* kFormat = "moec.merge_plan";
constexpr int kVersion = 1;
constexpr const char* kMats[3] = {"gate", "up", "down"};
}  // namespace

const char* to_string(MergeMethod m) {
  switch (m) {
    case MergeMethod::Average: return "average";
    case MergeMethod::FrequencyAverage: return "frequency";
    case MergeMethod::MSmoe: return "msmoe";
    case MergeMethod::Subspace: return "subspace";
  }
  return "?";
}
const char* to_string(RouterMerge r) { return r == RouterMerge::Dominant ? "dominant" : "frequency"; }

MergeMethod merge_method_from_string(const std::string& s) {
  for (MergeMethod m : {MergeMethod::Average, MergeMethod::FrequencyAverage, MergeMethod::MSmoe, MergeMethod::Subspace})
    if (s == to_string(m)) return m;
  fail("unknown merge method '", s, "' (expected average, frequency, msmoe or subspace)");
}
RouterMerge router_merge_from_string(const std::string& s) {
  if (s == "dominant") return RouterMerge::Dominant;
  if (s == "frequency") return RouterMerge::FrequencyWeighted;
  fail("unknown router merge '", s, "' (expected dominant or frequency)");
}

LayerPlan make_layer_plan(const Clusters& clusters, std::span<const double> frequency, int num_experts,
                          MergeMethod method) {
  LayerPlan lp;
  lp.num_experts = num_experts;
  lp.method = method;
  const std::vector<int> dom = dominant_members(clusters, frequency);
  for (size_t c = 0; c < clusters.size(); ++c) {
    ClusterPlan cp;
    cp.members = clusters[c];
    std::sort(cp.members.begin(), cp.members.end());
    cp.dominant = dom[c];
    lp.clusters.push_back(std::move(cp));
  }
  return lp;
}

void validate_plan(const MergePlan& plan, int expected_layers) {
  if (expected_layers >= 0 && int(plan.layers.size()) != expected_layers)
    fail("merge plan: ", plan.layers.size(), " layers, the model has ", expected_layers);
  for (size_t l = 0; l < plan.layers.size(); ++l) {
    const LayerPlan& lp = plan.layers[l];
    if (lp.num_experts < 1) fail("merge plan: layer ", l, ": num_experts = ", lp.num_experts);
    if (lp.clusters.empty()) fail("merge plan: layer ", l, ": no clusters");
    std::vector<int> owner(size_t(lp.num_experts), -1);
    for (size_t c = 0; c < lp.clusters.size(); ++c) {
      const ClusterPlan& cp = lp.clusters[c];
      if (cp.members.empty()) fail("merge plan: layer ", l, " cluster ", c, ": no members");
      for (size_t i = 0; i < cp.members.size(); ++i) {
        const int e = cp.members[i];
        if (e < 0 || e >= lp.num_experts)
          fail("merge plan: layer ", l, " cluster ", c, ": unknown expert ", e, " (layer has ", lp.num_experts, ")");
        if (owner[size_t(e)] >= 0)
          fail("merge plan: layer ", l, ": expert ", e, " appears twice (clusters ", owner[size_t(e)], " and ", c, ")");
        owner[size_t(e)] = int(c);
        if (i > 0 && cp.members[i - 1] > e) fail("merge plan: layer ", l, " cluster ", c, ": members not sorted");
      }
      if (std::find(cp.members.begin(), cp.members.end(), cp.dominant) == cp.members.end())
        fail("merge plan: layer ", l, " cluster ", c, ": dominant expert ", cp.dominant, " is not a member");
      for (int t = 0; t < 3; ++t) {
        if (cp.rank[size_t(t)] < 0) fail("merge plan: layer ", l, " cluster ", c, ": negative ", kMats[t], " rank");
        const double en = cp.energy[size_t(t)];
        if (!(en >= 0 && en <= 1 + 1e-9))
          fail("merge plan: layer ", l, " cluster ", c, ": ", kMats[t], " energy ", en, " not in [0, 1]");
      }
    }
    for (int e = 0; e < lp.num_experts; ++e)
      if (owner[size_t(e)] < 0) fail("merge plan: layer ", l, ": expert ", e, " is in no cluster");
  }
}

nlohmann::json plan_to_json(const MergePlan& plan) {
  nlohmann::json layers = nlohmann::json::array();
  for (size_t l = 0; l < plan.layers.size(); ++l) {
    const LayerPlan& lp = plan.layers[l];
    nlohmann::json clusters = nlohmann::json::array();
    for (const ClusterPlan& cp : lp.clusters) {
      nlohmann::json rank, energy;
      for (int t = 0; t < 3; ++t) rank[kMats[t]] = cp.rank[size_t(t)], energy[kMats[t]] = cp.energy[size_t(t)];
      clusters.push_back({{"members", cp.members}, {"dominant", cp.dominant}, {"rank", rank}, {"energy", energy}});
    }
    layers.push_back({{"layer", l}, {"num_experts", lp.num_experts}, {"method", to_string(lp.method)},
                      {"clusters", clusters}});
  }
  return {{"format", kFormat}, {"version", kVersion}, {"router", to_string(plan.router)}, {"layers", layers}};
}

namespace {

// Typed field access with errors that say where (e.g. "layers[2].clusters[0].dominant").
const nlohmann::json& field(const nlohmann::json& obj, const char* key, const std::string& where) {
  if (!obj.is_object()) fail("merge plan: ", where, " is not an object");
  auto it = obj.find(key);
  if (it == obj.end()) fail("merge plan: missing field ", where, ".", key);
  return *it;
}
int get_int(const nlohmann::json& obj, const char* key, const std::string& where) {
  const nlohmann::json& v = field(obj, key, where);
  if (!v.is_number_integer()) fail("merge plan: ", where, ".", key, " must be an integer");
  return v.get<int>();
}
std::string get_string(const nlohmann::json& obj, const char* key, const std::string& where) {
  const nlohmann::json& v = field(obj, key, where);
  if (!v.is_string()) fail("merge plan: ", where, ".", key, " must be a string");
  return v.get<std::string>();
}

}  // namespace

MergePlan plan_from_json(const nlohmann::json& j, int expected_layers) {
  if (get_string(j, "format", "plan") != kFormat) fail("merge plan: format is not ", kFormat);
  if (int v = get_int(j, "version", "plan"); v != kVersion) fail("merge plan: version ", v, " (supported: ", kVersion, ")");
  MergePlan plan;
  plan.router = router_merge_from_string(get_string(j, "router", "plan"));
  const nlohmann::json& layers = field(j, "layers", "plan");
  if (!layers.is_array()) fail("merge plan: plan.layers must be an array");
  for (size_t l = 0; l < layers.size(); ++l) {
    const std::string lw = "layers[" + std::to_string(l) + "]";
    const nlohmann::json& lj = layers[l];
    if (int idx = get_int(lj, "layer", lw); idx != int(l)) fail("merge plan: ", lw, ".layer is ", idx, ", expected ", l);
    LayerPlan lp;
    lp.num_experts = get_int(lj, "num_experts", lw);
    lp.method = merge_method_from_string(get_string(lj, "method", lw));
    const nlohmann::json& cl = field(lj, "clusters", lw);
    if (!cl.is_array()) fail("merge plan: ", lw, ".clusters must be an array");
    for (size_t c = 0; c < cl.size(); ++c) {
      const std::string cw = lw + ".clusters[" + std::to_string(c) + "]";
      ClusterPlan cp;
      const nlohmann::json& mem = field(cl[c], "members", cw);
      if (!mem.is_array()) fail("merge plan: ", cw, ".members must be an array");
      for (const auto& e : mem) {
        if (!e.is_number_integer()) fail("merge plan: ", cw, ".members must hold integers");
        cp.members.push_back(e.get<int>());
      }
      cp.dominant = get_int(cl[c], "dominant", cw);
      const nlohmann::json& rank = field(cl[c], "rank", cw);
      const nlohmann::json& energy = field(cl[c], "energy", cw);
      for (int t = 0; t < 3; ++t) {
        cp.rank[size_t(t)] = get_int(rank, kMats[t], cw + ".rank");
        const nlohmann::json& en = field(energy, kMats[t], cw + ".energy");
        if (!en.is_number()) fail("merge plan: ", cw, ".energy.", kMats[t], " must be a number");
        cp.energy[size_t(t)] = en.get<double>();
      }
      lp.clusters.push_back(std::move(cp));
    }
    plan.layers.push_back(std::move(lp));
  }
  validate_plan(plan, expected_layers);
  return plan;
}

}  // namespace moec::merge
