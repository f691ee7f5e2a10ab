// Random quantized matrices and activations for the kernel tests (header-only: the sanitized kernel test
// target, kernels_asan_test, builds without the rest of the library).
#pragma once
#include <random>
#include <string>
#include <vector>

#include "core/half.h"
#include "kernels/codec.h"

namespace moec::test {

struct Gen {
  Codec codec;
  int rows, cols, group;
  bool symmetric = false;  // Int codecs
  bool neg = false;        // ternary codecs: separate negative scale
  double p0 = 0.5;         // ternary: probability of a zero code
};

// Random codes of g's codec and shape with fp16-exact scales (and zeros / negative scales as g asks).
inline QuantizedMatrix random_qm(const Gen& g, uint32_t seed) {
  std::mt19937 rng(seed);
  QuantizedMatrix q;
  q.rows = g.rows;
  q.cols = g.cols;
  q.group = g.group;
  const bool tern = codec_is_ternary(g.codec);
  q.kind = tern ? CodeKind::Ternary : CodeKind::Int;
  q.bits = codec_bits(g.codec);
  q.q.resize(size_t(g.rows) * size_t(g.cols));
  std::uniform_real_distribution<float> u(0.0f, 1.0f);
  for (auto& v : q.q) {
    if (tern) {
      const float a = u(rng);
      v = a < g.p0 ? 0 : (u(rng) < 0.5f ? 1 : -1);
    } else {
      v = int8_t(uint8_t(rng() % (1u << q.bits)));
    }
  }
  const size_t ng = size_t(g.rows) * size_t(q.groups());
  for (size_t i = 0; i < ng; ++i) {
    q.scale.push_back(round_f16(0.001f + 0.05f * u(rng)));
    if (!tern) q.zero.push_back(g.symmetric ? float(1 << (q.bits - 1)) : float(rng() % (1u << q.bits)));
    if (tern && g.neg) q.neg_scale.push_back(round_f16(0.001f + 0.05f * u(rng)));
  }
  return q;
}

// n i.i.d. N(0, 1) values.
inline std::vector<float> random_x(size_t n, uint32_t seed) {
  std::mt19937 rng(seed);
  std::normal_distribution<float> d(0.0f, 1.0f);
  std::vector<float> x(n);
  for (auto& v : x) v = d(rng);
  return x;
}

inline std::string name(const Gen& g) {
  return std::string(codec_name(g.codec)) + " " + std::to_string(g.rows) + "x" + std::to_string(g.cols) + " g" +
         std::to_string(g.group) + (g.symmetric ? " sym" : "") + (g.neg ? " neg" : "");
}

}  // namespace moec::test
