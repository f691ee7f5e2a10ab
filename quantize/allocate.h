// Mixed precision: pick one quantization option per expert (matrix) to minimise the summed expected error
// under an average bits-per-weight budget. A multiple-choice knapsack, solved exactly by dynamic programming
// over total bits (divided by their greatest common divisor, so the table is small in practice).
#pragma once
#include <cstdint>
#include <string>
#include <vector>

namespace moec {

struct BitOption {
  double bits_per_weight = 0.0;  // storage incl. scales/zeros (e.g. bits_per_weight(spec, cols))
  double error = 0.0;            // expected error, e.g. importance * measured quantization error
};

struct ExpertCandidates {
  std::string name;              // used in error messages
  int64_t weights = 0;           // number of weights (so experts of different sizes weigh correctly)
  std::vector<BitOption> options;
};

struct BitAllocation {
  std::vector<int> choice;       // option index per expert
  double total_error = 0.0;
  double bits_per_weight = 0.0;  // achieved average over all weights
  bool exact = true;             // false only when the table had to be coarsened (see max_cells)
};

// Minimises sum error subject to sum(weights * bits_per_weight) <= budget * sum(weights). Each option's total
// bits are rounded up to an integer. Among allocations of equal error the one using fewer bits wins; the
// remaining ties go to the lower option index (options are scanned in order and replaced only when strictly
// better), so the result is deterministic. If the exact table would exceed max_cells entries, costs are
// rounded up to a coarser unit: the result is still within budget but may not be optimal (exact = false).
// Throws moec::Error if even the cheapest options exceed the budget.
BitAllocation allocate_bits(const std::vector<ExpertCandidates>& experts, double budget_bits_per_weight,
                            int64_t max_cells = int64_t(1) << 28);

}  // namespace moec
