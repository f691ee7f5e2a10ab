// Profiling cost on tiny-mixtral (examples/tiny-mixtral, ../shared/data/python_calib.npy), next to a plain
// forward pass (model::evaluate) over the same tokens: profiling should cost about one forward pass.
//   build/profile_bench                                   4096 and 32768 tokens (run from the repository root)
//   build/profile_bench --benchmark_filter=Profile/32768
// Counters: tokens_per_second, peak_rss_mib (process peak so far: run one filter at a time for a clean figure).
#include <benchmark/benchmark.h>
#include <sys/resource.h>

#include <chrono>
#include <cstdlib>

#include "io/npy.h"
#include "model/forward.h"
#include "profile/profile.h"

using namespace moec;

namespace {

// Paths relative to the repository root (run from there), or env MOEC_BENCH_MODEL / MOEC_BENCH_TOKENS.
std::string env_or(const char* name, const char* fallback) {
  const char* v = std::getenv(name);
  return v && *v ? v : fallback;
}
const std::string kModel = env_or("MOEC_BENCH_MODEL", "examples/tiny-mixtral");
const std::string kTokens = env_or("MOEC_BENCH_TOKENS", "../shared/data/python_calib.npy");

double peak_rss_mib() {
  rusage ru{};
  getrusage(RUSAGE_SELF, &ru);
  return double(ru.ru_maxrss) / 1024.0;  // Linux: KiB
}

void BM_Profile(benchmark::State& state) {
  model::CheckpointSource src(kModel);
  std::vector<profile::Domain> d = {profile::load_domain("python", kTokens, src.spec().vocab)};
  profile::ProfileOptions opt;
  opt.max_tokens = state.range(0);
  opt.progress = false;
  double secs = 0;
  for (auto _ : state) {
    auto t0 = std::chrono::steady_clock::now();
    auto s = profile::profile_model(src, d, opt);
    secs += std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    benchmark::DoNotOptimize(s.domains.size());
  }
  state.counters["tokens_per_second"] = double(state.range(0)) * double(state.iterations()) / secs;
  state.counters["peak_rss_mib"] = peak_rss_mib();
}

void BM_Forward(benchmark::State& state) {
  model::CheckpointSource src(kModel);
  auto toks = io::read_tokens_npy(kTokens);
  model::EvalOptions eo;
  eo.max_tokens = state.range(0);
  eo.progress = false;
  double secs = 0;
  for (auto _ : state) {
    auto r = model::evaluate(src, toks.ids, eo);
    secs += r.seconds;
    benchmark::DoNotOptimize(r.nll_sum);
  }
  state.counters["tokens_per_second"] = double(state.range(0)) * double(state.iterations()) / secs;
  state.counters["peak_rss_mib"] = peak_rss_mib();
}

}  // namespace

BENCHMARK(BM_Forward)->Arg(4096)->Arg(32768)->Unit(benchmark::kMillisecond)->Iterations(1);
BENCHMARK(BM_Profile)->Arg(4096)->Arg(32768)->Unit(benchmark::kMillisecond)->Iterations(1);
BENCHMARK_MAIN();
