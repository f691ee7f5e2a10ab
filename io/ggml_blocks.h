// llama.cpp (ggml) tensor element types and the block formats moec writes into GGUF files:
// Q8_0, Q4_0, TQ2_0, TQ1_0 (plus F32 / F16 / BF16 rows). Layouts follow the ggml spec; see docs/GGUF.md.
//
// Each block type is a plain struct with a static_assert on its size; quantize (the round-to-nearest
// reference rule llama.cpp uses for deterministic files) and dequantize live side by side. The
// per-element decoders are MOEC_HD so CPU and CUDA code share one definition.
#pragma once
#include <cstddef>
#include <cstdint>
#include <string>

#include "core/half.h"

namespace moec::io {

// ggml_type codes as stored in GGUF tensor infos. Codes 31-33 and 36-38 were retired upstream.
enum class GgmlType : uint32_t {
  F32 = 0, F16 = 1, Q4_0 = 2, Q4_1 = 3, Q5_0 = 6, Q5_1 = 7, Q8_0 = 8, Q8_1 = 9,
  Q2_K = 10, Q3_K = 11, Q4_K = 12, Q5_K = 13, Q6_K = 14, Q8_K = 15,
  IQ2_XXS = 16, IQ2_XS = 17, IQ3_XXS = 18, IQ1_S = 19, IQ4_NL = 20, IQ3_S = 21, IQ2_S = 22, IQ4_XS = 23,
  I8 = 24, I16 = 25, I32 = 26, I64 = 27, F64 = 28, IQ1_M = 29, BF16 = 30,
  TQ1_0 = 34, TQ2_0 = 35, MXFP4 = 39,
};

struct GgmlTypeTraits {
  const char* name;   // "q8_0", as llama.cpp prints it
  int64_t block;      // elements per block (1 for plain types)
  size_t block_bytes; // bytes per block
};
// Traits of a known type; nullptr for an unknown code.
const GgmlTypeTraits* ggml_type_traits(uint32_t code);
const char* ggml_type_name(GgmlType t);
// Parses "f32", "f16", "bf16", "q8_0", "q4_0", "tq1_0", "tq2_0" (the types moec can write).
GgmlType parse_ggml_write_type(const std::string& s);
// True for the types quantize_row / dequantize_row handle.
bool ggml_type_writable(GgmlType t);

// Bytes of one row of `n` elements. Fails (naming `what` and the type's block size) when n is not a
// multiple of the block: "tensor 'blk.0.ffn_down_exps.weight': type tq2_0 needs rows that are a multiple of
// 256 elements; row has 100".
size_t ggml_row_bytes(GgmlType t, int64_t n, const std::string& what);

// ---------------------------------------------------------------- blocks
constexpr int kQK8_0 = 32;
constexpr int kQK4_0 = 32;
constexpr int kQK_K = 256;

// Q8_0: x[j] = d * qs[j].
struct BlockQ8_0 {
  uint16_t d;            // fp16 scale
  int8_t qs[kQK8_0];
};
static_assert(sizeof(BlockQ8_0) == 34, "Q8_0 block is 34 bytes");

// Q4_0: x[j] = d * ((qs[j] & 15) - 8), x[j + 16] = d * ((qs[j] >> 4) - 8), j < 16.
struct BlockQ4_0 {
  uint16_t d;
  uint8_t qs[kQK4_0 / 2];
};
static_assert(sizeof(BlockQ4_0) == 18, "Q4_0 block is 18 bytes");

// TQ2_0: 2-bit ternary. Element e = 128*h + 32*l + m (h < 2, l < 4, m < 32) is bits 2l..2l+1 of
// qs[32*h + m], holding t + 1 for t in {-1, 0, +1}; x = t * d.
struct BlockTQ2_0 {
  uint8_t qs[kQK_K / 4];
  uint16_t d;
};
static_assert(sizeof(BlockTQ2_0) == 66, "TQ2_0 block is 66 bytes");

// TQ1_0: base-3 packing, 1.6875 bits/weight. A byte holds 5 trits (4 in qh) as a fixed-point fraction:
// byte = ceil(v * 256 / 243) where v = sum_k (t_k + 1) * 3^(4-k) (k = 0 most significant). Trit k is
// recovered as ((uint8_t)(byte * 3^k) * 3) >> 8. Element order:
//   e in [0, 160):   qs[e % 32],        trit e / 32
//   e in [160, 240): qs[32 + (e-160) % 16], trit (e-160) / 16
//   e in [240, 256): qh[(e-240) % 4],   trit (e-240) / 4   (trit 4 of qh bytes is always 0)
struct BlockTQ1_0 {
  uint8_t qs[(kQK_K - 4 * kQK_K / 64) / 5];  // 48
  uint8_t qh[kQK_K / 64];                     // 4
  uint16_t d;
};
static_assert(sizeof(BlockTQ1_0) == 54, "TQ1_0 block is 54 bytes");

// ---------------------------------------------------------------- per-element decoders (CPU + CUDA)
MOEC_HD float q8_0_value(const BlockQ8_0& b, int j) { return f16_to_f32(b.d) * float(b.qs[j]); }

MOEC_HD float q4_0_value(const BlockQ4_0& b, int j) {
  const int nib = j < 16 ? (b.qs[j] & 15) : (b.qs[j - 16] >> 4);
  return f16_to_f32(b.d) * float(nib - 8);
}

// Ternary code (-1, 0, +1) of element j.
MOEC_HD int tq2_0_code(const BlockTQ2_0& b, int j) {
  const int h = j / 128, l = (j % 128) / 32, m = j % 32;
  return int((b.qs[32 * h + m] >> (2 * l)) & 3) - 1;
}
MOEC_HD float tq2_0_value(const BlockTQ2_0& b, int j) { return f16_to_f32(b.d) * float(tq2_0_code(b, j)); }

// Trit k (0 = most significant) of a TQ1_0 byte, as a code in {-1, 0, +1}.
MOEC_HD int tq1_0_trit(uint8_t byte, int k) {
  uint8_t shifted = byte;
  for (int i = 0; i < k; ++i) shifted = uint8_t(shifted * 3);  // mod 256: drops the higher trits
  return int((uint16_t(shifted) * 3) >> 8) - 1;
}
MOEC_HD int tq1_0_code(const BlockTQ1_0& b, int j) {
  if (j < 160) return tq1_0_trit(b.qs[j % 32], j / 32);
  if (j < 240) return tq1_0_trit(b.qs[32 + (j - 160) % 16], (j - 160) / 16);
  return tq1_0_trit(b.qh[(j - 240) % 4], (j - 240) / 4);
}
MOEC_HD float tq1_0_value(const BlockTQ1_0& b, int j) { return f16_to_f32(b.d) * float(tq1_0_code(b, j)); }

// ---------------------------------------------------------------- block quantizers (llama.cpp reference rules)
// Q8_0: d = max|x| / 127, q = round(x / d).
void quantize_block_q8_0(const float* x, BlockQ8_0& out);
// Q4_0: m = the signed value of largest magnitude, d = m / -8, q = min(15, trunc(x / d + 8.5)).
void quantize_block_q4_0(const float* x, BlockQ4_0& out);
// TQ*: d = max|x|, t = round(x / d) (BitNet-style absmax ternary RTN).
void quantize_block_tq2_0(const float* x, BlockTQ2_0& out);
void quantize_block_tq1_0(const float* x, BlockTQ1_0& out);

// Packs 256 given ternary codes (each -1, 0 or +1; anything else fails) with block scale d (stored as
// fp16, round to nearest even). Used to carry moec's own ternary codes into llama.cpp types unchanged.
void pack_block_tq2_0(const int8_t* codes, float d, BlockTQ2_0& out);
void pack_block_tq1_0(const int8_t* codes, float d, BlockTQ1_0& out);

// ---------------------------------------------------------------- rows
// A row of n elements of a writable type (F32, F16, BF16, Q8_0, Q4_0, TQ1_0, TQ2_0). `dst` must hold
// ggml_row_bytes(t, n) bytes. `what` names the tensor in errors.
void quantize_row(GgmlType t, const float* src, void* dst, int64_t n, const std::string& what = "row");
void dequantize_row(GgmlType t, const void* src, float* dst, int64_t n, const std::string& what = "row");

// Writes ternary codes (n of them, -1/0/+1) and one scale per 256-element block into a TQ1_0 or TQ2_0
// row (n must be a multiple of 256).
void encode_ternary_row(GgmlType t, const int8_t* codes, const float* block_scales, int64_t n, void* dst,
                        const std::string& what = "row");

}  // namespace moec::io
