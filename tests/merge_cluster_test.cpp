// Clustering: k-means++, agglomerative linkage (vs a naive from-scratch reference), cluster budgets.
#include <gtest/gtest.h>

#include <algorithm>
#include <numeric>
#include <random>

#include "core/error.h"
#include "merge/merge.h"

using namespace moec;
using namespace moec::merge;

namespace {

// Well-separated blobs in d dims, points shuffled; returns the points and the true clustering.
std::pair<Matrix, Clusters> blobs(const std::vector<int>& sizes, int d, unsigned seed) {
  std::mt19937 g(seed);
  std::normal_distribution<float> noise(0.f, 0.05f);
  int n = std::accumulate(sizes.begin(), sizes.end(), 0);
  std::vector<int> order(n);
  std::iota(order.begin(), order.end(), 0);
  std::shuffle(order.begin(), order.end(), g);
  Matrix x(n, d);
  Clusters truth(sizes.size());
  int p = 0;
  for (size_t c = 0; c < sizes.size(); ++c)
    for (int i = 0; i < sizes[c]; ++i, ++p) {
      int row = order[p];
      for (int j = 0; j < d; ++j) x(row, j) = (j == int(c) ? 10.f : 0.f) + noise(g);
      truth[c].push_back(row);
    }
  for (auto& t : truth) std::sort(t.begin(), t.end());
  std::sort(truth.begin(), truth.end(), [](auto& a, auto& b) { return a.front() < b.front(); });
  return {x, truth};
}

// Naive agglomerative reference: recompute every inter-cluster linkage from the original matrix.
Clusters naive_agglomerative(const Matrix& s, int k, Linkage link) {
  int n = int(s.rows());
  Clusters cl;
  for (int i = 0; i < n; ++i) cl.push_back({i});
  while (int(cl.size()) > k) {
    double best = -1e300;
    size_t ba = 0, bb = 0;
    for (size_t a = 0; a < cl.size(); ++a)
      for (size_t b = a + 1; b < cl.size(); ++b) {
        double sum = 0, mx = -1e300, mn = 1e300;
        for (int i : cl[a])
          for (int j : cl[b]) {
            double v = 0.5 * (double(s(i, j)) + double(s(j, i)));
            sum += v, mx = std::max(mx, v), mn = std::min(mn, v);
          }
        double v = link == Linkage::Average ? sum / double(cl[a].size() * cl[b].size())
                   : link == Linkage::Single ? mx : mn;
        if (v > best) best = v, ba = a, bb = b;
      }
    cl[ba].insert(cl[ba].end(), cl[bb].begin(), cl[bb].end());
    std::sort(cl[ba].begin(), cl[ba].end());
    cl.erase(cl.begin() + long(bb));
  }
  std::sort(cl.begin(), cl.end(), [](auto& a, auto& b) { return a.front() < b.front(); });
  return cl;
}

}  // namespace

TEST(MergeCluster, KmeansRecoversSeparatedBlobs) {
  for (unsigned seed = 0; seed < 5; ++seed) {
    auto [x, truth] = blobs({4, 5, 6}, 5, seed);
    EXPECT_EQ(kmeans(x, 3, seed), truth) << "seed " << seed;
  }
  auto [x, truth] = blobs({1, 7, 2, 3}, 6, 42);  // a singleton blob too
  EXPECT_EQ(kmeans(x, 4, 7), truth);
}

TEST(MergeCluster, KmeansEdgeCases) {
  auto [x, truth] = blobs({3, 3}, 3, 1);
  Clusters all = kmeans(x, 1, 0);
  ASSERT_EQ(all.size(), 1u);
  EXPECT_EQ(all[0].size(), 6u);
  Clusters single = kmeans(x, 6, 0);
  ASSERT_EQ(single.size(), 6u);
  for (int i = 0; i < 6; ++i) EXPECT_EQ(single[i], std::vector<int>{i});
  // All points identical: still k non-empty clusters covering every point once.
  Matrix same = Matrix::Ones(7, 4);
  Clusters c = kmeans(same, 3, 5);
  ASSERT_EQ(c.size(), 3u);
  std::vector<int> seen;
  for (auto& m : c) seen.insert(seen.end(), m.begin(), m.end());
  std::sort(seen.begin(), seen.end());
  EXPECT_EQ(seen, (std::vector<int>{0, 1, 2, 3, 4, 5, 6}));
  EXPECT_THROW(kmeans(x, 0, 0), Error);
  EXPECT_THROW(kmeans(x, 7, 0), Error);
}

TEST(MergeCluster, KmeansDeterministic) {
  std::mt19937 g(3);
  std::normal_distribution<float> nd;
  Matrix x(40, 7);
  for (int i = 0; i < x.size(); ++i) x.data()[i] = nd(g);  // no cluster structure: seeding matters
  for (uint64_t seed : {0ull, 1ull, 99ull}) EXPECT_EQ(kmeans(x, 6, seed), kmeans(x, 6, seed));
}

TEST(MergeCluster, AgglomerativeRecoversBlobs) {
  auto [x, truth] = blobs({3, 5, 2, 4}, 6, 11);
  for (Linkage l : {Linkage::Average, Linkage::Single, Linkage::Complete})
    EXPECT_EQ(agglomerative(cosine_similarity(x), 4, l), truth);
}

TEST(MergeCluster, AgglomerativeMatchesNaiveReference) {
  std::mt19937 g(8);
  std::uniform_real_distribution<float> u(-1.f, 1.f);
  for (int trial = 0; trial < 10; ++trial) {
    int n = 5 + trial;
    Matrix s(n, n);
    for (int i = 0; i < n; ++i)
      for (int j = 0; j <= i; ++j) s(i, j) = s(j, i) = (i == j) ? 1.f : u(g);
    for (int k = 1; k <= n; k += 2)
      for (Linkage l : {Linkage::Average, Linkage::Single, Linkage::Complete})
        EXPECT_EQ(agglomerative(s, k, l), naive_agglomerative(s, k, l)) << "n " << n << " k " << k;
  }
}

TEST(MergeCluster, CosineAndDominant) {
  Matrix f(3, 2);
  f << 1, 0, 2, 0, 0, 0;
  Matrix s = cosine_similarity(f);
  EXPECT_FLOAT_EQ(s(0, 1), 1.f);
  EXPECT_FLOAT_EQ(s(0, 2), 0.f);
  EXPECT_FLOAT_EQ(s(2, 2), 1.f);
  Clusters c = {{0, 2, 5}, {1, 3, 4}};
  std::vector<double> freq = {0.1, 0.3, 0.2, 0.3, 0.05, 0.05};
  EXPECT_EQ(dominant_members(c, freq), (std::vector<int>{2, 1}));  // tie 1 vs 3 -> lower id
}

TEST(MergeCluster, AllocateClusters) {
  // Proportional when nothing clamps: budget 12 split 1:1:2.
  std::vector<double> s1 = {1, 1, 2};
  EXPECT_EQ(allocate_clusters(s1, 8, 0.5), (std::vector<int>{3, 3, 6}));
  // Clamping at E and at the minimum; the budget is still met exactly.
  std::vector<double> s2 = {0.01, 1, 10};
  auto k2 = allocate_clusters(s2, 8, 0.5, 2);
  EXPECT_EQ(k2[2], 8);
  EXPECT_EQ(k2[0], 2);
  EXPECT_EQ(k2[0] + k2[1] + k2[2], 12);
  // All-zero scores: uniform; ratio 1 keeps everything.
  std::vector<double> z = {0, 0, 0, 0};
  EXPECT_EQ(allocate_clusters(z, 8, 0.25), (std::vector<int>{2, 2, 2, 2}));
  EXPECT_EQ(allocate_clusters(s1, 8, 1.0), (std::vector<int>{8, 8, 8}));
  // Random scores: always sums to the budget and stays in range; monotone in the score.
  std::mt19937 g(2);
  std::uniform_real_distribution<double> u(0, 1);
  for (int t = 0; t < 50; ++t) {
    std::vector<double> s(7);
    for (auto& v : s) v = u(g);
    double ratio = 0.1 + 0.8 * u(g);
    auto k = allocate_clusters(s, 16, ratio, 1);
    long sum = 0;
    for (int l = 0; l < 7; ++l) {
      sum += k[l];
      EXPECT_GE(k[l], 1);
      EXPECT_LE(k[l], 16);
      for (int m = 0; m < 7; ++m)
        if (s[l] > s[m]) {
          EXPECT_GE(k[l] + 1, k[m]);  // rounding may cost one
        }
    }
    EXPECT_EQ(sum, std::lround(ratio * 7 * 16));
  }
  EXPECT_THROW(allocate_clusters(s1, 8, 0.0), Error);
  std::vector<double> bad = {1, -1};
  EXPECT_THROW(allocate_clusters(bad, 8, 0.5), Error);
}
