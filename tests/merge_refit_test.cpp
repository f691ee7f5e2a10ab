// Calibration refit of merged layers (merge/refit.cpp): the ridge solve against an independent QR solve of
// the augmented least-squares system, the down-projection refit against naively built features, a
// one-member cluster recovering its own down projection, block coordinate descent converging to the joint
// solve, the router refit recovering a known router, cluster logits against brute force, determinism.
#include <gtest/gtest.h>

#include <cmath>
#include <cstring>
#include <random>

#include "core/error.h"
#include "merge/merge.h"
#include "support/test_util.h"

using namespace moec;
using namespace moec::merge;

namespace {

using test::randn;

Expert random_expert(int I, int H, std::mt19937& g) {
  return {randn(I, H, g, 0.5f), randn(I, H, g, 0.5f), randn(H, I, g, 0.5f)};
}

double rel(const MatrixD& a, const MatrixD& b) { return (a - b).norm() / std::max(b.norm(), 1e-300); }

bool same_bytes(const Matrix& a, const Matrix& b) {
  return a.rows() == b.rows() && a.cols() == b.cols() &&
         std::memcmp(a.data(), b.data(), sizeof(float) * size_t(a.size())) == 0;
}

// Independent reference for min ||Y − B Zᵀ||² + λ ||B − B0||²: ordinary least squares on the stacked system
// [Z; √λ I] Bᵀ = [Y; √λ B0ᵀ], solved by column-pivoted Householder QR (never forms ZᵀZ).
MatrixD ridge_reference(const MatrixD& Z, const MatrixD& Y, double lambda, const MatrixD& B0) {
  const auto n = Z.rows(), d = Z.cols(), m = Y.cols();
  MatrixD A(n + d, d), R(n + d, m);
  A.topRows(n) = Z;
  A.bottomRows(d) = std::sqrt(lambda) * MatrixD::Identity(d, d);
  R.topRows(n) = Y;
  R.bottomRows(d) = std::sqrt(lambda) * B0.transpose();
  return A.colPivHouseholderQr().solve(R).transpose();
}

// Naive SwiGLU activations in double, one scalar at a time.
MatrixD naive_act(const Expert& e, const Matrix& x) {
  MatrixD h(x.rows(), e.gate.rows());
  for (Eigen::Index t = 0; t < x.rows(); ++t)
    for (Eigen::Index j = 0; j < e.gate.rows(); ++j) {
      double g = 0, u = 0;
      for (Eigen::Index i = 0; i < x.cols(); ++i) {
        g += double(e.gate(j, i)) * double(x(t, i));
        u += double(e.up(j, i)) * double(x(t, i));
      }
      h(t, j) = g / (1 + std::exp(-g)) * u;
    }
  return h;
}

// A random top-k routing over K experts (distinct experts per token, positive weights).
model::Routing random_routing(int n, int K, int k, std::mt19937& g) {
  model::Routing r;
  r.n = n;
  r.k = k;
  std::uniform_real_distribution<float> w(0.1f, 1.0f);
  for (int t = 0; t < n; ++t) {
    std::vector<int> ids(static_cast<size_t>(K));
    for (int e = 0; e < K; ++e) ids[size_t(e)] = e;
    std::shuffle(ids.begin(), ids.end(), g);
    for (int j = 0; j < k; ++j) {
      r.expert.push_back(ids[size_t(j)]);
      r.weight.push_back(w(g));
    }
  }
  return r;
}

// Features Z [n x K·I] of the joint problem, built naively: block c of row t = Σ_j [c_tj = c] w_tj h_c(x_t).
MatrixD naive_features(const std::vector<Expert>& ex, const model::Routing& r, const Matrix& x) {
  const auto I = ex[0].gate.rows();
  MatrixD z = MatrixD::Zero(x.rows(), Eigen::Index(ex.size()) * I);
  std::vector<MatrixD> h;
  for (const Expert& e : ex) h.push_back(naive_act(e, x));
  for (int t = 0; t < r.n; ++t)
    for (int j = 0; j < r.k; ++j) {
      const int c = r.expert[size_t(t * r.k + j)];
      z.block(t, c * I, 1, I) += double(r.weight[size_t(t * r.k + j)]) * h[size_t(c)].row(t);
    }
  return z;
}

MatrixD stacked_downs(const std::vector<Expert>& ex) {
  const auto I = ex[0].gate.rows(), H = ex[0].down.rows();
  MatrixD b(H, Eigen::Index(ex.size()) * I);
  for (size_t c = 0; c < ex.size(); ++c) b.middleCols(Eigen::Index(c) * I, I) = ex[c].down.cast<double>();
  return b;
}

TEST(MergeRefit, RidgeSolveMatchesQrReference) {
  std::mt19937 g(1);
  const MatrixD Z = randn(300, 20, g).cast<double>(), Y = randn(300, 5, g).cast<double>(),
                B0 = randn(5, 20, g).cast<double>();
  const MatrixD zz = Z.transpose() * Z, yz = Y.transpose() * Z;
  const double damp = 0.1, lambda = damp * zz.diagonal().mean();
  EXPECT_LT(rel(ridge_solve(zz, yz, damp, B0), ridge_reference(Z, Y, lambda, B0)), 1e-10);
  EXPECT_LT(rel(ridge_solve(zz, yz, damp), ridge_reference(Z, Y, lambda, MatrixD::Zero(5, 20))), 1e-10);
  // Noise-free full-rank data and no damping: the generating matrix exactly.
  const MatrixD B = randn(5, 20, g).cast<double>(), Yx = Z * B.transpose();
  EXPECT_LT(rel(ridge_solve(zz, Yx.transpose() * Z, 0.0), B), 1e-10);
  // A huge damping returns the prior.
  EXPECT_LT(rel(ridge_solve(zz, yz, 1e12, B0), B0), 1e-8);
}

TEST(MergeRefit, RidgeSolveRejectsBadInput) {
  const MatrixD zz = MatrixD::Identity(4, 4), yz = MatrixD::Ones(2, 4);
  EXPECT_THROW(ridge_solve(MatrixD::Identity(4, 3), yz, 0.1), Error);
  EXPECT_THROW(ridge_solve(zz, MatrixD::Ones(2, 3), 0.1), Error);
  EXPECT_THROW(ridge_solve(zz, yz, -1.0), Error);
  EXPECT_THROW(ridge_solve(zz, yz, 0.1, MatrixD::Ones(3, 4)), Error);
  MatrixD bad = zz;
  bad(1, 1) = NAN;
  EXPECT_THROW(ridge_solve(bad, yz, 0.1), Error);
  // Rank-deficient statistics without damping: not positive definite.
  MatrixD deficient = MatrixD::Zero(4, 4);
  deficient(0, 0) = 1;
  EXPECT_THROW(ridge_solve(deficient, yz, 0.0), Error);
  EXPECT_NO_THROW(ridge_solve(deficient, yz, 1e-3));
}

TEST(MergeRefit, RoutedOutputMatchesNaive) {
  std::mt19937 g(2);
  std::vector<Expert> ex = {random_expert(6, 5, g), random_expert(6, 5, g), random_expert(6, 5, g)};
  const Matrix x = randn(40, 5, g);
  const model::Routing r = random_routing(40, 3, 2, g);
  const MatrixD want = naive_features(ex, r, x) * stacked_downs(ex).transpose();
  EXPECT_LT(rel(routed_output(ex, r, x).cast<double>(), want), 1e-5);
  for (int e = 0; e < 3; ++e)
    EXPECT_LT(rel(expert_activations(ex[size_t(e)], x).cast<double>(), naive_act(ex[size_t(e)], x)), 1e-5);
}

TEST(MergeRefit, SingleMemberClusterRecoversItsDownProjection) {
  std::mt19937 g(3);
  const int I = 16, H = 8, n = 400;
  const Expert member = random_expert(I, H, g);
  const Matrix x = randn(n, H, g);
  // One expert, top-1, arbitrary positive gate weights: the target is what the member produced.
  model::Routing r;
  r.n = n;
  r.k = 1;
  std::uniform_real_distribution<float> w(0.2f, 1.0f);
  for (int t = 0; t < n; ++t) r.expert.push_back(0), r.weight.push_back(w(g));
  MatrixD target = naive_act(member, x) * member.down.cast<double>().transpose();
  for (int t = 0; t < n; ++t) target.row(t) *= double(r.weight[size_t(t)]);
  // The "merged" expert has the member's gate/up and an unrelated down projection.
  std::vector<Expert> merged = {{member.gate, member.up, randn(H, I, g)}};
  RefitOptions opt;
  opt.damp = 1e-10;
  const RefitReport rep = refit_down(merged, r, x, target.cast<float>(), opt);
  EXPECT_LT(rel(merged[0].down.cast<double>(), member.down.cast<double>()), 1e-3);
  EXPECT_GT(rep.error_before, 0.5);
  EXPECT_LT(rep.error_after, 1e-7);
  EXPECT_TRUE(same_bytes(merged[0].gate, member.gate));
  EXPECT_TRUE(same_bytes(merged[0].up, member.up));
}

struct JointCase {
  std::vector<Expert> ex;
  Matrix x, target;
  model::Routing r;
  explicit JointCase(unsigned seed, int K = 3, int I = 6, int H = 5, int n = 200) {
    std::mt19937 g(seed);
    for (int c = 0; c < K; ++c) ex.push_back(random_expert(I, H, g));
    x = randn(n, H, g);
    target = randn(n, H, g);
    r = random_routing(n, K, 2, g);
  }
};

TEST(MergeRefit, JointRefitMatchesNaiveNormalEquations) {
  JointCase jc(4);
  const MatrixD Z = naive_features(jc.ex, jc.r, jc.x), Y = jc.target.cast<double>(), B0 = stacked_downs(jc.ex);
  RefitOptions opt;
  opt.damp = 0.05;
  opt.chunk = 37;  // several chunks, the last one partial
  const double lambda = opt.damp * (Z.transpose() * Z).diagonal().mean();
  const MatrixD want = ridge_reference(Z, Y, lambda, B0);
  std::vector<Expert> got = jc.ex;
  const RefitReport rep = refit_down(got, jc.r, jc.x, jc.target, opt);
  EXPECT_LT(rel(stacked_downs(got), want), 1e-4);
  const double yy = Y.squaredNorm();
  EXPECT_NEAR(rep.error_before, (Y - Z * B0.transpose()).squaredNorm() / yy, 1e-5);
  EXPECT_NEAR(rep.error_after, (Y - Z * want.transpose()).squaredNorm() / yy, 1e-5);
  EXPECT_LT(rep.error_after, rep.error_before);
  for (size_t c = 0; c < got.size(); ++c) {
    EXPECT_TRUE(same_bytes(got[c].gate, jc.ex[c].gate));
    EXPECT_TRUE(same_bytes(got[c].up, jc.ex[c].up));
  }
}

TEST(MergeRefit, BlockCoordinateDescentConvergesToTheJointSolve) {
  JointCase jc(5);
  RefitOptions joint;
  joint.damp = 0.05;
  std::vector<Expert> a = jc.ex, b = jc.ex, c1 = jc.ex;
  const RefitReport ra = refit_down(a, jc.r, jc.x, jc.target, joint);
  RefitOptions bcd = joint;
  bcd.max_joint = 0;
  bcd.sweeps = 300;
  bcd.chunk = 50;
  const RefitReport rb = refit_down(b, jc.r, jc.x, jc.target, bcd);
  EXPECT_LT(rel(stacked_downs(b), stacked_downs(a)), 1e-4);
  EXPECT_NEAR(rb.error_before, ra.error_before, 1e-5);
  EXPECT_NEAR(rb.error_after, ra.error_after, 1e-5);
  // One sweep already lowers the error (each block step is an exact minimization).
  bcd.sweeps = 1;
  const RefitReport rc = refit_down(c1, jc.r, jc.x, jc.target, bcd);
  EXPECT_LT(rc.error_after, rc.error_before);
  EXPECT_GE(rc.error_after, ra.error_after - 1e-6);
}

TEST(MergeRefit, RefitIsDeterministic) {
  JointCase jc(6);
  for (int64_t max_joint : {int64_t(8192), int64_t(0)}) {
    RefitOptions opt;
    opt.max_joint = max_joint;
    std::vector<Expert> a = jc.ex, b = jc.ex;
    refit_down(a, jc.r, jc.x, jc.target, opt);
    refit_down(b, jc.r, jc.x, jc.target, opt);
    for (size_t c = 0; c < a.size(); ++c) EXPECT_TRUE(same_bytes(a[c].down, b[c].down)) << max_joint;
  }
  std::mt19937 g(7);
  const Matrix w0 = randn(3, 5, g), t = randn(200, 3, g);
  EXPECT_TRUE(same_bytes(refit_router(w0, jc.x, t, 1e-3), refit_router(w0, jc.x, t, 1e-3)));
}

TEST(MergeRefit, RefitDownRejectsBadInput) {
  JointCase jc(8);
  std::vector<Expert> ex = jc.ex;
  EXPECT_THROW(refit_down(ex, jc.r, jc.x.leftCols(4), jc.target), Error);
  EXPECT_THROW(refit_down(ex, jc.r, jc.x, jc.target.topRows(10)), Error);
  model::Routing bad = jc.r;
  bad.expert[3] = 7;
  EXPECT_THROW(refit_down(ex, bad, jc.x, jc.target), Error);
  std::vector<Expert> mixed = ex;
  mixed[1].down = Matrix::Zero(5, 7);
  EXPECT_THROW(refit_down(mixed, jc.r, jc.x, jc.target), Error);
  RefitOptions o;
  o.damp = -1;
  EXPECT_THROW(refit_down(ex, jc.r, jc.x, jc.target, o), Error);
}

TEST(MergeRefit, RouterRefitRecoversAKnownRouter) {
  std::mt19937 g(9);
  const Matrix x = randn(300, 10, g), w_true = randn(3, 10, g), w0 = randn(3, 10, g);
  const Matrix target = x * w_true.transpose();
  EXPECT_LT(rel(refit_router(w0, x, target, 1e-12).cast<double>(), w_true.cast<double>()), 1e-4);
  // Heavy damping keeps the merged router.
  EXPECT_LT(rel(refit_router(w0, x, target, 1e9).cast<double>(), w0.cast<double>()), 1e-6);
  EXPECT_THROW(refit_router(w0, x, target.leftCols(2), 1e-3), Error);
  EXPECT_THROW(refit_router(w0, x.leftCols(9), target, 1e-3), Error);
}

TEST(MergeRefit, ClusterLogitsMatchBruteForce) {
  std::mt19937 g(10);
  const Matrix logits = randn(50, 6, g, 2.f);
  const Clusters cl = {{0, 3}, {1}, {2, 4, 5}};
  const Matrix mx = cluster_logits(logits, cl, ClusterLogit::Max);
  const Matrix lse = cluster_logits(logits, cl, ClusterLogit::LogSumExp);
  for (Eigen::Index t = 0; t < logits.rows(); ++t) {
    // Softmax over the log-sum-exp cluster logits = the members' summed softmax probabilities.
    Eigen::VectorXd p = logits.row(t).cast<double>().transpose().array().exp();
    p /= p.sum();
    Eigen::VectorXd q = lse.row(t).cast<double>().transpose().array().exp();
    q /= q.sum();
    for (size_t c = 0; c < cl.size(); ++c) {
      double sum = 0, best = -INFINITY;
      for (int e : cl[c]) sum += p[e], best = std::max(best, double(logits(t, e)));
      EXPECT_NEAR(q[Eigen::Index(c)], sum, 1e-6);
      EXPECT_EQ(double(mx(t, Eigen::Index(c))), best);
    }
    EXPECT_EQ(mx(t, 1), logits(t, 1));
    EXPECT_NEAR(lse(t, 1), logits(t, 1), 1e-6);
  }
  EXPECT_THROW(cluster_logits(logits, {{0, 3}, {3}}), Error);
  EXPECT_THROW(cluster_logits(logits, {{0, 9}}), Error);
  EXPECT_THROW(cluster_logits(logits, {{}}), Error);
}

}  // namespace
