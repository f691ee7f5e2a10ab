// AVX-512 (F/BW/VL/DQ/VBMI) decode + multiply. Every sub-byte codec decodes 16 weights with one shift
// (vpsrlvd, or vpmultishiftqb for int4) and one vpermps whose 16-entry table holds the group's dequantized
// values, table[k] = value(k & (2^bits - 1)) -- bits above the code in each lane are ignored by the table, so no
// masking is needed. The table entries are computed exactly as int_value()/tern_value() (blocks.h) compute them,
// so the decoded weights are bit-identical to the scalar reference.
// All headers come before the target pragma so that no inline library code is compiled for AVX-512.
#include <immintrin.h>

#include <algorithm>
#include <cstring>
#include <vector>

#include "kernels/blocks.h"
#include "kernels/gemv_impl.h"
#include "kernels/subbit.h"

#if defined(__GNUC__) && (defined(__x86_64__) || defined(__i386__))
#pragma GCC push_options
// GCC 12 warns about _mm512_undefined_* inside its own intrinsics headers (a known false positive).
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#pragma GCC target("avx512f,avx512bw,avx512vl,avx512dq,avx512vbmi,fma,bmi2")

namespace moec::detail {
namespace {

inline uint32_t ld32(const uint8_t* p) {
  uint32_t v;
  std::memcpy(&v, p, 4);
  return v;
}
inline uint64_t ld64(const uint8_t* p) {
  uint64_t v;
  std::memcpy(&v, p, 8);
  return v;
}

// Table of value(k & mask) for k = 0..15, value(q) = s * (q - z).
inline __m512 int_table(unsigned mask, float s, float z) {
  __m512i k = _mm512_and_si512(_mm512_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15), _mm512_set1_epi32(int(mask)));
  return _mm512_mul_ps(_mm512_sub_ps(_mm512_cvtepi32_ps(k), _mm512_set1_ps(z)), _mm512_set1_ps(s));
}

struct DecInt2 {
  static constexpr int kBytes = 8;
  __m512 tab;
  __m512i sh;
  // (Explicit constructors: GCC does not apply the target pragma to implicit ones.)
  DecInt2() : tab(_mm512_setzero_ps()), sh(_mm512_setr_epi32(0, 2, 4, 6, 8, 10, 12, 14, 16, 18, 20, 22, 24, 26, 28, 30)) {}
  void group(float s, float z) { tab = int_table(3, s, z); }
  void block(const uint8_t* p, __m512& w0, __m512& w1) const {
    w0 = _mm512_permutexvar_ps(_mm512_srlv_epi32(_mm512_set1_epi32(int(ld32(p))), sh), tab);
    w1 = _mm512_permutexvar_ps(_mm512_srlv_epi32(_mm512_set1_epi32(int(ld32(p + 4))), sh), tab);
  }
};

struct DecTern2 : DecInt2 {
  DecTern2() : DecInt2() {}
  void group(float s, float ns) { tab = _mm512_set4_ps(0.0f, -ns, s, 0.0f); }  // codes 0,1,2,3 -> 0,+s,-ns,0
};

struct DecInt3 {
  static constexpr int kBytes = 12;
  __m512 tab;
  __m512i sh2, sh1, m3;
  DecInt3()
      : tab(_mm512_setzero_ps()),
        sh2(_mm512_setr_epi32(0, 2, 4, 6, 8, 10, 12, 14, 16, 18, 20, 22, 24, 26, 28, 30)),
        sh1(_mm512_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15)),
        m3(_mm512_set1_epi32(3)) {}
  void group(float s, float z) { tab = int_table(7, s, z); }
  void block(const uint8_t* p, __m512& w0, __m512& w1) const {
    const uint32_t hi = ld32(p + 8);
    // Lane i: bits 0-1 from the low-bit plane shifted by 2i, bit 2 = hi bit i (hi pre-shifted left by 2).
    __m512i l0 = _mm512_srlv_epi32(_mm512_set1_epi32(int(ld32(p))), sh2);
    __m512i h0 = _mm512_srlv_epi32(_mm512_set1_epi32(int(hi << 2)), sh1);
    __m512i l1 = _mm512_srlv_epi32(_mm512_set1_epi32(int(ld32(p + 4))), sh2);
    __m512i h1 = _mm512_srlv_epi32(_mm512_set1_epi32(int(hi >> 14)), sh1);
    w0 = _mm512_permutexvar_ps(_mm512_ternarylogic_epi32(l0, h0, m3, 0xE4), tab);  // (l & 3) | (h & ~3)
    w1 = _mm512_permutexvar_ps(_mm512_ternarylogic_epi32(l1, h1, m3, 0xE4), tab);
  }
};

struct DecInt4 {
  static constexpr int kBytes = 16;
  __m512 tab;
  __m512i ctrl;
  // vpmultishiftqb control: the low byte of dword lane i takes bits 4i.. of the broadcast u64.
  DecInt4() : tab(_mm512_setzero_ps()), ctrl(_mm512_set_epi64((60LL << 32) | 56, (52LL << 32) | 48, (44LL << 32) | 40, (36LL << 32) | 32,
                                  (28LL << 32) | 24, (20LL << 32) | 16, (12LL << 32) | 8, (4LL << 32) | 0)) {}
  void group(float s, float z) { tab = int_table(15, s, z); }
  void block(const uint8_t* p, __m512& w0, __m512& w1) const {
    w0 = _mm512_permutexvar_ps(_mm512_multishift_epi64_epi8(ctrl, _mm512_set1_epi64((long long)ld64(p))), tab);
    w1 = _mm512_permutexvar_ps(_mm512_multishift_epi64_epi8(ctrl, _mm512_set1_epi64((long long)ld64(p + 8))), tab);
  }
};

struct DecInt8 {
  static constexpr int kBytes = 32;
  __m512 sv, zv;
  DecInt8() : sv(_mm512_setzero_ps()), zv(_mm512_setzero_ps()) {}
  void group(float s, float z) {
    sv = _mm512_set1_ps(s);
    zv = _mm512_set1_ps(z);
  }
  void block(const uint8_t* p, __m512& w0, __m512& w1) const {
    __m512 q0 = _mm512_cvtepi32_ps(_mm512_cvtepu8_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p))));
    __m512 q1 = _mm512_cvtepi32_ps(_mm512_cvtepu8_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p + 16))));
    w0 = _mm512_mul_ps(_mm512_sub_ps(q0, zv), sv);
    w1 = _mm512_mul_ps(_mm512_sub_ps(q1, zv), sv);
  }
};

template <class Dec>
inline void set_group(Dec& dec, const PackedView& W, int r, int g) {
  if constexpr (std::is_same_v<Dec, DecTern2>) dec.group(W.scale(r, g), W.neg_scale(r, g));
  else dec.group(W.scale(r, g), W.zero(r, g));
}

// Per-row fp32 copies of the row's scales and zeros (or negative scales), converted with F16C.
struct RowParams {
  std::vector<float> s, z;
  void load(const PackedView& W, int r, bool tern) {
    const int G = W.groups();
    s.resize(size_t(G) + 16);
    z.resize(size_t(G) + 16);
    cvt(W.scales, r, G, s.data());
    if (tern) {
      if (W.neg_scales) cvt(W.neg_scales, r, G, z.data());
      else std::copy_n(s.data(), G, z.data());
    } else if (W.zeros) {
      cvt(W.zeros, r, G, z.data());
    } else {
      std::fill_n(z.data(), G, float(1 << (W.bits - 1)));
    }
  }
  static void cvt(const uint16_t* a, int r, int G, float* out) {
    const uint8_t* p = reinterpret_cast<const uint8_t*>(a) + 2 * size_t(r) * size_t(G);
    for (int g = 0; g < G; g += 16) {
      const __mmask16 m = G - g >= 16 ? __mmask16(0xffff) : __mmask16((1u << (G - g)) - 1);
      _mm512_storeu_ps(out + g, _mm512_cvtph_ps(_mm256_maskz_loadu_epi16(m, p + 2 * size_t(g))));
    }
  }
};

// NT tokens of one row. For NT <= 2 two blocks are kept in flight on separate accumulators (FMA latency).
template <int NT, class Dec>
void row_kernel(Dec& dec, const PackedView& W, const RowParams& rp, const uint8_t* codes, const float* Xp, size_t ldx,
                int bs, int be, float* out) {
  constexpr int A = NT <= 2 ? 4 : 2;
  __m512 acc[NT][A];
#pragma GCC unroll 8
  for (int t = 0; t < NT; ++t)
#pragma GCC unroll 4
    for (int a = 0; a < A; ++a) acc[t][a] = _mm512_setzero_ps();
  const int bpg = W.blocks_per_group();
  for (int g = bs / bpg; g * bpg < be; ++g) {
    dec.group(rp.s[size_t(g)], rp.z[size_t(g)]);
    const int b1 = std::min(be, (g + 1) * bpg);
    int b = std::max(bs, g * bpg);
    if constexpr (A == 4) {
      for (; b + 1 < b1; b += 2) {
        __m512 w0, w1, w2, w3;
        dec.block(codes + size_t(b) * Dec::kBytes, w0, w1);
        dec.block(codes + size_t(b + 1) * Dec::kBytes, w2, w3);
#pragma GCC unroll 8
        for (int t = 0; t < NT; ++t) {
          const float* x = Xp + size_t(t) * ldx + size_t(b) * 32;
          acc[t][0] = _mm512_fmadd_ps(w0, _mm512_loadu_ps(x), acc[t][0]);
          acc[t][1] = _mm512_fmadd_ps(w1, _mm512_loadu_ps(x + 16), acc[t][1]);
          acc[t][2] = _mm512_fmadd_ps(w2, _mm512_loadu_ps(x + 32), acc[t][2]);
          acc[t][3] = _mm512_fmadd_ps(w3, _mm512_loadu_ps(x + 48), acc[t][3]);
        }
      }
    }
    for (; b < b1; ++b) {
      __m512 w0, w1;
      dec.block(codes + size_t(b) * Dec::kBytes, w0, w1);
#pragma GCC unroll 8
      for (int t = 0; t < NT; ++t) {
        const float* x = Xp + size_t(t) * ldx + size_t(b) * 32;
        acc[t][0] = _mm512_fmadd_ps(w0, _mm512_loadu_ps(x), acc[t][0]);
        acc[t][1] = _mm512_fmadd_ps(w1, _mm512_loadu_ps(x + 16), acc[t][1]);
      }
    }
  }
  for (int t = 0; t < NT; ++t) {
    __m512 s = _mm512_add_ps(acc[t][0], acc[t][1]);
    if constexpr (A == 4) s = _mm512_add_ps(s, _mm512_add_ps(acc[t][2], acc[t][3]));
    out[t] = _mm512_reduce_add_ps(s);
  }
}

// Rows [r0, r1) (at most kRowChunk) are processed together one column segment at a time, so that the segment of X
// (all tokens) stays in L1 while it is reused for every row; per-row partial sums are added segment by segment in
// a fixed order (independent of threads).
template <class Dec>
void rows_impl(const PackedView& W, const float* Xp, size_t ldx, int n, float* Y, int r0, int r1, uint64_t* scratch) {
  constexpr int kMaxRows = 16;
  Dec dec;
  RowParams rp[kMaxRows];
  const uint8_t* codes[kMaxRows];
  const int nr = r1 - r0, bpr = W.blocks_per_row();
  for (int i = 0; i < nr; ++i) {
    const int r = r0 + i;
    if (W.codec == Codec::Subbit) {
      uint64_t* buf = scratch + size_t(i) * (size_t(bpr) + 1);
      subbit_decode_row(W, r, buf);
      codes[i] = reinterpret_cast<const uint8_t*>(buf);
    } else {
      codes[i] = W.codes + size_t(r) * W.row_bytes();
    }
    rp[i].load(W, r, codec_is_ternary(W.codec));
  }
  // Segment: ~32 KiB of X for all n tokens, at least 8 blocks.
  const int seg = std::max(8, 8192 / (32 * n) * 1);
  float out[8];
  for (int i = 0; i < nr; ++i)
    for (int t = 0; t < n; ++t) Y[size_t(t) * size_t(W.rows) + size_t(r0 + i)] = 0.0f;
  for (int bs = 0; bs < bpr; bs += seg) {
    const int be = std::min(bpr, bs + seg);
    for (int i = 0; i < nr; ++i) {
      for (int t0 = 0; t0 < n;) {
        const int rem = n - t0;
        const int nt = rem >= 8 ? 8 : rem >= 4 ? 4 : rem >= 2 ? 2 : 1;
        const float* X = Xp + size_t(t0) * ldx;
        switch (nt) {
          case 8: row_kernel<8>(dec, W, rp[i], codes[i], X, ldx, bs, be, out); break;
          case 4: row_kernel<4>(dec, W, rp[i], codes[i], X, ldx, bs, be, out); break;
          case 2: row_kernel<2>(dec, W, rp[i], codes[i], X, ldx, bs, be, out); break;
          default: row_kernel<1>(dec, W, rp[i], codes[i], X, ldx, bs, be, out); break;
        }
        for (int t = 0; t < nt; ++t) Y[size_t(t0 + t) * size_t(W.rows) + size_t(r0 + i)] += out[t];
        t0 += nt;
      }
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
        __m512 w0, w1;
        dec.block(codes + size_t(b) * Dec::kBytes, w0, w1);
        const int c = b * 32, rem = W.cols - c;
        if (rem >= 32) {
          _mm512_storeu_ps(o + c, w0);
          _mm512_storeu_ps(o + c + 16, w1);
        } else {
          _mm512_mask_storeu_ps(o + c, __mmask16(rem >= 16 ? 0xffff : (1u << rem) - 1), w0);
          if (rem > 16) _mm512_mask_storeu_ps(o + c + 16, __mmask16((1u << (rem - 16)) - 1), w1);
        }
      }
    }
  }
}

}  // namespace

void rows_avx512(const PackedView& W, const float* Xp, size_t ldx, int n, float* Y, int r0, int r1, uint64_t* scratch) {
  switch (W.codec) {
    case Codec::Int8: return rows_impl<DecInt8>(W, Xp, ldx, n, Y, r0, r1, scratch);
    case Codec::Int4: return rows_impl<DecInt4>(W, Xp, ldx, n, Y, r0, r1, scratch);
    case Codec::Int3: return rows_impl<DecInt3>(W, Xp, ldx, n, Y, r0, r1, scratch);
    case Codec::Int2: return rows_impl<DecInt2>(W, Xp, ldx, n, Y, r0, r1, scratch);
    case Codec::Tern2:
    case Codec::Subbit: return rows_impl<DecTern2>(W, Xp, ldx, n, Y, r0, r1, scratch);
  }
}

void dequant_rows_avx512(const PackedView& W, float* out, int r0, int r1, uint64_t* scratch) {
  switch (W.codec) {
    case Codec::Int8: return dequant_impl<DecInt8>(W, out, r0, r1, scratch);
    case Codec::Int4: return dequant_impl<DecInt4>(W, out, r0, r1, scratch);
    case Codec::Int3: return dequant_impl<DecInt3>(W, out, r0, r1, scratch);
    case Codec::Int2: return dequant_impl<DecInt2>(W, out, r0, r1, scratch);
    case Codec::Tern2:
    case Codec::Subbit: return dequant_impl<DecTern2>(W, out, r0, r1, scratch);
  }
}

float bf16_dot_avx512(const uint16_t* w, const float* x, int cols) {
  __m512 a0 = _mm512_setzero_ps(), a1 = _mm512_setzero_ps();
  int c = 0;
  for (; c + 32 <= cols; c += 32) {
    __m512i u0 = _mm512_cvtepu16_epi32(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(w + c)));
    __m512i u1 = _mm512_cvtepu16_epi32(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(w + c + 16)));
    a0 = _mm512_fmadd_ps(_mm512_castsi512_ps(_mm512_slli_epi32(u0, 16)), _mm512_loadu_ps(x + c), a0);
    a1 = _mm512_fmadd_ps(_mm512_castsi512_ps(_mm512_slli_epi32(u1, 16)), _mm512_loadu_ps(x + c + 16), a1);
  }
  float s = _mm512_reduce_add_ps(_mm512_add_ps(a0, a1));
  for (; c < cols; ++c) s += bf16_to_f32(w[c]) * x[c];
  return s;
}

uint64_t stream_read_avx512(const uint8_t* p, size_t n) {
  __m512i a0 = _mm512_setzero_si512(), a1 = a0, a2 = a0, a3 = a0;
  size_t i = 0;
  for (; i + 256 <= n; i += 256) {
    a0 = _mm512_add_epi64(a0, _mm512_loadu_si512(p + i));
    a1 = _mm512_add_epi64(a1, _mm512_loadu_si512(p + i + 64));
    a2 = _mm512_add_epi64(a2, _mm512_loadu_si512(p + i + 128));
    a3 = _mm512_add_epi64(a3, _mm512_loadu_si512(p + i + 192));
  }
  uint64_t s = uint64_t(_mm512_reduce_add_epi64(_mm512_add_epi64(_mm512_add_epi64(a0, a1), _mm512_add_epi64(a2, a3))));
  for (; i < n; ++i) s += p[i];
  return s;
}

}  // namespace moec::detail

#pragma GCC pop_options
#else
namespace moec::detail {
void rows_avx512(const PackedView&, const float*, size_t, int, float*, int, int, uint64_t*) {}
void dequant_rows_avx512(const PackedView&, float*, int, int, uint64_t*) {}
float bf16_dot_avx512(const uint16_t*, const float*, int) { return 0; }
uint64_t stream_read_avx512(const uint8_t*, size_t) { return 0; }
}  // namespace moec::detail
#endif
