// Mixed-precision bit allocation against brute-force enumeration.
#include <gtest/gtest.h>

#include <cmath>
#include <random>

#include "core/error.h"
#include "quantize/quantize.h"

using namespace moec;

namespace {

struct Brute {
  double err = INFINITY;
  int64_t bits = 0;
  bool found = false;
};

int64_t option_bits(const ExpertCandidates& e, int k) {
  return int64_t(std::ceil(e.options[size_t(k)].bits_per_weight * double(e.weights) - 1e-6));
}

// Best (error, then bits) over every combination within the budget.
Brute brute_force(const std::vector<ExpertCandidates>& ex, double budget) {
  int64_t total = 0;
  for (auto& e : ex) total += e.weights;
  const int64_t limit = int64_t(std::floor(budget * double(total) + 1e-6));
  Brute best;
  std::vector<int> k(ex.size(), 0);
  for (;;) {
    double err = 0;
    int64_t bits = 0;
    for (size_t e = 0; e < ex.size(); ++e) err += ex[e].options[size_t(k[e])].error, bits += option_bits(ex[e], k[e]);
    if (bits <= limit && (err < best.err || (err == best.err && bits < best.bits))) best = {err, bits, true};
    size_t e = 0;
    while (e < ex.size() && ++k[e] == int(ex[e].options.size())) k[e++] = 0;
    if (e == ex.size()) return best;
  }
}

std::vector<ExpertCandidates> random_instance(std::mt19937& rng, bool integer_errors) {
  const double bpw[] = {8.125, 4.125, 4.25, 3.125, 3.25, 2.125, 2.25, 1.6, 2.0, 5.0};
  std::uniform_int_distribution<int> n_exp(1, 6), n_opt(1, 4), pick(0, 9), wts(1, 40), ierr(0, 5);
  std::uniform_real_distribution<double> uerr(0.0, 1.0);
  std::vector<ExpertCandidates> ex(size_t(n_exp(rng)));
  for (size_t e = 0; e < ex.size(); ++e) {
    ex[e].name = std::to_string(e);
    ex[e].weights = 128 * wts(rng);
    int n = n_opt(rng);
    for (int k = 0; k < n; ++k) {
      double b = bpw[pick(rng)];
      ex[e].options.push_back({b, integer_errors ? double(ierr(rng)) : uerr(rng) / b});
    }
  }
  return ex;
}

}  // namespace

TEST(AllocateBits, MatchesBruteForce) {
  std::mt19937 rng(1234);
  for (int trial = 0; trial < 400; ++trial) {
    SCOPED_TRACE(trial);
    bool integer_errors = trial % 2 == 1;  // exact ties: checks the (error, bits) tie-break
    auto ex = random_instance(rng, integer_errors);
    int64_t lo = 0, hi = 0, total = 0;  // cheapest / dearest total bits
    for (auto& e : ex) {
      int64_t mn = INT64_MAX, mx = 0;
      for (int k = 0; k < int(e.options.size()); ++k)
        mn = std::min(mn, option_bits(e, k)), mx = std::max(mx, option_bits(e, k));
      lo += mn, hi += mx, total += e.weights;
    }
    double budget = (double(lo) + std::uniform_real_distribution<double>(0.0, 1.0)(rng) * double(hi - lo)) / double(total);
    Brute b = brute_force(ex, budget);
    ASSERT_TRUE(b.found);
    BitAllocation a = allocate_bits(ex, budget);
    ASSERT_EQ(a.choice.size(), ex.size());
    EXPECT_TRUE(a.exact);
    double err = 0;
    int64_t bits = 0;
    for (size_t e = 0; e < ex.size(); ++e) err += ex[e].options[size_t(a.choice[e])].error, bits += option_bits(ex[e], a.choice[e]);
    EXPECT_LE(bits, int64_t(std::floor(budget * double(total) + 1e-6)));
    EXPECT_NEAR(err, b.err, 1e-12);
    EXPECT_DOUBLE_EQ(a.total_error, err);
    EXPECT_NEAR(a.bits_per_weight, double(bits) / double(total), 1e-12);
    if (integer_errors) {
      EXPECT_EQ(bits, b.bits);
    }
    BitAllocation again = allocate_bits(ex, budget);
    EXPECT_EQ(again.choice, a.choice);
  }
}

TEST(AllocateBits, PrefersCheaperOnTiesAndLowerIndex) {
  // Two experts, same error for 4 and 3 bits: the cheaper wins; identical options: the first wins.
  std::vector<ExpertCandidates> ex(2);
  ex[0] = {"a", 256, {{4.0, 1.0}, {3.0, 1.0}, {2.0, 5.0}}};
  ex[1] = {"b", 256, {{3.0, 2.0}, {3.0, 2.0}}};
  BitAllocation a = allocate_bits(ex, 4.0);
  EXPECT_EQ(a.choice, (std::vector<int>{1, 0}));
  EXPECT_DOUBLE_EQ(a.bits_per_weight, 3.0);
}

TEST(AllocateBits, WeightsBySizeAndCoarsening) {
  // A big expert dominates the average: spending bits on it costs more of the budget.
  std::vector<ExpertCandidates> ex(2);
  ex[0] = {"big", 3000, {{4.0, 1.0}, {2.0, 3.0}}};
  ex[1] = {"small", 1000, {{4.0, 1.0}, {2.0, 2.5}}};
  // budget 2.5 bits: big at 4 bits would need (12000 + 2000) / 4000 = 3.5 > 2.5; small at 4: 2.5 fits.
  BitAllocation a = allocate_bits(ex, 2.5);
  EXPECT_EQ(a.choice, (std::vector<int>{1, 0}));
  // A tiny table forces coarsening: still within budget, flagged inexact.
  std::mt19937 rng(7);
  int inexact = 0;
  for (int t = 0; t < 50; ++t) {
    auto r = random_instance(rng, false);
    int64_t total = 0, lo = 0, hi = 0;
    for (auto& e : r) {
      int64_t mn = INT64_MAX, mx = 0;
      for (int k = 0; k < int(e.options.size()); ++k)
        mn = std::min(mn, option_bits(e, k)), mx = std::max(mx, option_bits(e, k));
      total += e.weights, lo += mn, hi += mx;
    }
    double budget = 0.5 * double(lo + hi) / double(total);
    BitAllocation c = allocate_bits(r, budget, 4 * int64_t(r.size()));
    EXPECT_LE(c.bits_per_weight, budget + 1e-12);
    EXPECT_GE(c.total_error, brute_force(r, budget).err - 1e-12);
    inexact += !c.exact;
  }
  EXPECT_GT(inexact, 10);
}

TEST(AllocateBits, Errors) {
  std::vector<ExpertCandidates> ex(1);
  ex[0] = {"layer0.expert3.w1", 100, {{4.0, 1.0}, {2.0, 3.0}}};
  try {
    allocate_bits(ex, 1.5);
    FAIL() << "no error";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("cheapest"), std::string::npos);
  }
  ex[0].options.clear();
  try {
    allocate_bits(ex, 4.0);
    FAIL() << "no error";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("layer0.expert3.w1"), std::string::npos);
  }
  EXPECT_THROW(allocate_bits({}, 4.0), Error);
}
