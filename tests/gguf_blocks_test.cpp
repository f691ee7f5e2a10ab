// llama.cpp block types: byte-exact agreement with independent scalar references written from the
// format description (docs/GGUF.md), round trips, ternary code packing, and clear shape errors.
#include <gtest/gtest.h>

#include <cmath>
#include <cstring>
#include <random>
#include <vector>

#include "core/error.h"
#include "core/half.h"
#include "io/ggml_blocks.h"
#include "io/gguf_export.h"

using namespace moec;
using namespace moec::io;

namespace {

std::vector<float> randn(size_t n, uint32_t seed, float scale = 1.0f) {
  std::mt19937 rng(seed);
  std::normal_distribution<float> d(0.0f, scale);
  std::vector<float> v(n);
  for (auto& x : v) x = d(rng);
  return v;
}

// ---- scalar references, written from the spec text rather than from the library code

// Q8_0: d = amax/127 (fp16 stored), codes round(x * (1/d)) half away from zero.
std::vector<uint8_t> ref_q8_0(const std::vector<float>& x) {
  std::vector<uint8_t> out;
  for (size_t b = 0; b < x.size() / 32; ++b) {
    float amax = 0;
    for (int j = 0; j < 32; ++j) amax = std::max(amax, std::fabs(x[b * 32 + j]));
    float d = amax / 127.0f, id = d == 0 ? 0.0f : 1.0f / d;
    uint16_t h = f32_to_f16(d);
    out.push_back(uint8_t(h & 0xff));
    out.push_back(uint8_t(h >> 8));
    for (int j = 0; j < 32; ++j) out.push_back(uint8_t(int8_t(std::lround(x[b * 32 + j] * id))));
  }
  return out;
}

// Q4_0: d = -(signed value of max magnitude)/8; code = clamp(floor(x/d + 8.5), 0, 15); first half of the
// block in low nibbles, second half in high nibbles.
std::vector<uint8_t> ref_q4_0(const std::vector<float>& x) {
  std::vector<uint8_t> out;
  for (size_t b = 0; b < x.size() / 32; ++b) {
    const float* v = &x[b * 32];
    int arg = 0;
    for (int j = 1; j < 32; ++j)
      if (std::fabs(v[j]) > std::fabs(v[arg])) arg = j;
    float d = v[arg] / -8.0f, id = d == 0 ? 0.0f : 1.0f / d;
    uint16_t h = f32_to_f16(d);
    out.push_back(uint8_t(h & 0xff));
    out.push_back(uint8_t(h >> 8));
    auto code = [&](float f) { return std::min(15, int(std::floor(f * id + 8.5f))); };
    for (int j = 0; j < 16; ++j) out.push_back(uint8_t(code(v[j]) | (code(v[j + 16]) << 4)));
  }
  return out;
}

// Ternary codes of a 256-block under absmax RTN.
std::vector<int> ref_ternary_codes(const float* v, float* d_out) {
  float amax = 0;
  for (int j = 0; j < 256; ++j) amax = std::max(amax, std::fabs(v[j]));
  float id = amax == 0 ? 0.0f : 1.0f / amax;
  std::vector<int> t(256);
  for (int j = 0; j < 256; ++j) t[j] = int(std::lround(v[j] * id));
  *d_out = amax;
  return t;
}

// TQ2_0 decode from the layout description: element e = 128h + 32l + m lives in bits 2l of byte 32h + m.
float ref_tq2_0_value(const uint8_t* block, int e) {
  int h = e / 128, l = (e % 128) / 32, m = e % 32;
  int q = (block[32 * h + m] >> (2 * l)) & 3;
  uint16_t d;
  std::memcpy(&d, block + 64, 2);
  return float(q - 1) * f16_to_f32(d);
}

// TQ1_0 decode by exact integer arithmetic: byte = ceil(v*256/243) => v = floor(byte*243/256); trit k is
// the k-th base-3 digit of v from the top (5 digits).
int ref_tq1_digit(uint8_t byte, int k) {
  int v = (int(byte) * 243) / 256;
  int p = 1;
  for (int i = 0; i < 4 - k; ++i) p *= 3;
  return (v / p) % 3 - 1;
}
float ref_tq1_0_value(const uint8_t* block, int e) {
  uint16_t d;
  std::memcpy(&d, block + 52, 2);
  int t;
  if (e < 160) t = ref_tq1_digit(block[e % 32], e / 32);
  else if (e < 240) t = ref_tq1_digit(block[32 + (e - 160) % 16], (e - 160) / 16);
  else t = ref_tq1_digit(block[48 + (e - 240) % 4], (e - 240) / 4);
  return float(t) * f16_to_f32(d);
}

std::vector<uint8_t> quantize(GgmlType t, const std::vector<float>& x) {
  std::vector<uint8_t> out(ggml_row_bytes(t, int64_t(x.size()), "test"));
  quantize_row(t, x.data(), out.data(), int64_t(x.size()));
  return out;
}

std::vector<float> dequantize(GgmlType t, const std::vector<uint8_t>& b, size_t n) {
  std::vector<float> out(n);
  dequantize_row(t, b.data(), out.data(), int64_t(n));
  return out;
}

}  // namespace

TEST(GgmlBlocks, TypeTable) {
  EXPECT_EQ(ggml_type_traits(8)->block_bytes, 34u);
  EXPECT_EQ(ggml_type_traits(2)->block_bytes, 18u);
  EXPECT_EQ(ggml_type_traits(35)->block_bytes, 66u);
  EXPECT_EQ(ggml_type_traits(34)->block_bytes, 54u);
  EXPECT_EQ(ggml_type_traits(34)->block, 256);
  EXPECT_EQ(ggml_type_traits(31), nullptr);  // retired code
  EXPECT_EQ(parse_ggml_write_type("Q8_0"), GgmlType::Q8_0);
  EXPECT_EQ(parse_ggml_write_type("tq1_0"), GgmlType::TQ1_0);
  EXPECT_THROW(parse_ggml_write_type("q4_k"), Error);
}

TEST(GgmlBlocks, Q8_0MatchesReference) {
  auto x = randn(32 * 37, 1, 0.05f);
  x[5] = 0;  // and one all-zero block
  for (int j = 64; j < 96; ++j) x[j] = 0;
  auto got = quantize(GgmlType::Q8_0, x);
  EXPECT_EQ(got, ref_q8_0(x));
  auto y = dequantize(GgmlType::Q8_0, got, x.size());
  for (size_t b = 0; b < x.size() / 32; ++b) {
    float amax = 0;
    for (int j = 0; j < 32; ++j) amax = std::max(amax, std::fabs(x[b * 32 + j]));
    // Half a step, plus the fp16 rounding of d amplified by up to 127 codes (127 * d * 2^-11).
    for (int j = 0; j < 32; ++j) EXPECT_LE(std::fabs(y[b * 32 + j] - x[b * 32 + j]), amax / 127 * 0.57f + 1e-6f);
  }
  for (int j = 64; j < 96; ++j) EXPECT_EQ(y[j], 0.0f);
}

TEST(GgmlBlocks, Q4_0MatchesReference) {
  auto x = randn(32 * 41, 2, 0.1f);
  x[7] = -3.0f;  // negative extreme: d > 0 and the extreme maps to code 0
  x[40] = 2.5f;  // positive extreme: d < 0
  auto got = quantize(GgmlType::Q4_0, x);
  EXPECT_EQ(got, ref_q4_0(x));
  auto y = dequantize(GgmlType::Q4_0, got, x.size());
  EXPECT_NEAR(y[7], -3.0f, 1e-3f);
  EXPECT_NEAR(y[40], 2.5f, 1e-3f);
  for (size_t b = 0; b < x.size() / 32; ++b) {
    float amax = 0;
    for (int j = 0; j < 32; ++j) amax = std::max(amax, std::fabs(x[b * 32 + j]));
    // Codes span [-8, 7] steps: values of the opposite sign to the extreme clamp at 7, up to one step off.
    for (int j = 0; j < 32; ++j) EXPECT_LE(std::fabs(y[b * 32 + j] - x[b * 32 + j]), amax / 8 * 1.01f + 1e-6f);
  }
}

TEST(GgmlBlocks, TernaryTypesMatchReference) {
  auto x = randn(256 * 6, 3, 0.02f);
  for (int j = 256; j < 512; ++j) x[j] = 0;  // zero block
  for (GgmlType t : {GgmlType::TQ2_0, GgmlType::TQ1_0}) {
    SCOPED_TRACE(ggml_type_name(t));
    auto bytes = quantize(t, x);
    const size_t bb = t == GgmlType::TQ2_0 ? 66 : 54;
    ASSERT_EQ(bytes.size(), 6 * bb);
    auto y = dequantize(t, bytes, x.size());
    for (size_t b = 0; b < 6; ++b) {
      float d;
      auto codes = ref_ternary_codes(&x[b * 256], &d);
      for (int e = 0; e < 256; ++e) {
        const float want = float(codes[e]) * round_f16(d);
        const float ref = t == GgmlType::TQ2_0 ? ref_tq2_0_value(&bytes[b * bb], e) : ref_tq1_0_value(&bytes[b * bb], e);
        ASSERT_EQ(ref, want) << "block " << b << " element " << e;
        ASSERT_EQ(y[b * 256 + e], want) << "block " << b << " element " << e;
      }
    }
  }
}

TEST(GgmlBlocks, Tq1EveryTritPatternRoundTrips) {
  // All 3^5 five-trit groups (and all 3^4 four-trit qh groups) must survive the 256/243 fixed-point packing.
  std::vector<int8_t> codes(256);
  for (int v = 0; v < 243; ++v) {
    for (int j = 0; j < 256; ++j) {
      // Place the pattern v on every byte's trits (varying by byte so bytes differ).
      int pat = (v + j % 32) % 243;
      int k = j < 160 ? j / 32 : j < 240 ? (j - 160) / 16 : (j - 240) / 4;
      int digit = pat;
      for (int i = 0; i < 4 - k; ++i) digit /= 3;
      codes[j] = int8_t(digit % 3 - 1);
    }
    BlockTQ1_0 b1;
    BlockTQ2_0 b2;
    pack_block_tq1_0(codes.data(), 0.5f, b1);
    pack_block_tq2_0(codes.data(), 0.5f, b2);
    for (int j = 0; j < 256; ++j) {
      ASSERT_EQ(tq1_0_code(b1, j), codes[j]) << "pattern " << v << " element " << j;
      ASSERT_EQ(tq2_0_code(b2, j), codes[j]) << "pattern " << v << " element " << j;
      ASSERT_EQ(ref_tq1_0_value(reinterpret_cast<const uint8_t*>(&b1), j), 0.5f * codes[j]);
    }
  }
}

TEST(GgmlBlocks, PackRejectsNonTernaryCodes) {
  std::vector<int8_t> codes(256, 0);
  codes[17] = 2;
  BlockTQ2_0 b;
  EXPECT_THROW(pack_block_tq2_0(codes.data(), 1.0f, b), Error);
  std::vector<float> scales(1, 1.0f);
  std::vector<uint8_t> out(54);
  try {
    encode_ternary_row(GgmlType::TQ1_0, codes.data(), scales.data(), 256, out.data(), "tensor 'w'");
    FAIL() << "expected an error";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("tensor 'w'"), std::string::npos) << e.what();
    EXPECT_NE(std::string(e.what()).find("element 17"), std::string::npos) << e.what();
  }
}

TEST(GgmlBlocks, PlainTypesRoundTrip) {
  auto x = randn(100, 4);  // plain types take any row length
  EXPECT_EQ(dequantize(GgmlType::F32, quantize(GgmlType::F32, x), x.size()), x);
  auto h = dequantize(GgmlType::F16, quantize(GgmlType::F16, x), x.size());
  auto b = dequantize(GgmlType::BF16, quantize(GgmlType::BF16, x), x.size());
  for (size_t i = 0; i < x.size(); ++i) {
    EXPECT_EQ(h[i], round_f16(x[i]));
    EXPECT_EQ(b[i], round_bf16(x[i]));
  }
}

TEST(GgmlBlocks, RowsNotMultipleOfBlockAreRejected) {
  std::vector<float> x(100, 1.0f);
  std::vector<uint8_t> out(4096);
  struct Case { GgmlType t; int64_t n; const char* multiple; };
  for (Case c : {Case{GgmlType::Q8_0, 100, "multiple of 32"}, Case{GgmlType::Q4_0, 48, "multiple of 32"},
                 Case{GgmlType::TQ2_0, 128, "multiple of 256"}, Case{GgmlType::TQ1_0, 300, "multiple of 256"}}) {
    try {
      std::vector<float> v(size_t(c.n), 1.0f);
      quantize_row(c.t, v.data(), out.data(), c.n, "tensor 'blk.0.ffn_down_exps.weight'");
      FAIL() << ggml_type_name(c.t) << " accepted a row of " << c.n;
    } catch (const Error& e) {
      std::string m = e.what();
      EXPECT_NE(m.find(ggml_type_name(c.t)), std::string::npos) << m;
      EXPECT_NE(m.find(c.multiple), std::string::npos) << m;
      EXPECT_NE(m.find("blk.0.ffn_down_exps.weight"), std::string::npos) << m;
      EXPECT_NE(m.find(std::to_string(c.n)), std::string::npos) << m;
    }
  }
}

// moec ternary codes -> TQ rows: per-row and 256-multiple groups are lossless, smaller groups get a
// least-squares block scale with the codes kept.
TEST(GgmlBlocks, TernaryMatrixMapping) {
  std::mt19937 rng(5);
  std::uniform_int_distribution<int> code(-1, 1);
  QuantizedMatrix qm;
  qm.rows = 3;
  qm.cols = 512;
  qm.kind = CodeKind::Ternary;
  qm.bits = 2;
  qm.q.resize(size_t(qm.rows * qm.cols));
  for (auto& c : qm.q) c = int8_t(code(rng));
  for (int group : {0, 256, 512}) {
    SCOPED_TRACE(group);
    qm.group = group;
    qm.scale.clear();
    for (int i = 0; i < qm.rows * qm.groups(); ++i) qm.scale.push_back(round_f16(0.01f * float(i + 1)));
    for (GgmlType t : {GgmlType::TQ1_0, GgmlType::TQ2_0}) {
      TernaryFitStats st;
      auto bytes = encode_ternary_matrix(qm, t, "expert", &st);
      EXPECT_EQ(st.refit_blocks, 0);
      EXPECT_EQ(st.blocks, 6);
      std::vector<float> row(512);
      for (int r = 0; r < qm.rows; ++r) {
        dequantize_row(t, bytes.data() + size_t(r) * bytes.size() / 3, row.data(), 512);
        for (int c = 0; c < 512; ++c) ASSERT_EQ(row[size_t(c)], qm.dequant(r, c)) << r << "," << c;
      }
    }
  }
  // Groups of 128: two scales per block -> refit d = mean |w| over nonzero codes; codes unchanged.
  qm.group = 128;
  qm.scale.clear();
  for (int i = 0; i < qm.rows * qm.groups(); ++i) qm.scale.push_back(round_f16(i % 2 ? 0.02f : 0.01f));
  TernaryFitStats st;
  auto bytes = encode_ternary_matrix(qm, GgmlType::TQ2_0, "expert", &st);
  EXPECT_EQ(st.refit_blocks, 6);
  EXPECT_GT(st.max_rel_change, 0.3);
  std::vector<float> row(512);
  for (int r = 0; r < qm.rows; ++r) {
    dequantize_row(GgmlType::TQ2_0, bytes.data() + size_t(r) * 132, row.data(), 512);
    for (int b = 0; b < 2; ++b) {
      double sum = 0;
      int nz = 0;
      for (int c = b * 256; c < b * 256 + 256; ++c)
        if (qm.q[size_t(r * 512 + c)]) sum += std::fabs(qm.dequant(r, c)), ++nz;
      const float d = round_f16(float(sum / nz));
      for (int c = b * 256; c < b * 256 + 256; ++c) ASSERT_EQ(row[size_t(c)], d * qm.q[size_t(r * 512 + c)]);
    }
  }
  qm.cols = 300;
  EXPECT_THROW(encode_ternary_matrix(qm, GgmlType::TQ2_0, "expert"), Error);
}
