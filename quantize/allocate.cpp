#include "quantize/allocate.h"

#include <algorithm>
#include <cmath>
#include <limits>
#include <numeric>

#include "core/error.h"

namespace moec {

BitAllocation allocate_bits(const std::vector<ExpertCandidates>& experts, double budget, int64_t max_cells) {
  const size_t m = experts.size();
  if (m == 0) fail("allocate_bits: no experts");
  if (!(budget > 0.0) || !std::isfinite(budget)) fail("allocate_bits: budget must be > 0 bits/weight, got ", budget);

  // Integer costs in bits; work relative to each expert's cheapest option (its baseline).
  int64_t total_weights = 0, base_bits = 0, g = 0;
  std::vector<std::vector<int64_t>> cost(m);
  for (size_t e = 0; e < m; ++e) {
    const ExpertCandidates& x = experts[e];
    if (x.weights <= 0) fail("allocate_bits: expert '", x.name, "' has ", x.weights, " weights");
    if (x.options.empty() || x.options.size() > 255)
      fail("allocate_bits: expert '", x.name, "' has ", x.options.size(), " options (need 1..255)");
    for (const BitOption& o : x.options) {
      if (!(o.bits_per_weight > 0.0) || !std::isfinite(o.bits_per_weight) || !std::isfinite(o.error))
        fail("allocate_bits: expert '", x.name, "' has an option with bits ", o.bits_per_weight, ", error ",
             o.error);
      cost[e].push_back(int64_t(std::ceil(o.bits_per_weight * double(x.weights) - 1e-6)));
    }
    int64_t lo = *std::min_element(cost[e].begin(), cost[e].end());
    for (int64_t& c : cost[e]) c -= lo, g = std::gcd(g, c);
    base_bits += lo;
    total_weights += x.weights;
  }
  const int64_t budget_bits = int64_t(std::floor(budget * double(total_weights) + 1e-6));
  if (base_bits > budget_bits)
    fail("allocate_bits: budget ", budget, " bits/weight is below the cheapest allocation (",
         double(base_bits) / double(total_weights), " bits/weight)");

  // Table unit: the gcd of the extra costs keeps the DP exact; coarsen (round costs up) only if too large.
  int64_t unit = std::max<int64_t>(g, 1);
  int64_t cap = (budget_bits - base_bits) / unit;
  BitAllocation res;
  if (int64_t(m) * (cap + 1) > max_cells) {
    const int64_t max_cap = std::max<int64_t>(max_cells / int64_t(m) - 1, 1);
    unit = (budget_bits - base_bits + max_cap - 1) / max_cap;
    cap = (budget_bits - base_bits) / unit;
    res.exact = false;
  }
  std::vector<std::vector<int64_t>> units(m);
  for (size_t e = 0; e < m; ++e)
    for (int64_t c : cost[e]) units[e].push_back((c + unit - 1) / unit);

  // f[c] = best (error, bits) for the experts so far within c units; choice[e][c] = option taken.
  struct Val {
    double err;
    int64_t bits;
    bool operator<(const Val& o) const { return err < o.err || (err == o.err && bits < o.bits); }
  };
  const Val inf{std::numeric_limits<double>::infinity(), 0};
  std::vector<Val> f(size_t(cap) + 1, Val{0.0, 0}), next(size_t(cap) + 1);
  std::vector<std::vector<uint8_t>> choice(m, std::vector<uint8_t>(size_t(cap) + 1));
  for (size_t e = 0; e < m; ++e) {
    for (int64_t c = 0; c <= cap; ++c) {
      Val best = inf;
      uint8_t arg = 0;
      for (size_t k = 0; k < units[e].size(); ++k) {
        if (units[e][k] > c) continue;
        const Val& prev = f[size_t(c - units[e][k])];
        Val v{prev.err + experts[e].options[k].error, prev.bits + cost[e][k]};
        if (v < best) best = v, arg = uint8_t(k);
      }
      next[size_t(c)] = best;
      choice[e][size_t(c)] = arg;
    }
    f.swap(next);
  }

  res.choice.resize(m);
  double bits = 0.0;
  for (int64_t c = cap, e = int64_t(m) - 1; e >= 0; --e) {
    int k = choice[size_t(e)][size_t(c)];
    res.choice[size_t(e)] = k;
    c -= units[size_t(e)][size_t(k)];
  }
  for (size_t e = 0; e < m; ++e) {
    const BitOption& o = experts[e].options[size_t(res.choice[e])];
    res.total_error += o.error;
    bits += double(cost[e][size_t(res.choice[e])]);
  }
  res.bits_per_weight = (bits + double(base_bits)) / double(total_weights);
  return res;
}

}  // namespace moec
