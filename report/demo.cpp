// Deterministic fake data for looking at the reports (tests and `moec report-demo`).
#include <algorithm>
#include <cmath>
#include <cstdint>

#include "report/sections.h"

namespace moec::report {

namespace {

// splitmix64: tiny, seedable, identical on every platform.
struct Rng {
  uint64_t s;
  double uniform() {
    uint64_t z = (s += 0x9e3779b97f4a7c15ull);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return double((z ^ (z >> 31)) >> 11) * 0x1.0p-53;
  }
  double normal() {  // Box-Muller, one value per call
    double u = std::max(uniform(), 1e-300), v = uniform();
    return std::sqrt(-2 * std::log(u)) * std::cos(6.283185307179586 * v);
  }
};

}  // namespace

RoutingProfileData demo_profile() {
  const int layers = 4, experts = 8, k = 2;
  RoutingProfileData d;
  d.model = "demo (fake data): 4 layers x 8 experts, top-2";
  d.top_k = k;
  d.domains = {"python", "kernel"};
  d.domain_tokens = {131072, 65536};
  Rng rng{42};
  std::vector<std::vector<double>> logits(layers, std::vector<double>(experts));
  for (auto& row : logits)
    for (auto& v : row) v = 0.8 * rng.normal();
  // Like tiny-mixtral: a few experts almost never chosen.
  logits[2][4] = logits[2][6] = logits[3][2] = logits[3][6] = -4;
  for (size_t dom = 0; dom < d.domains.size(); ++dom) {
    std::vector<std::vector<double>> u(layers, std::vector<double>(experts));
    for (int l = 0; l < layers; ++l) {
      double sum = 0;
      for (int e = 0; e < experts; ++e) {
        double shift = dom == 1 ? 0.6 * rng.normal() + (e == 5 ? 1.2 : 0) : 0;  // expert 5: kernel specialist
        u[l][e] = std::exp(logits[l][e] + shift);
        sum += u[l][e];
      }
      for (auto& v : u[l]) v /= sum;
    }
    d.usage.push_back(u);
  }
  for (int l = 0; l < layers; ++l) {
    std::vector<std::vector<double>> c(experts, std::vector<double>(experts));
    const auto& u = d.usage[0][l];
    for (int i = 0; i < experts; ++i)
      for (int j = 0; j <= i; ++j) {
        double v = i == j ? k * u[i] : std::min(1.0, k * u[i] * k * u[j] * (0.5 + rng.uniform()));
        c[i][j] = c[j][i] = v;
      }
    d.coactivation.push_back(c);
    std::vector<double> imp(experts);
    for (int e = 0; e < experts; ++e) imp[e] = u[e] * (0.7 + 0.6 * rng.uniform());
    d.importance.push_back(imp);
  }
  d.importance_label = "usage x output norm";
  return d;
}

CompressionData demo_compression() {
  CompressionData d;
  d.model = "demo (fake numbers; peer rows from shared/fixtures.md)";
  d.command = "moec compress examples/tiny-mixtral --recipe recipes/ternary.json --calib data/python_calib.npy "
              "--out /tmp/tiny-ternary";
  d.recipe = "{\n  \"experts\": {\"method\": \"ternary\", \"group\": 128, \"gptq\": true},\n"
             "  \"prune\": {\"keep\": 6, \"by\": \"frequency\"}\n}";
  d.sizes = {{"routed experts", 25165824, 2539520},
             {"attention", 1048576, 1048576},
             {"embeddings + head", 262144, 262144},
             {"router + norms", 18432, 18432}};
  d.layer_names = {"0", "1", "2", "3"};
  d.bits_per_weight = {1.62, 1.62, 1.58, 1.66};
  d.recon_error = {0.081, 0.094, 0.12, 0.103};
  d.perplexity = {{"python_eval.npy (32768 tokens)", 3.0720, 3.3541}, {"kernel_eval.npy", 15.2208, 17.902}};
  using M = Series::Marker;
  d.tradeoff = {
      {"moec sweep", {{1.21, 4.05, ""}, {1.62, 3.354, "this run"}, {2.25, 3.152, ""}, {4.25, 3.0775, ""}}, true, true,
       M::Circle},
      {"RTN", {{1.616, 8.7898, "ternary"}, {2.25, 3.2289, "int2"}, {4.25, 3.0784, "int4"}}, true, true, M::Square},
      {"llama.cpp",
       {{4.5, 3.0767, "Q4_0"},
        {3.438, 3.0851, "Q3_K"},
        {2.625, 3.1138, "Q2_K"},
        {2.062, 3.1363, "IQ2_XXS"},
        {1.75, 3.1895, "IQ1_M"},
        {1.562, 3.2167, "IQ1_S"},
        {2.062, 5.5423, "TQ2_0"},
        {1.688, 5.5423, "TQ1_0"}},
       false,
       true,
       M::Diamond},
      {"bf16", {{16, 3.0720, "bf16"}}, false, true, M::Square},
  };
  d.stage_seconds = {{"load", 0.41}, {"profile", 3.2}, {"prune", 0.05}, {"quantize (GPTQ)", 18.7}, {"eval", 6.3}, {"write", 0.22}};
  return d;
}

Page demo_page() {
  Page page("moec report demo");
  page.subtitle("Fake data (4 layers x 8 experts) to check how the charts look. Escaping check: <b>&amp; \"quotes\"</b>");
  add_routing_profile(page, demo_profile());
  add_compression(page, demo_compression());

  page.section("Edge cases");
  page.paragraph("Non-finite values are not drawn and are counted in a note under each chart.");
  HeatmapOptions ho;
  ho.title = "Heatmap with missing cells";
  ho.value_label = "value";
  std::vector<std::vector<double>> m = {{1, 2, NAN}, {INFINITY, 5, 6}};
  BarChartOptions bo;
  bo.title = "Log-scale bars (one value <= 0)";
  bo.log_y = true;
  bo.width = 420;
  bo.height = 260;
  LineChartOptions lo;
  lo.title = "Constant series, one NaN";
  lo.width = 420;
  lo.height = 260;
  page.figures({{heatmap(m, {"a", "b"}, {"x", "y", "z"}, ho), ""},
                {bar_chart({"a", "b", "c", "d"}, {{"s1", {3, 300, 0, 30000}}, {"s2", {10, 1, 1e5, 42}}}, bo), ""},
                {line_chart({{"flat", {{0, 5, ""}, {1, 5, ""}, {2, NAN, ""}, {3, 5, ""}}}}, lo), ""}});
  return page;
}

}  // namespace moec::report
