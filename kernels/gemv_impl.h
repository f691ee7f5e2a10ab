// Internal interface between the dispatcher (gemv.cpp) and the per-ISA kernel files.
#pragma once
#include <cstddef>
#include <cstdint>

#include "kernels/codec.h"

namespace moec::detail {

constexpr int kRowChunk = 16;

// Rows [r0, r1) of Y[n, rows] = Xp[n, ldx] * W^T. Xp rows are zero-padded to ldx >= blocks_per_row()*32.
// `scratch` holds kRowChunk * (blocks_per_row()+1) u64 (subbit row decode buffers); r1 - r0 <= kRowChunk.
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
