// Reconstruction-based selection (NAEE-style): per MoE layer, the kept set whose MoE output, with
// routing re-run over the kept experts, is closest to the full layer's output on calibration tokens.
#include <algorithm>
#include <cmath>
#include <functional>

#include "core/error.h"
#include "core/progress.h"
#include "model/forward.h"
#include "model/linear.h"
#include "prune/prune.h"

namespace moec::prune {

namespace {

// sum_j w_j * outputs[e_j].row(t) for every token.
Matrix combine(const model::Routing& r, const std::vector<Matrix>& outputs, int64_t hidden) {
  Matrix y = Matrix::Zero(r.n, hidden);
#pragma omp parallel for schedule(static)
  for (int t = 0; t < r.n; ++t)
    for (int j = 0; j < r.k; ++j)
      y.row(t) += r.weight[size_t(t) * r.k + j] * outputs[size_t(r.expert[size_t(t) * r.k + j])].row(t);
  return y;
}

// The shared expert's contribution (Qwen2-MoE style, optionally gated); zero when there is none.
Matrix shared_output(const model::WeightSource& src, int l, const Matrix& x) {
  const auto& s = src.spec();
  Matrix act, out = Matrix::Zero(x.rows(), s.hidden);
  if (s.shared_intermediate <= 0) return out;
  model::Forward::swiglu(*src.linear(s.shared_expert(l, model::Proj::Gate)), *src.linear(s.shared_expert(l, model::Proj::Up)),
                         *src.linear(s.shared_expert(l, model::Proj::Down)), x, act, out);
  if (s.shared_expert_gate) {
    Matrix sg = src.matrix(s.shared_gate(l));  // 1 x H
    Eigen::VectorXf gate = (x * sg.transpose()).col(0);
    for (int64_t t = 0; t < x.rows(); ++t) out.row(t) *= 1.0f / (1.0f + std::exp(-gate[t]));
  }
  return out;
}

using Chooser = std::function<std::vector<int>(size_t moe_index, const Matrix& logits, const std::vector<Matrix>& outputs,
                                               const Matrix& reference, const float* bias, std::string& how)>;

// Runs the calibration tokens layer by layer; at each MoE layer every expert is run on every token
// (routing changes once experts are removed, so any expert may receive any token), `choose` picks the
// kept set, and the next layer sees either the pruned output (sequential) or the original one.
CalibResult run_layers(const model::WeightSource& src, const std::vector<int32_t>& tokens, const CalibOptions& opt,
                       const Chooser& choose) {
  const auto& s = src.spec();
  const int T = opt.window;
  if (T < 1) fail("calibration window must be positive");
  int64_t n = int64_t(tokens.size());
  if (opt.max_tokens > 0) n = std::min(n, opt.max_tokens);
  n = n / T * T;
  if (n == 0) fail("calibration needs at least one window of ", T, " tokens (", tokens.size(), " given)");
  model::check_tokens(tokens, s.vocab, "calibration tokens");
  const int E = s.routing.num_experts;
  model::Forward fwd(src);
  Matrix h = fwd.embed(tokens.data(), n);
  CalibResult res;
  Progress prog("prune-calib", long(s.num_layers), "layers");
  for (int l = 0; l < s.num_layers; ++l) {
    model::LayerWeights w = fwd.load_layer(l);
    fwd.attention(l, w, h, T);
    Matrix x = fwd.moe_input(w, h);
    if (!s.moe_layer[size_t(l)]) {
      h += fwd.moe(l, w, x);
      continue;
    }
    Matrix logits;
    model::gemm_nt(x, w.router, logits);
    const float* bias = w.router_bias.size() ? w.router_bias.data() : nullptr;
    std::vector<Matrix> outputs(static_cast<size_t>(E));
    Matrix act;
    for (int e = 0; e < E; ++e) {
      const std::string g = s.expert(l, e, model::Proj::Gate), u = s.expert(l, e, model::Proj::Up), d = s.expert(l, e, model::Proj::Down);
      model::Forward::swiglu(*src.linear(g), *src.linear(u), *src.linear(d), x, act, outputs[size_t(e)]);
      for (auto& nm : {g, u, d}) src.release(nm);
    }
    const Matrix reference = combine(model::route(logits, s.routing, bias), outputs, s.hidden);
    std::string how;
    std::vector<int> keep = choose(res.keep.size(), logits, outputs, reference, bias, how);
    res.error.push_back(subset_error(logits, outputs, keep, s.routing, reference, bias));
    res.keep.push_back(keep);
    res.search.push_back(how);
    Matrix y = opt.sequential ? combine(route_subset(logits, keep, s.routing, bias), outputs, s.hidden) : reference;
    h += y + shared_output(src, l, x);
    if (opt.progress) prog.update(l + 1, "layer " + std::to_string(l) + " error " + std::to_string(res.error.back()));
  }
  if (opt.progress) prog.finish();
  return res;
}

double binomial(int n, int k) {
  double c = 1;
  for (int i = 1; i <= k; ++i) c = c * double(n - k + i) / double(i);
  return c;
}

}  // namespace

double subset_error(const Matrix& logits, const std::vector<Matrix>& outputs, const std::vector<int>& keep,
                    const model::RoutingSpec& r, const Matrix& reference, const float* bias) {
  const model::Routing rs = route_subset(logits, keep, r, bias);
  double num = 0, den = 0;
#pragma omp parallel for reduction(+ : num, den) schedule(static)
  for (int t = 0; t < rs.n; ++t) {
    Eigen::RowVectorXf d = -reference.row(t);
    for (int j = 0; j < rs.k; ++j) d += rs.weight[size_t(t) * rs.k + j] * outputs[size_t(rs.expert[size_t(t) * rs.k + j])].row(t);
    num += double(d.squaredNorm());
    den += double(reference.row(t).squaredNorm());
  }
  return den > 0 ? num / den : (num > 0 ? INFINITY : 0.0);
}

CalibResult reconstruct(const model::WeightSource& src, const std::vector<int32_t>& tokens, const CalibOptions& opt) {
  const auto& s = src.spec();
  const int E = s.routing.num_experts, K = opt.keep;
  if (K < 1 || K > E) fail("reconstruct: cannot keep ", K, " of ", E, " experts");
  const bool exhaustive = binomial(E, K) <= double(opt.exhaustive_limit);
  auto choose = [&](size_t, const Matrix& logits, const std::vector<Matrix>& out, const Matrix& ref, const float* bias,
                    std::string& how) {
    auto err = [&](const std::vector<int>& keep) { return subset_error(logits, out, keep, s.routing, ref, bias); };
    std::vector<int> best;
    if (exhaustive) {
      // Every K-subset in lexicographic order; the first of equal errors wins.
      std::vector<int> cur(static_cast<size_t>(K));
      for (int i = 0; i < K; ++i) cur[size_t(i)] = i;
      double best_err = INFINITY;
      int64_t count = 0;
      while (true) {
        ++count;
        const double e = err(cur);
        if (e < best_err || best.empty()) best_err = e, best = cur;
        int i = K - 1;
        while (i >= 0 && cur[size_t(i)] == E - K + i) --i;
        if (i < 0) break;
        ++cur[size_t(i)];
        for (int j = i + 1; j < K; ++j) cur[size_t(j)] = cur[size_t(j - 1)] + 1;
      }
      how = "exhaustive over " + std::to_string(count) + " subsets";
    } else {
      // Backward elimination: repeatedly drop the expert whose removal hurts least (ties: lower id).
      best.resize(size_t(E));
      for (int e = 0; e < E; ++e) best[size_t(e)] = e;
      while (int(best.size()) > K) {
        size_t drop = 0;
        double drop_err = INFINITY;
        for (size_t i = 0; i < best.size(); ++i) {
          std::vector<int> cand = best;
          cand.erase(cand.begin() + int64_t(i));
          const double e = err(cand);
          if (e < drop_err) drop_err = e, drop = i;
        }
        best.erase(best.begin() + int64_t(drop));
      }
      how = "greedy backward elimination";
    }
    return best;
  };
  return run_layers(src, tokens, opt, choose);
}

CalibResult measure_error(const model::WeightSource& src, const std::vector<int32_t>& tokens,
                          const std::vector<std::vector<int>>& keep, const CalibOptions& opt) {
  if (int(keep.size()) != src.spec().num_moe_layers())
    fail("measure_error: ", keep.size(), " kept sets for ", src.spec().num_moe_layers(), " MoE layers");
  auto choose = [&](size_t i, const Matrix&, const std::vector<Matrix>&, const Matrix&, const float*, std::string& how) {
    how = "fixed";
    return keep[i];
  };
  return run_layers(src, tokens, opt, choose);
}

}  // namespace moec::prune
