// int8-activation path: the activation quantization (definition), the scalar reference matmul_q8_ref, and the
// byte order of the AVX-512 VNNI kernel (q8_column). Overview: docs/CODECS.md, "int8 activations".
#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstring>
#include <limits>
#include <vector>

#include "core/error.h"
#include "kernels/blocks.h"
#include "kernels/gemv.h"
#include "kernels/gemv_impl.h"
#include "kernels/subbit.h"

namespace moec {

const char* act_quant_name(ActQuant a) { return a == ActQuant::Int8 ? "int8" : "fp32"; }

int act_block_cols(const PackedView& W) {
  if (W.group <= 0 || W.groups() == 1 || W.group % 128 == 0) return 128;
  return W.group % 64 == 0 ? 64 : 32;
}

void quantize_act_q8(const float* x, int cols, int ka, int8_t* xq, float* d, int32_t* sums) {
  const int nb = (cols + ka - 1) / ka;
  for (int b = 0; b < nb; ++b) {
    const int c0 = b * ka, c1 = std::min(cols, c0 + ka);
    uint32_t mb = 0;  // max |x| as a bit pattern: NaN/inf patterns are the largest
    for (int j = c0; j < c1; ++j) {
      uint32_t u;
      std::memcpy(&u, x + j, 4);
      mb = std::max(mb, u & 0x7fffffffu);
    }
    float amax;
    std::memcpy(&amax, &mb, 4);
    std::fill(xq + c0, xq + c0 + ka, int8_t(0));
    sums[b] = 0;
    if (mb >= 0x7f800000u) {
      d[b] = std::numeric_limits<float>::quiet_NaN();
      continue;
    }
    const float db = amax / 127.0f;
    d[b] = db;
    if (db == 0.0f) continue;  // all zero (or below 127 * the smallest subnormal): xq = 0
    int32_t s = 0;
    for (int j = c0; j < c1; ++j) {
      const float v = std::nearbyint(x[j] / db);  // round half to even (default rounding mode, as cvtps2dq)
      const int q = std::clamp(int(v), -127, 127);
      xq[j] = int8_t(q);
      s += q;
    }
    sums[b] = s;
  }
}

namespace {
std::atomic<int> g_default_act{int(ActQuant::None)};
}
void set_default_act_quant(ActQuant a) { g_default_act.store(int(a)); }
ActQuant default_act_quant() { return ActQuant(g_default_act.load()); }

bool q8_vnni_supported() {
#if defined(__x86_64__) || defined(__i386__)
  return isa_supported(Isa::Avx512) && __builtin_cpu_supports("avx512vnni");
#else
  return false;
#endif
}

namespace {

// Group of activation block b (act_block_cols divides the group size whenever there is more than one group).
inline int group_of_block(const PackedView& W, int b, int ka) {
  return W.groups() == 1 ? 0 : (b * ka) / W.group;
}

template <class Block>
void q8_ref_rows(const PackedView& W, const uint8_t* row_codes, int r, const int8_t* xq, const float* d,
                 const float* ds, int ka, float* y) {
  constexpr bool tern = std::is_same_v<Block, BlockTern2>;
  const int nb = (W.cols + ka - 1) / ka, G = W.groups();
  const Block* blocks = reinterpret_cast<const Block*>(row_codes);
  float acc = 0.0f;
  for (int b = 0; b < nb; ++b) {
    const int g = group_of_block(W, b, ka);
    const int c0 = b * ka, c1 = std::min(W.cols, c0 + ka);
    int64_t I1 = 0, I2 = 0;  // exact integer dots of the block
    for (int c = c0; c < c1; ++c) {
      const unsigned code = block_code(blocks[c >> 5], c & 31);
      if constexpr (tern) {
        const int t = tern_from_code(code);
        I1 += int64_t(t + 1) * xq[c];
        I2 += int64_t(t * t) * xq[c];
      } else {
        I1 += int64_t(code) * xq[c];
      }
    }
    const float s = W.scale(r, g);
    if constexpr (tern) {
      const bool neg = W.neg_scales != nullptr;
      const float ns = W.neg_scale(r, g);
      const float a = neg ? (s + ns) * 0.5f : s, bb = neg ? (s - ns) * 0.5f : 0.0f;
      acc += (a * d[b]) * float(I1);
      if (neg) acc += (bb * d[b]) * float(I2);
    } else {
      acc += (s * d[b]) * float(I1);
    }
  }
  // Offset terms: zero point (int codes) or the -1 of t + 1 (ternary), once per group.
  float off = 0.0f;
  for (int g = 0; g < G; ++g) {
    const float s = W.scale(r, g);
    float c;
    if constexpr (tern) c = W.neg_scales ? (s + W.neg_scale(r, g)) * 0.5f : s;
    else c = s * W.zero(r, g);
    off += c * ds[g];
  }
  *y = acc - off;
}

}  // namespace

void matmul_q8_ref(const PackedView& W, const float* X, int n, float* Y) {
  if (W.rows < 1 || W.cols < 1 || !W.codes || !W.scales) fail("matmul_q8_ref: empty or incomplete packed view");
  if (W.codec == Codec::Subbit && (!W.row_offsets || !W.dict)) fail("matmul_q8_ref: subbit view without offsets/dictionary");
  if (n < 1) fail("matmul_q8_ref: batch n = ", n, " must be >= 1");
  const int ka = act_block_cols(W), nb = (W.cols + ka - 1) / ka, G = W.groups();
  std::vector<int8_t> xq(static_cast<size_t>(nb) * static_cast<size_t>(ka));
  std::vector<float> d(static_cast<size_t>(nb)), ds(static_cast<size_t>(G));
  std::vector<int32_t> sums(static_cast<size_t>(nb));
  std::vector<uint64_t> buf(size_t(W.blocks_per_row()) + 1);
  for (int t = 0; t < n; ++t) {
    quantize_act_q8(X + size_t(t) * size_t(W.cols), W.cols, ka, xq.data(), d.data(), sums.data());
    std::fill(ds.begin(), ds.end(), 0.0f);
    for (int b = 0; b < nb; ++b) ds[size_t(group_of_block(W, b, ka))] += d[size_t(b)] * float(sums[size_t(b)]);
    float* y = Y + size_t(t) * size_t(W.rows);
    for (int r = 0; r < W.rows; ++r) {
      const uint8_t* rc = W.codes + size_t(r) * W.row_bytes();
      switch (W.codec) {
        case Codec::Int8: q8_ref_rows<BlockInt8>(W, rc, r, xq.data(), d.data(), ds.data(), ka, y + r); break;
        case Codec::Int4: q8_ref_rows<BlockInt4>(W, rc, r, xq.data(), d.data(), ds.data(), ka, y + r); break;
        case Codec::Int3: q8_ref_rows<BlockInt3>(W, rc, r, xq.data(), d.data(), ds.data(), ka, y + r); break;
        case Codec::Int2: q8_ref_rows<BlockInt2>(W, rc, r, xq.data(), d.data(), ds.data(), ka, y + r); break;
        case Codec::Tern2: q8_ref_rows<BlockTern2>(W, rc, r, xq.data(), d.data(), ds.data(), ka, y + r); break;
        case Codec::Subbit:
          subbit_decode_row(W, r, buf.data());
          q8_ref_rows<BlockTern2>(W, reinterpret_cast<const uint8_t*>(buf.data()), r, xq.data(), d.data(), ds.data(),
                                  ka, y + r);
          break;
      }
    }
  }
}

namespace detail {

// Byte P of the kernel's 64-code vector for 64-column slice: 2-bit codes (int2, tern2, int3 low bits): the
// slice's two 8-byte blocks broadcast to alternating qwords, qword 2i + h taking codes 8i..8i+7 of block h;
// int4: the 32-byte pair broadcast to both halves, qword 4h + j taking codes 16j + 8h .. 16j + 8h + 7;
// int8 and subbit (bytes): natural order.
int q8_column(const PackedView& W, int P) {
  const int qw = P >> 3, m = P & 7;
  switch (W.codec) {
    case Codec::Int2:
    case Codec::Tern2:
    case Codec::Int3: return 32 * (qw & 1) + 8 * (qw >> 1) + m;
    case Codec::Int4: return 16 * (qw & 3) + 8 * (qw >> 2) + m;
    default: return P;
  }
}

}  // namespace detail

}  // namespace moec
