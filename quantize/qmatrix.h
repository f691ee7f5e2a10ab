// QuantizedMatrix: the value that quantizers produce and codecs pack. One element per weight,
// unpacked, so that quantizers (RTN, GPTQ, ternary) and codecs (kernels/) stay independent.
#pragma once
#include <cstdint>
#include <vector>

namespace moec {

enum class CodeKind : uint8_t {
  Int = 0,      // w = scale * (q - zero), q in [0, 2^bits - 1]; symmetric: zero = 2^(bits-1)
  Ternary = 1,  // q in {-1, 0, +1}: w = +scale (q=+1), -neg_scale (q=-1; neg_scale empty => scale), 0
};

struct QuantizedMatrix {
  int rows = 0, cols = 0;     // W is [rows, cols] = [out, in], row-major, as Hugging Face stores it
  CodeKind kind = CodeKind::Int;
  int bits = 4;               // Int: 2, 3, 4 or 8. Ternary: 2 (the nominal code width before entropy coding)
  int group = 0;              // scale group size along cols; groups = ceil(cols / group); last one may be partial
  std::vector<int8_t> q;      // rows * cols codes (Int codes as unsigned values 0..2^bits-1 stored in int8 via
                              // static_cast<uint8_t>; Ternary: -1/0/+1)
  std::vector<float> scale;   // rows * groups; values exactly representable in fp16 (the packed form stores fp16)
  std::vector<float> zero;    // Int only: rows * groups zero points (integers, exactly representable in fp16)
  std::vector<float> neg_scale;  // Ternary only, optional: magnitude for -1 codes (QMoE's {min, 0, max})

  int groups() const { return group > 0 ? (cols + group - 1) / group : 1; }
  int group_size() const { return group > 0 ? group : cols; }

  // Weight (r, c) as the codes say.
  float dequant(int r, int c) const {
    int g = c / group_size();
    size_t gi = size_t(r) * size_t(groups()) + size_t(g);
    int8_t v = q[size_t(r) * size_t(cols) + size_t(c)];
    if (kind == CodeKind::Ternary) {
      if (v > 0) return scale[gi];
      if (v < 0) return -(neg_scale.empty() ? scale[gi] : neg_scale[gi]);
      return 0.0f;
    }
    return scale[gi] * (float(uint8_t(v)) - zero[gi]);
  }
};

}  // namespace moec
