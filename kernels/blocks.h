// Packed code blocks: one plain struct per codec, 32 weights each, plus the per-weight decode functions
// shared by the scalar reference, the SIMD paths (as the spec they must match) and CUDA. See docs/CODECS.md.
//
// All sub-byte layouts are little-endian "LSB first": weight i of a block occupies the bits
// [b*i, b*i + b) of the block read as a little-endian bit string. Scales/zeros live outside the blocks
// (separate fp16 arrays, one entry per (row, group)) so a group may span any whole number of blocks.
#pragma once
#include <cstdint>

#include "core/half.h"

namespace moec {

constexpr int kBlockWeights = 32;  // weights per block (every codec)

// int8: byte i = code of weight i (unsigned 0..255).
struct BlockInt8 { uint8_t q[32]; };
// int4: byte i/2, low nibble for even i, high nibble for odd i.
struct BlockInt4 { uint8_t q[16]; };
// int3: lo = the low 2 bits of each code laid out exactly like BlockInt2; hi = bit 2 of the code of weight i
// at bit i of the little-endian u32 hi[0..3].
struct BlockInt3 { uint8_t lo[8]; uint8_t hi[4]; };
// int2: byte i/4, bits 2*(i%4) .. 2*(i%4)+1.
struct BlockInt2 { uint8_t q[8]; };
// tern2: same bit layout as int2; code 0 -> 0, 1 -> +1, 2 -> -1, 3 -> reserved (decoders read it as 0).
struct BlockTern2 { uint8_t q[8]; };

static_assert(sizeof(BlockInt8) == 32 && sizeof(BlockInt4) == 16 && sizeof(BlockInt3) == 12 &&
                  sizeof(BlockInt2) == 8 && sizeof(BlockTern2) == 8,
              "packed blocks must have the sizes given in docs/CODECS.md");

MOEC_HD unsigned block_code(const BlockInt8& b, int i) { return b.q[i]; }
MOEC_HD unsigned block_code(const BlockInt4& b, int i) { return (b.q[i >> 1] >> ((i & 1) * 4)) & 15u; }
MOEC_HD unsigned block_code(const BlockInt2& b, int i) { return (b.q[i >> 2] >> ((i & 3) * 2)) & 3u; }
MOEC_HD unsigned block_code(const BlockTern2& b, int i) { return (b.q[i >> 2] >> ((i & 3) * 2)) & 3u; }
MOEC_HD unsigned block_code(const BlockInt3& b, int i) {
  unsigned lo = (b.lo[i >> 2] >> ((i & 3) * 2)) & 3u;
  unsigned hi = (b.hi[i >> 3] >> (i & 7)) & 1u;
  return lo | (hi << 2);
}

// Writers (pack side, host only). Blocks must start zeroed.
inline void block_set(BlockInt8& b, int i, unsigned c) { b.q[i] = uint8_t(c); }
inline void block_set(BlockInt4& b, int i, unsigned c) { b.q[i >> 1] |= uint8_t((c & 15u) << ((i & 1) * 4)); }
inline void block_set(BlockInt2& b, int i, unsigned c) { b.q[i >> 2] |= uint8_t((c & 3u) << ((i & 3) * 2)); }
inline void block_set(BlockTern2& b, int i, unsigned c) { b.q[i >> 2] |= uint8_t((c & 3u) << ((i & 3) * 2)); }
inline void block_set(BlockInt3& b, int i, unsigned c) {
  b.lo[i >> 2] |= uint8_t((c & 3u) << ((i & 3) * 2));
  b.hi[i >> 3] |= uint8_t(((c >> 2) & 1u) << (i & 7));
}

// Weight values. Integer codes: w = scale * (q - zero) (zero = 2^(bits-1) when the matrix is symmetric).
MOEC_HD float int_value(unsigned q, float scale, float zero) { return scale * (float(q) - zero); }
// Ternary codes (tern2 and the decoded subbit stream): 1 -> +scale, 2 -> -neg_scale, 0 and 3 -> 0.
MOEC_HD float tern_value(unsigned code, float scale, float neg_scale) {
  return code == 1u ? scale : (code == 2u ? -neg_scale : 0.0f);
}
MOEC_HD unsigned tern_code(int t) { return t > 0 ? 1u : (t < 0 ? 2u : 0u); }
MOEC_HD int tern_from_code(unsigned c) { return c == 1u ? 1 : (c == 2u ? -1 : 0); }

}  // namespace moec
