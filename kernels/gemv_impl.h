// Internal interface between the dispatcher (gemv.cpp) and the per-ISA kernel files.
#pragma once
#include <algorithm>
#include <cstddef>
#include <cstdint>

#include "kernels/codec.h"

namespace moec::detail {

constexpr int kRowChunk = 16;

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

// Baselines for the benchmark: y = W x for a bf16 row-major matrix converted on the fly (AVX-512 / AVX2),
// and a streaming read of n bytes (returns a checksum so the read is not optimised away).
float bf16_dot_avx512(const uint16_t* w, const float* x, int cols);
float bf16_dot_avx2(const uint16_t* w, const float* x, int cols);
uint64_t stream_read_avx512(const uint8_t* p, size_t n);
uint64_t stream_read_avx2(const uint8_t* p, size_t n);

}  // namespace moec::detail
