// Fused decode + multiply kernels over packed matrices (kernels/codec.h). CPU: scalar reference, AVX2/FMA and
// AVX-512 paths chosen at run time, OpenMP over rows (each row is computed by one thread in a fixed order, so
// results do not depend on the thread count).
#pragma once
#include "kernels/codec.h"

namespace moec {

enum class Isa { Scalar = 0, Avx2 = 1, Avx512 = 2 };
const char* isa_name(Isa isa);
bool isa_supported(Isa isa);
// Best supported ISA; the environment variable MOEC_ISA=scalar|avx2|avx512 caps it.
Isa best_isa();

// y[rows] = W x, x[cols].
void matvec(const PackedView& W, const float* x, float* y, Isa isa = best_isa());
// Y[n, rows] = X[n, cols] * W^T (row-major), each weight block decoded once for all n tokens. n >= 1.
void matmul(const PackedView& W, const float* X, int n, float* Y, Isa isa = best_isa());
// Scalar reference used by the tests: per weight block_code + int_value/tern_value, float accumulation in
// column order.
void matmul_ref(const PackedView& W, const float* X, int n, float* Y);
// dequantize with a chosen ISA (dequantize() in codec.h uses best_isa()).
void dequantize_isa(const PackedView& W, float* out, Isa isa);

}  // namespace moec
