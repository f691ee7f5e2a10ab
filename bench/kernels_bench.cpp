// Google Benchmark front end of kernels/bench.h (the same data sets and kernels as `moec bench-kernels`).
#include <benchmark/benchmark.h>

#include <memory>
#include <random>

#include "kernels/bench.h"

namespace {

constexpr size_t kBig = size_t(256) << 20;

void BM_codec(benchmark::State& st, moec::Codec codec, int rows, int cols, moec::ActQuant act) {
  const int n = int(st.range(0));
  const bool small = size_t(rows) * size_t(cols) * 4 < (size_t(8) << 20);
  moec::PackedExperts probe(codec, rows, cols, codec == moec::Codec::Subbit ? 0 : 128, 0.85, 1);
  moec::PackedExperts px(codec, rows, cols, codec == moec::Codec::Subbit ? 0 : 128, 0.85,
                         small ? probe.bytes_per_expert() * 32 : kBig);
  std::vector<float> X(size_t(n) * size_t(cols), 0.5f), Y(size_t(n) * size_t(rows));
  for (auto _ : st) {
    px.step(X.data(), n, Y.data(), act);
    benchmark::DoNotOptimize(Y.data());
  }
  st.SetBytesProcessed(int64_t(st.iterations()) * int64_t(px.bytes_per_expert()));
  st.counters["bpw"] = moec::bits_per_weight(px.view(0));
}

void BM_dense(benchmark::State& st, bool bf16, int rows, int cols) {
  moec::DenseExperts d(bf16, rows, cols, std::max(kBig, size_t(rows) * size_t(cols) * 8));
  std::vector<float> x(size_t(cols), 0.5f);
  std::vector<float> y(static_cast<size_t>(rows));
  for (auto _ : st) {
    d.step(x.data(), y.data());
    benchmark::DoNotOptimize(y.data());
  }
  st.SetBytesProcessed(int64_t(st.iterations()) * int64_t(d.bytes_per_expert()));
}

void BM_read(benchmark::State& st) {
  for (auto _ : st) st.counters["GB/s"] = moec::measure_read_bandwidth(kBig, 0.2);
}

int reg = [] {
  const std::pair<int, int> shapes[] = {{14336, 4096}, {4096, 14336}, {512, 256}, {256, 512}};
  for (auto [r, c] : shapes) {
    std::string s = std::to_string(r) + "x" + std::to_string(c);
    benchmark::RegisterBenchmark(("sgemv_fp32/" + s).c_str(), BM_dense, false, r, c)->Unit(benchmark::kMicrosecond);
    benchmark::RegisterBenchmark(("bf16/" + s).c_str(), BM_dense, true, r, c)->Unit(benchmark::kMicrosecond);
    for (moec::Codec k : moec::all_codecs())
      for (moec::ActQuant a : {moec::ActQuant::None, moec::ActQuant::Int8})
        benchmark::RegisterBenchmark(
            (std::string(moec::codec_name(k)) + (a == moec::ActQuant::Int8 ? "+q8/" : "/") + s).c_str(), BM_codec, k,
            r, c, a)
            ->Arg(1)->Arg(8)->Unit(benchmark::kMicrosecond);
  }
  benchmark::RegisterBenchmark("read_bandwidth_256MiB", BM_read)->Iterations(1);
  return 0;
}();

}  // namespace

BENCHMARK_MAIN();
