// Internal interface between the dispatcher (gemv.cpp) and the per-ISA kernel files.
#pragma once
#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <cstring>

#include "kernels/codec.h"

namespace moec::detail {

constexpr int kRowChunk = 16;

// Unaligned little-endian loads of packed codes.
inline uint32_t ld16(const uint8_t* p) {
  uint16_t v;
  std::memcpy(&v, p, 2);
  return v;
}
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

// Rows [r0, r1) of Y[n, rows] = Xp[n, ldx] * W^T, r1 - r0 <= kRowChunk. Xp rows are zero-padded to
// ldx = x_stride(W) = blocks_per_row()*32 (kernels read whole blocks; padding codes then meet x = 0).
// `scratch` holds scratch_words(W) u64: row decode buffers for kRowChunk subbit rows (kRowChunk * (blocks_per_row()+1)
// words as 2-bit rows, or kRowChunk byte-per-weight rows of subbit_byte_row(W) bytes), then room for the fp32
// scales and zeros (or negative scales) of kRowChunk rows and 4-float tables per (row, group).
inline size_t x_stride(const PackedView& W) { return size_t(W.blocks_per_row()) * 32; }
inline size_t subbit_byte_row(const PackedView& W) { return size_t(W.blocks_per_row()) * 32 + 64; }
inline size_t scratch_buffer_words(const PackedView& W) {
  if (W.codec != Codec::Subbit) return 0;
  return size_t(kRowChunk) * std::max(size_t(W.blocks_per_row()) + 1, subbit_byte_row(W) / 8);
}
inline size_t scratch_words(const PackedView& W) {
  return scratch_buffer_words(W) + 3 * size_t(kRowChunk) * size_t(W.groups()) + 16;
}

void rows_avx2(const PackedView& W, const float* Xp, size_t ldx, int n, float* Y, int r0, int r1, uint64_t* scratch);
void rows_avx512(const PackedView& W, const float* Xp, size_t ldx, int n, float* Y, int r0, int r1, uint64_t* scratch);
// Reorders the columns of Xp (in place, within 32-column blocks) into the lane order rows_avx512 uses for W.
void prepare_x_avx512(const PackedView& W, float* Xp, int n, size_t ldx);
void dequant_rows_avx2(const PackedView& W, float* out, int r0, int r1, uint64_t* scratch);
void dequant_rows_avx512(const PackedView& W, float* out, int r0, int r1, uint64_t* scratch);

// int8-activation path (gemv_q8.cpp, gemv_q8_avx512.cpp). Activations of n tokens quantized with
// quantize_act_q8 in blocks of ka columns: xq[t * ldq + c] (ldq = nab * ka, a multiple of 64 and >= 64 * pairs
// of blocks), with the columns of each 64-column slice permuted into the byte order the kernel decodes W in
// (q8_column()); d[t * nab + b]; ds[t * G + g] = sum over the blocks b of group g of d[b] * sums[b] (fp32, in
// block order).
struct Q8Acts {
  int ka = 128, nab = 0;
  size_t ldq = 0;
  const int8_t* xq = nullptr;
  const float* d = nullptr;
  const float* ds = nullptr;
};
// Column (0..63) of the 64-column slice that byte P (0..63) of the kernel's 64-code vector holds for W's codec.
int q8_column(const PackedView& W, int P);
// Fills A's buffers for n tokens of X[n, W.cols]: xq (n * ldq bytes), d (n * nab), ds (n * groups), with the
// AVX-512 copy of quantize_act_q8 (bit-identical) and the column permutation of q8_column.
void q8_prepare_avx512(const PackedView& W, const float* X, int n, int ka, size_t ldq, int8_t* xq, float* d, float* ds);
// AVX-512 copy of quantize_act_q8 (same arguments, same results bit for bit).
void quantize_act_q8_avx512(const float* x, int cols, int ka, int8_t* xq, float* d, int32_t* sums);
void rows_q8_avx512(const PackedView& W, const Q8Acts& A, int n, float* Y, int r0, int r1, uint64_t* scratch);

// Baselines for the benchmark: y = W x for a bf16 row-major matrix converted on the fly (AVX-512 / AVX2),
// and a streaming read of n bytes (returns a checksum so the read is not optimised away).
float bf16_dot_avx512(const uint16_t* w, const float* x, int cols);
float bf16_dot_avx2(const uint16_t* w, const float* x, int cols);
uint64_t stream_read_avx512(const uint8_t* p, size_t n);
uint64_t stream_read_avx2(const uint8_t* p, size_t n);

}  // namespace moec::detail
