// TEMPORARY: a minimal routing-statistics pass for the pruning criteria, used until `moec profile`
// (profile/profile.h, which writes the full stats.h5) is on main. Same definitions as profile/stats.h;
// fields the criteria do not use (coactivation, output similarity, logit moments) are left empty.
#include <cmath>

#include "core/error.h"
#include "core/files.h"
#include "model/forward.h"
#include "prune/prune.h"

namespace moec::prune {

namespace {
class StatsHooks final : public model::ForwardHooks {
 public:
  StatsHooks(const model::ModelSpec& spec, std::vector<profile::LayerStats>& layers) : spec_(spec), layers_(layers) {
    int i = 0;
    index_.assign(size_t(spec.num_layers), -1);
    for (int l = 0; l < spec.num_layers; ++l)
      if (spec.moe_layer[size_t(l)]) index_[size_t(l)] = i++;
  }
  void on_moe(int layer, const Matrix& x, const Matrix&, const model::Routing& r) override {
    auto& L = layers_[size_t(index_[size_t(layer)])];
    L.tokens += r.n;
    for (int t = 0; t < r.n; ++t) {
      ++L.top1[size_t(r.expert[size_t(t) * r.k])];
      for (int j = 0; j < r.k; ++j) {
        const size_t q = size_t(t) * r.k + j;
        ++L.selected[size_t(r.expert[q])];
        L.gate_mass[size_t(r.expert[q])] += r.weight[q];
      }
      for (int e = 0; e < L.experts; ++e) L.prob_sum[size_t(e)] += r.probs(t, e);
    }
    routing_ = r;
    slot_norm_.assign(size_t(r.n) * r.k, 0.0);
    routed_ = Matrix::Zero(r.n, x.cols());
  }
  bool want_expert_detail(int) const override { return true; }
  void on_expert(int layer, int e, const std::vector<int>& tokens, const Matrix&, const Matrix&, const Matrix& out) override {
    auto& L = layers_[size_t(index_[size_t(layer)])];
    const auto& r = routing_;
    for (size_t i = 0; i < tokens.size(); ++i) {
      const int t = tokens[i];
      int slot = 0;
      for (int j = 0; j < r.k; ++j)
        if (r.expert[size_t(t) * r.k + j] == e) slot = j;
      const size_t q = size_t(t) * r.k + slot;
      const double nrm = out.row(int64_t(i)).cast<double>().norm();
      slot_norm_[q] = nrm;
      routed_.row(t) += r.weight[q] * out.row(int64_t(i));
      L.act_norm_sum[size_t(e)] += nrm;
      L.reap_sum[size_t(e)] += r.weight[q] * nrm;
    }
  }
  // EASY-EP token weight s_t = 1 - cos(x_t, x_t + routed output), x_t the normalised MoE input.
  void on_moe_output(int layer, const Matrix& x, const Matrix&) override {
    if (!spec_.moe_layer[size_t(layer)]) return;
    auto& L = layers_[size_t(index_[size_t(layer)])];
    const auto& r = routing_;
    for (int t = 0; t < r.n; ++t) {
      const Eigen::VectorXd a = x.row(t).cast<double>().transpose();
      const Eigen::VectorXd b = a + routed_.row(t).cast<double>().transpose();
      const double den = a.norm() * b.norm();
      const double s = 1.0 - (den > 0 ? a.dot(b) / den : 1.0);
      for (int j = 0; j < r.k; ++j) {
        const size_t q = size_t(t) * r.k + j;
        L.easyep[size_t(r.expert[q])] += s * r.weight[q] * slot_norm_[q];
      }
    }
  }

 private:
  const model::ModelSpec& spec_;
  std::vector<profile::LayerStats>& layers_;
  std::vector<int> index_;
  model::Routing routing_;
  std::vector<double> slot_norm_;
  Matrix routed_;
};
}  // namespace

profile::ProfileStats collect_stats(const model::WeightSource& src, const fs::path& model_dir, const std::vector<int32_t>& tokens,
                                    const std::string& domain, int window, int64_t max_tokens) {
  const auto& spec = src.spec();
  model::check_tokens(tokens, spec.vocab, "statistics tokens (" + domain + ")");
  const int E = spec.routing.num_experts;
  profile::ProfileStats st;
  st.model_path = model_dir.string();
  st.model_type = spec.model_type;
  st.config_sha256 = sha256_file(model_dir / "config.json");
  st.num_layers = spec.num_layers;
  st.experts = E;
  st.top_k = spec.routing.top_k;
  st.hidden = spec.hidden;
  st.seq_len = window;
  profile::DomainStats d;
  d.name = domain;
  for (int l = 0; l < spec.num_layers; ++l) {
    if (!spec.moe_layer[size_t(l)]) continue;
    profile::LayerStats L;
    L.layer = l;
    L.experts = E;
    L.top_k = spec.routing.top_k;
    L.selected.assign(size_t(E), 0);
    L.top1.assign(size_t(E), 0);
    for (auto* v : {&L.gate_mass, &L.prob_sum, &L.easyep, &L.reap_sum, &L.act_norm_sum}) v->assign(size_t(E), 0.0);
    d.layers.push_back(std::move(L));
  }
  StatsHooks hooks(spec, d.layers);
  model::EvalOptions eo;
  eo.window = window;
  eo.max_tokens = max_tokens;
  eo.progress = true;
  auto r = model::evaluate(src, tokens, eo, &hooks);
  d.tokens = r.tokens_processed;
  profile::DomainStats total = d;
  total.name = "total";
  st.domains = {d, total};
  return st;
}

}  // namespace moec::prune
