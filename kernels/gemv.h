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

// Activation precision of matvec/matmul. None: exact fp32 activations (the default). Int8: activations quantized
// to int8 once per call (quantize_act_q8) and integer dot products per block with the weight codes
// (AVX-512 VNNI where present), scales applied in fp32 once per activation block (docs/CODECS.md, "int8 activations").
enum class ActQuant { None = 0, Int8 = 1 };
const char* act_quant_name(ActQuant a);  // "fp32", "int8"

// y[rows] = W x, x[cols].
void matvec(const PackedView& W, const float* x, float* y, Isa isa = best_isa());
// Y[n, rows] = X[n, cols] * W^T (row-major), each weight block decoded once for all n tokens. n >= 1.
void matmul(const PackedView& W, const float* X, int n, float* Y, Isa isa = best_isa());
// The same with a chosen activation precision (ActQuant::Int8: VNNI kernel when isa is Avx512 and the CPU has
// AVX512_VNNI, otherwise matmul_q8_ref).
void matmul(const PackedView& W, const float* X, int n, float* Y, Isa isa, ActQuant act);
// Scalar reference used by the tests: per weight block_code + int_value/tern_value, float accumulation in
// column order.
void matmul_ref(const PackedView& W, const float* X, int n, float* Y);

// --- int8 activations ---
// Activation block (columns sharing one int8 scale) for W: 128 when the weight group is 0 (whole row) or a multiple
// of 128, else 64 when it is a multiple of 64, else 32 -- a divisor of the group size, so that every activation
// block lies inside one weight group.
int act_block_cols(const PackedView& W);
// Quantizes one token x[cols] in blocks of ka columns (nb = ceil(cols / ka) blocks): for block b with
// amax = max |x_j| (taken on the fp32 bit patterns, so a NaN counts as non-finite):
//   d[b] = amax / 127 (fp32 division), id = 127 / amax (0 when amax = 0),
//   xq[j] = clamp(round_half_even(x[j] * id), -127, 127) (the fp32 product rounded by cvtps2dq in the default mode),
//   sums[b] = sum of xq over the block.
// A block holding inf/NaN gets d = NaN and xq = 0 (the outputs that use it are NaN, as with fp32 activations).
// xq has nb * ka entries; those past cols are 0. Scalar reference; the kernels use an AVX-512 copy that the tests
// check bit for bit against this one.
void quantize_act_q8(const float* x, int cols, int ka, int8_t* xq, float* d, int32_t* sums);
// Scalar reference of the Int8 path: per token quantize_act_q8, per (row, activation block b in group g) the
// exact integer dot I_b = sum_j q_j xq_j, combined in fp32 as
//   int codes:  y = sum_b (s_g d_b) I_b - sum_g (s_g z_g) (sum_{b in g} d_b S_b)
//   ternary:    y = sum_b (a_g d_b) U_b + (b_g d_b) V_b - sum_g a_g (sum_{b in g} d_b S_b)
// with a = (s + ns) / 2, b = (s - ns) / 2, U_b = sum (t + 1) xq, V_b = sum t^2 xq, t in {-1, 0, 1}
// (V is skipped when the view has no neg_scales: b = 0).
void matmul_q8_ref(const PackedView& W, const float* X, int n, float* Y);
// True when the CPU has what the VNNI kernel needs (Isa::Avx512 plus AVX512_VNNI).
bool q8_vnni_supported();
// Process-wide activation precision used by the model's packed layers (PackedLinear). Default None;
// `moec eval --act-int8` sets Int8.
void set_default_act_quant(ActQuant a);
ActQuant default_act_quant();

// dequantize with a chosen ISA (dequantize() in codec.h uses best_isa()).
void dequantize_isa(const PackedView& W, float* out, Isa isa);

}  // namespace moec
