// CUDA kernels against the CPU scalar reference (skipped without a device).
#include <gtest/gtest.h>

#include <cmath>
#include <random>

#include "core/error.h"
#include "core/half.h"
#include "kernels/codec.h"
#include "kernels/cuda_api.h"
#include "kernels/gemv.h"

using namespace moec;

namespace {
QuantizedMatrix random_qm(Codec c, int rows, int cols, int group, bool opt, uint32_t seed) {
  std::mt19937 rng(seed);
  std::uniform_real_distribution<float> u(0.0f, 1.0f);
  QuantizedMatrix q;
  q.rows = rows;
  q.cols = cols;
  q.group = group;
  q.bits = codec_bits(c);
  const bool tern = codec_is_ternary(c);
  q.kind = tern ? CodeKind::Ternary : CodeKind::Int;
  for (size_t i = 0; i < size_t(rows) * size_t(cols); ++i)
    q.q.push_back(tern ? int8_t(u(rng) < 0.8f ? 0 : (rng() & 1 ? 1 : -1)) : int8_t(uint8_t(rng() % (1u << q.bits))));
  for (size_t i = 0; i < size_t(rows) * size_t(q.groups()); ++i) {
    q.scale.push_back(round_f16(0.001f + 0.05f * u(rng)));
    if (!tern) q.zero.push_back(opt ? float(1 << (q.bits - 1)) : float(rng() % (1u << q.bits)));
    if (tern && opt) q.neg_scale.push_back(round_f16(0.001f + 0.05f * u(rng)));
  }
  return q;
}
}  // namespace

TEST(Cuda, MatmulMatchesCpuReference) {
  if (!cuda_available()) GTEST_SKIP() << "no CUDA device: " << cuda_device_info();
  std::printf("device: %s\n", cuda_device_info().c_str());
  uint32_t seed = 1;
  for (Codec c : all_codecs())
    for (int cols : {1, 31, 100, 257, 1000, 4096})
      for (int rows : {1, 3, 17, 300}) {
        const int group = cols % 3 == 0 ? 0 : 64;
        QuantizedMatrix q = random_qm(c, rows, cols, group, seed % 2 == 0, seed);
        ++seed;
        PackedMatrix m = pack(q, c);
        CudaPackedMatrix g(m.view());
        for (int n : {1, 5, 16}) {
          std::mt19937 rng(seed);
          std::normal_distribution<float> nd;
          std::vector<float> X(size_t(n) * size_t(cols));
          for (auto& v : X) v = nd(rng);
          std::vector<float> Yc(size_t(n) * size_t(rows)), Yg(Yc.size(), NAN);
          matmul_ref(m.view(), X.data(), n, Yc.data());
          g.matmul_host(X.data(), n, Yg.data());
          for (size_t i = 0; i < Yc.size(); ++i) {
            const int t = int(i) / rows, r = int(i) % rows;
            double mag = 0;
            for (int k = 0; k < cols; ++k) mag += std::fabs(double(q.dequant(r, k)) * X[size_t(t) * size_t(cols) + size_t(k)]);
            ASSERT_NEAR(Yg[i], Yc[i], 1e-5 * mag + 1e-30) << codec_name(c) << " " << rows << "x" << cols << " n=" << n;
          }
        }
      }
}

TEST(Cuda, FallbackOrErrorsAreClear) {
  if (cuda_available()) {
    QuantizedMatrix q = random_qm(Codec::Int4, 2, 64, 0, false, 3);
    PackedMatrix m = pack(q, Codec::Int4);
    CudaPackedMatrix g(m.view());
    std::vector<float> X(64 * 17), Y(2 * 17);
    EXPECT_THROW(g.matmul_host(X.data(), 17, Y.data()), Error);  // batch limit
  } else {
    QuantizedMatrix q = random_qm(Codec::Int4, 2, 64, 0, false, 3);
    PackedMatrix m = pack(q, Codec::Int4);
    EXPECT_THROW(CudaPackedMatrix g(m.view()), Error);
  }
}
