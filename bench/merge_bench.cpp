// Merge costs: exact (sgesdd/dgesdd) vs randomized SVD of a cluster's concatenated weights, and linear
// assignment at intermediate widths. Run: build/merge_bench --benchmark_filter=Svd
#include <benchmark/benchmark.h>

#include <random>

#include "merge/merge.h"

using namespace moec;
using namespace moec::merge;

namespace {

// Weights with a decaying spectrum plus noise, like trained expert matrices (not flat like pure noise).
Matrix weights(int m, int n, unsigned seed) {
  std::mt19937 g(seed);
  std::normal_distribution<float> nd;
  const int r = std::min(m, n) / 4;
  Matrix a(m, r), b(r, n);
  for (Eigen::Index i = 0; i < a.size(); ++i) a.data()[i] = nd(g);
  for (int j = 0; j < r; ++j)
    for (int c = 0; c < n; ++c) b(j, c) = nd(g) / float(1 + j);
  Matrix w = a * b;
  for (Eigen::Index i = 0; i < w.size(); ++i) w.data()[i] += 0.1f * nd(g);
  return w;
}

// args: rows, cols, rank (0 = exact full), method (0 exact float, 1 exact double, 2 randomized)
void BM_Svd(benchmark::State& st) {
  const int m = int(st.range(0)), n = int(st.range(1)), rank = int(st.range(2)), method = int(st.range(3));
  Matrix a = weights(m, n, 1);
  SubspaceOptions o;
  o.double_precision = method == 1;
  o.svd = method == 2 ? SvdMethod::Randomized : SvdMethod::Exact;
  double energy = 0;
  for (auto _ : st) {
    Svd s = svd_thin(a, rank, o);
    double e = 0;
    for (double v : s.s) e += v * v;
    energy = e / s.total_energy;
    benchmark::DoNotOptimize(s.s.data());
  }
  st.counters["energy_kept"] = energy;
}
BENCHMARK(BM_Svd)
    ->ArgsProduct({{512}, {512}, {64}, {0, 1, 2}})  // tiny-mixtral: gate [512 x 256], 2 members
    ->ArgsProduct({{2048}, {4096}, {128}, {0, 2}})
    ->ArgsProduct({{4096}, {8192}, {256}, {0, 2}})
    ->Unit(benchmark::kMillisecond)
    ->Iterations(1);

void BM_Assignment(benchmark::State& st) {
  const int n = int(st.range(0));
  std::mt19937 g(2);
  std::normal_distribution<double> nd;
  MatrixD c(n, n);
  for (Eigen::Index i = 0; i < c.size(); ++i) c.data()[i] = nd(g);
  for (auto _ : st) benchmark::DoNotOptimize(linear_assignment(c).data());
}
BENCHMARK(BM_Assignment)->Arg(512)->Arg(1024)->Arg(2048)->Arg(4096)->Unit(benchmark::kMillisecond)->Iterations(1);

// Weight-based alignment of two experts of width I (H = 1024): feature GEMM + assignment.
void BM_Align(benchmark::State& st) {
  const int I = int(st.range(0)), H = 1024;
  std::mt19937 g(3);
  std::normal_distribution<float> nd;
  auto rnd = [&](int r, int c) {
    Matrix m(r, c);
    for (Eigen::Index i = 0; i < m.size(); ++i) m.data()[i] = nd(g);
    return m;
  };
  Expert a{rnd(I, H), rnd(I, H), rnd(H, I)}, b{rnd(I, H), rnd(I, H), rnd(H, I)};
  for (auto _ : st) benchmark::DoNotOptimize(align_neurons(a, b).data());
}
BENCHMARK(BM_Align)->Arg(512)->Arg(2048)->Unit(benchmark::kMillisecond)->Iterations(1);

}  // namespace

BENCHMARK_MAIN();
