// Averaging baselines, M-SMoE neuron alignment, whole-expert merging and router rows.
#include <algorithm>
#include <cmath>

#include "core/error.h"
#include "merge/merge.h"

namespace moec::merge {

std::vector<double> normalize_weights(std::span<const double> weights, size_t count, const char* what) {
  if (weights.size() != count) fail(what, ": ", weights.size(), " weights for ", count, " members");
  double sum = 0;
  for (size_t i = 0; i < count; ++i) {
    if (!std::isfinite(weights[i]) || weights[i] < 0) fail(what, ": weight ", i, " is ", weights[i]);
    sum += weights[i];
  }
  std::vector<double> w(count, 1.0 / double(count));  // never-routed members: plain average
  if (sum > 0)
    for (size_t i = 0; i < count; ++i) w[i] = weights[i] / sum;
  return w;
}

Matrix weighted_average(const std::vector<const Matrix*>& members, std::span<const double> weights) {
  if (members.empty()) fail("weighted average: no members");
  const std::vector<double> w = normalize_weights(weights, members.size(), "weighted average");
  MatrixD acc = MatrixD::Zero(members[0]->rows(), members[0]->cols());
  for (size_t i = 0; i < members.size(); ++i) {
    if (members[i]->rows() != acc.rows() || members[i]->cols() != acc.cols())
      fail("weighted average: member ", i, " is ", members[i]->rows(), "x", members[i]->cols(), ", member 0 is ",
           acc.rows(), "x", acc.cols());
    acc += w[i] * members[i]->cast<double>();
  }
  return acc.cast<float>();
}

namespace {

void check_expert(const Expert& e, const char* what) {
  const auto I = e.gate.rows(), H = e.gate.cols();
  if (e.up.rows() != I || e.up.cols() != H || e.down.rows() != H || e.down.cols() != I)
    fail(what, ": inconsistent expert shapes gate ", e.gate.rows(), "x", e.gate.cols(), ", up ", e.up.rows(), "x",
         e.up.cols(), ", down ", e.down.rows(), "x", e.down.cols(), " (need gate/up [I x H], down [H x I])");
}

// Per-neuron feature rows [I x F]: weights [gate row | up row | down column], or centred unit-norm
// activation columns (so that dot products are Pearson correlations).
MatrixD neuron_features(const Expert& e, const Matrix* act) {
  const auto I = e.gate.rows(), H = e.gate.cols();
  if (act) {
    if (act->cols() != I) fail("align neurons: activations have ", act->cols(), " columns, expert width is ", I);
    MatrixD f = act->cast<double>().transpose();  // [I x n]
    f.colwise() -= f.rowwise().mean();
    for (Eigen::Index j = 0; j < I; ++j) {
      double nrm = f.row(j).norm();
      if (nrm > 0) f.row(j) /= nrm;
    }
    return f;
  }
  MatrixD f(I, 3 * H);
  f.leftCols(H) = e.gate.cast<double>();
  f.middleCols(H, H) = e.up.cast<double>();
  f.rightCols(H) = e.down.transpose().cast<double>();
  return f;
}

}  // namespace

std::vector<int> align_neurons(const Expert& reference, const Expert& member, const Matrix* reference_act,
                               const Matrix* member_act) {
  check_expert(reference, "align neurons (reference)");
  check_expert(member, "align neurons (member)");
  if (reference.gate.rows() != member.gate.rows() || reference.gate.cols() != member.gate.cols())
    fail("align neurons: reference is ", reference.gate.rows(), "x", reference.gate.cols(), ", member is ",
         member.gate.rows(), "x", member.gate.cols());
  if ((reference_act == nullptr) != (member_act == nullptr))
    fail("align neurons: give activations for both experts or for neither");
  if (reference_act && reference_act->rows() != member_act->rows())
    fail("align neurons: activations on ", reference_act->rows(), " vs ", member_act->rows(), " tokens");
  // score(j, p) = <f_ref(j), f_member(p)>; maximizing the sum = minimizing Σ ||f_ref(j) - f_member(perm j)||²
  // (the squared norms do not depend on the permutation).
  const MatrixD score = neuron_features(reference, reference_act) * neuron_features(member, member_act).transpose();
  return linear_assignment_max(score);
}

Expert permute_neurons(const Expert& e, std::span<const int> perm) {
  check_expert(e, "permute neurons");
  const int I = int(e.gate.rows());
  if (int(perm.size()) != I) fail("permute neurons: permutation of ", perm.size(), " for width ", I);
  std::vector<char> seen(size_t(I), 0);
  Expert out{Matrix(e.gate.rows(), e.gate.cols()), Matrix(e.up.rows(), e.up.cols()),
             Matrix(e.down.rows(), e.down.cols())};
  for (int j = 0; j < I; ++j) {
    const int p = perm[size_t(j)];
    if (p < 0 || p >= I || seen[size_t(p)]) fail("permute neurons: entry ", j, " = ", p, " is not a permutation");
    seen[size_t(p)] = 1;
    out.gate.row(j) = e.gate.row(p);
    out.up.row(j) = e.up.row(p);
    out.down.col(j) = e.down.col(p);
  }
  return out;
}

MergedExpert merge_cluster(const std::vector<const Expert*>& members, std::span<const double> frequency,
                           int dominant, const MergeOptions& opt, std::span<const ExpertStats> stats) {
  const size_t k = members.size();
  if (k == 0) fail("merge cluster: no members");
  if (dominant < 0 || size_t(dominant) >= k) fail("merge cluster: dominant position ", dominant, " of ", k, " members");
  if (!stats.empty() && stats.size() != k) fail("merge cluster: ", stats.size(), " stats for ", k, " members");
  for (size_t i = 0; i < k; ++i) {
    check_expert(*members[i], "merge cluster");
    if (members[i]->gate.rows() != members[0]->gate.rows() || members[i]->gate.cols() != members[0]->gate.cols())
      fail("merge cluster: member ", i, " has shape ", members[i]->gate.rows(), "x", members[i]->gate.cols(),
           ", member 0 has ", members[0]->gate.rows(), "x", members[0]->gate.cols());
  }
  const std::vector<double> freq = normalize_weights(frequency, k, "merge cluster");
  const bool align = opt.method == MergeMethod::MSmoe || (opt.method == MergeMethod::Subspace && opt.align_for_subspace);

  // Aligned copies (permuted to the dominant member's neuron order) where alignment is asked for.
  std::vector<Expert> aligned;
  std::vector<Matrix> inter_corr;  // permuted intermediate correlations, to stay consistent with `aligned`
  std::vector<const Expert*> use = members;
  if (align) {
    const Expert& ref = *members[size_t(dominant)];
    const Matrix* ref_act = stats.empty() ? nullptr : stats[size_t(dominant)].activations;
    aligned.reserve(k);
    inter_corr.resize(k);
    for (size_t i = 0; i < k; ++i) {
      std::vector<int> perm(size_t(ref.gate.rows()));
      for (size_t j = 0; j < perm.size(); ++j) perm[j] = int(j);
      if (int(i) != dominant) {
        const Matrix* act = stats.empty() ? nullptr : stats[i].activations;
        perm = align_neurons(ref, *members[i], act ? ref_act : nullptr, ref_act ? act : nullptr);
      }
      aligned.push_back(permute_neurons(*members[i], perm));
      if (!stats.empty() && stats[i].inter_corr) {
        const Matrix& c = *stats[i].inter_corr;
        Matrix pc(c.rows(), c.cols());
        for (size_t a = 0; a < perm.size(); ++a)
          for (size_t b = 0; b < perm.size(); ++b) pc(Eigen::Index(a), Eigen::Index(b)) = c(perm[a], perm[b]);
        inter_corr[i] = std::move(pc);
      }
    }
    for (size_t i = 0; i < k; ++i) use[i] = &aligned[i];
  }

  MergedExpert out;
  auto gather = [&](Matrix Expert::*m) {
    std::vector<const Matrix*> v;
    for (const Expert* e : use) v.push_back(&(e->*m));
    return v;
  };
  if (opt.method == MergeMethod::Subspace) {
    std::vector<const Matrix*> hidden, inter;
    const bool all_hidden = !stats.empty() && std::all_of(stats.begin(), stats.end(), [](auto& s) { return s.hidden_corr; });
    const bool all_inter = !stats.empty() && std::all_of(stats.begin(), stats.end(), [](auto& s) { return s.inter_corr; });
    for (size_t i = 0; all_hidden && i < k; ++i) hidden.push_back(stats[i].hidden_corr);
    for (size_t i = 0; all_inter && i < k; ++i) inter.push_back(align ? &inter_corr[i] : stats[i].inter_corr);
    Matrix Expert::*mats[3] = {&Expert::gate, &Expert::up, &Expert::down};
    // dominant_gate_up: gate/up are the dominant member's own (rank 0 = not factored), only down is merged.
    for (int t = opt.dominant_gate_up ? 2 : 0; t < 3; ++t) {
      out.factors[size_t(t)] = subspace_merge(gather(mats[t]), freq, opt.subspace, t < 2 ? hidden : inter);
      out.rank[size_t(t)] = out.factors[size_t(t)].rank;
      out.energy[size_t(t)] = out.factors[size_t(t)].energy_kept;
    }
    if (opt.dominant_gate_up)
      out.weights = {use[size_t(dominant)]->gate, use[size_t(dominant)]->up, out.factors[2].merged};
    else
      out.weights = {out.factors[0].merged, out.factors[1].merged, out.factors[2].merged};
    return out;
  }
  const std::vector<double> w = opt.method == MergeMethod::Average ? std::vector<double>(k, 1.0) : freq;
  out.weights = {weighted_average(gather(&Expert::gate), w), weighted_average(gather(&Expert::up), w),
                 weighted_average(gather(&Expert::down), w)};
  return out;
}

Vector merge_router_row(const Matrix& router, std::span<const int> members, std::span<const double> frequency,
                        int dominant, RouterMerge how) {
  if (members.empty()) fail("merge router: empty cluster");
  for (int e : members)
    if (e < 0 || e >= router.rows()) fail("merge router: expert ", e, " but the router has ", router.rows(), " rows");
  if (how == RouterMerge::Dominant) {
    if (std::find(members.begin(), members.end(), dominant) == members.end())
      fail("merge router: dominant expert ", dominant, " is not a member of its cluster");
    return router.row(dominant).transpose();
  }
  std::vector<double> f;
  for (int e : members) {
    if (size_t(e) >= frequency.size()) fail("merge router: no frequency for expert ", e);
    f.push_back(frequency[size_t(e)]);
  }
  const std::vector<double> w = normalize_weights(f, f.size(), "merge router");
  Eigen::VectorXd acc = Eigen::VectorXd::Zero(router.cols());
  for (size_t i = 0; i < members.size(); ++i) acc += w[i] * router.row(members[i]).transpose().cast<double>();
  return acc.cast<float>();
}

Matrix merge_router(const Matrix& router, const Clusters& clusters, std::span<const int> dominant,
                    std::span<const double> frequency, RouterMerge how) {
  if (dominant.size() != clusters.size())
    fail("merge router: ", dominant.size(), " dominant members for ", clusters.size(), " clusters");
  Matrix out(Eigen::Index(clusters.size()), router.cols());
  for (size_t c = 0; c < clusters.size(); ++c)
    out.row(Eigen::Index(c)) = merge_router_row(router, clusters[c], frequency, dominant[c], how).transpose();
  return out;
}

}  // namespace moec::merge
