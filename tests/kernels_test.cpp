// Codecs and CPU kernels: pack/unpack round trips, serialization checks, and every kernel against independent
// references (QuantizedMatrix::dequant in double precision, and the scalar reference).
#include <gtest/gtest.h>
#include <omp.h>

#include <cmath>
#include <cstring>
#include <map>
#include <random>

#include "core/error.h"
#include "core/half.h"
#include "kernels/blocks.h"
#include "kernels/codec.h"
#include "kernels/gemv.h"
#include "kernels/subbit.h"
#include "tests/support/kernel_gen.h"

using namespace moec;

namespace {

using test::Gen;
using test::name;
using test::random_qm;
using test::random_x;

void expect_same_qm(const QuantizedMatrix& a, const QuantizedMatrix& b, const std::string& what) {
  ASSERT_EQ(a.rows, b.rows) << what;
  ASSERT_EQ(a.cols, b.cols) << what;
  ASSERT_EQ(a.groups(), b.groups()) << what;
  ASSERT_EQ(a.kind, b.kind) << what;
  ASSERT_EQ(a.q, b.q) << what;
  ASSERT_EQ(a.scale, b.scale) << what;
  ASSERT_EQ(a.zero, b.zero) << what;
  ASSERT_EQ(a.neg_scale, b.neg_scale) << what;
}

std::vector<Isa> isas() {
  std::vector<Isa> v;
  for (Isa i : {Isa::Scalar, Isa::Avx2, Isa::Avx512})
    if (isa_supported(i)) v.push_back(i);
  return v;
}

std::vector<Gen> shape_grid() {
  std::vector<Gen> out;
  const int cols_list[] = {1, 31, 32, 100, 257, 1000};
  const int rows_list[] = {1, 3, 17};
  int k = 0;
  for (Codec c : all_codecs())
    for (int cols : cols_list)
      for (int rows : rows_list) {
        ++k;
        // Rotate group sizes / options over the grid: whole row, 32, 64, 128.
        const int groups[] = {0, 32, 64, 128};
        Gen g{c, rows, cols, groups[k % 4]};
        g.symmetric = k % 3 == 0;
        g.neg = k % 2 == 0;
        g.p0 = c == Codec::Subbit ? 0.85 : 0.5;
        out.push_back(g);
      }
  return out;
}

}  // namespace

TEST(Codec, NamesRoundTrip) {
  for (Codec c : all_codecs()) EXPECT_EQ(codec_from_name(codec_name(c)), c);
  EXPECT_THROW(codec_from_name("int5"), Error);
}

TEST(Codec, BlockBitLayoutMatchesSpec) {
  // Hand-built blocks following docs/CODECS.md, decoded with block_code.
  BlockInt4 b4{};
  b4.q[0] = 0x21;  // weight 0 = 1, weight 1 = 2
  b4.q[15] = 0xF0; // weight 31 = 15
  EXPECT_EQ(block_code(b4, 0), 1u);
  EXPECT_EQ(block_code(b4, 1), 2u);
  EXPECT_EQ(block_code(b4, 30), 0u);
  EXPECT_EQ(block_code(b4, 31), 15u);
  BlockInt2 b2{};
  b2.q[1] = 0b11100100;  // weights 4..7 = 0,1,2,3
  for (int i = 0; i < 4; ++i) EXPECT_EQ(block_code(b2, 4 + i), unsigned(i));
  BlockInt3 b3{};
  b3.lo[0] = 0b00000011;  // weight 0 low bits = 3
  b3.hi[0] = 0b00000001;  // weight 0 high bit
  b3.hi[3] = 0b10000000;  // weight 31 high bit
  EXPECT_EQ(block_code(b3, 0), 7u);
  EXPECT_EQ(block_code(b3, 31), 4u);
  EXPECT_EQ(block_code(b3, 1), 0u);
  EXPECT_EQ(tern_value(1, 2.0f, 3.0f), 2.0f);
  EXPECT_EQ(tern_value(2, 2.0f, 3.0f), -3.0f);
  EXPECT_EQ(tern_value(3, 2.0f, 3.0f), 0.0f);
}

TEST(Codec, PackUnpackRoundTripRandom) {
  uint32_t seed = 1;
  for (const Gen& g : shape_grid()) {
    QuantizedMatrix q = random_qm(g, seed++);
    PackedMatrix m = pack(q, g.codec);
    QuantizedMatrix back = unpack(m.view());
    if (g.group >= g.cols) back.group = q.group;  // pack normalises group >= cols to 0 (same grouping)
    expect_same_qm(q, back, name(g));
    if (!codec_is_ternary(g.codec) && g.symmetric) {
      EXPECT_TRUE(m.symmetric) << name(g);
    }
    if (codec_is_ternary(g.codec)) {
      EXPECT_FALSE(m.symmetric) << name(g);
    }
  }
}

TEST(Codec, AdversarialInputs) {
  for (Codec c : all_codecs()) {
    for (int variant = 0; variant < 4; ++variant) {
      Gen g{c, variant == 3 ? 1 : 5, variant == 2 ? 1 : 77, 0};
      QuantizedMatrix q = random_qm(g, 7);
      const bool tern = codec_is_ternary(c);
      for (auto& v : q.q) {
        if (variant == 0) v = tern ? 0 : 0;                                   // all zero codes
        if (variant == 1) v = tern ? 1 : int8_t(uint8_t((1 << q.bits) - 1));  // all +1 / all max
      }
      PackedMatrix m = pack(q, c);
      expect_same_qm(q, unpack(m.view()), std::string(codec_name(c)) + " variant " + std::to_string(variant));
      std::vector<float> W(size_t(q.rows) * size_t(q.cols));
      dequantize(m.view(), W.data());
      for (int r = 0; r < q.rows; ++r)
        for (int col = 0; col < q.cols; ++col) ASSERT_EQ(W[size_t(r) * size_t(q.cols) + size_t(col)], q.dequant(r, col));
    }
  }
}

TEST(Codec, PackRejectsBadInput) {
  Gen g{Codec::Int4, 2, 100, 64};
  QuantizedMatrix q = random_qm(g, 3);
  EXPECT_NO_THROW(pack(q, Codec::Int4));
  EXPECT_NO_THROW(pack(q, Codec::Int8));  // 4-bit codes fit an 8-bit container
  EXPECT_THROW(pack(q, Codec::Int2), Error);
  EXPECT_THROW(pack(q, Codec::Tern2), Error);
  QuantizedMatrix bad = q;
  bad.group = 48;
  bad.scale.resize(size_t(bad.rows) * size_t(bad.groups()), 1.0f);
  bad.zero.resize(bad.scale.size(), 8.0f);
  EXPECT_THROW(pack(bad, Codec::Int4), Error);
  bad = q;
  bad.scale[1] = 0.1f;  // not exact in fp16
  try {
    pack(bad, Codec::Int4);
    FAIL() << "inexact scale accepted";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("fp16"), std::string::npos) << e.what();
  }
  bad = q;
  bad.q.pop_back();
  EXPECT_THROW(pack(bad, Codec::Int4), Error);
  Gen t{Codec::Tern2, 2, 40, 0};
  QuantizedMatrix qt = random_qm(t, 4);
  qt.q[5] = 2;
  EXPECT_THROW(pack(qt, Codec::Tern2), Error);
}

TEST(Kernels, DequantizeBitExactAllIsas) {
  uint32_t seed = 100;
  for (const Gen& g : shape_grid()) {
    QuantizedMatrix q = random_qm(g, seed++);
    PackedMatrix m = pack(q, g.codec);
    const size_t n = size_t(g.rows) * size_t(g.cols);
    for (Isa isa : isas()) {
      std::vector<float> W(n, -12345.0f);
      dequantize_isa(m.view(), W.data(), isa);
      for (int r = 0; r < g.rows; ++r)
        for (int c = 0; c < g.cols; ++c)
          ASSERT_EQ(W[size_t(r) * size_t(g.cols) + size_t(c)], q.dequant(r, c)) << name(g) << " " << isa_name(isa) << " at " << r << "," << c;
    }
  }
}

TEST(Kernels, MatmulMatchesReferenceAllIsas) {
  uint32_t seed = 200;
  for (const Gen& g : shape_grid()) {
    QuantizedMatrix q = random_qm(g, seed++);
    PackedMatrix m = pack(q, g.codec);
    for (int n : {1, 2, 3, 8, 11, 16}) {
      std::vector<float> X = random_x(size_t(n) * size_t(g.cols), seed * 7 + uint32_t(n));
      // Independent reference in double from QuantizedMatrix::dequant, plus a bound on rounding error.
      std::vector<double> ref(size_t(n) * size_t(g.rows)), mag(ref.size());
      for (int t = 0; t < n; ++t)
        for (int r = 0; r < g.rows; ++r) {
          double s = 0, a = 0;
          for (int c = 0; c < g.cols; ++c) {
            double p = double(q.dequant(r, c)) * double(X[size_t(t) * size_t(g.cols) + size_t(c)]);
            s += p;
            a += std::fabs(p);
          }
          ref[size_t(t) * size_t(g.rows) + size_t(r)] = s;
          mag[size_t(t) * size_t(g.rows) + size_t(r)] = a;
        }
      std::vector<float> Yref(ref.size());
      matmul_ref(m.view(), X.data(), n, Yref.data());
      for (Isa isa : isas()) {
        std::vector<float> Y(ref.size(), NAN);
        matmul(m.view(), X.data(), n, Y.data(), isa);
        for (size_t i = 0; i < Y.size(); ++i) {
          const double tol = 2e-6 * double(g.cols) * mag[i] / std::sqrt(double(g.cols)) + 1e-6 * mag[i] + 1e-30;
          ASSERT_NEAR(Y[i], ref[i], tol) << name(g) << " n=" << n << " " << isa_name(isa) << " i=" << i;
          ASSERT_NEAR(Y[i], Yref[i], 2 * tol) << name(g) << " n=" << n << " " << isa_name(isa) << " vs scalar";
        }
      }
    }
  }
}

TEST(Kernels, MatvecEqualsMatmulColumnAndIsThreadCountIndependent) {
  Gen g{Codec::Int4, 300, 1000, 128};
  QuantizedMatrix q = random_qm(g, 9);
  PackedMatrix m = pack(q, g.codec);
  std::vector<float> X = random_x(size_t(4) * 1000, 5);
  for (Isa isa : isas()) {
    std::vector<float> Y1(4 * 300), Y2(4 * 300), y(300);
    omp_set_num_threads(1);
    matmul(m.view(), X.data(), 4, Y1.data(), isa);
    omp_set_num_threads(2);
    matmul(m.view(), X.data(), 4, Y2.data(), isa);
    EXPECT_EQ(0, std::memcmp(Y1.data(), Y2.data(), Y1.size() * 4)) << isa_name(isa);
    matvec(m.view(), X.data() + 1000, y.data(), isa);
    for (int r = 0; r < 300; ++r) EXPECT_NEAR(y[r], Y1[300 + r], 1e-4f * (1 + std::fabs(y[r])));
  }
}

// --- serialization ---

namespace {
struct Store {
  std::map<std::string, RawTensor> t;
  RawTensorView get(const std::string& s) const {
    auto it = t.find(s);
    if (it == t.end()) fail("missing tensor ", s);
    return {it->second.dtype, it->second.shape, it->second.bytes.data(), it->second.bytes.size()};
  }
};
Store store_of(const PackedMatrix& m) {
  Store s;
  for (auto& [k, v] : to_tensors(m)) s.t[k] = v;
  return s;
}
void expect_reject(const nlohmann::json& meta, const Store& s, const std::string& needle) {
  try {
    std::vector<uint32_t> offs;
    view_from_tensors(meta, [&](const std::string& k) { return s.get(k); }, offs);
    ADD_FAILURE() << "accepted, expected an error mentioning '" << needle << "'";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find(needle), std::string::npos) << e.what();
  }
}
}  // namespace

TEST(Serialize, SubbitRowLengthsUseTheNarrowestType) {
  // Uniform ternary codes need ~1.6 bits/weight, so a 4096-wide row takes ~400 codewords: U16 lengths; a
  // 200-wide row can never take more than 200: U8.
  for (auto [cols, dtype] : {std::pair{200, "U8"}, std::pair{4096, "U16"}}) {
    Gen g{Codec::Subbit, 3, cols, 0, false, false, 1.0 / 3.0};
    QuantizedMatrix q = random_qm(g, 77);
    PackedMatrix m = pack(q, Codec::Subbit);
    Store s = store_of(m);
    EXPECT_EQ(s.t["row_lengths"].dtype, dtype) << cols;
    EXPECT_EQ(s.t["row_lengths"].bytes.size(), 3 * (std::string(dtype) == "U8" ? 1u : 2u));
    std::vector<uint32_t> offs;
    PackedView v = view_from_tensors(nlohmann::json::parse(codec_meta(m).dump()), [&](const std::string& k) { return s.get(k); }, offs);
    EXPECT_EQ(offs, m.row_offsets);
    expect_same_qm(q, unpack(v), "row lengths " + std::to_string(cols));
  }
}

TEST(Serialize, RoundTripAllCodecs) {
  uint32_t seed = 300;
  for (Codec c : all_codecs()) {
    for (bool opt : {false, true}) {
      Gen g{c, 9, 200, opt ? 64 : 0, opt, opt, 0.8};
      QuantizedMatrix q = random_qm(g, seed++);
      PackedMatrix m = pack(q, c);
      Store s = store_of(m);
      nlohmann::json meta = nlohmann::json::parse(codec_meta(m).dump());  // through text, as a checkpoint would
      std::vector<uint32_t> offs;
      PackedView v = view_from_tensors(meta, [&](const std::string& k) { return s.get(k); }, offs);
      expect_same_qm(q, unpack(v), name(g));
      EXPECT_DOUBLE_EQ(bits_per_weight(v), bits_per_weight(m.view()));
      // The accounted bytes are exactly the serialized tensors (+ 3 dictionary bytes for subbit).
      size_t bytes = 0;
      for (auto& [k, t] : s.t) bytes += t.bytes.size();
      EXPECT_EQ(stored_bytes(v), bytes + (c == Codec::Subbit ? 3 : 0)) << name(g);
    }
  }
}

TEST(Serialize, RejectsInconsistentTensors) {
  Gen g{Codec::Int4, 5, 100, 32};
  PackedMatrix m = pack(random_qm(g, 11), Codec::Int4);
  const nlohmann::json meta = codec_meta(m);
  Store s = store_of(m);
  {
    Store b = s;
    b.t["codes"].dtype = "I32";
    expect_reject(meta, b, "codes");
  }
  {
    Store b = s;
    b.t["scales"].shape = {5, 3};
    expect_reject(meta, b, "scales");
  }
  {
    Store b = s;
    b.t["zeros"].bytes.pop_back();
    expect_reject(meta, b, "zeros");
  }
  {
    Store b = s;
    b.t.erase("zeros");
    expect_reject(meta, b, "zeros");
  }
  for (const char* field : {"rows", "cols", "group", "bits", "codec", "symmetric", "format_version"}) {
    nlohmann::json bad = meta;
    bad.erase(field);
    expect_reject(bad, s, field);
  }
  {
    nlohmann::json bad = meta;
    bad["group"] = 48;
    expect_reject(bad, s, "group");
    bad = meta;
    bad["cols"] = 129;  // one more block and group: scales (checked first) and codes no longer match
    expect_reject(bad, s, "scales");
    bad = meta;
    bad["bits"] = 3;
    expect_reject(bad, s, "bits");
    bad = meta;
    bad["codec"] = "int5";
    expect_reject(bad, s, "int5");
  }
  // subbit offsets
  Gen t{Codec::Subbit, 4, 300, 0, false, true, 0.9};
  PackedMatrix sm = pack(random_qm(t, 12), Codec::Subbit);
  const nlohmann::json smeta = codec_meta(sm);
  Store ss = store_of(sm);
  {
    Store b = ss;
    ASSERT_EQ(b.t["row_lengths"].dtype, "U8");  // 300 columns: at most 300 codewords per row
    b.t["row_lengths"].bytes[1] = 3;            // fewer than ceil(300 / 32) codewords
    expect_reject(smeta, b, "row_lengths");
  }
  {
    Store b = ss;
    b.t["row_lengths"].dtype = "I32";
    expect_reject(smeta, b, "row_lengths");
  }
  {
    Store b = ss;
    b.t["codes"].bytes.resize(b.t["codes"].bytes.size() - 2);
    b.t["codes"].shape[0] -= 1;
    expect_reject(smeta, b, "row_lengths");
  }
  {
    // Version 1 stored absolute U32 offsets; such files still read (and are still checked).
    Store b = ss;
    nlohmann::json v1 = smeta;
    v1["format_version"] = 1;
    b.t.erase("row_lengths");
    RawTensor o{"U32", {sm.rows + 1}, {}};
    o.bytes.resize(4 * (size_t(sm.rows) + 1));
    std::memcpy(o.bytes.data(), sm.row_offsets.data(), o.bytes.size());
    b.t["row_offsets"] = o;
    std::vector<uint32_t> offs;
    PackedView v = view_from_tensors(v1, [&](const std::string& k) { return b.get(k); }, offs);
    EXPECT_EQ(offs, sm.row_offsets);
    expect_same_qm(unpack(sm.view()), unpack(v), "v1 offsets");
    uint32_t* p = reinterpret_cast<uint32_t*>(b.t["row_offsets"].bytes.data());
    std::swap(p[1], p[2]);
    expect_reject(v1, b, "row_offsets");
  }
  {
    nlohmann::json bad = smeta;
    bad["format_version"] = 3;
    expect_reject(bad, ss, "format_version");
  }
  {
    nlohmann::json bad = smeta;
    bad["probs"] = {0, 1, 2};
    expect_reject(bad, ss, "probs");
    bad = smeta;
    bad.erase("neg_scale");
    expect_reject(bad, ss, "neg_scale");
  }
}

// --- subbit ---

TEST(Subbit, DictionaryIsAValidPrefixCode) {
  const SubbitDict& d = subbit_dict(subbit_params_from_counts(85, 8, 7));
  EXPECT_GT(d.used, 65000);
  EXPECT_LE(d.used, 65536);
  // Kraft equality for a complete ternary tree: sum over leaves of prod(p) == 1 can't be checked without probs,
  // but sum of 3^-len must be exactly 1 for a complete ternary tree.
  long double kraft = 0;
  for (int i = 0; i < d.used; ++i) {
    ASSERT_GE(d.len[i], 1);
    ASSERT_LE(d.len[i], SubbitDict::kMaxLen);
    kraft += std::pow(3.0L, -int(d.len[i]));
  }
  EXPECT_NEAR(double(kraft), 1.0, 1e-12);
  for (int i = d.used; i < SubbitDict::kCodewords; ++i) EXPECT_EQ(d.len[i], 0);
  // Same parameters -> same object (cached); deterministic rebuild is covered by Serialize tests.
  EXPECT_EQ(&d, &subbit_dict(subbit_params_from_counts(85, 8, 7)));
}

TEST(Subbit, LosslessAndRateNearEntropy) {
  for (double p0 : {0.0, 0.5, 0.85, 0.95, 1.0}) {
    Gen g{Codec::Subbit, 64, 4096, 0, false, false, p0};
    QuantizedMatrix q = random_qm(g, 21);
    PackedMatrix m = pack(q, Codec::Subbit);
    expect_same_qm(q, unpack(m.view()), "p0=" + std::to_string(p0));
    uint64_t cnt[3] = {0, 0, 0};
    for (int8_t v : q.q) ++cnt[tern_code(v)];
    const double H = ternary_entropy(cnt[0], cnt[1], cnt[2]);
    const double code_bits = 8.0 * double(m.codes.size()) / double(q.q.size());
    std::printf("subbit p0=%.2f entropy %.3f  code rate %.3f  total %.3f bits/weight\n", p0, H, code_bits,
                bits_per_weight(m.view()));
    // Tunstall with 2^16 codewords: within ~5% of the entropy (8% allowed: the 8-bit probabilities are coarse at
    // p0 = 0), except that the 32-code length cap puts a floor of 0.5 bit/weight (16 bits / 32 codes) that
    // already costs ~0.03 bit/weight around p0 = 0.95.
    EXPECT_LE(code_bits, std::max(H * 1.08 + 0.01, 0.56)) << p0;
    EXPECT_GE(code_bits, H - 0.01) << p0;  // sanity: no code beats the entropy of an i.i.d. source
    if (p0 == 0.85) {
      EXPECT_LT(bits_per_weight(m.view()), 1.0);
    }
  }
}

// --- kernel paths beyond the shape grid ---

namespace {
// Y from every ISA against matmul_ref and an fp64 reference from QuantizedMatrix::dequant.
void expect_matmul_matches(const QuantizedMatrix& q, const PackedView& v, int n, uint32_t seed, const std::string& what) {
  std::vector<float> X = random_x(size_t(n) * size_t(q.cols), seed);
  std::vector<float> Yref(size_t(n) * size_t(q.rows));
  matmul_ref(v, X.data(), n, Yref.data());
  for (Isa isa : isas()) {
    std::vector<float> Y(Yref.size(), NAN);
    matmul(v, X.data(), n, Y.data(), isa);
    for (int t = 0; t < n; ++t)
      for (int r = 0; r < q.rows; ++r) {
        double s = 0, a = 0;
        for (int c = 0; c < q.cols; ++c) {
          const double p = double(q.dequant(r, c)) * double(X[size_t(t) * size_t(q.cols) + size_t(c)]);
          s += p;
          a += std::fabs(p);
        }
        const size_t i = size_t(t) * size_t(q.rows) + size_t(r);
        const double tol = 2e-6 * std::sqrt(double(q.cols)) * a + 1e-30;
        ASSERT_NEAR(Y[i], s, tol) << what << " n=" << n << " " << isa_name(isa) << " row " << r << " token " << t;
        ASSERT_NEAR(Y[i], Yref[i], 2 * tol) << what << " n=" << n << " " << isa_name(isa) << " vs scalar";
      }
  }
}
}  // namespace

TEST(Kernels, LongRowsManySegmentsAndTiles) {
  // Wide rows span several column segments of the batched kernels and rows = 9 leaves a remainder after row tiles;
  // token counts cover every register-tile width and their combinations.
  uint32_t seed = 500;
  for (Codec c : all_codecs()) {
    for (int group : {0, 64}) {
      Gen g{c, 9, 7001, group, group == 0, group != 0, c == Codec::Subbit ? 0.85 : 0.5};
      QuantizedMatrix q = random_qm(g, seed++);
      PackedMatrix m = pack(q, c);
      for (int n : {1, 2, 3, 4, 5, 8, 13}) expect_matmul_matches(q, m.view(), n, seed * 3 + uint32_t(n), name(g));
    }
  }
}

TEST(Kernels, SubbitDictionariesGroupsAndWidths) {
  // Dictionaries with short (p0 = 0.5: no sequence longer than 16 codes) and long sequences (p0 = 0.85: up to 32),
  // with and without negative scales, per-row and grouped scales, widths around block boundaries.
  uint32_t seed = 600;
  for (double p0 : {0.5, 0.85}) {
    for (int cols : {1, 17, 33, 1000, 4099}) {
      for (int group : {0, 32}) {
        Gen g{Codec::Subbit, 5, cols, group, false, cols % 2 == 1, p0};
        QuantizedMatrix q = random_qm(g, seed++);
        PackedMatrix m = pack(q, Codec::Subbit);
        for (int n : {1, 2, 5}) expect_matmul_matches(q, m.view(), n, seed * 5 + uint32_t(n), name(g) + " p0 " + std::to_string(p0));
      }
    }
  }
}

TEST(Kernels, SubbitCorruptStreamsStayInBoundsAndAgree) {
  // Streams a reader would reject (view_from_tensors checks offsets only): extra codewords past the row end,
  // unused codewords (length 0), and too few codewords. Every kernel must stay inside its buffers (ASan build)
  // and agree with the scalar reference, which decodes with subbit_decode_row (the SIMD kernels decode to bytes).
  Gen g{Codec::Subbit, 4, 300, 0, false, false, 0.85};
  PackedMatrix m = pack(random_qm(g, 41), Codec::Subbit);
  const SubbitDict& d = subbit_dict(m.subbit);
  ASSERT_LT(d.used, SubbitDict::kCodewords);
  const uint16_t unused = uint16_t(SubbitDict::kCodewords - 1);
  uint16_t longest = 0;
  for (int cw = 0; cw < d.used; ++cw)
    if (d.len[size_t(cw)] == SubbitDict::kMaxLen) longest = uint16_t(cw);
  std::vector<std::vector<uint16_t>> rows(4);
  for (int r = 0; r < 4; ++r) {
    const uint16_t* c = reinterpret_cast<const uint16_t*>(m.codes.data());
    rows[size_t(r)].assign(c + m.row_offsets[size_t(r)], c + m.row_offsets[size_t(r) + 1]);
  }
  rows[0].insert(rows[0].end(), 50, longest);                     // far more codes than columns
  rows[1].insert(rows[1].begin() + 1, 20, unused);                // length-0 codewords mid-row
  rows[2].resize(rows[2].size() / 2);                             // row ends early (rest decodes as 0)
  rows[3].assign(40, unused);                                     // nothing but unused codewords
  PackedMatrix bad = m;
  bad.codes.clear();
  bad.row_offsets.assign(1, 0);
  for (auto& rw : rows) {
    const uint8_t* b = reinterpret_cast<const uint8_t*>(rw.data());
    bad.codes.insert(bad.codes.end(), b, b + 2 * rw.size());
    bad.row_offsets.push_back(uint32_t(bad.codes.size() / 2));
  }
  const PackedView v = bad.view();
  for (int n : {1, 2, 3, 8}) {
    std::vector<float> X = random_x(size_t(n) * 300, 77 + uint32_t(n));
    std::vector<float> Yref(size_t(n) * 4);
    matmul_ref(v, X.data(), n, Yref.data());
    for (Isa isa : isas()) {
      std::vector<float> Y(Yref.size(), NAN);
      matmul(v, X.data(), n, Y.data(), isa);
      for (size_t i = 0; i < Y.size(); ++i) EXPECT_NEAR(Y[i], Yref[i], 1e-4 * (1 + std::fabs(Yref[i]))) << isa_name(isa) << " n=" << n << " i=" << i;
    }
  }
  // The SIMD dequantizers decode such rows the same way (the scalar one, via unpack, rejects the short row).
  std::vector<float> first;
  for (Isa isa : isas()) {
    if (isa == Isa::Scalar) continue;
    std::vector<float> W(size_t(4) * 300, NAN);
    dequantize_isa(v, W.data(), isa);
    if (first.empty()) first = W;
    EXPECT_EQ(W, first) << isa_name(isa);
  }
}

TEST(Kernels, ThreadCountIndependentAllPaths) {
  struct Case {
    Codec c;
    int group;
    int n;
  };
  for (Case cs : {Case{Codec::Tern2, 128, 1}, Case{Codec::Int2, 64, 8}, Case{Codec::Int3, 0, 3}, Case{Codec::Subbit, 0, 1},
                  Case{Codec::Subbit, 0, 5}, Case{Codec::Subbit, 128, 2}}) {
    Gen g{cs.c, 301, 999, cs.group, false, true, 0.85};
    PackedMatrix m = pack(random_qm(g, 13), cs.c);
    std::vector<float> X = random_x(size_t(cs.n) * 999, 3);
    for (Isa isa : isas()) {
      std::vector<float> Y1(size_t(cs.n) * 301), Y2(Y1.size());
      omp_set_num_threads(1);
      matmul(m.view(), X.data(), cs.n, Y1.data(), isa);
      omp_set_num_threads(2);
      matmul(m.view(), X.data(), cs.n, Y2.data(), isa);
      EXPECT_EQ(0, std::memcmp(Y1.data(), Y2.data(), Y1.size() * 4)) << name(g) << " n=" << cs.n << " " << isa_name(isa);
    }
  }
}
