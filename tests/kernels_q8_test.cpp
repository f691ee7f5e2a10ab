// int8-activation path (ActQuant::Int8): the activation quantization against a naive implementation and a
// hand-worked example, the VNNI kernel against the scalar reference matmul_q8_ref, and both against the exact
// fp32 product within the activation-quantization error bound computed here.
#include <gtest/gtest.h>
#include <omp.h>

#include <cmath>
#include <cstring>
#include <limits>
#include <random>

#include "core/error.h"
#include "core/half.h"
#include "kernels/blocks.h"
#include "kernels/codec.h"
#include "kernels/gemv.h"
#include "kernels/gemv_impl.h"
#include "tests/support/kernel_gen.h"
#ifndef MOEC_KERNELS_ONLY  // kernels_asan_test builds the kernels alone (CMakeLists.txt)
#include "quantize/checkpoint.h"
#endif

using namespace moec;

namespace {

using test::Gen;
using test::name;
using test::random_qm;

// N(0, 1) activations with a few outliers and an all-zero stretch, as real activations have.
std::vector<float> random_x(size_t n, uint32_t seed) {
  std::vector<float> x = test::random_x(n, seed);
  for (size_t i = 0; i < n; i += 97) x[i] *= 20.0f;
  for (size_t i = 40; i < std::min(n, size_t(72)); ++i) x[i] = 0.0f;
  return x;
}

// Set some tern2 codes to the reserved value 3 (decoders read it as 0).
void add_reserved_codes(PackedMatrix& m, uint32_t seed) {
  if (m.codec != Codec::Tern2) return;
  std::mt19937 rng(seed);
  for (auto& byte : m.codes)
    if (rng() % 5 == 0) byte |= uint8_t(3u << (2 * (rng() % 4)));
}

std::vector<Gen> grid() {
  std::vector<Gen> out;
  const int cols_list[] = {1, 31, 64, 100, 200, 257, 1000};
  const int rows_list[] = {1, 5, 37};
  int k = 0;
  for (Codec c : all_codecs())
    for (int cols : cols_list)
      for (int rows : rows_list) {
        ++k;
        const int groups[] = {0, 32, 64, 128, 96};
        int grp = groups[k % 5];
        if (grp >= cols) grp = 0;
        Gen g{c, rows, cols, grp};
        g.symmetric = k % 3 == 0;
        g.neg = k % 2 == 0;
        g.p0 = c == Codec::Subbit ? 0.85 : 0.5;
        out.push_back(g);
      }
  return out;
}

// Exact fp32-activation product in double and the two bounds for the q8 result: the activation-quantization
// error sum_j |w_j| d_b / 2 and a magnitude for float rounding in the combine.
struct Expect {
  std::vector<double> exact, qbound, mag;
};
Expect expect(const PackedView& v, const float* X, int n) {
  std::vector<float> Wd(size_t(v.rows) * size_t(v.cols));
  dequantize_ref(v, Wd.data());
  const int ka = act_block_cols(v), nb = (v.cols + ka - 1) / ka;
  std::vector<int8_t> xq(size_t(nb) * size_t(ka));
  std::vector<float> d(static_cast<size_t>(nb));
  std::vector<int32_t> sums(static_cast<size_t>(nb));
  Expect e;
  const size_t ny = size_t(n) * size_t(v.rows);
  e.exact.resize(ny);
  e.qbound.resize(ny);
  e.mag.resize(ny);
  const bool tern = codec_is_ternary(v.codec);
  for (int t = 0; t < n; ++t) {
    const float* x = X + size_t(t) * size_t(v.cols);
    quantize_act_q8(x, v.cols, ka, xq.data(), d.data(), sums.data());
    for (int r = 0; r < v.rows; ++r) {
      double s = 0, qb = 0, mg = 0;
      for (int c = 0; c < v.cols; ++c) {
        const double w = Wd[size_t(r) * size_t(v.cols) + size_t(c)];
        const int g = c / v.group_size();
        const double db = d[size_t(c / ka)];
        s += w * x[c];
        qb += std::fabs(w) * db * (0.5 + 1e-5);
        const double coef = tern ? double(v.scale(r, g)) + double(v.neg_scale(r, g))
                                 : double(v.scale(r, g)) * (255.0 + std::fabs(double(v.zero(r, g))));
        mg += (std::fabs(w) + coef) * (std::fabs(x[c]) + db);
      }
      const size_t i = size_t(t) * size_t(v.rows) + size_t(r);
      e.exact[i] = s;
      e.qbound[i] = qb;
      e.mag[i] = mg;
    }
  }
  return e;
}

}  // namespace

TEST(KernelsQ8, ActivationQuantizationHandExample) {
  // amax = 127 -> d = 1, so xq = round-half-even(x), clamped.
  const float x[6] = {127.0f, 2.5f, 3.5f, -2.5f, 0.49f, -126.6f};
  int8_t xq[32];
  float d;
  int32_t s;
  quantize_act_q8(x, 6, 32, xq, &d, &s);
  EXPECT_EQ(d, 1.0f);
  const int8_t want[6] = {127, 2, 4, -2, 0, -127};
  for (int j = 0; j < 6; ++j) EXPECT_EQ(xq[j], want[j]) << j;
  for (int j = 6; j < 32; ++j) EXPECT_EQ(xq[j], 0) << j;
  EXPECT_EQ(s, 127 + 2 + 4 - 2 + 0 - 127);
  // All-zero block: d = 0, xq = 0; a NaN or inf: d = NaN, xq = 0.
  const float z[3] = {0.0f, -0.0f, 0.0f};
  quantize_act_q8(z, 3, 32, xq, &d, &s);
  EXPECT_EQ(d, 0.0f);
  EXPECT_EQ(s, 0);
  const float bad[3] = {1.0f, std::numeric_limits<float>::infinity(), 2.0f};
  quantize_act_q8(bad, 3, 32, xq, &d, &s);
  EXPECT_TRUE(std::isnan(d));
  EXPECT_EQ(xq[0], 0);
}

TEST(KernelsQ8, ActivationQuantizationMatchesNaiveAndSimd) {
  for (int ka : {32, 64, 128})
    for (int cols : {1, 17, 32, 100, 128, 1000, 4099}) {
      std::vector<float> x = random_x(size_t(cols), uint32_t(cols * 3 + ka));
      const int nb = (cols + ka - 1) / ka;
      std::vector<int8_t> xq(size_t(nb) * size_t(ka), 99), xq2(xq.size(), 77);
      std::vector<float> d(static_cast<size_t>(nb)), d2(static_cast<size_t>(nb));
      std::vector<int32_t> s(static_cast<size_t>(nb)), s2(static_cast<size_t>(nb));
      quantize_act_q8(x.data(), cols, ka, xq.data(), d.data(), s.data());
      for (int b = 0; b < nb; ++b) {
        // Naive: amax in double, d = amax / 127, xq the nearest integer to x / d (a tie may go either way).
        double amax = 0;
        for (int j = b * ka; j < std::min(cols, (b + 1) * ka); ++j) amax = std::max(amax, std::fabs(double(x[size_t(j)])));
        ASSERT_NEAR(d[size_t(b)], amax / 127.0, 1e-7 * amax) << "ka " << ka << " cols " << cols << " b " << b;
        int64_t sum = 0;
        for (int j = b * ka; j < (b + 1) * ka; ++j) {
          const int q = xq[size_t(j)];
          if (j >= cols) {
            ASSERT_EQ(q, 0);
            continue;
          }
          const double r = amax > 0 ? double(x[size_t(j)]) / double(d[size_t(b)]) : 0.0;
          ASSERT_LE(std::fabs(r - q), 0.5 + 1e-5) << "ka " << ka << " j " << j;
          ASSERT_LE(std::abs(q), 127);
          sum += q;
        }
        ASSERT_EQ(s[size_t(b)], sum);
      }
      if (q8_vnni_supported()) {
        detail::quantize_act_q8_avx512(x.data(), cols, ka, xq2.data(), d2.data(), s2.data());
        ASSERT_EQ(xq, xq2) << "ka " << ka << " cols " << cols;
        ASSERT_EQ(0, std::memcmp(d.data(), d2.data(), 4 * d.size()));
        ASSERT_EQ(s, s2);
      }
    }
}

TEST(KernelsQ8, VnniMatchesReferenceAndErrorBound) {
  uint32_t seed = 500;
  int checked = 0;
  for (const Gen& g : grid()) {
    PackedMatrix m = pack(random_qm(g, seed++), g.codec);
    add_reserved_codes(m, seed);
    const PackedView v = m.view();
    for (int n : {1, 2, 3, 4, 5, 8, 11, 16}) {
      std::vector<float> X = random_x(size_t(n) * size_t(g.cols), seed * 13 + uint32_t(n));
      const Expect e = expect(v, X.data(), n);
      std::vector<float> Yref(e.exact.size(), NAN), Y(e.exact.size(), NAN);
      matmul_q8_ref(v, X.data(), n, Yref.data());
      for (size_t i = 0; i < Y.size(); ++i)
        ASSERT_NEAR(Yref[i], e.exact[i], e.qbound[i] + 1e-6 * e.mag[i] + 1e-30) << name(g) << " n=" << n << " i=" << i;
      for (Isa isa : {Isa::Scalar, Isa::Avx2, Isa::Avx512}) {
        if (!isa_supported(isa)) continue;
        std::fill(Y.begin(), Y.end(), NAN);
        matmul(v, X.data(), n, Y.data(), isa, ActQuant::Int8);
        const bool kernel = isa == Isa::Avx512 && q8_vnni_supported();
        for (size_t i = 0; i < Y.size(); ++i) {
          if (!kernel) {
            ASSERT_EQ(Y[i], Yref[i]) << name(g) << " fallback " << isa_name(isa);  // the fallback is the reference
            continue;
          }
          ASSERT_NEAR(Y[i], Yref[i], 2e-6 * e.mag[i] + 1e-30) << name(g) << " n=" << n << " i=" << i;
        }
        checked += kernel;
      }
    }
  }
  if (!q8_vnni_supported()) GTEST_SKIP() << "no AVX512_VNNI: only the reference and the fallback were checked";
  EXPECT_GT(checked, 0);
}

TEST(KernelsQ8, ExactIntegerPartOnLargeValues) {
  // int8 codes 255 and 0 against constant activations: xq = +-127 everywhere, the largest products the kernel
  // sees; with d = 1 and scale 1, zero 0 the result is an exact integer far beyond 2^24 / 255.
  for (int cols : {4096, 5000}) {
    QuantizedMatrix q;
    q.rows = 3;
    q.cols = cols;
    q.group = 0;
    q.bits = 8;
    q.kind = CodeKind::Int;
    q.q.assign(size_t(3) * size_t(cols), int8_t(uint8_t(255)));
    for (int c = 0; c < cols; c += 7) q.q[size_t(cols) + size_t(c)] = 0;
    q.scale = {1.0f, 1.0f, 1.0f};
    q.zero = {0.0f, 0.0f, 0.0f};
    PackedMatrix m = pack(q, Codec::Int8);
    std::vector<float> x(size_t(cols), 127.0f), Y(3), Yr(3);
    for (int c = 1; c < cols; c += 2) x[size_t(c)] = -127.0f;
    matmul(m.view(), x.data(), 1, Y.data(), best_isa(), ActQuant::Int8);
    matmul_q8_ref(m.view(), x.data(), 1, Yr.data());
    for (int r = 0; r < 3; ++r) {
      double want = 0;
      for (int c = 0; c < cols; ++c) want += double(uint8_t(q.q[size_t(r) * size_t(cols) + size_t(c)])) * x[size_t(c)];
      EXPECT_NEAR(Y[size_t(r)], want, 1e-6 * 255 * 127 * cols) << r;
      EXPECT_NEAR(Yr[size_t(r)], want, 1e-6 * 255 * 127 * cols) << r;
    }
  }
}

TEST(KernelsQ8, ThreadCountIndependentAndNonFinite) {
  for (Codec c : all_codecs()) {
    Gen g{c, 300, 1000, c == Codec::Subbit ? 0 : 128};
    g.neg = c == Codec::Tern2;
    g.p0 = 0.8;
    PackedMatrix m = pack(random_qm(g, 11), c);
    std::vector<float> X = random_x(size_t(5) * 1000, 6);
    std::vector<float> Y1(5 * 300), Y2(5 * 300);
    omp_set_num_threads(1);
    matmul(m.view(), X.data(), 5, Y1.data(), best_isa(), ActQuant::Int8);
    omp_set_num_threads(2);
    matmul(m.view(), X.data(), 5, Y2.data(), best_isa(), ActQuant::Int8);
    EXPECT_EQ(0, std::memcmp(Y1.data(), Y2.data(), Y1.size() * 4)) << codec_name(c);
    // A NaN in token 0 makes its outputs NaN (as with fp32 activations); token 1 is unaffected.
    X[3] = NAN;
    matmul(m.view(), X.data(), 2, Y2.data(), best_isa(), ActQuant::Int8);
    EXPECT_TRUE(std::isnan(Y2[0])) << codec_name(c);
    EXPECT_EQ(Y2[300], Y1[300]) << codec_name(c);
  }
}

TEST(KernelsQ8, DefaultSwitch) {
  EXPECT_EQ(default_act_quant(), ActQuant::None);
  set_default_act_quant(ActQuant::Int8);
  EXPECT_EQ(default_act_quant(), ActQuant::Int8);
  set_default_act_quant(ActQuant::None);
  EXPECT_STREQ(act_quant_name(ActQuant::Int8), "int8");
}

#ifndef MOEC_KERNELS_ONLY
TEST(KernelsQ8, PackedLinearFollowsTheSwitch) {
  // 40 tokens: beyond the fused-kernel batch limit, where the fp32 path dequantizes and uses GEMM.
  Gen g{Codec::Tern2, 70, 300, 128};
  g.neg = true;
  PackedMatrix m = pack(random_qm(g, 21), g.codec);
  auto lin = quantize::PackedLinear::owning(m);
  const int n = 40;
  std::vector<float> X = random_x(size_t(n) * 300, 22);
  Matrix Xm(n, 300), Y0, Y1;
  std::memcpy(Xm.data(), X.data(), X.size() * 4);
  std::vector<float> want(size_t(n) * 70);
  matmul(m.view(), X.data(), n, want.data(), best_isa(), ActQuant::Int8);
  lin->forward(Xm, Y0);
  set_default_act_quant(ActQuant::Int8);
  lin->forward(Xm, Y1);
  set_default_act_quant(ActQuant::None);
  const Expect e = expect(m.view(), X.data(), n);
  for (int t = 0; t < n; ++t)
    for (int r = 0; r < 70; ++r) {
      const size_t i = size_t(t) * 70 + size_t(r);
      EXPECT_EQ(Y1(t, r), want[i]) << t << "," << r;
      EXPECT_NEAR(Y0(t, r), e.exact[i], 1e-5 * e.mag[i]) << t << "," << r;
      EXPECT_NEAR(Y1(t, r), e.exact[i], e.qbound[i] + 1e-6 * e.mag[i]) << t << "," << r;
    }
}
#endif
