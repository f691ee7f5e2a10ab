// The per-group "grid" quantizer shared by RTN and GPTQ: fit a group's parameters (scale, zero, negative
// scale) from its current weights, then map single weights to codes. Parameters are fp16-exact by
// construction: the scale is rounded to fp16 *before* codes and zeros are computed from it, so packing the
// scale as fp16 loses nothing.
#pragma once
#include <cstdint>
#include <vector>

#include "quantize/spec.h"

namespace moec {

struct GridParams {
  float scale = 0.0f;      // Int: step. Ternary: magnitude of +1 (and of -1 unless MinMax)
  float zero = 0.0f;       // Int: zero point (integer in [0, 2^bits - 1])
  float neg_scale = 0.0f;  // Ternary MinMax: magnitude of -1
};

// Fits the grid for the n values x[0..n). Throws moec::Error if a scale is not finite in fp16.
GridParams fit_grid(const QuantSpec& s, const float* x, int n);

// Throws moec::Error naming `what` and the first (row, col) holding NaN or infinity.
void check_finite(const float* data, int rows, int cols, const char* what);

// Packs codes (rows * cols, row-major) and per-(row, group) parameters into the hand-off value.
QuantizedMatrix assemble_qmatrix(const QuantSpec& s, int rows, int cols, std::vector<int8_t> codes,
                                 const std::vector<GridParams>& params);

// Nearest code on the grid (Int: unsigned 0..2^bits-1 stored via uint8_t; Ternary: -1/0/+1).
inline int8_t grid_code(const QuantSpec& s, const GridParams& p, float w);
// Ternary with an explicit deadzone (GPTQ's per-column rate-aware deadzone); Int specs ignore `deadzone`.
inline int8_t grid_code(const QuantSpec& s, const GridParams& p, float w, float deadzone);
// The weight a code stands for (same formula as QuantizedMatrix::dequant).
inline float grid_value(const QuantSpec& s, const GridParams& p, int8_t q);

}  // namespace moec

#include <algorithm>
#include <cmath>

namespace moec {

inline int8_t grid_code(const QuantSpec& s, const GridParams& p, float w, float deadzone) {
  if (s.kind == CodeKind::Int) {
    float maxq = float((1 << s.bits) - 1);
    float q = std::clamp(std::nearbyint(w / p.scale) + p.zero, 0.0f, maxq);
    return int8_t(uint8_t(q));
  }
  // w / scale > deadzone is round-to-nearest for the default 0.5 (nearbyint rounds the tie 0.5 to 0).
  if (w >= 0.0f) return p.scale > 0.0f && w / p.scale > deadzone ? int8_t(1) : int8_t(0);
  float neg = s.ternary_scale == TernaryScale::MinMax ? p.neg_scale : p.scale;
  return neg > 0.0f && -w / neg > deadzone ? int8_t(-1) : int8_t(0);
}

inline int8_t grid_code(const QuantSpec& s, const GridParams& p, float w) {
  return grid_code(s, p, w, s.deadzone + s.rate);  // no per-column weights: every column at the mean
}

inline float grid_value(const QuantSpec& s, const GridParams& p, int8_t q) {
  if (s.kind == CodeKind::Int) return p.scale * (float(uint8_t(q)) - p.zero);
  if (q > 0) return p.scale;
  if (q < 0) return -(s.ternary_scale == TernaryScale::MinMax ? p.neg_scale : p.scale);
  return 0.0f;
}

}  // namespace moec
