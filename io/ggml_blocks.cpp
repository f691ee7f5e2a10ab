#include "io/ggml_blocks.h"

#include <algorithm>
#include <cctype>
#include <cmath>
#include <cstring>

#include "core/error.h"

namespace moec::io {

namespace {
struct TypeRow {
  uint32_t code;
  GgmlTypeTraits traits;
};
// Block sizes and bytes per block of every ggml type a GGUF file may hold (so the reader can size any
// tensor, including types moec never writes).
constexpr TypeRow kTypes[] = {
    {0, {"f32", 1, 4}},          {1, {"f16", 1, 2}},          {2, {"q4_0", 32, 18}},
    {3, {"q4_1", 32, 20}},       {6, {"q5_0", 32, 22}},       {7, {"q5_1", 32, 24}},
    {8, {"q8_0", 32, 34}},       {9, {"q8_1", 32, 36}},       {10, {"q2_K", 256, 84}},
    {11, {"q3_K", 256, 110}},    {12, {"q4_K", 256, 144}},    {13, {"q5_K", 256, 176}},
    {14, {"q6_K", 256, 210}},    {15, {"q8_K", 256, 292}},    {16, {"iq2_xxs", 256, 66}},
    {17, {"iq2_xs", 256, 74}},   {18, {"iq3_xxs", 256, 98}},  {19, {"iq1_s", 256, 50}},
    {20, {"iq4_nl", 32, 18}},    {21, {"iq3_s", 256, 110}},   {22, {"iq2_s", 256, 82}},
    {23, {"iq4_xs", 256, 136}},  {24, {"i8", 1, 1}},          {25, {"i16", 1, 2}},
    {26, {"i32", 1, 4}},         {27, {"i64", 1, 8}},         {28, {"f64", 1, 8}},
    {29, {"iq1_m", 256, 56}},    {30, {"bf16", 1, 2}},        {34, {"tq1_0", 256, 54}},
    {35, {"tq2_0", 256, 66}},    {39, {"mxfp4", 32, 17}},
};
}  // namespace

const GgmlTypeTraits* ggml_type_traits(uint32_t code) {
  for (const auto& t : kTypes)
    if (t.code == code) return &t.traits;
  return nullptr;
}

const char* ggml_type_name(GgmlType t) {
  const GgmlTypeTraits* tr = ggml_type_traits(uint32_t(t));
  return tr ? tr->name : "unknown";
}

bool ggml_type_writable(GgmlType t) {
  switch (t) {
    case GgmlType::F32: case GgmlType::F16: case GgmlType::BF16: case GgmlType::Q8_0:
    case GgmlType::Q4_0: case GgmlType::TQ1_0: case GgmlType::TQ2_0:
      return true;
    default:
      return false;
  }
}

GgmlType parse_ggml_write_type(const std::string& s) {
  std::string l = s;
  std::transform(l.begin(), l.end(), l.begin(), [](unsigned char c) { return char(std::tolower(c)); });
  for (GgmlType t : {GgmlType::F32, GgmlType::F16, GgmlType::BF16, GgmlType::Q8_0, GgmlType::Q4_0, GgmlType::TQ1_0,
                     GgmlType::TQ2_0})
    if (l == ggml_type_name(t)) return t;
  fail("unknown GGUF tensor type '", s, "' (expected one of f32, f16, bf16, q8_0, q4_0, tq1_0, tq2_0)");
}

size_t ggml_row_bytes(GgmlType t, int64_t n, const std::string& what) {
  const GgmlTypeTraits* tr = ggml_type_traits(uint32_t(t));
  if (!tr) fail(what, ": unknown ggml type code ", uint32_t(t));
  if (n < 0) fail(what, ": negative row length ", n);
  if (n % tr->block != 0)
    fail(what, ": type ", tr->name, " needs rows that are a multiple of ", tr->block, " elements; row has ", n);
  return size_t(n / tr->block) * tr->block_bytes;
}

// ---------------------------------------------------------------- block quantizers

void quantize_block_q8_0(const float* x, BlockQ8_0& out) {
  float amax = 0.0f;
  for (int j = 0; j < kQK8_0; ++j) amax = std::max(amax, std::fabs(x[j]));
  const float d = amax / 127.0f;
  const float id = d != 0.0f ? 1.0f / d : 0.0f;
  out.d = f32_to_f16(d);
  for (int j = 0; j < kQK8_0; ++j) out.qs[j] = int8_t(std::round(x[j] * id));
}

void quantize_block_q4_0(const float* x, BlockQ4_0& out) {
  float amax = 0.0f, max = 0.0f;  // max keeps the sign of the largest-magnitude value
  for (int j = 0; j < kQK4_0; ++j)
    if (std::fabs(x[j]) > amax) {
      amax = std::fabs(x[j]);
      max = x[j];
    }
  const float d = max / -8.0f;
  const float id = d != 0.0f ? 1.0f / d : 0.0f;
  out.d = f32_to_f16(d);
  for (int j = 0; j < kQK4_0 / 2; ++j) {
    // x/d lies in [-8, 8]; +8.5 then truncation rounds half up to a code in [0, 16], clamped to 15.
    const uint8_t lo = uint8_t(std::min(15, int(int8_t(x[j] * id + 8.5f))));
    const uint8_t hi = uint8_t(std::min(15, int(int8_t(x[j + 16] * id + 8.5f))));
    out.qs[j] = uint8_t(lo | (hi << 4));
  }
}

namespace {
// Absmax ternary rounding of one 256-block: codes and the fp32 scale (as llama.cpp's reference does).
float ternary_rtn(const float* x, int8_t* codes) {
  float amax = 0.0f;
  for (int j = 0; j < kQK_K; ++j) amax = std::max(amax, std::fabs(x[j]));
  const float id = amax != 0.0f ? 1.0f / amax : 0.0f;
  for (int j = 0; j < kQK_K; ++j) codes[j] = int8_t(std::lround(x[j] * id));
  return amax;
}

void check_codes(const int8_t* codes) {
  for (int j = 0; j < kQK_K; ++j)
    if (codes[j] < -1 || codes[j] > 1) fail("ternary code ", int(codes[j]), " at block element ", j, " is not -1, 0 or +1");
}

// 5 (or fewer) trits -> one byte: base-3 number, first trit most significant, scaled to 256/243 rounding up.
uint8_t pack_trits(const int8_t* t, int count, int stride) {
  unsigned v = 0;
  for (int k = 0; k < count; ++k) v = v * 3 + unsigned(t[k * stride] + 1);
  for (int k = count; k < 5; ++k) v *= 3;  // qh bytes hold 4 trits: shifted up, the unused low trit is 0
  return uint8_t((v * 256 + 242) / 243);
}
}  // namespace

void pack_block_tq2_0(const int8_t* codes, float d, BlockTQ2_0& out) {
  check_codes(codes);
  std::memset(out.qs, 0, sizeof out.qs);
  for (int j = 0; j < kQK_K; ++j) {
    const int h = j / 128, l = (j % 128) / 32, m = j % 32;
    out.qs[32 * h + m] |= uint8_t((codes[j] + 1) << (2 * l));
  }
  out.d = f32_to_f16(d);
}

void pack_block_tq1_0(const int8_t* codes, float d, BlockTQ1_0& out) {
  check_codes(codes);
  for (int m = 0; m < 32; ++m) out.qs[m] = pack_trits(codes + m, 5, 32);               // elements 0..159
  for (int m = 0; m < 16; ++m) out.qs[32 + m] = pack_trits(codes + 160 + m, 5, 16);    // 160..239
  for (int m = 0; m < 4; ++m) out.qh[m] = pack_trits(codes + 240 + m, 4, 4);           // 240..255
  out.d = f32_to_f16(d);
}

void quantize_block_tq2_0(const float* x, BlockTQ2_0& out) {
  int8_t codes[kQK_K];
  const float d = ternary_rtn(x, codes);
  pack_block_tq2_0(codes, d, out);
}

void quantize_block_tq1_0(const float* x, BlockTQ1_0& out) {
  int8_t codes[kQK_K];
  const float d = ternary_rtn(x, codes);
  pack_block_tq1_0(codes, d, out);
}

// ---------------------------------------------------------------- rows

void quantize_row(GgmlType t, const float* src, void* dst, int64_t n, const std::string& what) {
  ggml_row_bytes(t, n, what);  // validates the block multiple
  switch (t) {
    case GgmlType::F32:
      std::memcpy(dst, src, size_t(n) * 4);
      return;
    case GgmlType::F16: {
      auto* o = static_cast<uint16_t*>(dst);
      for (int64_t i = 0; i < n; ++i) o[i] = f32_to_f16(src[i]);
      return;
    }
    case GgmlType::BF16: {
      auto* o = static_cast<uint16_t*>(dst);
      for (int64_t i = 0; i < n; ++i) o[i] = f32_to_bf16(src[i]);
      return;
    }
    case GgmlType::Q8_0: {
      auto* o = static_cast<BlockQ8_0*>(dst);
      for (int64_t b = 0; b < n / kQK8_0; ++b) quantize_block_q8_0(src + b * kQK8_0, o[b]);
      return;
    }
    case GgmlType::Q4_0: {
      auto* o = static_cast<BlockQ4_0*>(dst);
      for (int64_t b = 0; b < n / kQK4_0; ++b) quantize_block_q4_0(src + b * kQK4_0, o[b]);
      return;
    }
    case GgmlType::TQ2_0: {
      auto* o = static_cast<BlockTQ2_0*>(dst);
      for (int64_t b = 0; b < n / kQK_K; ++b) quantize_block_tq2_0(src + b * kQK_K, o[b]);
      return;
    }
    case GgmlType::TQ1_0: {
      auto* o = static_cast<BlockTQ1_0*>(dst);
      for (int64_t b = 0; b < n / kQK_K; ++b) quantize_block_tq1_0(src + b * kQK_K, o[b]);
      return;
    }
    default:
      fail(what, ": moec cannot write ggml type ", ggml_type_name(t));
  }
}

void dequantize_row(GgmlType t, const void* src, float* dst, int64_t n, const std::string& what) {
  ggml_row_bytes(t, n, what);
  switch (t) {
    case GgmlType::F32:
      std::memcpy(dst, src, size_t(n) * 4);
      return;
    case GgmlType::F16: {
      auto* s = static_cast<const uint16_t*>(src);
      for (int64_t i = 0; i < n; ++i) dst[i] = f16_to_f32(s[i]);
      return;
    }
    case GgmlType::BF16: {
      auto* s = static_cast<const uint16_t*>(src);
      for (int64_t i = 0; i < n; ++i) dst[i] = bf16_to_f32(s[i]);
      return;
    }
    case GgmlType::Q8_0: {
      auto* b = static_cast<const BlockQ8_0*>(src);
      for (int64_t i = 0; i < n; ++i) dst[i] = q8_0_value(b[i / kQK8_0], int(i % kQK8_0));
      return;
    }
    case GgmlType::Q4_0: {
      auto* b = static_cast<const BlockQ4_0*>(src);
      for (int64_t i = 0; i < n; ++i) dst[i] = q4_0_value(b[i / kQK4_0], int(i % kQK4_0));
      return;
    }
    case GgmlType::TQ2_0: {
      auto* b = static_cast<const BlockTQ2_0*>(src);
      for (int64_t i = 0; i < n; ++i) dst[i] = tq2_0_value(b[i / kQK_K], int(i % kQK_K));
      return;
    }
    case GgmlType::TQ1_0: {
      auto* b = static_cast<const BlockTQ1_0*>(src);
      for (int64_t i = 0; i < n; ++i) dst[i] = tq1_0_value(b[i / kQK_K], int(i % kQK_K));
      return;
    }
    default:
      fail(what, ": moec cannot decode ggml type ", ggml_type_name(t));
  }
}

void encode_ternary_row(GgmlType t, const int8_t* codes, const float* block_scales, int64_t n, void* dst,
                        const std::string& what) {
  if (t != GgmlType::TQ1_0 && t != GgmlType::TQ2_0)
    fail(what, ": ternary codes can only be written as tq1_0 or tq2_0, not ", ggml_type_name(t));
  ggml_row_bytes(t, n, what);
  for (int64_t b = 0; b < n / kQK_K; ++b) {
    try {
      if (t == GgmlType::TQ2_0)
        pack_block_tq2_0(codes + b * kQK_K, block_scales[b], static_cast<BlockTQ2_0*>(dst)[b]);
      else
        pack_block_tq1_0(codes + b * kQK_K, block_scales[b], static_cast<BlockTQ1_0*>(dst)[b]);
    } catch (const Error& e) {
      fail(what, ", block ", b, ": ", e.what());
    }
  }
}

}  // namespace moec::io
