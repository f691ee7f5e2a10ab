// Packed weight codecs: QuantizedMatrix <-> PackedMatrix (owning) / PackedView (non-owning, e.g. over an
// mmap'd safetensors file), and the named raw tensors + JSON metadata that checkpoints store.
// Byte-exact format: docs/CODECS.md.
#pragma once
#include <cstdint>
#include <functional>
#include <nlohmann/json.hpp>
#include <string>
#include <utility>
#include <vector>

#include "quantize/qmatrix.h"

namespace moec {

enum class Codec : uint8_t { Int8, Int4, Int3, Int2, Tern2, Subbit };

const char* codec_name(Codec c);        // "int8", "int4", "int3", "int2", "tern2", "subbit"
Codec codec_from_name(const std::string& name);  // throws naming the bad name
std::vector<Codec> all_codecs();
int codec_bits(Codec c);                // code width in the QuantizedMatrix sense (8,4,3,2,2,2)
bool codec_is_ternary(Codec c);         // Tern2, Subbit
int block_bytes(Codec c);               // bytes per 32-weight block (0 for Subbit: variable length)

struct SubbitDict;  // kernels/subbit.h

// Subbit probability model: relative frequencies of ternary codes 0, +1, -1 (each 1..255). The dictionary is a
// deterministic function of these three numbers, so it costs 3 bytes to store and is shared (cached) by every
// matrix with the same numbers.
struct SubbitParams {
  uint8_t p0 = 0, pplus = 0, pminus = 0;
  bool operator==(const SubbitParams& o) const { return p0 == o.p0 && pplus == o.pplus && pminus == o.pminus; }
};

struct PackOptions {
  // Subbit only: use these probabilities instead of the matrix's own (so that many matrices share one
  // dictionary). Zero-initialised = derive from the codes.
  SubbitParams subbit{};
};

// Non-owning description of a packed matrix. Pointers need no alignment (loads use memcpy / unaligned SIMD).
struct PackedView {
  Codec codec = Codec::Int4;
  int rows = 0, cols = 0;
  int group = 0;          // scale group size along cols (multiple of 32), 0 = one group per row
  int bits = 4;           // codec_bits(codec)
  bool symmetric = false; // Int codecs: no zeros array, zero = 2^(bits-1)
  const uint8_t* codes = nullptr;  // block codecs: rows * blocks_per_row() * block_bytes(codec) bytes;
                                   // subbit: row_offsets[rows] little-endian u16 codewords
  size_t codes_bytes = 0;
  const uint16_t* scales = nullptr;      // fp16 [rows, groups()]
  const uint16_t* zeros = nullptr;       // fp16 [rows, groups()]; Int codecs, null when symmetric
  const uint16_t* neg_scales = nullptr;  // fp16 [rows, groups()]; ternary codecs, optional
  const uint32_t* row_offsets = nullptr; // subbit: rows + 1 offsets (in codewords) into codes
  SubbitParams subbit{};
  const SubbitDict* dict = nullptr;      // subbit: decode tables (owned by the global cache)

  int blocks_per_row() const { return (cols + 31) / 32; }
  int groups() const { return group > 0 ? (cols + group - 1) / group : 1; }
  int group_size() const { return group > 0 ? group : cols; }
  int blocks_per_group() const { return group > 0 ? group / 32 : blocks_per_row(); }
  size_t row_bytes() const { return size_t(blocks_per_row()) * size_t(block_bytes(codec)); }
  float scale(int r, int g) const;      // fp16 -> fp32
  float zero(int r, int g) const;       // Int codecs (2^(bits-1) when symmetric)
  float neg_scale(int r, int g) const;  // ternary codecs (scale when there is no neg_scales array)
};

struct PackedMatrix {
  Codec codec = Codec::Int4;
  int rows = 0, cols = 0, group = 0, bits = 4;
  bool symmetric = false;
  std::vector<uint8_t> codes;
  std::vector<uint16_t> scales, zeros, neg_scales;
  std::vector<uint32_t> row_offsets;
  SubbitParams subbit{};

  PackedView view() const;
};

// An owning copy of a packed view (e.g. one read back from a file): every stored array byte for byte.
PackedMatrix copy_packed(const PackedView& v);

// Packs q. Group must be 0, >= cols, or a multiple of 32; scales/zeros must be exact in fp16; Int codecs need
// CodeKind::Int codes below 2^codec_bits, ternary codecs need CodeKind::Ternary. Fails naming what is wrong.
PackedMatrix pack(const QuantizedMatrix& q, Codec codec, const PackOptions& opt = {});
// Exact inverse of pack (bits = codec_bits; symmetric matrices get explicit zeros = 2^(bits-1)).
QuantizedMatrix unpack(const PackedView& v);
// W[rows * cols] row-major fp32 weights. Multithreaded SIMD path (kernels/gemv.cpp); bit-exact with
// dequantize_ref.
void dequantize(const PackedView& v, float* W);
void dequantize_ref(const PackedView& v, float* W);  // scalar reference
// Stored bits per weight: codes + scales + zeros + neg_scales + subbit row lengths + dictionary (3 bytes).
double bits_per_weight(const PackedView& v);
size_t stored_bytes(const PackedView& v);  // the same numerator, in bytes
// Subbit: bytes per stored row length (1, 2 or 4: the narrowest that holds the longest row's codeword count).
int subbit_length_bytes(const PackedView& v);

// --- serialization seam for checkpoints (safetensors) ---
struct RawTensor {
  std::string dtype;  // "U8","U16","I32","U32","F16","F32" (safetensors names)
  std::vector<int64_t> shape;
  std::vector<uint8_t> bytes;  // little-endian
};
struct RawTensorView {
  std::string dtype;
  std::vector<int64_t> shape;
  const uint8_t* data = nullptr;
  size_t nbytes = 0;
};
// Suffixes: "codes", "scales", and when present "zeros", "neg_scales", "row_lengths" (subbit).
std::vector<std::pair<std::string, RawTensor>> to_tensors(const PackedMatrix& m);
nlohmann::json codec_meta(const PackedMatrix& m);
nlohmann::json codec_meta(const PackedView& v);
// Inverse: validates meta fields and every tensor's dtype/shape/size; get(suffix) is called only for the tensors
// the meta says exist (it may throw if missing). The returned view points into the memory get() returned and,
// for subbit, into `row_offsets` (rebuilt from the stored row lengths), which must outlive the view.
PackedView view_from_tensors(const nlohmann::json& meta, const std::function<RawTensorView(const std::string&)>& get,
                             std::vector<uint32_t>& row_offsets);

}  // namespace moec
