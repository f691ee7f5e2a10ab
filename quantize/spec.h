// QuantSpec: what a quantizer should produce (code kind, width, scale groups, symmetry, ternary scale rule),
// and its text form ("int4:g128", "int2:g128:asym", "ternary:absmean", ...). See docs/QUANTIZATION.md.
#pragma once
#include <string>

#include "quantize/qmatrix.h"

namespace moec {

enum class TernaryScale : uint8_t {
  AbsMean = 0,  // BitNet b1.58: scale = mean|w| of the group, q = clamp(round(w / scale), -1, 1)
  MinMax = 1,   // QMoE-style {min, 0, max}: +1 -> max(w), -1 -> min(w) (separate + and - magnitudes)
  Opt = 2,      // one scale and threshold chosen to minimise the group's squared error (exact, by sorting)
};

struct QuantSpec {
  CodeKind kind = CodeKind::Int;
  int bits = 4;            // Int: 2, 3, 4, 8. Ternary: 2 (nominal code width)
  int group = 0;           // scale group along cols; 0 = one group per row
  bool symmetric = true;   // Int only: zero = 2^(bits-1); asymmetric: zero fitted per group
  TernaryScale ternary_scale = TernaryScale::AbsMean;  // Ternary only
  // Ternary only: a weight becomes +1 (-1) when w / scale > deadzone (-w / neg_scale > deadzone), else 0.
  // 0.5 = round to nearest. Larger values give more zeros, which the sub-bit code stores in fewer bits.
  float deadzone = 0.5f;
  // Ternary + GPTQ only: rate-aware deadzone. Column j's deadzone is deadzone + rate * d_j / mean(d), where
  // d_j is GPTQ's error weight for column j (the squared diagonal of the inverse-Hessian Cholesky factor): a
  // zero costs less output error where d_j is large, so zeros go where they are cheapest (entropy-constrained
  // quantization with the rate term folded into the threshold). 0 = off. RTN has no d_j: it uses the mean.
  float rate = 0.0f;

  bool operator==(const QuantSpec&) const = default;
};

// Parses "KIND[:OPT...]": KIND = int8 | int4 | int3 | int2 | ternary; OPT (any order, each at most once):
// gN (group of N columns, N >= 1) | row (per-row scales, the default) | sym (default) | asym (Int only) |
// absmean (default) | minmax | opt | dzF (deadzone F in (0, 2], default 0.5) | rdF (rate-aware
// deadzone weight F in [0, 2], default 0) (Ternary only). Throws moec::Error naming the spec and the allowed values.
QuantSpec parse_quant_spec(const std::string& text);

// Canonical text form; parse_quant_spec(to_string(s)) == s.
std::string to_string(const QuantSpec& s);

// Throws unless the spec is one this library can produce (bits, group >= 0, ...).
void validate(const QuantSpec& s);

// Nominal storage cost in bits per weight for a [rows, cols] matrix: code bits plus one fp16 scale per group
// (plus an fp16 zero per group when asymmetric, plus an fp16 negative scale per group for MinMax ternary).
double bits_per_weight(const QuantSpec& s, int cols);

}  // namespace moec
