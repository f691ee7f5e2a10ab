// Expert clustering: k-means++ (Sub-MoE), agglomerative linkage (HC-SMoE), per-layer cluster budgets.
#include <algorithm>
#include <cmath>
#include <limits>
#include <numeric>

#include "core/error.h"
#include "merge/merge.h"
#include "merge/rng.h"

namespace moec::merge {
namespace {

Clusters canonical(const std::vector<int>& label, int k) {
  Clusters c(static_cast<size_t>(k));
  for (int i = 0; i < int(label.size()); ++i) c[size_t(label[size_t(i)])].push_back(i);
  std::erase_if(c, [](const std::vector<int>& v) { return v.empty(); });
  std::sort(c.begin(), c.end(), [](const auto& a, const auto& b) { return a.front() < b.front(); });
  return c;
}

struct KmeansRun {
  std::vector<int> label;
  double inertia = 0;
};

KmeansRun kmeans_once(const MatrixD& x, int k, Rng& rng, int max_iter) {
  const int n = int(x.rows());
  auto dist2 = [&](int i, const MatrixD& c, int j) { return (x.row(i) - c.row(j)).squaredNorm(); };

  // k-means++ seeding: each next center drawn with probability proportional to D².
  MatrixD centers(k, x.cols());
  std::vector<char> chosen(size_t(n), 0);
  int first = std::min(n - 1, int(rng.uniform() * n));
  centers.row(0) = x.row(first);
  chosen[size_t(first)] = 1;
  std::vector<double> d2(static_cast<size_t>(n));
  for (int i = 0; i < n; ++i) d2[size_t(i)] = dist2(i, centers, 0);
  for (int c = 1; c < k; ++c) {
    double total = 0;
    for (int i = 0; i < n; ++i) total += chosen[size_t(i)] ? 0.0 : d2[size_t(i)];
    int pick = -1;
    if (total > 0) {
      double target = rng.uniform() * total, cum = 0;
      for (int i = 0; i < n; ++i) {
        if (chosen[size_t(i)] || d2[size_t(i)] <= 0) continue;
        cum += d2[size_t(i)];
        pick = i;  // the last positive candidate absorbs rounding at the top end
        if (cum > target) break;
      }
    } else {  // all remaining points coincide with centers: take the lowest unused index
      for (int i = 0; i < n && pick < 0; ++i)
        if (!chosen[size_t(i)]) pick = i;
    }
    centers.row(c) = x.row(pick);
    chosen[size_t(pick)] = 1;
    for (int i = 0; i < n; ++i) d2[size_t(i)] = std::min(d2[size_t(i)], dist2(i, centers, c));
  }

  // Lloyd iterations.
  std::vector<int> label(size_t(n), -1);
  std::vector<double> best(static_cast<size_t>(n));
  for (int it = 0; it < max_iter; ++it) {
    bool changed = false;
    for (int i = 0; i < n; ++i) {
      int arg = 0;
      double bd = dist2(i, centers, 0);
      for (int c = 1; c < k; ++c) {
        double d = dist2(i, centers, c);
        if (d < bd) bd = d, arg = c;  // strict: ties keep the lower center index
      }
      changed |= label[size_t(i)] != arg;
      label[size_t(i)] = arg;
      best[size_t(i)] = bd;
    }
    // An empty cluster takes the point farthest from its center among clusters with >1 member.
    std::vector<int> size(size_t(k), 0);
    for (int l : label) ++size[size_t(l)];
    for (int c = 0; c < k; ++c) {
      if (size[size_t(c)] > 0) continue;
      int far = -1;
      for (int i = 0; i < n; ++i)
        if (size[size_t(label[size_t(i)])] > 1 && (far < 0 || best[size_t(i)] > best[size_t(far)])) far = i;
      --size[size_t(label[size_t(far)])];
      label[size_t(far)] = c;
      best[size_t(far)] = 0;
      size[size_t(c)] = 1;
      changed = true;
    }
    for (int c = 0; c < k; ++c) centers.row(c).setZero();
    for (int i = 0; i < n; ++i) centers.row(label[size_t(i)]) += x.row(i);
    for (int c = 0; c < k; ++c) centers.row(c) /= double(size[size_t(c)]);
    if (!changed) break;
  }
  KmeansRun r{label, 0};
  for (int i = 0; i < n; ++i) r.inertia += dist2(i, centers, label[size_t(i)]);
  return r;
}

}  // namespace

Clusters kmeans(const Matrix& points, int k, uint64_t seed, int restarts, int max_iter) {
  const int n = int(points.rows());
  if (n == 0) fail("kmeans: no points");
  if (k < 1 || k > n) fail("kmeans: k = ", k, " must be in [1, ", n, "] (number of experts)");
  if (!points.allFinite()) fail("kmeans: points contain non-finite values");
  const MatrixD x = points.cast<double>();
  Rng rng{seed};
  KmeansRun best;
  for (int r = 0; r < std::max(1, restarts); ++r) {
    KmeansRun run = kmeans_once(x, k, rng, std::max(1, max_iter));
    if (r == 0 || run.inertia < best.inertia) best = std::move(run);
  }
  return canonical(best.label, k);
}

Clusters agglomerative(const Matrix& similarity, int k, Linkage linkage) {
  const int n = int(similarity.rows());
  if (similarity.cols() != n) fail("agglomerative: similarity must be square, got ", n, "x", similarity.cols());
  if (k < 1 || k > n) fail("agglomerative: k = ", k, " must be in [1, ", n, "]");
  if (!similarity.allFinite()) fail("agglomerative: similarity contains non-finite values");
  // link(a, b) for active clusters a, b: the sum of pairwise similarities (Average), max (Single) or min
  // (Complete). Sums keep average linkage exact under merges: S(A∪B, C) = S(A, C) + S(B, C).
  MatrixD link(n, n);
  for (int i = 0; i < n; ++i)
    for (int j = 0; j < n; ++j)  // symmetrize so that a slightly asymmetric input cannot break ties oddly
      link(i, j) = 0.5 * (double(similarity(i, j)) + double(similarity(j, i)));
  std::vector<int> size(size_t(n), 1), label(static_cast<size_t>(n));
  std::iota(label.begin(), label.end(), 0);
  std::vector<char> active(size_t(n), 1);
  auto score = [&](int a, int b) {
    return linkage == Linkage::Average ? link(a, b) / (double(size[size_t(a)]) * size[size_t(b)]) : link(a, b);
  };
  // Cluster slot a always holds its smallest member as label (merges keep the lower slot), so scanning
  // slots in order breaks ties by the lowest member ids.
  for (int clusters = n; clusters > k; --clusters) {
    int ba = -1, bb = -1;
    double bs = -std::numeric_limits<double>::infinity();
    for (int a = 0; a < n; ++a) {
      if (!active[size_t(a)]) continue;
      for (int b = a + 1; b < n; ++b) {
        if (!active[size_t(b)]) continue;
        double s = score(a, b);
        if (ba < 0 || s > bs) bs = s, ba = a, bb = b;
      }
    }
    for (int c = 0; c < n; ++c) {
      if (!active[size_t(c)] || c == ba || c == bb) continue;
      double v = linkage == Linkage::Average ? link(ba, c) + link(bb, c)
                 : linkage == Linkage::Single ? std::max(link(ba, c), link(bb, c))
                                              : std::min(link(ba, c), link(bb, c));
      link(ba, c) = link(c, ba) = v;
    }
    size[size_t(ba)] += size[size_t(bb)];
    active[size_t(bb)] = 0;
    for (int& l : label)
      if (l == bb) l = ba;
  }
  return canonical(label, n);
}

Matrix cosine_similarity(const Matrix& features) {
  const MatrixD f = features.cast<double>();
  const Eigen::Index n = f.rows();
  Eigen::VectorXd norm = f.rowwise().norm();
  Matrix s(n, n);
  for (Eigen::Index i = 0; i < n; ++i)
    for (Eigen::Index j = 0; j < n; ++j) {
      if (i == j) s(i, j) = 1.0f;
      else if (norm(i) == 0 || norm(j) == 0) s(i, j) = 0.0f;
      else s(i, j) = float(f.row(i).dot(f.row(j)) / (norm(i) * norm(j)));
    }
  return s;
}

std::vector<int> dominant_members(const Clusters& clusters, std::span<const double> frequency) {
  std::vector<int> dom;
  for (size_t c = 0; c < clusters.size(); ++c) {
    if (clusters[c].empty()) fail("dominant_members: cluster ", c, " is empty");
    int best = -1;
    for (int e : clusters[c]) {
      if (e < 0 || size_t(e) >= frequency.size())
        fail("dominant_members: expert ", e, " of cluster ", c, " has no frequency (", frequency.size(), " given)");
      if (best < 0 || frequency[size_t(e)] > frequency[size_t(best)] ||
          (frequency[size_t(e)] == frequency[size_t(best)] && e < best))
        best = e;
    }
    dom.push_back(best);
  }
  return dom;
}

std::vector<int> allocate_clusters(std::span<const double> scores, int num_experts, double keep_ratio,
                                   int min_clusters) {
  const int L = int(scores.size());
  if (L == 0) return {};
  if (num_experts < 1) fail("allocate_clusters: num_experts = ", num_experts);
  if (!(keep_ratio > 0 && keep_ratio <= 1)) fail("allocate_clusters: keep ratio ", keep_ratio, " not in (0, 1]");
  min_clusters = std::clamp(min_clusters, 1, num_experts);
  for (int l = 0; l < L; ++l)
    if (!(scores[size_t(l)] >= 0) || !std::isfinite(scores[size_t(l)]))
      fail("allocate_clusters: score of layer ", l, " is ", scores[size_t(l)], " (must be finite, >= 0)");
  const long budget = std::clamp<long>(std::lround(keep_ratio * double(L) * num_experts), long(L) * min_clusters,
                                       long(L) * num_experts);
  // Real shares k_l = clamp(λ·s_l, min, E) with λ such that Σ k_l = budget (Σ is nondecreasing in λ:
  // bisection). Layers with a zero score stay at the minimum; all-zero scores split uniformly.
  double smax = 0;
  for (double s : scores) smax = std::max(smax, s);
  std::vector<double> unit(scores.begin(), scores.end());
  if (smax == 0) std::fill(unit.begin(), unit.end(), 1.0), smax = 1.0;
  auto shares = [&](double lambda) {
    std::vector<double> sh(static_cast<size_t>(L));
    for (int l = 0; l < L; ++l) sh[size_t(l)] = std::clamp(lambda * unit[size_t(l)], double(min_clusters), double(num_experts));
    return sh;
  };
  auto total = [&](double lambda) {
    double t = 0;
    for (double v : shares(lambda)) t += v;
    return t;
  };
  double lo = 0, hi = 1;
  while (total(hi) < double(budget) && hi < 1e300) {
    bool saturated = true;  // every positive-score layer at E: a larger λ changes nothing
    for (int l = 0; l < L; ++l) saturated &= unit[size_t(l)] == 0 || hi * unit[size_t(l)] >= num_experts;
    if (saturated) break;
    hi *= 2;
  }
  for (int it = 0; it < 200; ++it) {
    const double mid = 0.5 * (lo + hi);
    (total(mid) < double(budget) ? lo : hi) = mid;
  }
  const std::vector<double> share = shares(hi);
  // Largest remainder rounding, within [min_clusters, num_experts].
  std::vector<int> k(static_cast<size_t>(L));
  long used = 0;
  for (int l = 0; l < L; ++l) used += k[size_t(l)] = std::clamp(int(std::floor(share[size_t(l)] + 1e-9)), min_clusters, num_experts);
  std::vector<int> order(static_cast<size_t>(L));
  std::iota(order.begin(), order.end(), 0);
  std::stable_sort(order.begin(), order.end(), [&](int a, int b) {
    return share[size_t(a)] - k[size_t(a)] > share[size_t(b)] - k[size_t(b)];
  });
  // Raise the largest remainders first; (only through rounding slack) lower the smallest first.
  for (int pass = 0; used < budget && pass <= num_experts; ++pass)
    for (int l : order)
      if (used < budget && k[size_t(l)] < num_experts) ++k[size_t(l)], ++used;
  for (int pass = 0; used > budget && pass <= num_experts; ++pass)
    for (auto it = order.rbegin(); it != order.rend(); ++it)
      if (used > budget && k[size_t(*it)] > min_clusters) --k[size_t(*it)], --used;
  return k;
}

}  // namespace moec::merge
