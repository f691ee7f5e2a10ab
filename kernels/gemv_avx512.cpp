// AVX-512 (F/BW/VL/DQ/VBMI) decode + multiply (overview and measurements: docs/CODECS.md, "Kernels").
// Decode: 16 weights per variable shift of the broadcast code word (vpsrlvd; vpmultishiftqb for int4) and one
// table lookup in the group's dequantized values, table[k] = value(k & (2^bits - 1)) -- bits above the code in
// each lane are ignored by the table, so no masking is needed. 2-bit codes use the in-lane vpermilps (4 entries
// repeated per 128-bit lane), 3/4-bit codes vpermps. The table entries are computed exactly as
// int_value()/tern_value() (blocks.h) compute them, so decoded weights are bit-identical to the scalar reference.
// Multiply: register tiles of rows x tokens (tile(), tiles()); subbit rows are first decoded to one byte per
// weight (subbit_decode_bytes()).
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
#pragma GCC diagnostic ignored "-Wuninitialized"
#pragma GCC target("avx512f,avx512bw,avx512vl,avx512dq,avx512vbmi,fma,bmi,bmi2")

#include "kernels/gemv_avx512_common.h"

namespace moec::detail {
namespace {

// Table of value(k & mask) for k = 0..15, value(q) = (q - z) * s: the operations of int_value() (blocks.h).
inline __m512 int_table(unsigned mask, float s, float z) {
  __m512i k = _mm512_and_si512(_mm512_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15), _mm512_set1_epi32(int(mask)));
  return _mm512_mul_ps(_mm512_sub_ps(_mm512_cvtepi32_ps(k), _mm512_set1_ps(z)), _mm512_set1_ps(s));
}

// Decoders: block(p, P, w0, w1) turns the 32-weight block at p into weights 0-15 (w0) and 16-31 (w1), given the
// group's parameters P = param(scale, zero) (integer codecs) or param(scale, neg_scale) (ternary codecs).
// Decoded weights are bit-identical to int_value()/tern_value() of block_code() (blocks.h).
// Column order the matmul kernels expect x in (prepare_x_avx512).
enum XOrder { kXNatural, kX2, kX4 };

struct DecInt2 {
  using Param = __m512;
  static constexpr XOrder kX = kXNatural;
  static constexpr int kBytes = 8;
  // The table repeats every 4 entries: matmul precomputes it per (row, group) as 4 floats (pre_param).
  static constexpr bool kPre = true;
  static Param pre_param(const float* t4) { return _mm512_broadcast_f32x4(_mm_loadu_ps(t4)); }
  __m512i sh;
  // (Explicit constructors: GCC does not apply the target pragma to implicit ones.)
  DecInt2() : sh(_mm512_setr_epi32(0, 2, 4, 6, 8, 10, 12, 14, 16, 18, 20, 22, 24, 26, 28, 30)) {}
  static Param param(float s, float z) { return int_table(3, s, z); }
  static __m128 table4(float s, float z) { return _mm512_castps512_ps128(param(s, z)); }
  // The 4-entry tables of 4 groups at once from sv, zv = each group's scale/zero repeated 4 times.
  static __m512 table16(__m512 sv, __m512 zv) {
    const __m512 k = _mm512_setr_ps(0, 1, 2, 3, 0, 1, 2, 3, 0, 1, 2, 3, 0, 1, 2, 3);
    return _mm512_mul_ps(_mm512_sub_ps(k, zv), sv);
  }
  // 16 codes from the u32 at p (code i in bits 2i, 2i+1): lane i = table[(u >> 2i) & 3] = value(code i) (the
  // in-lane vpermilps looks at the low 2 bits of each index; the table repeats in every 128-bit lane).
  __m512 vec(const uint8_t* p, const Param& tab) const {
    return _mm512_permutevar_ps(tab, _mm512_srlv_epi32(_mm512_set1_epi32(int(ld32(p))), sh));
  }
  void block(const uint8_t* p, const Param& tab, __m512& w0, __m512& w1) const {
    w0 = vec(p, tab);
    w1 = vec(p + 4, tab);
  }
};

struct DecTern2 : DecInt2 {
  DecTern2() : DecInt2() {}
  // codes 0,1,2,3 -> 0, +s, -ns, 0 in every 128-bit lane (blends: exact for any s, ns, including inf/NaN).
  static Param param(float s, float ns) {
    return _mm512_mask_mov_ps(_mm512_maskz_mov_ps(0x2222, _mm512_set1_ps(s)), 0x4444, _mm512_set1_ps(-ns));
  }
  static __m128 table4(float s, float ns) { return _mm512_castps512_ps128(param(s, ns)); }
  static __m512 table16(__m512 sv, __m512 nsv) {
    const __m512 neg = _mm512_castsi512_ps(_mm512_xor_si512(_mm512_castps_si512(nsv), _mm512_set1_epi32(int(0x80000000u))));
    return _mm512_mask_mov_ps(_mm512_maskz_mov_ps(0x2222, sv), 0x4444, neg);
  }
};

// Decoded subbit rows for the tiles: one byte per weight whose low 2 bits are the tern2 code (higher bits are
// ignored by vpermilps), written by subbit_decode_bytes.
struct DecSubbitBytes : DecTern2 {
  static constexpr int kBytes = 32;
  DecSubbitBytes() : DecTern2() {}
  void block(const uint8_t* p, const Param& tab, __m512& w0, __m512& w1) const {
    w0 = _mm512_permutevar_ps(tab, _mm512_cvtepu8_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p))));
    w1 = _mm512_permutevar_ps(tab, _mm512_cvtepu8_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p + 16))));
  }
};

struct DecInt3 {
  using Param = __m512;
  static constexpr XOrder kX = kXNatural;
  static __m128 table4(float, float) { return _mm_setzero_ps(); }
  static __m512 table16(__m512, __m512) { return _mm512_setzero_ps(); }
  static constexpr bool kPre = false;
  static Param pre_param(const float*) { return _mm512_setzero_ps(); }
  static constexpr int kBytes = 12;
  __m512i sh2, sh1, m3;
  DecInt3()
      : sh2(_mm512_setr_epi32(0, 2, 4, 6, 8, 10, 12, 14, 16, 18, 20, 22, 24, 26, 28, 30)),
        sh1(_mm512_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15)),
        m3(_mm512_set1_epi32(3)) {}
  static Param param(float s, float z) { return int_table(7, s, z); }
  void block(const uint8_t* p, const Param& tab, __m512& w0, __m512& w1) const {
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
  using Param = __m512;
  static constexpr XOrder kX = kXNatural;
  static __m128 table4(float, float) { return _mm_setzero_ps(); }
  static __m512 table16(__m512, __m512) { return _mm512_setzero_ps(); }
  static constexpr bool kPre = false;
  static Param pre_param(const float*) { return _mm512_setzero_ps(); }
  static constexpr int kBytes = 16;
  __m512i ctrl;
  // vpmultishiftqb control: the low byte of dword lane i takes bits 4i.. of the broadcast u64.
  DecInt4() : ctrl(_mm512_set_epi64((60LL << 32) | 56, (52LL << 32) | 48, (44LL << 32) | 40, (36LL << 32) | 32,
                                    (28LL << 32) | 24, (20LL << 32) | 16, (12LL << 32) | 8, (4LL << 32) | 0)) {}
  static Param param(float s, float z) { return int_table(15, s, z); }
  void block(const uint8_t* p, const Param& tab, __m512& w0, __m512& w1) const {
    w0 = _mm512_permutexvar_ps(_mm512_multishift_epi64_epi8(ctrl, _mm512_set1_epi64((long long)ld64(p))), tab);
    w1 = _mm512_permutexvar_ps(_mm512_multishift_epi64_epi8(ctrl, _mm512_set1_epi64((long long)ld64(p + 8))), tab);
  }
};

struct DecInt8 {
  struct Param {
    __m512 s, z;
  };
  static constexpr int kBytes = 32;
  static constexpr bool kPre = false;
  static constexpr XOrder kX = kXNatural;
  static __m128 table4(float, float) { return _mm_setzero_ps(); }
  static __m512 table16(__m512, __m512) { return _mm512_setzero_ps(); }
  static Param pre_param(const float*) { return {_mm512_setzero_ps(), _mm512_setzero_ps()}; }
  DecInt8() {}
  static Param param(float s, float z) { return {_mm512_set1_ps(s), _mm512_set1_ps(z)}; }
  void block(const uint8_t* p, const Param& P, __m512& w0, __m512& w1) const {
    __m512 q0 = _mm512_cvtepi32_ps(_mm512_cvtepu8_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p))));
    __m512 q1 = _mm512_cvtepi32_ps(_mm512_cvtepu8_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p + 16))));
    w0 = _mm512_mul_ps(_mm512_sub_ps(q0, P.z), P.s);
    w1 = _mm512_mul_ps(_mm512_sub_ps(q1, P.z), P.s);
  }
};

// Matmul decoders with a permuted column order; prepare_x_avx512() permutes x to match once per call.
// A u64 of codes broadcast to every qword puts its low half in the even dword lanes and its high half in the odd
// ones; shifting lanes 2j and 2j+1 right by 4j (sh4) leaves 4 bits of each half at the bottom of each lane.
// 2-bit codes: lane 2j holds codes (2j, 2j+1), lane 2j+1 codes (16+2j, 17+2j) of the block. The table
// lo[k] = value(k & 3) (in-lane vpermilps) decodes the first code of each pair, hi[k] = value(k >> 2) (vpermps)
// the second, so 32 weights take one shift and two lookups (instead of two shifts and two lookups): w0 holds
// weights 0,16,2,18,...,14,30 and w1 weights 1,17,3,19,...,15,31 (x order kX2).
inline __m512i sh4() { return _mm512_setr_epi32(0, 0, 4, 4, 8, 8, 12, 12, 16, 16, 20, 20, 24, 24, 28, 28); }
template <class Base>
struct MmPair2 {
  struct Param {
    __m512 lo, hi;
  };
  static constexpr int kBytes = 8;
  static constexpr bool kPre = true;
  static constexpr XOrder kX = kX2;
  __m512i sh;
  MmPair2() : sh(sh4()) {}
  static __m128 table4(float s, float z) { return Base::table4(s, z); }
  static __m512 table16(__m512 sv, __m512 zv) { return Base::table16(sv, zv); }
  static Param pre_param(const float* t4) {
    const __m512 lo = _mm512_broadcast_f32x4(_mm_loadu_ps(t4));
    return {lo, _mm512_permutexvar_ps(_mm512_setr_epi32(0, 0, 0, 0, 1, 1, 1, 1, 2, 2, 2, 2, 3, 3, 3, 3), lo)};
  }
  static Param param(float s, float z) {
    alignas(16) float t[4];
    _mm_store_ps(t, table4(s, z));
    return pre_param(t);
  }
  void block(const uint8_t* p, const Param& P, __m512& w0, __m512& w1) const {
    const __m512i v = _mm512_srlv_epi32(_mm512_set1_epi64((long long)ld64(p)), sh);
    w0 = _mm512_permutevar_ps(P.lo, v);
    w1 = _mm512_permutexvar_ps(v, P.hi);
  }
};
using MmInt2 = MmPair2<DecInt2>;
using MmTern2 = MmPair2<DecTern2>;

// int4: lane 2j holds nibble j, lane 2j+1 nibble 8+j of each 8-byte half block (x order kX4): a shift instead
// of vpmultishiftqb.
struct MmInt4 {
  using Param = __m512;
  static constexpr int kBytes = 16;
  static constexpr bool kPre = false;
  static constexpr XOrder kX = kX4;
  static __m128 table4(float, float) { return _mm_setzero_ps(); }
  static __m512 table16(__m512, __m512) { return _mm512_setzero_ps(); }
  static Param pre_param(const float*) { return _mm512_setzero_ps(); }
  __m512i sh;
  MmInt4() : sh(sh4()) {}
  static Param param(float s, float z) { return int_table(15, s, z); }
  void block(const uint8_t* p, const Param& tab, __m512& w0, __m512& w1) const {
    w0 = _mm512_permutexvar_ps(_mm512_srlv_epi32(_mm512_set1_epi64((long long)ld64(p)), sh), tab);
    w1 = _mm512_permutexvar_ps(_mm512_srlv_epi32(_mm512_set1_epi64((long long)ld64(p + 8)), sh), tab);
  }
};

// Register tile: rows codes[0..R) times tokens X[0..T) (row stride ldx) over blocks [bs, be). Each block is decoded
// once per row and each x vector loaded once per token. The R*T partial sums stay in registers (two vectors each
// when R*T < 8, to cover the FMA latency) and are carried between column segments in st: row r, token t at
// st[(r * T + t) * 2 + a].
template <class Dec, int R, int T>
inline void tile(const Dec& dec, const PackedView& W, const uint8_t* const* codes, const float* S, const float* Z,
                 const float* TB, const float* X, size_t ldx, int bs, int be, __m512* st, const uint8_t*& pf) {
  constexpr int A = R * T >= 8 ? 1 : 2;
  const int bpg = W.blocks_per_group(), G = W.groups();
  __m512 acc[R][T][A];
#pragma GCC unroll 16
  for (int r = 0; r < R; ++r)
#pragma GCC unroll 16
    for (int t = 0; t < T; ++t)
#pragma GCC unroll 2
      for (int a = 0; a < A; ++a) acc[r][t][a] = st[(r * T + t) * 2 + a];
  typename Dec::Param P[R];
  auto set_group = [&](int g) {
#pragma GCC unroll 16
    for (int r = 0; r < R; ++r) {
      if constexpr (Dec::kPre) P[r] = Dec::pre_param(TB + (size_t(r) * G + g) * 4);
      else P[r] = Dec::param(S[size_t(r) * G + g], Z[size_t(r) * G + g]);
    }
  };
  // One flat loop over the blocks; the group parameters change every bpg blocks (a regular, well predicted branch).
  int g = bs / bpg, gend = (g + 1) * bpg;
  set_group(g);
  for (int b = bs; b < be; ++b) {
    if (b == gend) {
      set_group(++g);
      gend += bpg;
    }
    // Software prefetch sweeping ahead of the block stream at the rate it is consumed (see tiles()).
    _mm_prefetch(reinterpret_cast<const char*>(pf), _MM_HINT_T0);
    pf += R * Dec::kBytes;
    __m512 w0[R], w1[R];
#pragma GCC unroll 16
    for (int r = 0; r < R; ++r) dec.block(codes[r] + size_t(b) * Dec::kBytes, P[r], w0[r], w1[r]);
#pragma GCC unroll 16
    for (int t = 0; t < T; ++t) {
      const float* x = X + size_t(t) * ldx + size_t(b) * 32;
      __m512 x0 = _mm512_loadu_ps(x), x1 = _mm512_loadu_ps(x + 16);
      // Keep x in registers: folded into each row's FMA, the loads would be repeated R times (beyond a few KiB,
      // L1 load bandwidth is the limit on the machines measured).
      if constexpr (R > 1) asm("" : "+v"(x0), "+v"(x1));
#pragma GCC unroll 16
      for (int r = 0; r < R; ++r) {
        acc[r][t][0] = _mm512_fmadd_ps(w0[r], x0, acc[r][t][0]);
        acc[r][t][A - 1] = _mm512_fmadd_ps(w1[r], x1, acc[r][t][A - 1]);
      }
    }
  }
#pragma GCC unroll 16
  for (int r = 0; r < R; ++r)
#pragma GCC unroll 16
    for (int t = 0; t < T; ++t)
#pragma GCC unroll 2
      for (int a = 0; a < A; ++a) st[(r * T + t) * 2 + a] = acc[r][t][a];
}

// Tokens [t0, t0 + T) for rows [0, nr) of the chunk (row r0 + i): column segment by column segment (so that the
// segment of X stays in L1 while all the chunk's rows use it), tiles of R rows and then single rows. The result
// of each row is reduced in a fixed order (independent of the thread count).
template <class Dec, int R, int T>
void tiles(const Dec& dec, const PackedView& W, int nr, const uint8_t* const* codes, const float* S, const float* Z,
           const float* TB, const float* X, size_t ldx, float* Y, int r0, int t0) {
  const size_t G = size_t(W.groups());
  const int bpr = W.blocks_per_row();
  __m512 st[kRowChunk * T * 2];
  for (auto& v : st) v = _mm512_setzero_ps();
  const int seg = std::max(4, 24576 / (128 * T));  // blocks: 24 KiB of X
  // The tiles consume the chunk's nr * row_bytes() code bytes; meanwhile pf sweeps the same number of bytes one
  // chunk ahead (rows are contiguous in memory; with several rows in flight the hardware prefetchers alone leave
  // the DRAM stream idle part of the time: measured 1.73 -> 1.46 ms, 14336x4096 tern2, one thread). Prefetches
  // never fault, so running past the matrix end is harmless. (Subbit: row_bytes() = 0, the decoded rows are
  // in cache already.)
  const uint8_t* pf = codes[0] + size_t(nr) * W.row_bytes();
  for (int bs = 0; bs < bpr; bs += seg) {
    const int be = std::min(bpr, bs + seg);
    int i = 0;
    for (; i + R <= nr; i += R)
      tile<Dec, R, T>(dec, W, codes + i, S + i * G, Z + i * G, TB + i * G * 4, X, ldx, bs, be, st + i * T * 2, pf);
    for (; i < nr; ++i)
      tile<Dec, 1, T>(dec, W, codes + i, S + i * G, Z + i * G, TB + i * G * 4, X, ldx, bs, be, st + i * T * 2, pf);
  }
  for (int i = 0; i < nr; ++i)
    for (int t = 0; t < T; ++t)
      Y[size_t(t0 + t) * size_t(W.rows) + size_t(r0 + i)] =
          _mm512_reduce_add_ps(_mm512_add_ps(st[(i * T + t) * 2], st[(i * T + t) * 2 + 1]));
}

template <class Dec>
void rows_impl(const PackedView& W, const float* Xp, size_t ldx, int n, float* Y, int r0, int r1, uint64_t* scratch) {
  const int nr = r1 - r0;
  float* S = reinterpret_cast<float*>(scratch + scratch_buffer_words(W));
  float* Zbuf = S + size_t(kRowChunk) * size_t(W.groups());
  const float* Z = load_params(W, r0, r1, S, Zbuf);
  const uint8_t* codes[kRowChunk];
  chunk_row_codes<std::is_same_v<Dec, DecSubbitBytes>>(W, r0, nr, scratch, codes);
  float* TB = Zbuf + size_t(kRowChunk) * size_t(W.groups());
  if constexpr (Dec::kPre) {
    // 4 groups per step; the last step may read up to 3 values past the chunk's and write up to 3 tables past
    // its end (scratch_words has room), which are never used.
    const size_t ng = size_t(nr) * size_t(W.groups());
    const __m512i rep = _mm512_setr_epi32(0, 0, 0, 0, 1, 1, 1, 1, 2, 2, 2, 2, 3, 3, 3, 3);
    for (size_t k = 0; k < ng; k += 4) {
      const __m512 sv = _mm512_permutexvar_ps(rep, _mm512_castps128_ps512(_mm_loadu_ps(S + k)));
      const __m512 zv = _mm512_permutexvar_ps(rep, _mm512_castps128_ps512(_mm_loadu_ps(Z + k)));
      _mm512_storeu_ps(TB + 4 * k, Dec::table16(sv, zv));
    }
  }
  const Dec dec;
  for (int t0 = 0; t0 < n;) {
    const int rem = n - t0;
    const float* X = Xp + size_t(t0) * ldx;
    if (rem >= 4) tiles<Dec, 4, 4>(dec, W, nr, codes, S, Z, TB, X, ldx, Y, r0, t0), t0 += 4;
    else if (rem >= 2) tiles<Dec, 4, 2>(dec, W, nr, codes, S, Z, TB, X, ldx, Y, r0, t0), t0 += 2;
    else tiles<Dec, 4, 1>(dec, W, nr, codes, S, Z, TB, X, ldx, Y, r0, t0), t0 += 1;
  }
}

template <class Dec>
void dequant_impl(const PackedView& W, float* out, int r0, int r1, uint64_t* scratch) {
  const Dec dec;
  const int bpr = W.blocks_per_row(), bpg = W.blocks_per_group(), G = W.groups();
  for (int r = r0; r < r1; ++r) {
    const uint8_t* codes;
    if constexpr (std::is_same_v<Dec, DecSubbitBytes>) {
      subbit_decode_bytes(W, r, reinterpret_cast<uint8_t*>(scratch));
      codes = reinterpret_cast<const uint8_t*>(scratch);
    } else {
      codes = W.codes + size_t(r) * W.row_bytes();
    }
    float* o = out + size_t(r) * size_t(W.cols);
    for (int g = 0; g < G; ++g) {
      const typename Dec::Param P = codec_is_ternary(W.codec) ? Dec::param(W.scale(r, g), W.neg_scale(r, g))
                                                              : Dec::param(W.scale(r, g), W.zero(r, g));
      const int b1 = std::min(bpr, (g + 1) * bpg);
      for (int b = g * bpg; b < b1; ++b) {
        __m512 w0, w1;
        dec.block(codes + size_t(b) * Dec::kBytes, P, w0, w1);
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
    case Codec::Int4: return rows_impl<MmInt4>(W, Xp, ldx, n, Y, r0, r1, scratch);
    case Codec::Int3: return rows_impl<DecInt3>(W, Xp, ldx, n, Y, r0, r1, scratch);
    case Codec::Int2: return rows_impl<MmInt2>(W, Xp, ldx, n, Y, r0, r1, scratch);
    case Codec::Tern2: return rows_impl<MmTern2>(W, Xp, ldx, n, Y, r0, r1, scratch);
    case Codec::Subbit: return rows_impl<DecSubbitBytes>(W, Xp, ldx, n, Y, r0, r1, scratch);
  }
}

void prepare_x_avx512(const PackedView& W, float* Xp, int n, size_t ldx) {
  XOrder order = kXNatural;
  switch (W.codec) {
    case Codec::Int2: order = MmInt2::kX; break;
    case Codec::Tern2: order = MmTern2::kX; break;
    case Codec::Int4: order = MmInt4::kX; break;
    default: break;
  }
  if (order == kXNatural) return;
  // kX2: per 32 columns, [x0 x16 x2 x18 .. x14 x30 | x1 x17 x3 x19 .. x15 x31]; kX4: per 16 columns,
  // [x0 x8 x1 x9 .. x7 x15] (the lane orders of MmPair2 / MmInt4).
  const __m512i a2 = _mm512_setr_epi32(0, 16, 2, 18, 4, 20, 6, 22, 8, 24, 10, 26, 12, 28, 14, 30);
  const __m512i b2 = _mm512_setr_epi32(1, 17, 3, 19, 5, 21, 7, 23, 9, 25, 11, 27, 13, 29, 15, 31);
  const __m512i i4 = _mm512_setr_epi32(0, 8, 1, 9, 2, 10, 3, 11, 4, 12, 5, 13, 6, 14, 7, 15);
  for (int t = 0; t < n; ++t) {
    float* x = Xp + size_t(t) * ldx;
    for (size_t c = 0; c + 32 <= ldx; c += 32) {
      const __m512 a = _mm512_loadu_ps(x + c), b = _mm512_loadu_ps(x + c + 16);
      if (order == kX2) {
        _mm512_storeu_ps(x + c, _mm512_permutex2var_ps(a, a2, b));
        _mm512_storeu_ps(x + c + 16, _mm512_permutex2var_ps(a, b2, b));
      } else {
        _mm512_storeu_ps(x + c, _mm512_permutexvar_ps(i4, a));
        _mm512_storeu_ps(x + c + 16, _mm512_permutexvar_ps(i4, b));
      }
    }
  }
}

void dequant_rows_avx512(const PackedView& W, float* out, int r0, int r1, uint64_t* scratch) {
  switch (W.codec) {
    case Codec::Int8: return dequant_impl<DecInt8>(W, out, r0, r1, scratch);
    case Codec::Int4: return dequant_impl<DecInt4>(W, out, r0, r1, scratch);
    case Codec::Int3: return dequant_impl<DecInt3>(W, out, r0, r1, scratch);
    case Codec::Int2: return dequant_impl<DecInt2>(W, out, r0, r1, scratch);
    case Codec::Tern2: return dequant_impl<DecTern2>(W, out, r0, r1, scratch);
    case Codec::Subbit: return dequant_impl<DecSubbitBytes>(W, out, r0, r1, scratch);
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
void prepare_x_avx512(const PackedView&, float*, int, size_t) {}
void dequant_rows_avx512(const PackedView&, float*, int, int, uint64_t*) {}
float bf16_dot_avx512(const uint16_t*, const float*, int) { return 0; }
uint64_t stream_read_avx512(const uint8_t*, size_t) { return 0; }
}  // namespace moec::detail
#endif
