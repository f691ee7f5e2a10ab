// Internal interface between the dispatcher (gemv.cpp) and the per-ISA kernel files.
#pragma once
#include <cstddef>
#include <cstdint>

#include "kernels/codec.h"

namespace moec::detail {

constexpr int kRowChunk = 16;

// Rows [r0, r1) of Y[n, rows] = Xp[n, ldx] * W^T, r1 - r0 <= kRowChunk. Xp rows are zero-padded to
// ldx = x_stride(W) = blocks_per_row()*32 + 32 (kernels may read whole blocks, and the fused subbit kernel a
// 32-column window starting at any column < cols).
// `scratch` holds scratch_words(W) u64: kRowChunk subbit row decode buffers of blocks_per_row()+1 words, then
// room for the fp32 scales and zeros (or negative scales) of kRowChunk rows and 4-float tables per (row, group).
inline size_t x_stride(const PackedView& W) { return size_t(W.blocks_per_row()) * 32 + 32; }
inline size_t scratch_words(const PackedView& W) {
  return size_t(kRowChunk) * (size_t(W.blocks_per_row()) + 1) + 3 * size_t(kRowChunk) * size_t(W.groups());
}
void rows_avx2(const PackedView& W, const float* Xp, size_t ldx, int n, float* Y, int r0, int r1, uint64_t* scratch);
void rows_avx512(const PackedView& W, const float* Xp, size_t ldx, int n, float* Y, int r0, int r1, uint64_t* scratch);
void dequant_rows_avx2(const PackedView& W, float* out, int r0, int r1, uint64_t* scratch);
void dequant_rows_avx512(const PackedView& W, float* out, int r0, int r1, uint64_t* scratch);

// Baselines for the benchmark: y = W x for a bf16 row-major matrix converted on the fly (AVX-512 / AVX2),
// and a streaming read of n bytes (returns a checksum so the read is not optimised away).
float bf16_dot_avx512(const uint16_t* w, const float* x, int cols);
float bf16_dot_avx2(const uint16_t* w, const float* x, int cols);
uint64_t stream_read_avx512(const uint8_t* p, size_t n);
uint64_t stream_read_avx2(const uint8_t* p, size_t n);

}  // namespace moec::detail
