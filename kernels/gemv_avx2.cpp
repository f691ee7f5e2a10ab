// AVX2 + FMA decode + multiply, 8 weights per vector. 2-bit/ternary/3-bit codes go through an 8-entry vpermps
// table (value(k & mask)); int4/int8 convert codes to float and apply (q - z) * s, the same float operations as
// int_value() in blocks.h, so decoded weights are bit-identical to the scalar reference.
// All headers come before the target pragma so that no inline library code is compiled for AVX2.
#include <immintrin.h>

#include <algorithm>
#include <cstring>

#include "kernels/blocks.h"
#include "kernels/gemv_impl.h"
#include "kernels/subbit.h"

#if defined(__GNUC__) && (defined(__x86_64__) || defined(__i386__))
#pragma GCC push_options
#pragma GCC target("avx2,fma,bmi2")

namespace moec::detail {
namespace {


inline __m256 int_table8(unsigned mask, float s, float z) {
  __m256i k = _mm256_and_si256(_mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7), _mm256_set1_epi32(int(mask)));
  return _mm256_mul_ps(_mm256_sub_ps(_mm256_cvtepi32_ps(k), _mm256_set1_ps(z)), _mm256_set1_ps(s));
}

// Each decoder yields 8 weights (quarter q = 0..3 of a block) at a time.
struct DecInt2 {
  static constexpr int kBytes = 8;
  __m256 tab;
  __m256i sh;
  // (Explicit constructors: GCC does not apply the target pragma to implicit ones.)
  DecInt2() : tab(_mm256_setzero_ps()), sh(_mm256_setr_epi32(0, 2, 4, 6, 8, 10, 12, 14)) {}
  void group(float s, float z) { tab = int_table8(3, s, z); }
  __m256 quarter(const uint8_t* p, int q) const {
    return _mm256_permutevar8x32_ps(tab, _mm256_srlv_epi32(_mm256_set1_epi32(int(ld16(p + 2 * q))), sh));
  }
};

struct DecTern2 : DecInt2 {
  DecTern2() : DecInt2() {}
  void group(float s, float ns) { tab = _mm256_setr_ps(0.0f, s, -ns, 0.0f, 0.0f, s, -ns, 0.0f); }
};

struct DecInt3 {
  static constexpr int kBytes = 12;
  __m256 tab;
  __m256i sh2, sh1, m3, m4;
  DecInt3()
      : tab(_mm256_setzero_ps()),
        sh2(_mm256_setr_epi32(0, 2, 4, 6, 8, 10, 12, 14)),
        sh1(_mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7)),
        m3(_mm256_set1_epi32(3)),
        m4(_mm256_set1_epi32(4)) {}
  void group(float s, float z) { tab = int_table8(7, s, z); }
  __m256 quarter(const uint8_t* p, int q) const {
    __m256i lo = _mm256_srlv_epi32(_mm256_set1_epi32(int(ld16(p + 2 * q))), sh2);
    __m256i hi = _mm256_srlv_epi32(_mm256_set1_epi32(int(uint32_t(p[8 + q]) << 2)), sh1);
    __m256i idx = _mm256_or_si256(_mm256_and_si256(lo, m3), _mm256_and_si256(hi, m4));
    return _mm256_permutevar8x32_ps(tab, idx);
  }
};

struct DecInt4 {
  static constexpr int kBytes = 16;
  __m256 sv, zv;
  __m256i sh, m15;
  DecInt4()
      : sv(_mm256_setzero_ps()), zv(sv), sh(_mm256_setr_epi32(0, 4, 8, 12, 16, 20, 24, 28)), m15(_mm256_set1_epi32(15)) {}
  void group(float s, float z) {
    sv = _mm256_set1_ps(s);
    zv = _mm256_set1_ps(z);
  }
  __m256 quarter(const uint8_t* p, int q) const {
    __m256i c = _mm256_and_si256(_mm256_srlv_epi32(_mm256_set1_epi32(int(ld32(p + 4 * q))), sh), m15);
    return _mm256_mul_ps(_mm256_sub_ps(_mm256_cvtepi32_ps(c), zv), sv);
  }
};

struct DecInt8 {
  static constexpr int kBytes = 32;
  __m256 sv, zv;
  DecInt8() : sv(_mm256_setzero_ps()), zv(sv) {}
  void group(float s, float z) {
    sv = _mm256_set1_ps(s);
    zv = _mm256_set1_ps(z);
  }
  __m256 quarter(const uint8_t* p, int q) const {
    __m256i c = _mm256_cvtepu8_epi32(_mm_loadl_epi64(reinterpret_cast<const __m128i*>(p + 8 * q)));
    return _mm256_mul_ps(_mm256_sub_ps(_mm256_cvtepi32_ps(c), zv), sv);
  }
};

template <class Dec>
inline void set_group(Dec& dec, const PackedView& W, int r, int g) {
  if constexpr (std::is_same_v<Dec, DecTern2>) dec.group(W.scale(r, g), W.neg_scale(r, g));
  else dec.group(W.scale(r, g), W.zero(r, g));
}

inline float hsum(__m256 v) {
  __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
  s = _mm_add_ps(s, _mm_movehl_ps(s, s));
  s = _mm_add_ss(s, _mm_movehdup_ps(s));
  return _mm_cvtss_f32(s);
}

template <int NT, class Dec>
void row_kernel(Dec& dec, const PackedView& W, const uint8_t* codes, int r, const float* Xp, size_t ldx, float* out) {
  constexpr int A = NT <= 2 ? 4 : 1;  // accumulators per token (FMA latency hiding at small batch)
  __m256 acc[NT][A];
  for (int t = 0; t < NT; ++t)
    for (int a = 0; a < A; ++a) acc[t][a] = _mm256_setzero_ps();
  const int bpr = W.blocks_per_row(), bpg = W.blocks_per_group(), G = W.groups();
  for (int g = 0; g < G; ++g) {
    set_group(dec, W, r, g);
    const int b1 = std::min(bpr, (g + 1) * bpg);
    for (int b = g * bpg; b < b1; ++b) {
      const uint8_t* p = codes + size_t(b) * Dec::kBytes;
      for (int q = 0; q < 4; ++q) {
        __m256 w = dec.quarter(p, q);
        for (int t = 0; t < NT; ++t)
          acc[t][q % A] = _mm256_fmadd_ps(w, _mm256_loadu_ps(Xp + size_t(t) * ldx + size_t(b) * 32 + 8 * q), acc[t][q % A]);
      }
    }
  }
  for (int t = 0; t < NT; ++t) {
    __m256 s = acc[t][0];
    if constexpr (A == 4) s = _mm256_add_ps(_mm256_add_ps(acc[t][0], acc[t][1]), _mm256_add_ps(acc[t][2], acc[t][3]));
    out[t] = hsum(s);
  }
}

template <class Dec>
void rows_impl(const PackedView& W, const float* Xp, size_t ldx, int n, float* Y, int r0, int r1, uint64_t* scratch) {
  Dec dec;
  float out[8];
  for (int r = r0; r < r1; ++r) {
    const uint8_t* codes;
    if (W.codec == Codec::Subbit) {
      subbit_decode_row(W, r, scratch);
      codes = reinterpret_cast<const uint8_t*>(scratch);
    } else {
      codes = W.codes + size_t(r) * W.row_bytes();
    }
    for (int t0 = 0; t0 < n;) {
      const int rem = n - t0;
      const int nt = rem >= 8 ? 8 : rem >= 4 ? 4 : rem >= 2 ? 2 : 1;
      const float* X = Xp + size_t(t0) * ldx;
      switch (nt) {
        case 8: row_kernel<8>(dec, W, codes, r, X, ldx, out); break;
        case 4: row_kernel<4>(dec, W, codes, r, X, ldx, out); break;
        case 2: row_kernel<2>(dec, W, codes, r, X, ldx, out); break;
        default: row_kernel<1>(dec, W, codes, r, X, ldx, out); break;
      }
      for (int t = 0; t < nt; ++t) Y[size_t(t0 + t) * size_t(W.rows) + size_t(r)] = out[t];
      t0 += nt;
    }
  }
}

template <class Dec>
void dequant_impl(const PackedView& W, float* out, int r0, int r1, uint64_t* scratch) {
  Dec dec;
  const int bpr = W.blocks_per_row(), bpg = W.blocks_per_group(), G = W.groups();
  for (int r = r0; r < r1; ++r) {
    const uint8_t* codes;
    if (W.codec == Codec::Subbit) {
      subbit_decode_row(W, r, scratch);
      codes = reinterpret_cast<const uint8_t*>(scratch);
    } else {
      codes = W.codes + size_t(r) * W.row_bytes();
    }
    float* o = out + size_t(r) * size_t(W.cols);
    for (int g = 0; g < G; ++g) {
      set_group(dec, W, r, g);
      const int b1 = std::min(bpr, (g + 1) * bpg);
      for (int b = g * bpg; b < b1; ++b) {
        const uint8_t* p = codes + size_t(b) * Dec::kBytes;
        for (int q = 0; q < 4; ++q) {
          const int c = b * 32 + q * 8, rem = W.cols - c;
          if (rem <= 0) break;
          __m256 w = dec.quarter(p, q);
          if (rem >= 8) {
            _mm256_storeu_ps(o + c, w);
          } else {
            alignas(32) float tmp[8];
            _mm256_store_ps(tmp, w);
            std::memcpy(o + c, tmp, sizeof(float) * size_t(rem));
          }
        }
      }
    }
  }
}

}  // namespace

void rows_avx2(const PackedView& W, const float* Xp, size_t ldx, int n, float* Y, int r0, int r1, uint64_t* scratch) {
  switch (W.codec) {
    case Codec::Int8: return rows_impl<DecInt8>(W, Xp, ldx, n, Y, r0, r1, scratch);
    case Codec::Int4: return rows_impl<DecInt4>(W, Xp, ldx, n, Y, r0, r1, scratch);
    case Codec::Int3: return rows_impl<DecInt3>(W, Xp, ldx, n, Y, r0, r1, scratch);
    case Codec::Int2: return rows_impl<DecInt2>(W, Xp, ldx, n, Y, r0, r1, scratch);
    case Codec::Tern2:
    case Codec::Subbit: return rows_impl<DecTern2>(W, Xp, ldx, n, Y, r0, r1, scratch);
  }
}

void dequant_rows_avx2(const PackedView& W, float* out, int r0, int r1, uint64_t* scratch) {
  switch (W.codec) {
    case Codec::Int8: return dequant_impl<DecInt8>(W, out, r0, r1, scratch);
    case Codec::Int4: return dequant_impl<DecInt4>(W, out, r0, r1, scratch);
    case Codec::Int3: return dequant_impl<DecInt3>(W, out, r0, r1, scratch);
    case Codec::Int2: return dequant_impl<DecInt2>(W, out, r0, r1, scratch);
    case Codec::Tern2:
    case Codec::Subbit: return dequant_impl<DecTern2>(W, out, r0, r1, scratch);
  }
}

float bf16_dot_avx2(const uint16_t* w, const float* x, int cols) {
  __m256 a0 = _mm256_setzero_ps(), a1 = _mm256_setzero_ps();
  int c = 0;
  for (; c + 16 <= cols; c += 16) {
    __m256i u0 = _mm256_cvtepu16_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(w + c)));
    __m256i u1 = _mm256_cvtepu16_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(w + c + 8)));
    a0 = _mm256_fmadd_ps(_mm256_castsi256_ps(_mm256_slli_epi32(u0, 16)), _mm256_loadu_ps(x + c), a0);
    a1 = _mm256_fmadd_ps(_mm256_castsi256_ps(_mm256_slli_epi32(u1, 16)), _mm256_loadu_ps(x + c + 8), a1);
  }
  float s = hsum(_mm256_add_ps(a0, a1));
  for (; c < cols; ++c) s += bf16_to_f32(w[c]) * x[c];
  return s;
}

uint64_t stream_read_avx2(const uint8_t* p, size_t n) {
  __m256i a0 = _mm256_setzero_si256(), a1 = a0, a2 = a0, a3 = a0;
  size_t i = 0;
  for (; i + 128 <= n; i += 128) {
    a0 = _mm256_add_epi64(a0, _mm256_loadu_si256(reinterpret_cast<const __m256i*>(p + i)));
    a1 = _mm256_add_epi64(a1, _mm256_loadu_si256(reinterpret_cast<const __m256i*>(p + i + 32)));
    a2 = _mm256_add_epi64(a2, _mm256_loadu_si256(reinterpret_cast<const __m256i*>(p + i + 64)));
    a3 = _mm256_add_epi64(a3, _mm256_loadu_si256(reinterpret_cast<const __m256i*>(p + i + 96)));
  }
  alignas(32) uint64_t t[4];
  _mm256_store_si256(reinterpret_cast<__m256i*>(t), _mm256_add_epi64(_mm256_add_epi64(a0, a1), _mm256_add_epi64(a2, a3)));
  uint64_t s = t[0] + t[1] + t[2] + t[3];
  for (; i < n; ++i) s += p[i];
  return s;
}

}  // namespace moec::detail

#pragma GCC pop_options
#else
namespace moec::detail {
void rows_avx2(const PackedView&, const float*, size_t, int, float*, int, int, uint64_t*) {}
void dequant_rows_avx2(const PackedView&, float*, int, int, uint64_t*) {}
float bf16_dot_avx2(const uint16_t*, const float*, int) { return 0; }
uint64_t stream_read_avx2(const uint8_t*, size_t) { return 0; }
}  // namespace moec::detail
#endif
