// Helpers shared by the AVX-512 kernel files (gemv_avx512.cpp, gemv_q8_avx512.cpp). Include it only AFTER the
// file's `#pragma GCC target(...)` (it includes no headers itself, so no library code is compiled for AVX-512).
#pragma once

namespace moec::detail {
namespace {

// Prefetch the codewords of row r (if it exists): the rows' streams are short, so the hardware prefetchers see
// little of them.
inline void prefetch_subbit_row(const PackedView& W, int r) {
  if (r >= W.rows) return;
  uint32_t b, e;
  std::memcpy(&b, W.row_offsets + r, 4);
  std::memcpy(&e, W.row_offsets + r + 1, 4);
  for (size_t o = 2 * size_t(b) & ~size_t(63); o < 2 * size_t(e); o += 64)
    _mm_prefetch(reinterpret_cast<const char*>(W.codes + o), _MM_HINT_T0);
}

// Row r of a subbit view as one byte per weight (code in the low 2 bits) in buf[0, blocks_per_row() * 32), for
// DecSubbitBytes. Each codeword stores its whole 32-code sequence (bytes past its length are 0) at its position
// with one unaligned 32-byte store; the next codeword's store overwrites those zeros. Unlike the 2-bit packing
// this has no read-modify-write or loop-carried chain besides pos += len (measured ~2x faster than
// subbit_decode_row). buf needs blocks_per_row() * 32 + 32 bytes.
inline void subbit_decode_bytes(const PackedView& W, int r, uint8_t* buf) {
  // vpmultishiftqb: byte k = bits [2k, 2k + 8) of the u64 (rotating), so its low 2 bits are code k.
  const __m256i ctrl = _mm256_setr_epi64x(0x0e0c0a0806040200LL, 0x1e1c1a1816141210LL, 0x2e2c2a2826242220LL,
                                          0x3e3c3a3836343230LL);
  const uint8_t* len = W.dict->len.data();
  const uint64_t* seq = W.dict->seq.data();
  uint32_t i, e;
  std::memcpy(&i, W.row_offsets + r, 4);
  std::memcpy(&e, W.row_offsets + r + 1, 4);
  const int64_t cols = W.cols;
  int64_t pos = 0;
  // No test of pos in the loop: a (corrupt) stream with more codes than columns keeps storing at buf + cols,
  // which the last store below clears.
  for (; i < e; ++i) {
    const unsigned cw = ld16(W.codes + 2 * size_t(i));
    _mm256_storeu_si256(reinterpret_cast<__m256i*>(buf + std::min(pos, cols)),
                        _mm256_multishift_epi64_epi8(ctrl, _mm256_set1_epi64x((long long)seq[cw])));
    pos += len[cw];
  }
  if (pos < cols) std::memset(buf + pos, 0, size_t(cols - pos));  // corrupt stream: too few codes
  // Code 0 past the row end (as in the 2-bit packing), so that padding columns contribute exactly 0 * 0.
  _mm256_storeu_si256(reinterpret_cast<__m256i*>(buf + cols), _mm256_setzero_si256());
}

// Code pointers of rows r0 .. r0 + nr of a chunk: the packed rows themselves, or (subbit) each row decoded to one
// byte per weight into scratch (subbit_byte_row(W) bytes per row), prefetching the stream one chunk ahead.
template <bool kSubbitBytes>
inline void chunk_row_codes(const PackedView& W, int r0, int nr, uint64_t* scratch, const uint8_t** codes) {
  for (int i = 0; i < nr; ++i) {
    if constexpr (kSubbitBytes) {
      uint8_t* buf = reinterpret_cast<uint8_t*>(scratch) + size_t(i) * subbit_byte_row(W);
      prefetch_subbit_row(W, r0 + i + kRowChunk);
      subbit_decode_bytes(W, r0 + i, buf);
      codes[i] = buf;
    } else {
      codes[i] = W.codes + size_t(r0 + i) * W.row_bytes();
    }
  }
}

// fp32 copies of n fp16 values starting at element i0 of a (unaligned).
inline void cvt_f16(const uint16_t* a, size_t i0, int n, float* out) {
  const uint8_t* p = reinterpret_cast<const uint8_t*>(a) + 2 * i0;
  for (int g = 0; g < n; g += 16) {
    const __mmask16 m = n - g >= 16 ? __mmask16(0xffff) : __mmask16((1u << (n - g)) - 1);
    _mm512_mask_storeu_ps(out + g, m, _mm512_cvtph_ps(_mm256_maskz_loadu_epi16(m, p + 2 * size_t(g))));
  }
}

// Group parameters of rows [r0, r1) in fp32: S[i * G + g] = scale, Z[i * G + g] = zero (integer codecs; 2^(bits-1)
// when symmetric) or negative scale (ternary codecs). Returns Z, or S for ternary codecs without neg_scales.
const float* load_params(const PackedView& W, int r0, int r1, float* S, float* Z) {
  const size_t G = size_t(W.groups()), ng = size_t(r1 - r0) * G;
  const bool tern = codec_is_ternary(W.codec);
  const uint16_t* za = tern ? W.neg_scales : W.zeros;
  cvt_f16(W.scales, size_t(r0) * G, int(ng), S);
  if (za) cvt_f16(za, size_t(r0) * G, int(ng), Z);
  else if (tern) return S;
  else std::fill_n(Z, ng, float(1 << (W.bits - 1)));
  return Z;
}

}  // namespace
}  // namespace moec::detail
