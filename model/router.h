// Expert selection, following each family's reference modeling code exactly.
#pragma once
#include <vector>

#include "core/matrix.h"
#include "model/spec.h"

namespace moec::model {

struct Routing {
  int n = 0, k = 0;
  std::vector<int> expert;   // n * k: chosen experts per token, in descending score order
  std::vector<float> weight; // n * k: the gate weight applied to each chosen expert's output
  Matrix probs;              // n x E: router probabilities (softmax or sigmoid scores) before selection
};

// logits: n x E router logits. correction_bias (E values) is used only for selection (DeepSeek-V3).
// Ties are broken towards the lower expert index.
Routing route(const Matrix& logits, const RoutingSpec& spec, const float* correction_bias = nullptr);

}  // namespace moec::model
