// The pruned model: routing over kept experts, a renaming view of the original source, and the
// checkpoint writer that makes it permanent.
#include <algorithm>
#include <map>
#include <set>

#include "core/error.h"
#include "core/files.h"
#include "core/progress.h"
#include "model/checkpoint_writer.h"
#include "prune/prune.h"

namespace moec::prune {

model::RoutingSpec pruned_routing(const model::RoutingSpec& r, int kept) {
  model::RoutingSpec p = r;
  p.num_experts = kept;
  p.top_k = std::min(r.top_k, kept);
  return p;
}

model::Routing route_subset(const Matrix& logits, const std::vector<int>& keep, const model::RoutingSpec& r, const float* bias) {
  const int k = int(keep.size());
  Matrix sub(logits.rows(), k);
  std::vector<float> b;
  for (int j = 0; j < k; ++j) sub.col(j) = logits.col(keep[size_t(j)]);
  if (bias)
    for (int e : keep) b.push_back(bias[e]);
  model::Routing out = model::route(sub, pruned_routing(r, k), bias ? b.data() : nullptr);
  for (auto& e : out.expert) e = keep[size_t(e)];
  return out;
}

void update_config(nlohmann::ordered_json& config, const model::ModelSpec& spec, int kept) {
  const std::string key = spec.experts_key();
  if (!config.contains(key)) fail("config.json has no '", key, "' (the expert count of a ", model::family_name(spec.family), " model)");
  config[key] = kept;
  if (spec.routing.top_k > kept) {
    if (!config.contains("num_experts_per_tok")) fail("config.json has no 'num_experts_per_tok' to lower to ", kept);
    config["num_experts_per_tok"] = kept;
  }
}

namespace {
// Names of the pruned model -> tensors of the original.
struct Mapping {
  std::map<std::string, std::string> rename;             // pruned expert name -> original expert name
  std::set<std::string> dropped;                         // original expert names with no pruned counterpart
  std::map<std::string, std::vector<int>> sliced_rows;   // router / correction bias: rows kept
  std::map<std::string, int> layer_of;                   // sliced tensor -> layer
};

Mapping make_mapping(const model::ModelSpec& spec, const PrunePlan& plan) {
  Mapping m;
  for (const auto& lp : plan.layers) {
    const int l = lp.layer, kept = int(lp.keep.size());
    for (auto p : {model::Proj::Gate, model::Proj::Up, model::Proj::Down}) {
      for (int j = 0; j < kept; ++j) m.rename[spec.expert(l, j, p)] = spec.expert(l, lp.keep[size_t(j)], p);
      for (int e = kept; e < spec.routing.num_experts; ++e) m.dropped.insert(spec.expert(l, e, p));
    }
    m.sliced_rows[spec.router(l)] = lp.keep;
    m.layer_of[spec.router(l)] = l;
    if (spec.routing.correction_bias) {
      m.sliced_rows[spec.router_bias(l)] = lp.keep;
      m.layer_of[spec.router_bias(l)] = l;
    }
  }
  return m;
}

class PrunedSource final : public model::WeightSource {
 public:
  PrunedSource(const model::WeightSource& base, const PrunePlan& plan)
      : base_(base), spec_(base.spec()), map_(make_mapping(base.spec(), plan)) {
    spec_.routing = pruned_routing(base.spec().routing, plan.kept_per_layer());
    spec_.config[spec_.experts_key()] = spec_.routing.num_experts;
    spec_.config["num_experts_per_tok"] = spec_.routing.top_k;
  }
  const model::ModelSpec& spec() const override { return spec_; }
  bool has(const std::string& name) const override {
    if (map_.rename.count(name)) return true;
    return !map_.dropped.count(name) && base_.has(name);
  }
  Matrix matrix(const std::string& name) const override {
    if (auto it = map_.sliced_rows.find(name); it != map_.sliced_rows.end()) {
      Matrix full = base_.matrix(name);
      if (name == base_.spec().router(map_.layer_of.at(name))) {  // router [E x H]: rows of kept experts
        Matrix out(int64_t(it->second.size()), full.cols());
        for (size_t j = 0; j < it->second.size(); ++j) out.row(int64_t(j)) = full.row(it->second[j]);
        return out;
      }
      Matrix out(1, int64_t(it->second.size()));  // correction bias, read as 1 x E
      for (size_t j = 0; j < it->second.size(); ++j) out(0, int64_t(j)) = full(0, it->second[j]);
      return out;
    }
    if (map_.dropped.count(name) && !map_.rename.count(name)) fail("pruned model: tensor '", name, "' was pruned");
    return base_.matrix(original(name));
  }
  std::shared_ptr<const model::Linear> linear(const std::string& name) const override {
    if (map_.sliced_rows.count(name)) return std::make_shared<model::DenseLinear>(matrix(name));
    if (map_.dropped.count(name) && !map_.rename.count(name)) fail("pruned model: tensor '", name, "' was pruned");
    return base_.linear(original(name));
  }
  void release(const std::string& name) const override { base_.release(original(name)); }
  fs::path path() const override { return base_.path(); }
  uint64_t bytes_on_disk() const override { return base_.bytes_on_disk(); }

 private:
  std::string original(const std::string& name) const {
    auto it = map_.rename.find(name);
    return it == map_.rename.end() ? name : it->second;
  }
  const model::WeightSource& base_;
  model::ModelSpec spec_;
  Mapping map_;
};
}  // namespace

std::unique_ptr<model::WeightSource> pruned_view(const model::WeightSource& src, const PrunePlan& plan) {
  validate_plan(plan, src.spec(), plan.config_sha256, "prune plan", true);
  return std::make_unique<PrunedSource>(src, plan);
}

void apply_plan(const PrunePlan& plan, const fs::path& model_dir, const fs::path& out, const ApplyOptions& opt) {
  const model::ModelSpec spec = model::load_spec(model_dir);
  const std::string sha = sha256_file(model_dir / "config.json");
  validate_plan(plan, spec, sha, "prune plan", true);
  const int kept = plan.kept_per_layer();
  model::CheckpointWriter w(model_dir, out, {opt.max_shard_bytes, opt.force});
  update_config(w.config(), spec, kept);
  const Mapping map = make_mapping(spec, plan);
  model::ModelSpec ps = spec;
  ps.routing = pruned_routing(spec.routing, kept);
  // The pruned model's tensors in the canonical order, each from its original, bytes unchanged.
  std::set<std::string> expected;
  for (const auto& t : model::expected_tensors(spec)) expected.insert(t.name);
  for (const auto& t : model::expected_tensors(ps)) {
    if (auto it = map.sliced_rows.find(t.name); it != map.sliced_rows.end()) {
      w.copy_rows(t.name, it->second);
    } else if (auto r = map.rename.find(t.name); r != map.rename.end()) {
      w.copy(r->second, t.name);
    } else {
      w.copy(t.name);
    }
  }
  // Tensors the config does not describe (e.g. rotary buffers) pass through; per-expert ones cannot.
  for (const auto& name : w.input().names()) {
    if (expected.count(name)) continue;
    if (name.find(".experts.") != std::string::npos)
      fail(model_dir.string(), ": tensor '", name, "' looks per-expert but is not one moec knows how to renumber; refusing to write a pruned checkpoint that would keep it unchanged");
    w.copy(name);
  }
  nlohmann::ordered_json prov;
  prov["method"] = "prune";
  prov["prune"] = {{"criterion", plan.method}, {"experts_before", spec.routing.num_experts}, {"experts_after", kept},
                   {"top_k_before", spec.routing.top_k}, {"top_k_after", ps.routing.top_k}};
  prov["plan"] = plan_to_json(plan);
  w.set_provenance(prov);
  w.finish();
}

}  // namespace moec::prune
