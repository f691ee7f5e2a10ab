// AVX-512 VNNI kernels for int8 activations (ActQuant::Int8; definition and scalar reference in gemv_q8.cpp,
// overview in docs/CODECS.md, "int8 activations").
// Per 64 weights of a row: one load of the codes (broadcast to the vector), one vpmultishiftqb that puts code k
// into the low bits of byte k (bits above it are garbage), one vpand (int codes) or vpermb (ternary: a 64-entry
// table indexed by the low 6 bits maps each code to t + 1, and for views with neg_scales a second one to t^2), and
// one vpdpbusd per token (u8 codes x s8 activations, 4 products summed per int32 lane). The int32 lanes are
// converted to fp32 and multiplied by (scale * d) once per activation block (128, 64 or 32 columns); the offset
// terms (zero points, or the -1 of t + 1) use the per-group sums of the activations once per row and token.
// x is permuted once per call into the byte order of the code vectors (q8_column), so no weight shuffles are needed.
#include <immintrin.h>

#include <algorithm>
#include <array>
#include <cstring>
#include <limits>
#include <type_traits>
#include <vector>

#include "kernels/blocks.h"
#include "kernels/gemv.h"
#include "kernels/gemv_impl.h"
#include "kernels/subbit.h"

#if defined(__GNUC__) && (defined(__x86_64__) || defined(__i386__))
#pragma GCC push_options
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#pragma GCC diagnostic ignored "-Wuninitialized"
#pragma GCC target("avx512f,avx512bw,avx512vl,avx512dq,avx512vbmi,avx512vnni,fma,bmi,bmi2")

#include "kernels/gemv_avx512_common.h"

namespace moec::detail {
namespace {

// vpmultishiftqb control: byte m of qword k takes the 8 bits at offset base(k) + step * m of the source qword.
inline __m512i multishift_ctrl(int kdiv, int kstride, int step) {
  alignas(64) uint8_t c[64];
  for (int k = 0; k < 8; ++k)
    for (int m = 0; m < 8; ++m) c[8 * k + m] = uint8_t(kstride * (k / kdiv) % 64 + step * m);
  return _mm512_load_si512(c);
}

// Code decoders: raw(row, p, half) = the 64 codes of the block pair p (blocks 2p, 2p+1) of a row, one per byte in
// the order of q8_column; half = only block 2p exists (odd blocks per row: nothing past it is read). Bytes may hold
// garbage above the code bits (removed by the mapping in q8_tile), except where noted.
// 2-bit codes (int2, tern2): the 16 bytes broadcast to alternating qwords; qword 2i + h takes bits 16i + 2m.
struct QDec2 {
  static constexpr int kPairBytes = 16;
  __m512i ctrl;
  QDec2() : ctrl(multishift_ctrl(2, 16, 2)) {}
  __m512i raw(const uint8_t* row, int p, bool half) const {
    const uint8_t* q = row + size_t(kPairBytes) * size_t(p);
    const __m128i v = half ? _mm_loadl_epi64(reinterpret_cast<const __m128i*>(q)) : _mm_loadu_si128(reinterpret_cast<const __m128i*>(q));
    return _mm512_multishift_epi64_epi8(ctrl, _mm512_broadcast_i64x2(v));
  }
};
// int3: the low-bit planes as for 2-bit codes, bit 2 from the hi planes interleaved by qword into a byte mask
// (clean codes 0..7).
struct QDec3 {
  static constexpr int kPairBytes = 24;
  __m512i ctrl, three, four;
  QDec3() : ctrl(multishift_ctrl(2, 16, 2)), three(_mm512_set1_epi8(3)), four(_mm512_set1_epi8(4)) {}
  __m512i raw(const uint8_t* row, int p, bool half) const {
    const uint8_t* q = row + size_t(kPairBytes) * size_t(p);
    const uint64_t lo0 = ld64(q), lo1 = half ? 0 : ld64(q + 12);
    const uint64_t hi0 = ld32(q + 8), hi1 = half ? 0 : ld32(q + 20);
    const __m512i lo = _mm512_and_si512(
        _mm512_multishift_epi64_epi8(ctrl, _mm512_broadcast_i64x2(_mm_set_epi64x((long long)lo1, (long long)lo0))), three);
    const __mmask64 hi = _pdep_u64(hi0, 0x00FF00FF00FF00FFull) | _pdep_u64(hi1, 0xFF00FF00FF00FF00ull);
    return _mm512_mask_add_epi8(lo, hi, lo, four);
  }
};
// int4: the 32 bytes broadcast to both 256-bit halves; qword 4h + j takes bits 32h + 4m of source qword j.
struct QDec4 {
  static constexpr int kPairBytes = 32;
  __m512i ctrl;
  QDec4() : ctrl(multishift_ctrl(4, 32, 4)) {}
  __m512i raw(const uint8_t* row, int p, bool half) const {
    const uint8_t* q = row + size_t(kPairBytes) * size_t(p);
    const __m256i v = half ? _mm256_zextsi128_si256(_mm_loadu_si128(reinterpret_cast<const __m128i*>(q)))
                           : _mm256_loadu_si256(reinterpret_cast<const __m256i*>(q));
    return _mm512_multishift_epi64_epi8(ctrl, _mm512_broadcast_i64x4(v));
  }
};
// int8: the codes themselves (clean).
struct QDec8 {
  static constexpr int kPairBytes = 64;
  QDec8() {}
  __m512i raw(const uint8_t* row, int p, bool half) const {
    const uint8_t* q = row + size_t(kPairBytes) * size_t(p);
    return half ? _mm512_maskz_loadu_epi8(0xFFFFFFFFull, q) : _mm512_loadu_si512(q);
  }
};
// subbit rows decoded to bytes (subbit_decode_bytes; the buffer has room for whole pairs, and bytes past the row
// meet xq = 0).
struct QDecSub {
  static constexpr int kPairBytes = 0;  // codes live in the (cache-resident) decode buffer: no prefetch
  QDecSub() {}
  __m512i raw(const uint8_t* row, int p, bool) const { return _mm512_loadu_si512(row + 64 * size_t(p)); }
};

struct Q8Ctx {
  int npairs = 0, bpr = 0;           // pairs of blocks per row, blocks per row
  const int8_t* xq = nullptr;        // tokens of this pass
  size_t ldq = 0;
  const float* cd1 = nullptr;        // (coefficient * d) per (row i, token t, act block): [(i * T + t) * cds + b]
  const float* cd2 = nullptr;        // ternary with neg_scales: b_g * d
  int cds = 0;
  __m512i U, V, mask, half_idx;      // ternary tables, int code mask, lane -> block of the pair (kMode 2)
};

template <class Dec, bool kTern, bool kNeg, bool kMask>
inline __m512i map_u(const Dec&, const Q8Ctx& C, __m512i raw) {
  if constexpr (kTern) return _mm512_permutexvar_epi8(raw, C.U);
  else if constexpr (kMask) return _mm512_and_si512(raw, C.mask);
  else return raw;
}

// Register tile: rows i0..i0+R of the chunk times the pass's T tokens over pairs [ps, pe). st[i * T + t] carries
// the fp32 partial sums (16 lanes) between column segments. kMode: 0 = activation blocks of 128 columns (flush the
// int32 lanes every 2 pairs), 1 = 64 columns (every pair), 2 = 32 columns (two blocks per pair: per-lane scales).
// ps is a multiple of the pairs per activation block; only the row's last block may be partial.
template <class Dec, bool kTern, bool kNeg, bool kMask, int kMode, int R, int T>
inline void q8_tile(const Dec& dec, const Q8Ctx& C, const uint8_t* const* codes, int i0, int ps, int pe, __m512* st,
                    const uint8_t*& pf) {
  constexpr int kPpa = kMode == 0 ? 2 : 1;
  __m512 acc[R][T];
  __m512i iu[R][T], iv[R][T];
#pragma GCC unroll 16
  for (int r = 0; r < R; ++r)
#pragma GCC unroll 16
    for (int t = 0; t < T; ++t) {
      acc[r][t] = st[(i0 + r) * T + t];
      iu[r][t] = _mm512_setzero_si512();
      if constexpr (kNeg) iv[r][t] = _mm512_setzero_si512();
    }
  auto pair = [&](int p, bool half) __attribute__((always_inline)) {
    // Software prefetch one row chunk ahead, at the rate the codes are consumed (every cache line).
    if constexpr (Dec::kPairBytes > 0) {
#pragma GCC unroll 8
      for (int k = 0; k < R * Dec::kPairBytes; k += 64) _mm_prefetch(reinterpret_cast<const char*>(pf + k), _MM_HINT_T0);
      pf += R * Dec::kPairBytes;
    }
    __m512i u[R], v[R];
#pragma GCC unroll 16
    for (int r = 0; r < R; ++r) {
      const __m512i raw = dec.raw(codes[r], p, half);
      u[r] = map_u<Dec, kTern, kNeg, kMask>(dec, C, raw);
      if constexpr (kNeg) v[r] = _mm512_permutexvar_epi8(raw, C.V);
    }
#pragma GCC unroll 16
    for (int t = 0; t < T; ++t) {
      __m512i x = _mm512_loadu_si512(C.xq + size_t(t) * C.ldq + 64 * size_t(p));
      if constexpr (R > 1) asm("" : "+v"(x));
#pragma GCC unroll 16
      for (int r = 0; r < R; ++r) {
        iu[r][t] = _mm512_dpbusd_epi32(iu[r][t], u[r], x);
        if constexpr (kNeg) iv[r][t] = _mm512_dpbusd_epi32(iv[r][t], v[r], x);
      }
    }
  };
  // Convert the int32 lanes and add them times (coefficient * d) of activation block ab (kMode 2: blocks ab, ab + 1
  // by lane).
  auto flush = [&](int ab) __attribute__((always_inline)) {
#pragma GCC unroll 16
    for (int r = 0; r < R; ++r)
#pragma GCC unroll 16
      for (int t = 0; t < T; ++t) {
        const size_t o = size_t((i0 + r) * T + t) * size_t(C.cds) + size_t(ab);
        __m512 s1, s2;
        if constexpr (kMode == 2) {
          s1 = _mm512_permutexvar_ps(
              C.half_idx, _mm512_castps128_ps512(_mm_castsi128_ps(_mm_loadl_epi64(reinterpret_cast<const __m128i*>(C.cd1 + o)))));
          if constexpr (kNeg)
            s2 = _mm512_permutexvar_ps(
                C.half_idx, _mm512_castps128_ps512(_mm_castsi128_ps(_mm_loadl_epi64(reinterpret_cast<const __m128i*>(C.cd2 + o)))));
        } else {
          s1 = _mm512_set1_ps(C.cd1[o]);
          if constexpr (kNeg) s2 = _mm512_set1_ps(C.cd2[o]);
        }
        acc[r][t] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(iu[r][t]), s1, acc[r][t]);
        iu[r][t] = _mm512_setzero_si512();
        if constexpr (kNeg) {
          acc[r][t] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(iv[r][t]), s2, acc[r][t]);
          iv[r][t] = _mm512_setzero_si512();
        }
      }
  };
  // Whole activation blocks of whole pairs, then the rest of the row (a partial block and/or the half pair).
  const int full = std::min(pe, C.bpr / 2);  // pairs with both blocks
  int p = ps;
  for (; p + kPpa <= full; p += kPpa) {
    pair(p, false);
    if constexpr (kPpa == 2) pair(p + 1, false);
    flush(kMode == 2 ? 2 * p : p / kPpa);
  }
  if (p < pe) {  // the row's last activation block
    const int p0 = p;
    for (; p < pe; ++p) pair(p, 2 * p + 1 == C.bpr);
    flush(kMode == 2 ? 2 * p0 : p0 / kPpa);
  }
#pragma GCC unroll 16
  for (int r = 0; r < R; ++r)
#pragma GCC unroll 16
    for (int t = 0; t < T; ++t) st[(i0 + r) * T + t] = acc[r][t];
}

// out[i] = sum of the 16 lanes of v[i], i = 0..15: four rounds of pairwise lane-half swaps and adds.
inline __m512 hsum16(__m512* v) {
  // Round 1: halves of 256 bits. a_i = [v_2i.lo256 + v_2i.hi256 | v_2i+1.lo256 + v_2i+1.hi256].
  __m512 a[8], b[4], c[2];
  for (int i = 0; i < 8; ++i) {
    const __m512 x = v[2 * i], y = v[2 * i + 1];
    a[i] = _mm512_add_ps(_mm512_shuffle_f32x4(x, y, _MM_SHUFFLE(1, 0, 1, 0)), _mm512_shuffle_f32x4(x, y, _MM_SHUFFLE(3, 2, 3, 2)));
  }
  // Round 2: 128-bit lanes. b_i holds 4 rows x 4 partial lanes.
  for (int i = 0; i < 4; ++i) {
    const __m512 x = a[2 * i], y = a[2 * i + 1];
    b[i] = _mm512_add_ps(_mm512_shuffle_f32x4(x, y, _MM_SHUFFLE(2, 0, 2, 0)), _mm512_shuffle_f32x4(x, y, _MM_SHUFFLE(3, 1, 3, 1)));
  }
  // Rounds 3 and 4: within 128-bit lanes (pairs of floats, then single floats).
  for (int i = 0; i < 2; ++i) {
    const __m512 x = b[2 * i], y = b[2 * i + 1];
    c[i] = _mm512_add_ps(_mm512_unpacklo_ps(x, y), _mm512_unpackhi_ps(x, y));
  }
  const __m512 d = _mm512_add_ps(_mm512_castpd_ps(_mm512_unpacklo_pd(_mm512_castps_pd(c[0]), _mm512_castps_pd(c[1]))),
                                 _mm512_castpd_ps(_mm512_unpackhi_pd(_mm512_castps_pd(c[0]), _mm512_castps_pd(c[1]))));
  return d;  // lane L holds the sum of one row, a fixed permutation (hsum16_rows)
}

// hsum16_rows()[L] = the row whose sum hsum16 puts in lane L (found once by summing constant vectors).
inline const int* hsum16_rows() {
  static const std::array<int, 16> rows = [] {
    __m512 v[16];
    for (int i = 0; i < 16; ++i) v[i] = _mm512_set1_ps(float(i));
    alignas(64) float out[16];
    _mm512_store_ps(out, hsum16(v));
    std::array<int, 16> r{};
    for (int L = 0; L < 16; ++L) r[size_t(L)] = int(out[L] / 16.0f);
    return r;
  }();
  return rows.data();
}

// All nr rows of the chunk for the pass's T tokens: column segment by segment (the segment of xq stays in L1),
// tiles of R rows and then single rows; y = reduce(lanes) - offset, in a fixed order.
template <class Dec, bool kTern, bool kNeg, bool kMask, int kMode, int R, int T>
void q8_tiles(const Dec& dec, const PackedView& W, const Q8Ctx& C, int nr, const uint8_t* const* codes,
              const float* offs, float* Y, int r0, int t0) {
  __m512 st[kRowChunk * T];
  for (auto& v : st) v = _mm512_setzero_ps();
  const int seg = std::max(2, (16384 / (64 * T)) & ~1);  // pairs (even: activation blocks never straddle segments)
  // The prefetch sweeps the codes two row chunks ahead: the integer kernel consumes them faster than the fp32 tiles,
  // and one chunk ahead left int4 at ~50% of the read bandwidth (measured 2.0 -> 1.1-1.3 ms, 14336x4096 int4, one
  // thread). Prefetches never fault, so running past the matrix end is harmless.
  const uint8_t* pf = codes[0] + 2 * size_t(nr) * W.row_bytes();
  for (int ps = 0; ps < C.npairs; ps += seg) {
    const int pe = std::min(C.npairs, ps + seg);
    int i = 0;
    for (; i + R <= nr; i += R) q8_tile<Dec, kTern, kNeg, kMask, kMode, R, T>(dec, C, codes + i, i, ps, pe, st, pf);
    for (; i < nr; ++i) q8_tile<Dec, kTern, kNeg, kMask, kMode, 1, T>(dec, C, codes + i, i, ps, pe, st, pf);
  }
  for (int t = 0; t < T; ++t) {
    if (nr == kRowChunk) {
      // The 16 rows' lane sums at once (a transposing add tree), in a fixed order like the single-row reduction.
      alignas(64) float y[kRowChunk];
      __m512 v[kRowChunk];
      for (int i = 0; i < kRowChunk; ++i) v[i] = st[i * T + t];
      _mm512_store_ps(y, hsum16(v));
      const int* rows = hsum16_rows();
      for (int L = 0; L < kRowChunk; ++L) {
        const int i = rows[L];
        Y[size_t(t0 + t) * size_t(W.rows) + size_t(r0 + i)] = y[L] - offs[i * T + t];
      }
    } else {
      for (int i = 0; i < nr; ++i)
        Y[size_t(t0 + t) * size_t(W.rows) + size_t(r0 + i)] = _mm512_reduce_add_ps(st[i * T + t]) - offs[i * T + t];
    }
  }
}

template <class Dec, bool kTern, bool kNeg, bool kMask>
void q8_rows(const PackedView& W, const Q8Acts& A, int n, float* Y, int r0, int r1, uint64_t* scratch) {
  const int nr = r1 - r0, G = W.groups(), nab = A.nab;
  const Dec dec;
  const uint8_t* codes[kRowChunk];
  chunk_row_codes<std::is_same_v<Dec, QDecSub>>(W, r0, nr, scratch, codes);
  // Per (row, group) coefficients: c1 = scale (int) or a = (s + ns) / 2 (ternary), c2 = b = (s - ns) / 2, and the
  // offset coefficient (scale * zero, or a). Then per pass: (coefficient * d) per activation block and token.
  const int cds = nab + 1;
  thread_local std::vector<float> tab;
  const size_t ng = size_t(kRowChunk) * size_t(G), ncd = size_t(kRowChunk) * 4 * size_t(cds);
  tab.resize(5 * ng + 2 * ncd + kRowChunk * 4 + 16);
  float *S = tab.data(), *Zb = S + ng, *c1 = Zb + ng, *c2 = c1 + ng, *co = c2 + ng, *cd1 = co + ng, *cd2 = cd1 + ncd,
        *offs = cd2 + ncd;
  const float* Z = load_params(W, r0, r1, S, Zb);
  // Coefficients: c1 = scale, offset = scale * zero (int codes); ternary without neg_scales c1 = offset = scale
  // (no copies); with neg_scales c1 = offset = a, c2 = b.
  const float* c1p = S;
  const float* cop = S;
  if constexpr (kTern) {
    if constexpr (kNeg) {
      for (size_t k = 0; k < size_t(nr) * size_t(G); ++k) {
        c1[k] = (S[k] + Z[k]) * 0.5f;
        c2[k] = (S[k] - Z[k]) * 0.5f;
      }
      c1p = cop = c1;
    }
  } else {
    for (size_t k = 0; k < size_t(nr) * size_t(G); ++k) co[k] = S[k] * Z[k];
    cop = co;
  }
  const int ka = A.ka;
  Q8Ctx C;
  C.bpr = W.blocks_per_row();
  C.npairs = (C.bpr + 1) / 2;
  C.ldq = A.ldq;
  C.cds = cds;
  C.cd1 = cd1;
  C.cd2 = cd2;
  {
    // Constant per codec: built once per process, not per row chunk.
    struct Tables {
      alignas(64) uint8_t u[64], v[64];
      alignas(64) int32_t h[int(Codec::Subbit) + 1][16];  // per codec: lane -> block of the pair (kMode 2)
    };
    static const Tables tables = [] {
      Tables tb;
      for (int k = 0; k < 64; ++k) {
        const int t = tern_from_code(unsigned(k) & 3u);
        tb.u[k] = uint8_t(t + 1);
        tb.v[k] = uint8_t(t * t);
      }
      for (Codec c : all_codecs()) {
        PackedView cv;
        cv.codec = c;
        for (int L = 0; L < 16; ++L) tb.h[int(c)][L] = q8_column(cv, 4 * L) >= 32 ? 1 : 0;
      }
      return tb;
    }();
    C.U = _mm512_load_si512(tables.u);
    C.V = _mm512_load_si512(tables.v);
    C.half_idx = _mm512_load_si512(tables.h[int(W.codec)]);
    C.mask = _mm512_set1_epi8(char(W.codec == Codec::Int4 ? 15 : 3));
  }
  // Group of each activation block (ka divides the group size when G > 1), counted without divisions.
  thread_local std::vector<int> gidx;
  int apg = 1;  // activation blocks per group
  gidx.resize(size_t(nab));
  {
    apg = G == 1 ? nab : W.group / ka;
    for (int b = 0, g = 0, k = 0; b < nab; ++b) {
      gidx[size_t(b)] = g;
      if (++k == apg) k = 0, ++g;
    }
  }
  for (int t0 = 0; t0 < n;) {
    const int rem = n - t0, T = rem >= 4 ? 4 : (rem >= 2 ? 2 : 1);
    for (int i = 0; i < nr; ++i)
      for (int t = 0; t < T; ++t) {
        const float* d = A.d + size_t(t0 + t) * size_t(nab);
        const size_t o = size_t(i * T + t) * size_t(cds);
        const float* c1i = c1p + size_t(i) * size_t(G);
        const float* c2i = c2 + size_t(i) * size_t(G);
        if (apg == 1 || G == 1) {
          // One activation block per group (cd = c * d elementwise) or one group per row (cd = c[0] * d).
          for (int b = 0; b < nab; b += 16) {
            const __mmask16 m = nab - b >= 16 ? __mmask16(0xffff) : __mmask16((1u << (nab - b)) - 1);
            const __m512 dv = _mm512_maskz_loadu_ps(m, d + b);
            const __m512 a1 = G == 1 ? _mm512_set1_ps(c1i[0]) : _mm512_maskz_loadu_ps(m, c1i + b);
            _mm512_mask_storeu_ps(cd1 + o + size_t(b), m, _mm512_mul_ps(a1, dv));
            if constexpr (kNeg) {
              const __m512 a2 = G == 1 ? _mm512_set1_ps(c2i[0]) : _mm512_maskz_loadu_ps(m, c2i + b);
              _mm512_mask_storeu_ps(cd2 + o + size_t(b), m, _mm512_mul_ps(a2, dv));
            }
          }
        } else {
          for (int b = 0; b < nab; ++b) {
            cd1[o + size_t(b)] = c1i[gidx[size_t(b)]] * d[b];
            if constexpr (kNeg) cd2[o + size_t(b)] = c2i[gidx[size_t(b)]] * d[b];
          }
        }
        cd1[o + size_t(nab)] = 0.0f;
        if constexpr (kNeg) cd2[o + size_t(nab)] = 0.0f;
        const float* ds = A.ds + size_t(t0 + t) * size_t(G);
        const float* coi = cop + size_t(i) * size_t(G);
        __m512 ov = _mm512_setzero_ps();
        for (int g = 0; g < G; g += 16) {
          const __mmask16 m = G - g >= 16 ? __mmask16(0xffff) : __mmask16((1u << (G - g)) - 1);
          ov = _mm512_fmadd_ps(_mm512_maskz_loadu_ps(m, coi + g), _mm512_maskz_loadu_ps(m, ds + g), ov);
        }
        const float off = _mm512_reduce_add_ps(ov);
        offs[i * T + t] = off;
      }
    C.xq = A.xq + size_t(t0) * A.ldq;
    auto run = [&](auto mode) {
      constexpr int M = decltype(mode)::value;
      if (T == 4) q8_tiles<Dec, kTern, kNeg, kMask, M, kNeg ? 1 : 2, 4>(dec, W, C, nr, codes, offs, Y, r0, t0);
      else if (T == 2) q8_tiles<Dec, kTern, kNeg, kMask, M, kNeg ? 2 : 4, 2>(dec, W, C, nr, codes, offs, Y, r0, t0);
      else q8_tiles<Dec, kTern, kNeg, kMask, M, 4, 1>(dec, W, C, nr, codes, offs, Y, r0, t0);
    };
    if (ka == 128) run(std::integral_constant<int, 0>());
    else if (ka == 64) run(std::integral_constant<int, 1>());
    else run(std::integral_constant<int, 2>());
    t0 += T;
  }
}

template <class Dec>
void q8_rows_tern(const PackedView& W, const Q8Acts& A, int n, float* Y, int r0, int r1, uint64_t* scratch) {
  if (W.neg_scales) q8_rows<Dec, true, true, false>(W, A, n, Y, r0, r1, scratch);
  else q8_rows<Dec, true, false, false>(W, A, n, Y, r0, r1, scratch);
}

}  // namespace

void rows_q8_avx512(const PackedView& W, const Q8Acts& A, int n, float* Y, int r0, int r1, uint64_t* scratch) {
  switch (W.codec) {
    case Codec::Int8: return q8_rows<QDec8, false, false, false>(W, A, n, Y, r0, r1, scratch);
    case Codec::Int4: return q8_rows<QDec4, false, false, true>(W, A, n, Y, r0, r1, scratch);
    case Codec::Int3: return q8_rows<QDec3, false, false, false>(W, A, n, Y, r0, r1, scratch);
    case Codec::Int2: return q8_rows<QDec2, false, false, true>(W, A, n, Y, r0, r1, scratch);
    case Codec::Tern2: return q8_rows_tern<QDec2>(W, A, n, Y, r0, r1, scratch);
    case Codec::Subbit: return q8_rows_tern<QDecSub>(W, A, n, Y, r0, r1, scratch);
  }
}

void quantize_act_q8_avx512(const float* x, int cols, int ka, int8_t* xq, float* d, int32_t* sums) {
  const int nb = (cols + ka - 1) / ka;
  const __m512i absm = _mm512_set1_epi32(0x7fffffff), lo = _mm512_set1_epi32(-127), hi = _mm512_set1_epi32(127);
  for (int b = 0; b < nb; ++b) {
    const int c0 = b * ka, c1 = std::min(cols, c0 + ka);
    __m512i mx = _mm512_setzero_si512();
    for (int j = c0; j < c1; j += 16) {
      const __mmask16 m = c1 - j >= 16 ? __mmask16(0xffff) : __mmask16((1u << (c1 - j)) - 1);
      mx = _mm512_max_epu32(mx, _mm512_and_si512(_mm512_maskz_loadu_epi32(m, x + j), absm));
    }
    const uint32_t mb = _mm512_reduce_max_epu32(mx);
    std::memset(xq + c0, 0, size_t(ka));
    sums[b] = 0;
    if (mb >= 0x7f800000u) {
      d[b] = std::numeric_limits<float>::quiet_NaN();
      continue;
    }
    float amax;
    std::memcpy(&amax, &mb, 4);
    const float db = amax / 127.0f;
    d[b] = db;
    if (db == 0.0f) continue;
    const __m512 dv = _mm512_set1_ps(db);
    __m512i s = _mm512_setzero_si512();
    for (int j = c0; j < c1; j += 16) {
      const __mmask16 m = c1 - j >= 16 ? __mmask16(0xffff) : __mmask16((1u << (c1 - j)) - 1);
      __m512i q = _mm512_cvtps_epi32(_mm512_div_ps(_mm512_maskz_loadu_ps(m, x + j), dv));
      q = _mm512_min_epi32(_mm512_max_epi32(q, lo), hi);
      _mm512_mask_cvtepi32_storeu_epi8(xq + j, m, q);
      s = _mm512_add_epi32(s, q);  // masked-off lanes loaded 0 -> q = 0
    }
    sums[b] = _mm512_reduce_add_epi32(s);
  }
}

void q8_prepare_avx512(const PackedView& W, const float* X, int n, int ka, size_t ldq, int8_t* xq, float* d, float* ds) {
  const int nab = (W.cols + ka - 1) / ka, G = W.groups();
  thread_local std::vector<int8_t> tmp;
  thread_local std::vector<int32_t> sums;
  tmp.resize(ldq);
  sums.resize(size_t(nab));
  alignas(64) uint8_t perm[64];
  bool natural = true;
  for (int P = 0; P < 64; ++P) {
    perm[P] = uint8_t(q8_column(W, P));
    natural = natural && perm[P] == P;
  }
  const __m512i pv = _mm512_load_si512(perm);
  for (int t = 0; t < n; ++t) {
    float* dt = d + size_t(t) * size_t(nab);
    std::fill(tmp.begin(), tmp.end(), int8_t(0));
    quantize_act_q8_avx512(X + size_t(t) * size_t(W.cols), W.cols, ka, tmp.data(), dt, sums.data());
    float* dst = ds + size_t(t) * size_t(G);
    std::fill(dst, dst + G, 0.0f);
    for (int b = 0; b < nab; ++b) dst[G == 1 ? 0 : (b * ka) / W.group] += dt[b] * float(sums[size_t(b)]);
    int8_t* o = xq + size_t(t) * ldq;
    if (natural) {
      std::memcpy(o, tmp.data(), ldq);
    } else {
      for (size_t c = 0; c < ldq; c += 64)
        _mm512_storeu_si512(o + c, _mm512_permutexvar_epi8(pv, _mm512_loadu_si512(tmp.data() + c)));
    }
  }
}

}  // namespace moec::detail

#pragma GCC pop_options
#else
namespace moec::detail {
void rows_q8_avx512(const PackedView&, const Q8Acts&, int, float*, int, int, uint64_t*) {}
void quantize_act_q8_avx512(const float*, int, int, int8_t*, float*, int32_t*) {}
void q8_prepare_avx512(const PackedView&, const float*, int, int, size_t, int8_t*, float*, float*) {}
}  // namespace moec::detail
#endif
