// Measurements behind the two decode-kernel targets that are not met (docs/CODECS.md, "Limits"): what the CPU
// itself allows, independent of moec's kernels.
//
//  * BM_pipes: throughput of the instructions the int8-activation kernels are made of, alone and mixed. When a mix
//    executes no more instructions per ns than one of them alone, they compete for the same execution pipes.
//    Counter "ops_per_ns" (instructions per ns).
// Run: build/kernel_limits_bench (Release build; one thread for the stream loop, all threads for sgemv).
//  * BM_subbit_stream: the sub-bit codeword stream of a real dictionary (85% zeros, as `moec bench-kernels`), one row
//    of 4096 columns after another: (parse) per codeword only the work every decoder needs -- the dictionary lookup,
//    the expansion of its codes into vector lanes and the position update; (parse+dot) the same plus, per codeword,
//    the dot product of its codes with the activations at its position (int16, vpdpwssd). Counters: ns and
//    weights per codeword, and "ceiling_x_sgemv" = the fp32 sgemv time of a 14336 x 4096 matrix (measured in
//    the same run, OpenBLAS, all threads) over the time this loop alone needs for that matrix on the same threads.
//    That is the best speed-up over sgemv any sub-bit matvec built on this loop can reach.
#include <benchmark/benchmark.h>
#include <immintrin.h>
#include <omp.h>

#include <chrono>
#include <cstring>
#include <random>
#include <vector>

#include "kernels/bench.h"
#include "kernels/blocks.h"
#include "kernels/gemv.h"
#include "kernels/subbit.h"

#if defined(__GNUC__) && (defined(__x86_64__) || defined(__i386__))
#pragma GCC push_options
#pragma GCC target("avx512f,avx512bw,avx512vl,avx512vbmi,avx512vnni,fma")

namespace {

bool have_vnni() { return moec::q8_vnni_supported(); }

// Keeps v in a register and opaque to the optimiser (so each op really executes).
#define KEEP(v) asm volatile("" : "+v"(v))

// Per iteration: 12 vpdpbusd (kDp) and 12 vfmadd (kFma) on independent chains (enough to cover their latency),
// 4 vcvtdq2ps (kCvt) and 4 vpermb (kPerm). Counter ops_per_ns = executed instructions per nanosecond.
template <int kDp, int kFma, int kCvt, int kPerm = 0>
void BM_pipes(benchmark::State& st) {
  if (!have_vnni()) return st.SkipWithError("needs AVX512_VNNI");
  // Named variables, not arrays: GCC keeps arrays of vectors on the stack, which would measure store forwarding.
  __m512i a0 = _mm512_set1_epi32(1), a1 = a0, a2 = a0, a3 = a0, a4 = a0, a5 = a0, a6 = a0, a7 = a0, a8 = a0, a9 = a0,
          a10 = a0, a11 = a0;
  __m512 f0 = _mm512_set1_ps(1.0f), f1 = f0, f2 = f0, f3 = f0, f4 = f0, f5 = f0, f6 = f0, f7 = f0, f8 = f0, f9 = f0,
         f10 = f0, f11 = f0;
  __m512i c0 = _mm512_set1_epi32(3), c1 = c0, c2 = c0, c3 = c0;
  __m512 g0 = f0, g1 = f0, g2 = f0, g3 = f0;
  __m512i p0 = _mm512_set1_epi8(5), p1 = p0, p2 = p0, p3 = p0;
  const __m512i u = _mm512_set1_epi8(1), x = _mm512_set1_epi8(2);
  const __m512 m = _mm512_set1_ps(0.999f);
#define DP(v) do { v = _mm512_dpbusd_epi32(v, u, x); KEEP(v); } while (0)
#define FM(v) do { v = _mm512_fmadd_ps(v, m, m); KEEP(v); } while (0)
#define CV(d, s) do { d = _mm512_cvtepi32_ps(s); KEEP(d); KEEP(s); } while (0)
#define PB(v) do { v = _mm512_permutexvar_epi8(v, u); KEEP(v); } while (0)
  constexpr int kIter = 1000;
  for (auto _ : st) {
    for (int i = 0; i < kIter; ++i) {
      if constexpr (kDp) {
        DP(a0); DP(a1); DP(a2); DP(a3); DP(a4); DP(a5); DP(a6); DP(a7); DP(a8); DP(a9); DP(a10); DP(a11);
      }
      if constexpr (kFma) {
        FM(f0); FM(f1); FM(f2); FM(f3); FM(f4); FM(f5); FM(f6); FM(f7); FM(f8); FM(f9); FM(f10); FM(f11);
      }
      if constexpr (kCvt) {
        CV(g0, c0); CV(g1, c1); CV(g2, c2); CV(g3, c3);
      }
      if constexpr (kPerm) {
        PB(p0); PB(p1); PB(p2); PB(p3);
      }
    }
  }
#undef DP
#undef FM
#undef CV
#undef PB
  const __m512i as = _mm512_add_epi32(_mm512_add_epi32(_mm512_add_epi32(a0, a1), _mm512_add_epi32(a2, a3)),
                                      _mm512_add_epi32(_mm512_add_epi32(a4, a5), _mm512_add_epi32(a6, a7)));
  const __m512i as2 = _mm512_add_epi32(_mm512_add_epi32(_mm512_add_epi32(a8, a9), _mm512_add_epi32(a10, a11)),
                                       _mm512_add_epi32(_mm512_add_epi32(p0, p1), _mm512_add_epi32(p2, p3)));
  const __m512 fs = _mm512_add_ps(_mm512_add_ps(_mm512_add_ps(f0, f1), _mm512_add_ps(f2, f3)),
                                  _mm512_add_ps(_mm512_add_ps(f4, f5), _mm512_add_ps(f6, f7)));
  const __m512 fs2 = _mm512_add_ps(_mm512_add_ps(_mm512_add_ps(f8, f9), _mm512_add_ps(f10, f11)),
                                   _mm512_add_ps(_mm512_add_ps(g0, g1), _mm512_add_ps(g2, g3)));
  benchmark::DoNotOptimize(_mm512_reduce_add_epi32(_mm512_add_epi32(as, as2)) + _mm512_reduce_add_ps(_mm512_add_ps(fs, fs2)));
  st.counters["ops_per_ns"] =
      benchmark::Counter(double(st.iterations()) * kIter * (12 * (kDp + kFma) + 4 * (kCvt + kPerm)) * 1e-9, benchmark::Counter::kIsRate);
}
BENCHMARK(BM_pipes<1, 0, 0>)->Name("BM_pipes/vpdpbusd")->MinTime(0.2);
BENCHMARK(BM_pipes<0, 1, 0>)->Name("BM_pipes/vfmadd")->MinTime(0.2);
BENCHMARK(BM_pipes<1, 1, 0>)->Name("BM_pipes/vpdpbusd+vfmadd")->MinTime(0.2);
BENCHMARK(BM_pipes<1, 0, 1>)->Name("BM_pipes/vpdpbusd+vcvtdq2ps")->MinTime(0.2);
BENCHMARK(BM_pipes<0, 1, 1>)->Name("BM_pipes/vfmadd+vcvtdq2ps")->MinTime(0.2);
BENCHMARK(BM_pipes<1, 0, 0, 1>)->Name("BM_pipes/vpdpbusd+vpermb")->MinTime(0.2);

// Rows of ternary codes with 85% zeros, coded with their own sub-bit dictionary.
struct Stream {
  int rows = 2048, cols = 4096;
  std::vector<uint16_t> codes;
  std::vector<uint32_t> off{0};
  const moec::SubbitDict* dict = nullptr;
  Stream() {
    std::mt19937 rng(7);
    std::uniform_real_distribution<float> u(0.0f, 1.0f);
    std::vector<uint8_t> tc(size_t(rows) * size_t(cols));
    uint64_t n[3] = {0, 0, 0};
    for (auto& c : tc) {
      c = u(rng) < 0.85f ? 0 : (rng() & 1 ? 1 : 2);
      ++n[c];
    }
    dict = &moec::subbit_dict(moec::subbit_params_from_counts(n[0], n[1], n[2]));
    for (int r = 0; r < rows; ++r) {
      moec::subbit_encode_row(*dict, tc.data() + size_t(r) * size_t(cols), cols, codes);
      off.push_back(uint32_t(codes.size()));
    }
  }
};

// One pass over the stream; kDot adds the int16 dot product at each codeword's position.
template <bool kDot>
int64_t stream_pass(const Stream& s, const int16_t* x) {
  alignas(64) uint8_t cb[64];
  for (int k = 0; k < 32; ++k) cb[2 * k] = cb[2 * k + 1] = uint8_t(2 * k);  // lane k <- code k
  alignas(64) int16_t tt[32];
  for (int k = 0; k < 32; ++k) tt[k] = int16_t(moec::tern_from_code(unsigned(k) & 3u));
  const __m512i ctrl = _mm512_load_si512(cb), tab = _mm512_load_si512(tt);
  const uint64_t* seq = s.dict->seq.data();
  const uint8_t* len = s.dict->len.data();
  const uint16_t* codes = s.codes.data();
  int64_t total = 0;
  for (int r = 0; r < s.rows; ++r) {
    __m512i acc[4] = {_mm512_setzero_si512(), _mm512_setzero_si512(), _mm512_setzero_si512(), _mm512_setzero_si512()};
    int64_t pos = 0;
    uint32_t i = s.off[size_t(r)];
    const uint32_t e = s.off[size_t(r) + 1];
    auto step = [&](int a, uint32_t k) __attribute__((always_inline)) {
      const unsigned cw = codes[k];
      const __m512i t = _mm512_permutexvar_epi16(_mm512_multishift_epi64_epi8(ctrl, _mm512_set1_epi64((long long)seq[cw])), tab);
      if constexpr (kDot) acc[a] = _mm512_dpwssd_epi32(acc[a], t, _mm512_loadu_si512(x + std::min<int64_t>(pos, s.cols)));
      else acc[a] = _mm512_xor_si512(acc[a], t);
      pos += len[cw];
    };
    for (; i + 4 <= e; i += 4) {
      step(0, i);
      step(1, i + 1);
      step(2, i + 2);
      step(3, i + 3);
    }
    for (; i < e; ++i) step(0, i);
    total += _mm512_reduce_add_epi32(_mm512_add_epi32(_mm512_add_epi32(acc[0], acc[1]), _mm512_add_epi32(acc[2], acc[3]))) + pos;
  }
  return total;
}

// fp32 sgemv of one 14336 x 4096 matrix (beyond the caches), seconds, all OpenMP threads.
double sgemv_seconds() {
  static const double t = [] {
    moec::DenseExperts d(false, 14336, 4096, size_t(512) << 20);
    std::vector<float> x(4096, 0.5f), y(14336);
    double best = 1e9;
    for (int rep = 0; rep < 5; ++rep) {
      const auto t0 = std::chrono::steady_clock::now();
      for (int k = 0; k < d.experts(); ++k) d.step(x.data(), y.data());
      best = std::min(best, std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count() / d.experts());
    }
    return best;
  }();
  return t;
}

void BM_subbit_stream(benchmark::State& st) {
  if (!have_vnni()) return st.SkipWithError("needs AVX512_VNNI and VBMI");
  const bool dot = st.range(0) != 0;
  static const Stream s;
  std::vector<int16_t> x(size_t(s.cols) + 64);
  for (size_t j = 0; j < x.size(); ++j) x[j] = int16_t(j < size_t(s.cols) ? int(j % 2001) - 1000 : 0);
  const double sg = sgemv_seconds();
  for (auto _ : st) benchmark::DoNotOptimize(dot ? stream_pass<true>(s, x.data()) : stream_pass<false>(s, x.data()));
  const double cw = double(s.codes.size());
  const double wpc = double(s.rows) * double(s.cols) / cw;
  st.counters["weights_per_codeword"] = wpc;
  st.counters["codewords"] = benchmark::Counter(double(st.iterations()) * cw, benchmark::Counter::kIsRate);
  st.counters["sgemv_ms_14336x4096"] = sg * 1e3;
  // Time of this loop alone for a 14336 x 4096 matrix with all threads (one core per thread, rows split evenly),
  // from the per-core rate measured here.
  st.counters["ceiling_x_sgemv"] = benchmark::Counter(
      double(st.iterations()) * cw * sg * omp_get_max_threads() / (14336.0 * 4096.0 / wpc), benchmark::Counter::kIsRate);
  st.SetLabel(dot ? "parse+dot (int16 vpdpwssd per codeword)" : "parse only");
}
BENCHMARK(BM_subbit_stream)->Arg(0)->Arg(1)->MinTime(0.3)->UseRealTime();

}  // namespace

#pragma GCC pop_options
#endif

BENCHMARK_MAIN();
