// Merging math: subspace (Sub-MoE) merge vs closed forms, averaging baselines, M-SMoE, router rows.
#include <gtest/gtest.h>

#include <cmath>
#include <cstring>
#include <numeric>
#include <random>

#include "core/error.h"
#include "merge/merge.h"
#include "support/test_util.h"

using namespace moec;
using namespace moec::merge;

namespace {

using test::randn;

Expert random_expert(int I, int H, std::mt19937& g) { return {randn(I, H, g), randn(I, H, g), randn(H, I, g)}; }

float rel(const Matrix& a, const Matrix& b) { return (a - b).norm() / std::max(b.norm(), 1e-30f); }

// Matrix with prescribed singular values: Q1 diag(s) Q2ᵀ with random orthonormal Q1, Q2.
Matrix with_spectrum(int m, int n, const std::vector<double>& s, std::mt19937& g) {
  auto orth = [&](int rows, int cols) {
    Eigen::HouseholderQR<MatrixD> qr(randn(rows, cols, g).cast<double>());
    return MatrixD(qr.householderQ() * MatrixD::Identity(rows, cols));
  };
  const int p = int(s.size());
  MatrixD a = orth(m, p) * Eigen::Map<const Eigen::VectorXd>(s.data(), p).asDiagonal() * orth(n, p).transpose();
  return a.cast<float>();
}

// Correlation XᵀX / n of random correlated inputs.
Matrix correlation(int d, std::mt19937& g) {
  Matrix mix = randn(d, d, g) + 3.f * Matrix::Identity(d, d);
  Matrix x = randn(4 * d, d, g) * mix;
  return x.transpose() * x / float(4 * d);
}

bool same_bytes(const Matrix& a, const Matrix& b) {
  return a.rows() == b.rows() && a.cols() == b.cols() &&
         std::memcmp(a.data(), b.data(), sizeof(float) * size_t(a.size())) == 0;
}

}  // namespace

TEST(MergeSubspace, SvdMatchesEigen) {
  std::mt19937 g(1);
  for (auto [m, n] : {std::pair{13, 29}, std::pair{40, 7}, std::pair{1, 5}, std::pair{6, 1}}) {
    Matrix a = randn(m, n, g);
    Eigen::JacobiSVD<MatrixD> ref(a.cast<double>());
    for (bool dp : {false, true}) {
      SubspaceOptions o;
      o.double_precision = dp;
      Svd s = svd_thin(a, 0, o);
      ASSERT_EQ(int(s.s.size()), std::min(m, n));
      for (size_t j = 0; j < s.s.size(); ++j) EXPECT_NEAR(s.s[j], ref.singularValues()(Eigen::Index(j)), 1e-4 * ref.singularValues()(0));
      MatrixD back = s.u * Eigen::Map<Eigen::VectorXd>(s.s.data(), Eigen::Index(s.s.size())).asDiagonal() * s.vt;
      EXPECT_LT(rel(back.cast<float>(), a), dp ? 1e-6f : 1e-5f);
    }
  }
}

TEST(MergeSubspace, RandomizedSvdFindsTopSpectrum) {
  std::mt19937 g(2);
  std::vector<double> s;
  for (int j = 0; j < 60; ++j) s.push_back(j < 8 ? 100.0 / (j + 1) : 0.01);
  Matrix a = with_spectrum(120, 90, s, g);
  SubspaceOptions o;
  o.svd = SvdMethod::Randomized;
  o.seed = 3;
  Svd r = svd_thin(a, 8, o);
  ASSERT_EQ(r.s.size(), 8u);
  for (int j = 0; j < 8; ++j) EXPECT_NEAR(r.s[size_t(j)], s[size_t(j)], 1e-3 * s[0]);
  Svd r2 = svd_thin(a, 8, o);  // deterministic given the seed
  EXPECT_EQ(r.s, r2.s);
  EXPECT_THROW(svd_thin(a, 0, o), Error);
}

TEST(MergeSubspace, FullRankReconstructsEveryMember) {
  std::mt19937 g(3);
  const int out = 20, in = 9, k = 3;
  std::vector<Matrix> w;
  for (int i = 0; i < k; ++i) w.push_back(randn(out, in, g));
  std::vector<const Matrix*> ptr = {&w[0], &w[1], &w[2]};
  std::vector<double> f = {0.5, 0.2, 0.3};
  std::vector<Matrix> corr = {correlation(in, g), correlation(in, g), correlation(in, g)};
  for (int whiten = 0; whiten < 3; ++whiten) {  // none, pooled, per member
    std::vector<const Matrix*> c;
    if (whiten == 1) c = {&corr[0]};
    if (whiten == 2) c = {&corr[0], &corr[1], &corr[2]};
    for (bool dp : {false, true}) {
      SubspaceOptions o;
      o.double_precision = dp;
      SubspaceResult r = subspace_merge(ptr, f, o, c);
      EXPECT_EQ(r.rank, std::min(out, k * in));
      EXPECT_NEAR(r.energy_kept, 1.0, 1e-12);
      ASSERT_EQ(r.v_members.size(), size_t(k));
      for (int i = 0; i < k; ++i) EXPECT_LT(rel(r.us * r.v_members[size_t(i)], w[size_t(i)]), 1e-4f) << "member " << i;
      // Closed form: at full rank U Σ Σ_i f_i V_iᵀ = Σ_i f_i W_i (the frequency-weighted average).
      Matrix avg = 0.5f * w[0] + 0.2f * w[1] + 0.3f * w[2];
      EXPECT_LT(rel(r.merged, avg), 1e-4f);
      EXPECT_LT(rel(r.us * r.v_merged, r.merged), 1e-5f);
    }
  }
}

TEST(MergeSubspace, TruncationFollowsEckartYoung) {
  std::mt19937 g(4);
  const int out = 24, in = 10;
  std::vector<Matrix> w = {randn(out, in, g), randn(out, in, g)};
  std::vector<const Matrix*> ptr = {&w[0], &w[1]};
  std::vector<double> f = {1, 3};
  Matrix a(out, 2 * in);
  a << w[0], w[1];
  Eigen::JacobiSVD<MatrixD> ref(a.cast<double>());
  Eigen::VectorXd sv = ref.singularValues();
  for (int r : {1, 5, 13}) {
    SubspaceOptions o;
    o.rank = r;
    SubspaceResult res = subspace_merge(ptr, f, o);
    EXPECT_EQ(res.rank, r);
    EXPECT_NEAR(res.energy_kept, sv.head(r).squaredNorm() / sv.squaredNorm(), 1e-5);
    // The reconstructed concatenation is the best rank-r approximation: error² = Σ_{j>=r} σ_j².
    Matrix rec(out, 2 * in);
    rec << res.us * res.v_members[0], res.us * res.v_members[1];
    EXPECT_NEAR((a - rec).squaredNorm(), sv.tail(sv.size() - r).squaredNorm(), 1e-3 * sv.squaredNorm());
    EXPECT_LT(rel(res.merged, res.us * (0.25f * res.v_members[0] + 0.75f * res.v_members[1])), 1e-5f);
  }
}

TEST(MergeSubspace, EnergyThresholdPicksSmallestRank) {
  std::mt19937 g(5);
  std::vector<double> s = {10, 5, 3, 2, 1, 0.5};
  Matrix w = with_spectrum(16, 8, s, g);
  double total = 0;
  for (double v : s) total += v * v;
  for (double e : {0.5, 0.7, 0.9, 0.99, 0.999}) {
    int expect = 0;
    double cum = 0;
    while (cum < e * total) cum += s[size_t(expect)] * s[size_t(expect)], ++expect;
    SubspaceOptions o;
    o.energy = e;
    SubspaceResult r = subspace_merge({&w}, std::vector<double>{1.0}, o);
    EXPECT_EQ(r.rank, expect) << "energy " << e;
    EXPECT_GE(r.energy_kept, e);
  }
}

TEST(MergeSubspace, WhiteningMinimizesOutputError) {
  // With C = XᵀX/n, whitening makes the rank-r truncation optimal for ||(W - Ŵ) Xᵀ||: it must not be worse
  // than plain truncation on that metric (and plain must not be worse on the plain Frobenius norm).
  std::mt19937 g(6);
  const int out = 30, in = 20;
  Matrix w = randn(out, in, g);
  Matrix c = correlation(in, g);
  auto out_err = [&](const Matrix& d) { return double((d * c * d.transpose()).trace()); };
  SubspaceOptions o;
  o.rank = 6;
  o.whiten_damp = 1e-6;
  SubspaceResult plain = subspace_merge({&w}, std::vector<double>{1.0}, o);
  SubspaceResult white = subspace_merge({&w}, std::vector<double>{1.0}, o, {&c});
  EXPECT_LT(out_err(w - white.merged), out_err(w - plain.merged));
  EXPECT_LT((w - plain.merged).squaredNorm(), (w - white.merged).squaredNorm());
}

TEST(MergeSubspace, RejectsBadInput) {
  std::mt19937 g(7);
  Matrix a = randn(4, 3, g), b = randn(4, 5, g), c = randn(3, 3, g);
  EXPECT_THROW(subspace_merge({&a, &b}, std::vector<double>{1, 1}), Error);
  EXPECT_THROW(subspace_merge({&a}, std::vector<double>{1, 1}), Error);
  EXPECT_THROW(subspace_merge({&a}, std::vector<double>{-1}), Error);
  Matrix bad = -Matrix::Identity(3, 3);
  EXPECT_THROW(subspace_merge({&a}, std::vector<double>{1}, {}, {&bad}), Error);
  EXPECT_THROW(subspace_merge({&a}, std::vector<double>{1}, {}, {&c, &c}), Error);
}

TEST(MergeCluster, IdenticalExpertsMergeToThemselves) {
  std::mt19937 g(8);
  Expert e = random_expert(37, 23, g);  // odd widths, I > H
  std::vector<const Expert*> members = {&e, &e, &e};
  std::vector<double> f = {0.2, 0.5, 0.3};
  Matrix ch = correlation(23, g), ci = correlation(37, g), act = randn(64, 37, g);
  std::vector<ExpertStats> stats(3, ExpertStats{&ch, &ci, &act});
  for (MergeMethod m : {MergeMethod::Average, MergeMethod::FrequencyAverage, MergeMethod::MSmoe, MergeMethod::Subspace})
    for (int variant = 0; variant < 3; ++variant) {
      MergeOptions o;
      o.method = m;
      o.align_for_subspace = variant == 2;
      std::span<const ExpertStats> st = variant >= 1 ? std::span<const ExpertStats>(stats) : std::span<const ExpertStats>();
      MergedExpert r = merge_cluster(members, f, 1, o, st);
      EXPECT_LT(rel(r.weights.gate, e.gate), 1e-5f) << to_string(m) << " variant " << variant;
      EXPECT_LT(rel(r.weights.up, e.up), 1e-5f) << to_string(m) << " variant " << variant;
      EXPECT_LT(rel(r.weights.down, e.down), 1e-5f) << to_string(m) << " variant " << variant;
    }
}

TEST(MergeCluster, MSmoeUndoesPermutationWhereAveragingCannot) {
  std::mt19937 g(9);
  const int I = 40, H = 12;
  Expert ref = random_expert(I, H, g);
  std::vector<int> p(static_cast<size_t>(I));
  std::iota(p.begin(), p.end(), 0);
  std::shuffle(p.begin(), p.end(), g);
  Expert other = permute_neurons(ref, p);
  other.gate += randn(I, H, g, 0.05f);
  other.up += randn(I, H, g, 0.05f);
  other.down += randn(H, I, g, 0.05f);
  std::vector<const Expert*> members = {&other, &ref};
  std::vector<double> f = {0.5, 0.5};
  MergeOptions ms;
  ms.method = MergeMethod::MSmoe;
  MergedExpert a = merge_cluster(members, f, 1, ms);
  EXPECT_LT(rel(a.weights.gate, ref.gate), 0.05f);
  EXPECT_LT(rel(a.weights.down, ref.down), 0.05f);
  MergeOptions avg;
  avg.method = MergeMethod::Average;
  MergedExpert b = merge_cluster(members, f, 1, avg);
  EXPECT_GT(rel(b.weights.gate, ref.gate), 0.5f);
}

TEST(MergeCluster, FrequencyWeightsAndFactors) {
  std::mt19937 g(10);
  Expert a = random_expert(8, 6, g), b = random_expert(8, 6, g);
  std::vector<const Expert*> members = {&a, &b};
  std::vector<double> f = {30, 10};
  MergeOptions o;
  o.method = MergeMethod::FrequencyAverage;
  MergedExpert r = merge_cluster(members, f, 0, o);
  EXPECT_LT(rel(r.weights.up, 0.75f * a.up + 0.25f * b.up), 1e-6f);
  o.method = MergeMethod::Average;
  r = merge_cluster(members, f, 0, o);
  EXPECT_LT(rel(r.weights.up, 0.5f * a.up + 0.5f * b.up), 1e-6f);
  std::vector<double> zero = {0, 0};  // never routed: plain average
  o.method = MergeMethod::FrequencyAverage;
  r = merge_cluster(members, zero, 0, o);
  EXPECT_LT(rel(r.weights.up, 0.5f * a.up + 0.5f * b.up), 1e-6f);
  o.method = MergeMethod::Subspace;
  o.subspace.rank = 3;
  r = merge_cluster(members, f, 0, o);
  EXPECT_EQ(r.rank, (std::array<int, 3>{3, 3, 3}));
  EXPECT_EQ(r.factors[2].us.rows(), 6);
  EXPECT_EQ(r.factors[2].v_merged.cols(), 8);
  EXPECT_LT(rel(r.factors[0].us * r.factors[0].v_merged, r.weights.gate), 1e-5f);
  EXPECT_THROW(merge_cluster(members, f, 2, o), Error);
}

TEST(MergeCluster, DominantGateUpKeepsTheDominantsFeatures) {
  std::mt19937 g(12);
  Expert a = random_expert(8, 6, g), b = random_expert(8, 6, g);
  std::vector<const Expert*> members = {&a, &b};
  std::vector<double> f = {10, 30};
  MergeOptions o;
  o.dominant_gate_up = true;
  o.align_for_subspace = true;
  const MergedExpert r = merge_cluster(members, f, 1, o);
  EXPECT_TRUE(same_bytes(r.weights.gate, b.gate));
  EXPECT_TRUE(same_bytes(r.weights.up, b.up));
  EXPECT_EQ(r.rank[0], 0);  // gate/up not factored
  EXPECT_EQ(r.rank[1], 0);
  EXPECT_GT(r.rank[2], 0);
  // down: the full-rank subspace merge of the aligned members = their frequency-weighted average.
  const Expert a_aligned = permute_neurons(a, align_neurons(b, a));
  EXPECT_LT(rel(r.weights.down, 0.25f * a_aligned.down + 0.75f * b.down), 1e-5f);
}

TEST(MergeCluster, Deterministic) {
  std::mt19937 g(11);
  Expert a = random_expert(19, 11, g), b = random_expert(19, 11, g), c = random_expert(19, 11, g);
  std::vector<const Expert*> members = {&a, &b, &c};
  std::vector<double> f = {1, 2, 3};
  for (SvdMethod svd : {SvdMethod::Exact, SvdMethod::Randomized}) {
    MergeOptions o;
    o.subspace.rank = 5;
    o.subspace.svd = svd;
    o.align_for_subspace = true;
    MergedExpert r1 = merge_cluster(members, f, 2, o), r2 = merge_cluster(members, f, 2, o);
    EXPECT_TRUE(same_bytes(r1.weights.gate, r2.weights.gate));
    EXPECT_TRUE(same_bytes(r1.weights.down, r2.weights.down));
    EXPECT_TRUE(same_bytes(r1.factors[1].us, r2.factors[1].us));
  }
}

TEST(MergeRouter, DominantAndFrequencyWeighted) {
  std::mt19937 g(12);
  Matrix router = randn(6, 5, g);
  std::vector<double> freq = {1, 2, 3, 4, 5, 6};
  std::vector<int> members = {1, 4};
  Vector d = merge_router_row(router, members, freq, 4, RouterMerge::Dominant);
  EXPECT_TRUE(d.isApprox(router.row(4).transpose()));
  Vector w = merge_router_row(router, members, freq, 4, RouterMerge::FrequencyWeighted);
  Vector expect = (2.f * router.row(1) + 5.f * router.row(4)).transpose() / 7.f;
  EXPECT_LT((w - expect).norm(), 1e-6f);
  Clusters cl = {{0, 2}, {1, 4}, {3, 5}};
  std::vector<int> dom = dominant_members(cl, freq);
  Matrix m = merge_router(router, cl, dom, freq, RouterMerge::Dominant);
  ASSERT_EQ(m.rows(), 3);
  EXPECT_TRUE(m.row(2).isApprox(router.row(5)));
  EXPECT_THROW(merge_router_row(router, members, freq, 2, RouterMerge::Dominant), Error);
  std::vector<int> out_of_range = {1, 6};
  EXPECT_THROW(merge_router_row(router, out_of_range, freq, 1, RouterMerge::FrequencyWeighted), Error);
}
