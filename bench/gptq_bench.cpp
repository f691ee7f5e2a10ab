// GPTQ cost on one expert matrix, split into Hessian accumulation, Cholesky and the column/update loop.
//   build/gptq_bench --benchmark_filter=Small          tiny 512 x 256 shapes (fast)
//   build/gptq_bench --benchmark_filter=MixtralExpert  one 14336 x 4096 expert (w1/w3 shape; ~a minute)
// Counters (seconds): hessian_s, cholesky_s, updates_s, rtn_s; loss_ratio = GPTQ / RTN proxy loss.
#include <benchmark/benchmark.h>

#include <chrono>
#include <random>

#include "quantize/quantize.h"

using namespace moec;

namespace {

Matrix random_matrix(int rows, int cols, uint32_t seed, float sd) {
  std::mt19937 rng(seed);
  std::normal_distribution<float> nd(0.0f, sd);
  Matrix m(rows, cols);
  for (float* p = m.data(); p != m.data() + m.size(); ++p) *p = nd(rng);
  return m;
}

// Token activations with correlated features: X = Z (I + 0.3 A / sqrt(cols)), generated in chunks.
void accumulate(HessianAccumulator& acc, int n, int cols, uint32_t seed) {
  Matrix mix = Matrix::Identity(cols, cols) + 0.3f * random_matrix(cols, cols, seed, 1.0f) / std::sqrt(float(cols));
  for (int done = 0, chunk = 1024; done < n; done += chunk) {
    Matrix X = random_matrix(std::min(chunk, n - done), cols, seed + 1 + uint32_t(done), 1.0f) * mix;
    acc.add(X);
  }
}

void run(benchmark::State& state, int rows, int cols, int tokens, const char* spec_text) {
  QuantSpec spec = parse_quant_spec(spec_text);
  Matrix W = random_matrix(rows, cols, 1, 0.02f);
  double hessian = 0, chol = 0, upd = 0, rtn_s = 0, ratio = 0;
  for (auto _ : state) {
    HessianAccumulator acc(cols);
    accumulate(acc, tokens, cols, 2);
    GptqResult g = gptq(W, acc, spec);
    benchmark::DoNotOptimize(g.q.q.data());
    auto t0 = std::chrono::steady_clock::now();
    QuantizedMatrix r = quantize_rtn(W, spec);
    rtn_s += std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    hessian += g.time.hessian_s, chol += g.time.cholesky_s, upd += g.time.updates_s;
    if (rows * double(cols) <= 1e6) {  // the exact proxy loss costs another rows x cols^2 GEMM
      MatrixD H = acc.hessian();
      ratio += proxy_loss(W, g.q, H) / proxy_loss(W, r, H);
    }
  }
  double n = double(state.iterations());
  state.counters["hessian_s"] = hessian / n;
  state.counters["cholesky_s"] = chol / n;
  state.counters["updates_s"] = upd / n;
  state.counters["rtn_s"] = rtn_s / n;
  if (ratio > 0) state.counters["loss_ratio"] = ratio / n;
  state.counters["tokens"] = tokens;
}

void BM_GptqSmall(benchmark::State& state, const char* spec) { run(state, 512, 256, 2048, spec); }
void BM_GptqMixtralExpert(benchmark::State& state) { run(state, 14336, 4096, 8192, "int4:g128"); }

}  // namespace

BENCHMARK_CAPTURE(BM_GptqSmall, int4_g128, "int4:g128")->Unit(benchmark::kMillisecond);
BENCHMARK_CAPTURE(BM_GptqSmall, int3_g128_asym, "int3:g128:asym")->Unit(benchmark::kMillisecond);
BENCHMARK_CAPTURE(BM_GptqSmall, int2_g64, "int2:g64")->Unit(benchmark::kMillisecond);
BENCHMARK_CAPTURE(BM_GptqSmall, ternary_absmean, "ternary:absmean")->Unit(benchmark::kMillisecond);
BENCHMARK_CAPTURE(BM_GptqSmall, ternary_minmax, "ternary:minmax")->Unit(benchmark::kMillisecond);
BENCHMARK(BM_GptqMixtralExpert)->Iterations(1)->Unit(benchmark::kSecond);

BENCHMARK_MAIN();
