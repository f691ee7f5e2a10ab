// Derived figures of the stats value and the model-match check.
#include "profile/stats.h"

#include <algorithm>
#include <cmath>

#include "core/error.h"
#include "core/files.h"

namespace moec::profile {

double LayerStats::fraction(int e) const {
  const double slots = double(tokens) * double(top_k);
  return slots > 0 ? double(selected[size_t(e)]) / slots : 0.0;
}
double LayerStats::mean_prob(int e) const { return tokens ? prob_sum[size_t(e)] / double(tokens) : 0.0; }
double LayerStats::reap(int e) const { return selected[size_t(e)] ? reap_sum[size_t(e)] / double(selected[size_t(e)]) : 0.0; }
double LayerStats::ean(int e) const { return selected[size_t(e)] ? act_norm_sum[size_t(e)] / double(selected[size_t(e)]) : 0.0; }
double LayerStats::entropy() const { return tokens && !entropy_sum.empty() ? entropy_sum[0] / double(tokens) : 0.0; }
double LayerStats::logit_mean(int e) const { return tokens ? logit_sum[size_t(e)] / double(tokens) : 0.0; }
double LayerStats::logit_std(int e) const {
  if (!tokens) return 0.0;
  const double m = logit_mean(e);
  return std::sqrt(std::max(0.0, logit_sq_sum[size_t(e)] / double(tokens) - m * m));
}

double LayerStats::load_cv() const {
  if (selected.empty()) return 0.0;
  double mean = 0;
  for (auto c : selected) mean += double(c);
  mean /= double(selected.size());
  if (mean == 0) return 0.0;
  double var = 0;
  for (auto c : selected) var += (double(c) - mean) * (double(c) - mean);
  var /= double(selected.size());  // population variance over the E experts
  return std::sqrt(var) / mean;
}

double LayerStats::load_max_over_mean() const {
  if (selected.empty()) return 0.0;
  double mean = 0, mx = 0;
  for (auto c : selected) mean += double(c), mx = std::max(mx, double(c));
  mean /= double(selected.size());
  return mean > 0 ? mx / mean : 0.0;
}

const DomainStats& ProfileStats::total() const { return domain("total"); }

const DomainStats& ProfileStats::domain(const std::string& name) const {
  for (auto& d : domains)
    if (d.name == name) return d;
  std::string have;
  for (auto& d : domains) have += (have.empty() ? "" : ", ") + d.name;
  fail("profile statistics have no domain '", name, "' (have: ", have, ")");
}

std::string config_sha256(const std::filesystem::path& model_dir) {
  auto p = model_dir / "config.json";
  if (!std::filesystem::exists(p)) fail(model_dir.string(), ": no config.json (needed to match profile statistics)");
  return sha256_file(p);
}

void check_stats_match(const ProfileStats& s, const model::ModelSpec& spec, const std::filesystem::path& model_dir) {
  auto where = [&] { return "profile statistics of " + s.model_path + " (" + s.model_type + ")"; };
  if (s.num_layers != spec.num_layers || s.experts != spec.routing.num_experts || s.top_k != spec.routing.top_k ||
      s.hidden != spec.hidden)
    fail(where(), " do not match ", model_dir.string(), ": stats have ", s.num_layers, " layers, ", s.experts,
         " experts, top-", s.top_k, ", hidden ", s.hidden, "; the model has ", spec.num_layers, " layers, ",
         spec.routing.num_experts, " experts, top-", spec.routing.top_k, ", hidden ", spec.hidden);
  const std::string h = config_sha256(model_dir);
  if (!s.config_sha256.empty() && h != s.config_sha256)
    fail(where(), " were made from another model: config.json sha256 ", s.config_sha256.substr(0, 12), "... but ",
         (model_dir / "config.json").string(), " has ", h.substr(0, 12), "... (re-run moec profile on this model)");
  for (auto& d : s.domains) {
    int i = 0;
    for (auto& L : d.layers) {
      while (i < spec.num_layers && !spec.moe_layer[size_t(i)]) ++i;
      if (i >= spec.num_layers || L.layer != i || L.experts != spec.routing.num_experts)
        fail(where(), ": domain '", d.name, "' layer ", L.layer, " is not MoE layer ", i, " of ", model_dir.string());
      ++i;
    }
    if (int(d.layers.size()) != spec.num_moe_layers())
      fail(where(), ": domain '", d.name, "' has ", d.layers.size(), " MoE layers, the model ", spec.num_moe_layers());
  }
}

}  // namespace moec::profile
