#include "model/router.h"

#include <algorithm>
#include <cmath>
#include <numeric>

#include "core/error.h"

namespace moec::model {

namespace {
// Indices of the k largest values; equal values keep the lower index first.
void topk(const float* v, int n, int k, int* out) {
  std::vector<int> idx(static_cast<size_t>(n));
  std::iota(idx.begin(), idx.end(), 0);
  std::partial_sort(idx.begin(), idx.begin() + k, idx.end(), [&](int a, int b) { return v[a] > v[b] || (v[a] == v[b] && a < b); });
  std::copy(idx.begin(), idx.begin() + k, out);
}
}  // namespace

Routing route(const Matrix& logits, const RoutingSpec& s, const float* bias) {
  const int n = int(logits.rows()), E = int(logits.cols()), k = s.top_k;
  if (E != s.num_experts) fail("router produced ", E, " logits but the model has ", s.num_experts, " experts");
  Routing r;
  r.n = n;
  r.k = k;
  r.expert.resize(size_t(n) * k);
  r.weight.resize(size_t(n) * k);
  r.probs.resize(n, E);
  std::vector<float> choice(static_cast<size_t>(E));
  for (int t = 0; t < n; ++t) {
    const float* l = logits.row(t).data();
    float* p = r.probs.row(t).data();
    if (s.scoring == Scoring::Softmax) {
      float m = *std::max_element(l, l + E);
      double z = 0;
      for (int e = 0; e < E; ++e) z += (p[e] = std::exp(l[e] - m));
      for (int e = 0; e < E; ++e) p[e] = float(p[e] / z);
    } else {
      for (int e = 0; e < E; ++e) p[e] = 1.0f / (1.0f + std::exp(-l[e]));
    }
    for (int e = 0; e < E; ++e) choice[size_t(e)] = p[e] + (bias ? bias[e] : 0.0f);
    if (s.method != TopkMethod::Greedy) {
      // Group-limited selection: keep the topk_group best groups, zero the others.
      const int G = s.n_group, per = E / G;
      std::vector<float> gscore(static_cast<size_t>(G));
      for (int g = 0; g < G; ++g) {
        const float* c = choice.data() + g * per;
        if (s.method == TopkMethod::NoAuxTc) {  // V3: sum of the two best scores in the group
          int top2[2];
          topk(c, per, std::min(2, per), top2);
          gscore[size_t(g)] = c[top2[0]] + (per > 1 ? c[top2[1]] : 0.0f);
        } else {  // V2: the best score in the group
          gscore[size_t(g)] = *std::max_element(c, c + per);
        }
      }
      std::vector<int> keep(static_cast<size_t>(s.topk_group));
      topk(gscore.data(), G, s.topk_group, keep.data());
      std::vector<bool> on(size_t(G), false);
      for (int g : keep) on[size_t(g)] = true;
      for (int e = 0; e < E; ++e)
        if (!on[size_t(e / per)]) choice[size_t(e)] = 0.0f;
    }
    int* sel = r.expert.data() + size_t(t) * k;
    float* w = r.weight.data() + size_t(t) * k;
    topk(choice.data(), E, k, sel);
    float sum = 0;
    for (int j = 0; j < k; ++j) sum += (w[j] = p[sel[j]]);  // weights come from the unbiased scores
    if (s.norm_topk) {
      // DeepSeek adds 1e-20 to the denominator; softmax families divide by the plain sum.
      float denom = s.method == TopkMethod::Greedy && s.scoring == Scoring::Softmax ? sum : sum + 1e-20f;
      for (int j = 0; j < k; ++j) w[j] /= denom;
    }
    if (s.routed_scaling_factor != 1.0f && (s.scoring == Scoring::Sigmoid || !s.norm_topk))
      for (int j = 0; j < k; ++j) w[j] *= s.routed_scaling_factor;
  }
  return r;
}

}  // namespace moec::model
