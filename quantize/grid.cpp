#include "quantize/grid.h"

#include <vector>

#include "core/error.h"
#include "core/half.h"

namespace moec {
namespace {

// Smallest positive fp16 (subnormal 2^-24): used when a non-zero step would round to 0.
constexpr float kMinF16 = 5.9604644775390625e-08f;

float f16_scale(float v, const char* what) {
  float r = round_f16(v);
  if (!std::isfinite(r))
    fail("quantize: ", what, " ", v, " is not representable in fp16 (weights too large or not finite)");
  return r;
}

}  // namespace

GridParams fit_grid(const QuantSpec& s, const float* x, int n) {
  GridParams p;
  if (s.kind == CodeKind::Int) {
    // GPTQ reference grid: the range always contains 0; symmetric uses [-amax, amax].
    float xmin = 0.0f, xmax = 0.0f;
    for (int i = 0; i < n; ++i) xmin = std::min(xmin, x[i]), xmax = std::max(xmax, x[i]);
    if (s.symmetric) {
      float amax = std::max(-xmin, xmax);
      xmin = -amax, xmax = amax;
    }
    if (xmin == 0.0f && xmax == 0.0f) xmin = -1.0f, xmax = 1.0f;  // all-zero group: any grid with 0 on it
    float maxq = float((1 << s.bits) - 1);
    p.scale = f16_scale((xmax - xmin) / maxq, "int scale");
    if (p.scale == 0.0f) p.scale = kMinF16;
    p.zero = s.symmetric ? float(1 << (s.bits - 1)) : std::clamp(std::nearbyint(-xmin / p.scale), 0.0f, maxq);
    return p;
  }
  switch (s.ternary_scale) {
    case TernaryScale::AbsMean: {
      double sum = 0.0;
      for (int i = 0; i < n; ++i) sum += std::fabs(x[i]);
      p.scale = f16_scale(n > 0 ? float(sum / n) : 0.0f, "ternary absmean scale");
      break;
    }
    case TernaryScale::MinMax: {
      float xmin = 0.0f, xmax = 0.0f;
      for (int i = 0; i < n; ++i) xmin = std::min(xmin, x[i]), xmax = std::max(xmax, x[i]);
      p.scale = f16_scale(xmax, "ternary max scale");
      p.neg_scale = f16_scale(-xmin, "ternary min scale");
      break;
    }
    case TernaryScale::Opt: {
      // For a fixed support S (the non-zero codes) the best scale is mean_{S}|w| and the error is
      // sum w^2 - (sum_S |w|)^2 / |S|; the best S of each size is the largest |w|. So sort and scan k.
      std::vector<float> a(x, x + n);
      for (float& v : a) v = std::fabs(v);
      std::sort(a.begin(), a.end(), std::greater<float>());
      double prefix = 0.0, best_gain = 0.0, best_scale = 0.0;
      for (int k = 1; k <= n; ++k) {
        prefix += a[k - 1];
        double gain = prefix * prefix / k;
        if (gain > best_gain) best_gain = gain, best_scale = prefix / k;
      }
      p.scale = f16_scale(float(best_scale), "ternary opt scale");
      break;
    }
  }
  return p;
}

void check_finite(const float* data, int rows, int cols, const char* what) {
  for (int r = 0; r < rows; ++r)
    for (int c = 0; c < cols; ++c)
      if (!std::isfinite(data[size_t(r) * cols + c]))
        fail(what, ": non-finite value ", data[size_t(r) * cols + c], " at (", r, ", ", c, ")");
}

QuantizedMatrix assemble_qmatrix(const QuantSpec& s, int rows, int cols, std::vector<int8_t> codes,
                                 const std::vector<GridParams>& params) {
  QuantizedMatrix m;
  m.rows = rows, m.cols = cols, m.kind = s.kind, m.bits = s.bits, m.group = s.group;
  int groups = m.groups();
  if (codes.size() != size_t(rows) * size_t(cols) || params.size() != size_t(rows) * size_t(groups))
    fail("assemble_qmatrix: ", codes.size(), " codes / ", params.size(), " groups for a ", rows, "x", cols,
         " matrix with ", groups, " groups per row");
  m.q = std::move(codes);
  m.scale.resize(params.size());
  for (size_t i = 0; i < params.size(); ++i) m.scale[i] = params[i].scale;
  if (s.kind == CodeKind::Int) {
    m.zero.resize(params.size());
    for (size_t i = 0; i < params.size(); ++i) m.zero[i] = params[i].zero;
  } else if (s.ternary_scale == TernaryScale::MinMax) {
    m.neg_scale.resize(params.size());
    for (size_t i = 0; i < params.size(); ++i) m.neg_scale[i] = params[i].neg_scale;
  }
  return m;
}

}  // namespace moec
