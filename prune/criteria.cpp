// Expert importance scores from profile statistics, and the per-layer kept sets they imply.
#include <algorithm>
#include <numeric>

#include "core/error.h"
#include "prune/prune.h"

namespace moec::prune {

namespace {
struct Name {
  Criterion c;
  const char* name;
};
constexpr Name kNames[] = {{Criterion::Frequency, "frequency"}, {Criterion::GateMass, "gate-mass"},
                           {Criterion::Reap, "reap"},           {Criterion::EasyEp, "easyep"},
                           {Criterion::Ean, "ean"},             {Criterion::EanSum, "ean-sum"},
                           {Criterion::Reconstruct, "reconstruct"}};

// Sorted indices of the `keep` largest scores (ties: lower index first), returned ascending.
std::vector<int> top_indices(const std::vector<double>& s, int keep) {
  std::vector<int> idx(s.size());
  std::iota(idx.begin(), idx.end(), 0);
  std::stable_sort(idx.begin(), idx.end(), [&](int a, int b) { return s[size_t(a)] > s[size_t(b)]; });
  idx.resize(size_t(keep));
  std::sort(idx.begin(), idx.end());
  return idx;
}
}  // namespace

const char* criterion_name(Criterion c) {
  for (auto& n : kNames)
    if (n.c == c) return n.name;
  return "?";
}

std::string criterion_names() {
  std::string s;
  for (auto& n : kNames) s += (s.empty() ? "" : ", ") + std::string(n.name);
  return s;
}

Criterion parse_criterion(const std::string& s) {
  for (auto& n : kNames)
    if (s == n.name) return n.c;
  fail("unknown pruning method '", s, "' (expected one of: ", criterion_names(), ")");
}

std::vector<double> expert_scores(const profile::LayerStats& ls, Criterion c) {
  const int E = ls.experts;
  auto need = [&](const auto& v, const char* field) {
    if (int(v.size()) != E) fail("stats layer ", ls.layer, ": field '", field, "' has ", v.size(), " values for ", E, " experts");
  };
  need(ls.selected, "selected");
  std::vector<double> s(size_t(E), 0.0);
  // Means over routed tokens are 0 for an expert that was never routed (no evidence it is needed).
  auto per_routed = [&](const std::vector<double>& sum, const char* field) {
    need(sum, field);
    for (int e = 0; e < E; ++e) s[size_t(e)] = ls.selected[size_t(e)] > 0 ? sum[size_t(e)] / double(ls.selected[size_t(e)]) : 0.0;
  };
  switch (c) {
    case Criterion::Frequency:
      for (int e = 0; e < E; ++e) s[size_t(e)] = double(ls.selected[size_t(e)]);
      break;
    case Criterion::GateMass: need(ls.gate_mass, "gate_mass"), s = ls.gate_mass; break;
    case Criterion::EasyEp: need(ls.easyep, "easyep"), s = ls.easyep; break;
    case Criterion::Reap: per_routed(ls.reap_sum, "reap_sum"); break;
    case Criterion::Ean: per_routed(ls.act_norm_sum, "act_norm_sum"); break;
    case Criterion::EanSum: need(ls.act_norm_sum, "act_norm_sum"), s = ls.act_norm_sum; break;
    case Criterion::Reconstruct: fail("the reconstruct method has no per-expert score (it searches kept sets directly)");
  }
  for (int e = 0; e < E; ++e)
    if (!std::isfinite(s[size_t(e)]) || s[size_t(e)] < 0)
      fail("stats layer ", ls.layer, ": ", criterion_name(c), " score of expert ", e, " is ", s[size_t(e)], " (must be finite and >= 0)");
  return s;
}

std::vector<std::vector<double>> layer_scores(const profile::ProfileStats& st, Criterion c,
                                              const std::vector<std::string>& domains_in) {
  std::vector<std::string> domains = domains_in.empty() ? std::vector<std::string>{"total"} : domains_in;
  std::vector<std::vector<double>> out;
  for (const auto& dn : domains) {
    const profile::DomainStats* d = nullptr;
    for (const auto& x : st.domains)
      if (x.name == dn) d = &x;
    if (!d) {
      std::string have;
      for (const auto& x : st.domains) have += (have.empty() ? "" : ", ") + x.name;
      fail("stats have no domain '", dn, "' (domains: ", have, ")");
    }
    if (out.empty()) out.assign(d->layers.size(), {});
    if (d->layers.size() != out.size()) fail("stats domain '", dn, "' has ", d->layers.size(), " MoE layers, expected ", out.size());
    for (size_t l = 0; l < out.size(); ++l) {
      auto s = expert_scores(d->layers[l], c);
      const double sum = std::accumulate(s.begin(), s.end(), 0.0);
      if (out[l].empty()) out[l].assign(s.size(), 0.0);
      for (size_t e = 0; e < s.size(); ++e) out[l][e] += (sum > 0 ? s[e] / sum : 0.0) / double(domains.size());
    }
  }
  return out;
}

void check_stats_for_model(const profile::ProfileStats& s, const model::ModelSpec& spec, const std::string& config_sha256,
                           const std::string& name) {
  if (!s.config_sha256.empty() && s.config_sha256 != config_sha256)
    fail(name, ": statistics were made from another model (config.json SHA-256 ", s.config_sha256, ", this model's is ",
         config_sha256, ")");
  if (s.num_layers != spec.num_layers || s.experts != spec.routing.num_experts || s.top_k != spec.routing.top_k)
    fail(name, ": statistics describe ", s.num_layers, " layers of ", s.experts, " experts (top-", s.top_k, "), the model has ",
         spec.num_layers, " layers of ", spec.routing.num_experts, " experts (top-", spec.routing.top_k, ")");
  std::vector<int> moe;
  for (int l = 0; l < spec.num_layers; ++l)
    if (spec.moe_layer[size_t(l)]) moe.push_back(l);
  for (const auto& d : s.domains) {
    if (d.layers.size() != moe.size()) fail(name, ": domain '", d.name, "' has ", d.layers.size(), " MoE layers, the model has ", moe.size());
    for (size_t i = 0; i < moe.size(); ++i)
      if (d.layers[i].layer != moe[i] || d.layers[i].experts != spec.routing.num_experts)
        fail(name, ": domain '", d.name, "' entry ", i, " is layer ", d.layers[i].layer, " with ", d.layers[i].experts,
             " experts, the model's MoE layer ", i, " is layer ", moe[i], " with ", spec.routing.num_experts);
  }
}

int keep_count(int E, int keep, double ratio) {
  int k = keep;
  if (keep <= 0) {
    if (!(ratio > 0 && ratio < 1)) fail("--ratio must be in (0, 1) (the fraction of experts pruned), got ", ratio);
    k = E - int(std::lround(ratio * E));
  }
  if (k < 1 || k > E) fail("cannot keep ", k, " of ", E, " experts per layer (need 1..", E, ")");
  return k;
}

std::vector<std::vector<int>> select_uniform(const std::vector<std::vector<double>>& scores, int keep) {
  std::vector<std::vector<int>> out;
  for (const auto& s : scores) {
    if (keep < 1 || keep > int(s.size())) fail("cannot keep ", keep, " of ", s.size(), " experts");
    out.push_back(top_indices(s, keep));
  }
  return out;
}

std::vector<std::vector<int>> select_adaptive(const std::vector<std::vector<double>>& scores, int keep, int min_keep) {
  const size_t L = scores.size();
  std::vector<std::vector<int>> out(L);
  std::vector<std::vector<bool>> taken(L);
  struct Cand {
    double v;
    int l, e;
  };
  std::vector<Cand> rest;
  int64_t budget = int64_t(keep) * int64_t(L);
  for (size_t l = 0; l < L; ++l) {
    const auto& s = scores[l];
    const int E = int(s.size());
    if (keep < 1 || keep > E || min_keep > keep) fail("cannot keep ", keep, " (at least ", min_keep, ") of ", E, " experts");
    for (int e : top_indices(s, std::max(1, min_keep))) out[l].push_back(e);
    budget -= int64_t(out[l].size());
    const double sum = std::accumulate(s.begin(), s.end(), 0.0);
    for (int e = 0; e < E; ++e)
      if (!std::binary_search(out[l].begin(), out[l].end(), e)) rest.push_back({sum > 0 ? s[size_t(e)] / sum : 0.0, int(l), e});
  }
  std::stable_sort(rest.begin(), rest.end(), [](const Cand& a, const Cand& b) { return a.v > b.v; });
  for (size_t i = 0; i < rest.size() && budget > 0; ++i, --budget) out[size_t(rest[i].l)].push_back(rest[i].e);
  for (auto& k : out) std::sort(k.begin(), k.end());
  return out;
}

}  // namespace moec::prune
