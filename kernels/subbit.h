// subbit: lossless variable-to-fixed (Tunstall) coding of ternary code streams. Each 16-bit codeword stands
// for a sequence of 1..32 ternary codes; the dictionary is built deterministically from three quantized symbol
// frequencies (SubbitParams), so it is never stored. Each row is coded separately (row_offsets give random
// access and per-row parallel decode). Construction and stream format: docs/CODECS.md.
#pragma once
#include <cstdint>
#include <cstring>
#include <vector>

#include "core/half.h"
#include "kernels/codec.h"

namespace moec {

struct SubbitDict {
  static constexpr int kCodewordBits = 16;
  static constexpr int kCodewords = 1 << kCodewordBits;
  static constexpr int kMaxLen = 32;  // ternary codes per codeword (fits one u64 of 2-bit codes)
  SubbitParams params;
  // Decode tables indexed by codeword: the codes (tern2 codes 0/1/2, 2 bits each, LSB first; unused high bits 0)
  // and the sequence length (0 = codeword not in the dictionary).
  std::vector<uint64_t> seq;
  std::vector<uint8_t> len;
  int used = 0;  // codewords in the dictionary
  // Encoder trie: node 0 = root; child[s] for symbol s (0: code 0, 1: +1, 2: -1); leaves have codeword >= 0.
  struct Node {
    int32_t child[3];
    int32_t codeword;
  };
  std::vector<Node> trie;
};

// The dictionary for these parameters (built on first use, cached for the process lifetime, thread-safe).
const SubbitDict& subbit_dict(SubbitParams p);
// Quantize empirical counts of codes (0, +1, -1) to SubbitParams (each 1..255, roughly proportional).
SubbitParams subbit_params_from_counts(uint64_t n0, uint64_t nplus, uint64_t nminus);
// Encodes one row of ternary codes (tern2 codes 0/1/2) and appends u16 codewords to out.
void subbit_encode_row(const SubbitDict& d, const uint8_t* codes, int n, std::vector<uint16_t>& out);
// Empirical entropy (bits/weight) of the ternary codes of a matrix, as a yardstick for the subbit rate.
double ternary_entropy(uint64_t n0, uint64_t nplus, uint64_t nminus);

// Decodes row r of a subbit view into buf as a tern2 row: words = blocks_per_row() + 1 little-endian u64
// (word b = block b). Bits past cols are cleared. Never writes outside buf even for a corrupt stream.
// Returns the number of weights the stream produced for the row (>= cols for a valid stream).
inline int64_t subbit_decode_row(const PackedView& v, int r, uint64_t* buf) {
  const int words = v.blocks_per_row() + 1;
  std::memset(buf, 0, sizeof(uint64_t) * size_t(words));
  uint32_t b, e;
  std::memcpy(&b, v.row_offsets + r, 4);
  std::memcpy(&e, v.row_offsets + r + 1, 4);
  const uint64_t* seq = v.dict->seq.data();
  const uint8_t* len = v.dict->len.data();
  // The word being filled stays in a register (no read-modify-write chain through memory): every step stores
  // the current word and the overflow into the next one, and moves on when the sequence crossed the boundary.
  int64_t pos = 0, w = 0;
  uint64_t cur = 0;
  for (uint32_t i = b; i < e && pos < v.cols; ++i) {
    uint16_t cw;
    std::memcpy(&cw, v.codes + 2 * size_t(i), 2);
    const uint64_t s = seq[cw];
    const unsigned L = len[cw];
    const unsigned sh = unsigned(pos & 31) * 2;
    const uint64_t lo = cur | (s << sh);
    const uint64_t hi = (s >> 1) >> (63 - sh);  // bits of s that spill into word w + 1 (0 when sh = 0)
    buf[w] = lo;
    buf[w + 1] = hi;
    const unsigned cross = (sh + 2 * L) >> 6;
    const uint64_t keep = uint64_t(cross) - 1;  // all ones when still in word w (branch-free select)
    cur = (lo & keep) | (hi & ~keep);
    w += cross;
    pos += L;
  }
  // Clear codes past the end of the row (the last codeword may run over; the next word is slack).
  const int tail = v.cols & 31;
  if (tail) buf[v.cols >> 5] &= (uint64_t(1) << (2 * tail)) - 1;
  buf[words - 1] = 0;
  return pos;
}

}  // namespace moec
