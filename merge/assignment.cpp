// Linear assignment by shortest augmenting paths (the Jonker-Volgenant / Hungarian family).
//
// Rows are added one at a time; for each new row a Dijkstra search over columns on the reduced costs
// c(i, j) - u(i) - v(j) >= 0 finds the cheapest augmenting path to a free column, then the duals are
// updated so reduced costs stay non-negative and the matching is flipped along the path. Each search is
// O(n m) (the "remaining columns" list is scanned once per step), so O(n^2 m) in total, with early exit as
// soon as a free column is the closest one — on typical cost matrices far fewer than m steps.
#include <cmath>
#include <limits>

#include "core/error.h"
#include "merge/merge.h"

namespace moec::merge {

std::vector<int> linear_assignment(const MatrixD& cost) {
  const int n = int(cost.rows()), m = int(cost.cols());
  if (n > m) fail("linear_assignment: ", n, " rows but only ", m, " columns");
  if (!cost.allFinite()) fail("linear_assignment: cost matrix contains non-finite values");
  const double inf = std::numeric_limits<double>::infinity();
  // Dual feasible start: u(i) = row minimum, v = 0.
  std::vector<double> u(static_cast<size_t>(n)), v(size_t(m), 0.0), shortest(static_cast<size_t>(m));
  for (int i = 0; i < n; ++i) u[size_t(i)] = cost.row(i).minCoeff();
  std::vector<int> col4row(size_t(n), -1), row4col(size_t(m), -1), path(static_cast<size_t>(m)), remaining(static_cast<size_t>(m));
  std::vector<char> row_seen(static_cast<size_t>(n)), col_seen(static_cast<size_t>(m));

  for (int cur = 0; cur < n; ++cur) {
    std::fill(shortest.begin(), shortest.end(), inf);
    std::fill(row_seen.begin(), row_seen.end(), 0);
    std::fill(col_seen.begin(), col_seen.end(), 0);
    for (int j = 0; j < m; ++j) remaining[size_t(j)] = j;
    int left = m, i = cur, sink = -1;
    double min_val = 0;
    while (sink < 0) {
      row_seen[size_t(i)] = 1;
      const double* c = cost.data() + size_t(i) * size_t(m);
      const double base = min_val - u[size_t(i)];
      double lowest = inf;
      int pick = -1;
      for (int it = 0; it < left; ++it) {
        const int j = remaining[size_t(it)];
        const double r = base + c[j] - v[size_t(j)];
        if (r < shortest[size_t(j)]) shortest[size_t(j)] = r, path[size_t(j)] = i;
        // Prefer a free column on ties: it ends the search.
        if (shortest[size_t(j)] < lowest || (shortest[size_t(j)] == lowest && row4col[size_t(j)] < 0))
          lowest = shortest[size_t(j)], pick = it;
      }
      min_val = lowest;
      const int j = remaining[size_t(pick)];
      if (row4col[size_t(j)] < 0) sink = j;
      else i = row4col[size_t(j)];
      col_seen[size_t(j)] = 1;
      remaining[size_t(pick)] = remaining[size_t(--left)];
    }
    // Dual update keeps reduced costs >= 0 and tight (zero) along matched edges and the new path.
    u[size_t(cur)] += min_val;
    for (int r = 0; r < n; ++r)
      if (row_seen[size_t(r)] && r != cur) u[size_t(r)] += min_val - shortest[size_t(col4row[size_t(r)])];
    for (int c = 0; c < m; ++c)
      if (col_seen[size_t(c)]) v[size_t(c)] -= min_val - shortest[size_t(c)];
    // Augment along the path back to `cur`.
    for (int j = sink;;) {
      const int r = path[size_t(j)];
      row4col[size_t(j)] = r;
      std::swap(col4row[size_t(r)], j);
      if (r == cur) break;
    }
  }
  return col4row;
}

std::vector<int> linear_assignment_max(const MatrixD& score) { return linear_assignment(-score); }

}  // namespace moec::merge
