// Linear assignment vs brute force; M-SMoE neuron alignment recovers known permutations.
#include <gtest/gtest.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <numeric>
#include <random>

#include "core/error.h"
#include "merge/merge.h"
#include "support/test_util.h"

using namespace moec;
using namespace moec::merge;

namespace {

double cost_of(const MatrixD& c, const std::vector<int>& a) {
  double s = 0;
  for (size_t i = 0; i < a.size(); ++i) s += c(Eigen::Index(i), a[i]);
  return s;
}

// Minimum over all injections rows -> columns (n <= m), by enumerating permutations of the columns.
double brute_force(const MatrixD& c) {
  std::vector<int> cols(size_t(c.cols()));
  std::iota(cols.begin(), cols.end(), 0);
  double best = 1e300;
  do {
    best = std::min(best, cost_of(c, std::vector<int>(cols.begin(), cols.begin() + c.rows())));
  } while (std::next_permutation(cols.begin(), cols.end()));
  return best;
}

void expect_injective(const std::vector<int>& a, int m) {
  std::vector<char> seen(size_t(m), 0);
  for (int j : a) {
    ASSERT_GE(j, 0);
    ASSERT_LT(j, m);
    ASSERT_FALSE(seen[size_t(j)]) << "column " << j << " used twice";
    seen[size_t(j)] = 1;
  }
}

using test::randn;

Expert random_expert(int I, int H, std::mt19937& g) { return {randn(I, H, g), randn(I, H, g), randn(H, I, g)}; }

std::vector<int> random_perm(int n, std::mt19937& g) {
  std::vector<int> p(static_cast<size_t>(n));
  std::iota(p.begin(), p.end(), 0);
  std::shuffle(p.begin(), p.end(), g);
  return p;
}

Matrix silu_glu(const Expert& e, const Matrix& x) {  // intermediate activations [n x I]
  Matrix g = x * e.gate.transpose(), u = x * e.up.transpose();
  return g.unaryExpr([](float v) { return v / (1.f + std::exp(-v)); }).cwiseProduct(u);
}

}  // namespace

TEST(MergeAssign, MatchesBruteForce) {
  std::mt19937 g(1);
  std::uniform_real_distribution<double> u(-5, 5);
  std::uniform_int_distribution<int> small(0, 3);  // many ties
  for (int trial = 0; trial < 300; ++trial) {
    int n = 1 + trial % 7, m = n + (trial / 7) % 2;
    MatrixD c(n, m);
    for (Eigen::Index i = 0; i < c.size(); ++i) c.data()[i] = trial % 3 == 0 ? double(small(g)) : u(g);
    std::vector<int> a = linear_assignment(c);
    ASSERT_EQ(int(a.size()), n);
    expect_injective(a, m);
    EXPECT_NEAR(cost_of(c, a), brute_force(c), 1e-9) << "trial " << trial << " n " << n << " m " << m;
    std::vector<int> b = linear_assignment_max(c);
    EXPECT_NEAR(cost_of(c, b), -brute_force(-c), 1e-9);
  }
  EXPECT_THROW(linear_assignment(MatrixD::Zero(3, 2)), Error);
}

TEST(MergeAssign, RecoversPlantedPermutationAtScale) {
  // Cost = distance to a planted permutation: the unique optimum is that permutation.
  std::mt19937 g(5);
  const int n = 300;
  std::vector<int> p = random_perm(n, g);
  std::uniform_real_distribution<double> u(1, 2);
  MatrixD c(n, n);
  for (int i = 0; i < n; ++i)
    for (int j = 0; j < n; ++j) c(i, j) = j == p[size_t(i)] ? 0.0 : u(g);
  EXPECT_EQ(linear_assignment(c), p);
}

TEST(MergeAssign, AlignRecoversPermutationFromWeights) {
  std::mt19937 g(7);
  for (int I : {17, 64, 200}) {
    const int H = 24;
    Expert ref = random_expert(I, H, g);
    std::vector<int> p = random_perm(I, g);
    Expert member = permute_neurons(ref, p);  // member neuron j = ref neuron p[j]
    member.gate += randn(I, H, g, 0.1f);
    member.up += randn(I, H, g, 0.1f);
    member.down += randn(H, I, g, 0.1f);
    std::vector<int> q = align_neurons(ref, member);  // ref neuron j ~ member neuron q[j]
    for (int j = 0; j < I; ++j) ASSERT_EQ(p[size_t(q[size_t(j)])], j) << "I " << I << " neuron " << j;
    Expert back = permute_neurons(member, q);
    EXPECT_LT((back.gate - ref.gate).norm(), 0.2f * std::sqrt(float(I * H)));
  }
}

TEST(MergeAssign, AlignRecoversPermutationFromActivations) {
  std::mt19937 g(9);
  const int I = 48, H = 16, n = 256;
  Expert ref = random_expert(I, H, g);
  std::vector<int> p = random_perm(I, g);
  Matrix x = randn(n, H, g);
  Matrix act_ref = silu_glu(ref, x);
  Matrix act_mem(n, I);
  for (int j = 0; j < I; ++j) act_mem.col(j) = act_ref.col(p[size_t(j)]);
  act_mem += randn(n, I, g, 0.05f);
  // Weights deliberately unrelated: only the activations carry the match.
  Expert member = random_expert(I, H, g);
  std::vector<int> q = align_neurons(ref, member, &act_ref, &act_mem);
  for (int j = 0; j < I; ++j) ASSERT_EQ(p[size_t(q[size_t(j)])], j);
  EXPECT_THROW(align_neurons(ref, member, &act_ref, nullptr), Error);
}

TEST(MergeAssign, PermutationPreservesExpertFunction) {
  std::mt19937 g(11);
  Expert e = random_expert(33, 10, g);
  Expert pe = permute_neurons(e, random_perm(33, g));
  Matrix x = randn(5, 10, g);
  Matrix y = silu_glu(e, x) * e.down.transpose(), py = silu_glu(pe, x) * pe.down.transpose();
  EXPECT_LT((y - py).norm(), 1e-4f * y.norm());
  std::vector<int> bad(33, 0);
  EXPECT_THROW(permute_neurons(e, bad), Error);
}

// Timing for the docs (not an assertion beyond finishing): width 512 on 2 cores takes well under a second.
TEST(MergeAssign, AlignWidth512IsFast) {
  std::mt19937 g(13);
  Expert ref = random_expert(512, 64, g);
  std::vector<int> p = random_perm(512, g);
  Expert member = permute_neurons(ref, p);
  auto t0 = std::chrono::steady_clock::now();
  std::vector<int> q = align_neurons(ref, member);
  double ms = std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t0).count();
  for (int j = 0; j < 512; ++j) ASSERT_EQ(p[size_t(q[size_t(j)])], j);
  RecordProperty("align_512_ms", std::to_string(ms));
  std::printf("align_neurons I=512 H=64: %.1f ms\n", ms);
}
