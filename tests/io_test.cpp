// Safetensors and .npy I/O: round trips, sharding, and every malformed input rejected clearly.
#include <gtest/gtest.h>

#include <cstring>
#include <fstream>

#include "core/error.h"
#include "core/files.h"
#include "core/half.h"
#include "io/npy.h"
#include "io/safetensors.h"
#include "tests/support/test_util.h"

using namespace moec;
using namespace moec::io;

namespace {

// Builds a raw safetensors file from a header JSON and data bytes (for malformed cases).
void write_raw(const fs::path& p, const std::string& header, const std::string& data, int64_t len_override = -1) {
  std::ofstream f(p, std::ios::binary);
  uint64_t n = len_override >= 0 ? uint64_t(len_override) : header.size();
  f.write(reinterpret_cast<const char*>(&n), 8);
  f << header << data;
}

std::string error_of(const fs::path& p) {
  try {
    SafetensorsFile f(p);
  } catch (const Error& e) {
    return e.what();
  }
  return "";
}

}  // namespace

TEST(Safetensors, RoundTripAllDTypes) {
  test::TempDir dir("st-rt");
  SafetensorsWriter w(dir.path, uint64_t(1) << 30, "model", {{"format", "pt"}, {"note", "x"}});
  std::vector<float> f32 = {1.5f, -2.25f, 3.0f, 0.0f, 1e-3f, 65504.0f};
  w.add_f32("a.f32", DType::F32, {2, 3}, f32.data());
  w.add_f32("b.bf16", DType::BF16, {6}, f32.data());
  w.add_f32("c.f16", DType::F16, {3, 2}, f32.data());
  double f64[2] = {1.25, -7.5};
  w.add("d.f64", DType::F64, {2}, f64, 16);
  int64_t i64[2] = {-5, 1LL << 40};
  w.add("e.i64", DType::I64, {2}, i64, 16);
  int32_t i32[3] = {-1, 2, 3};
  w.add("f.i32", DType::I32, {3}, i32, 12);
  int16_t i16[1] = {-300};
  w.add("g.i16", DType::I16, {1}, i16, 2);
  int8_t i8[2] = {-128, 127};
  w.add("h.i8", DType::I8, {2}, i8, 2);
  uint8_t u8[2] = {0, 255};
  w.add("i.u8", DType::U8, {2}, u8, 2);
  uint8_t b[3] = {1, 0, 1};
  w.add("j.bool", DType::BOOL, {3}, b, 3);
  w.add("k.empty", DType::F32, {0, 4}, nullptr, 0);
  auto files = w.finish();
  ASSERT_EQ(files.size(), 1u);
  EXPECT_EQ(files[0], "model.safetensors");
  auto store = TensorStore::open(dir.path);
  EXPECT_EQ(store.names().size(), 11u);
  EXPECT_EQ(to_f32(store.get("a.f32")), f32);
  auto bf = to_f32(store.get("b.bf16"));
  for (size_t i = 0; i < f32.size(); ++i) EXPECT_EQ(bf[i], round_bf16(f32[i]));
  auto h = to_f32(store.get("c.f16"));
  for (size_t i = 0; i < f32.size(); ++i) EXPECT_EQ(h[i], round_f16(f32[i]));
  EXPECT_EQ(to_f32(store.get("d.f64")), (std::vector<float>{1.25f, -7.5f}));
  EXPECT_EQ(to_f32(store.get("e.i64"))[1], float(1LL << 40));
  EXPECT_EQ(to_f32(store.get("g.i16"))[0], -300.0f);
  EXPECT_EQ(to_f32(store.get("h.i8")), (std::vector<float>{-128, 127}));
  EXPECT_EQ(to_f32(store.get("i.u8")), (std::vector<float>{0, 255}));
  EXPECT_EQ(to_f32(store.get("j.bool")), (std::vector<float>{1, 0, 1}));
  EXPECT_EQ(store.get("k.empty").numel(), 0);
  EXPECT_EQ(store.files()[0]->metadata()["note"], "x");
  EXPECT_EQ(to_matrix(store.get("a.f32"))(1, 0), 0.0f);
}

TEST(Safetensors, ShardedWriteReadsBackWithIndex) {
  test::TempDir dir("st-shard");
  SafetensorsWriter w(dir.path, 1000);
  std::vector<float> v(100);
  for (int t = 0; t < 7; ++t) {
    for (int i = 0; i < 100; ++i) v[size_t(i)] = float(t * 1000 + i);
    w.add_f32("t" + std::to_string(t), DType::F32, {10, 10}, v.data());  // 400 bytes: 2 per shard
  }
  auto files = w.finish();
  ASSERT_EQ(files.size(), 4u);
  EXPECT_EQ(files[0], "model-00001-of-00004.safetensors");
  EXPECT_TRUE(fs::exists(dir / "model.safetensors.index.json"));
  EXPECT_FALSE(fs::exists(dir / "model.safetensors"));
  for (auto& e : fs::directory_iterator(dir.path)) EXPECT_EQ(e.path().filename().string().find(".tmp"), std::string::npos) << e.path();
  auto store = TensorStore::open(dir.path);
  for (int t = 0; t < 7; ++t) EXPECT_EQ(to_f32(store.get("t" + std::to_string(t)))[5], float(t * 1000 + 5));
  EXPECT_THROW(store.get("nope"), Error);
}

TEST(Safetensors, IndexPointingToWrongShardIsRejected) {
  test::TempDir dir("st-badidx");
  SafetensorsWriter w(dir.path, 100);
  float v[30] = {};
  w.add_f32("a", DType::F32, {30}, v);
  w.add_f32("b", DType::F32, {30}, v);
  w.finish();
  auto j = nlohmann::json::parse(read_file(dir / "model.safetensors.index.json"));
  std::swap(j["weight_map"]["a"], j["weight_map"]["b"]);
  write_file_atomic(dir / "model.safetensors.index.json", j.dump());
  EXPECT_THROW(TensorStore::open(dir.path), Error);
}

TEST(Safetensors, WriterRejectsDuplicateAndSizeMismatch) {
  test::TempDir dir("st-dup");
  SafetensorsWriter w(dir.path);
  float v[4] = {};
  w.add_f32("a", DType::F32, {4}, v);
  EXPECT_THROW(w.add_f32("a", DType::F32, {4}, v), Error);
  EXPECT_THROW(w.add("b", DType::F32, {5}, v, 16), Error);
}

TEST(Safetensors, AbandonedWriterLeavesNoFiles) {
  test::TempDir dir("st-abandon");
  {
    SafetensorsWriter w(dir.path);
    float v[4] = {};
    w.add_f32("a", DType::F32, {4}, v);
  }
  EXPECT_TRUE(fs::is_empty(dir.path));
}

struct Malformed : ::testing::Test {
  test::TempDir dir{"st-bad"};
  fs::path p = dir / "x.safetensors";
  std::string good_header = R"({"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},"b":{"dtype":"F32","shape":[1],"data_offsets":[8,12]}})";
  std::string data = std::string(12, '\0');
};

TEST_F(Malformed, GoodBaselineLoads) {
  write_raw(p, good_header, data);
  EXPECT_EQ(error_of(p), "");
}
TEST_F(Malformed, TruncatedFile) {
  write_raw(p, good_header, data.substr(0, 10));
  EXPECT_NE(error_of(p).find("truncated"), std::string::npos) << error_of(p);
  EXPECT_NE(error_of(p).find("'b'"), std::string::npos) << error_of(p);
}
TEST_F(Malformed, ShorterThanHeaderLength) {
  std::ofstream(p, std::ios::binary) << "abc";
  EXPECT_NE(error_of(p).find("not a safetensors file"), std::string::npos);
}
TEST_F(Malformed, HeaderLengthOverLimit) {
  write_raw(p, good_header, data, 200'000'000);
  EXPECT_NE(error_of(p).find("100 MB"), std::string::npos) << error_of(p);
}
TEST_F(Malformed, HeaderLengthPastEnd) {
  write_raw(p, good_header, data, 5000);
  EXPECT_NE(error_of(p).find("past the end"), std::string::npos) << error_of(p);
}
TEST_F(Malformed, InvalidJson) {
  write_raw(p, "{\"a\": [", "");
  EXPECT_NE(error_of(p).find("not valid JSON"), std::string::npos);
}
TEST_F(Malformed, OverlappingOffsets) {
  write_raw(p, R"({"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},"b":{"dtype":"F32","shape":[1],"data_offsets":[4,8]}})", std::string(8, '\0'));
  EXPECT_NE(error_of(p).find("overlaps"), std::string::npos) << error_of(p);
}
TEST_F(Malformed, GapBetweenTensors) {
  write_raw(p, R"({"a":{"dtype":"F32","shape":[1],"data_offsets":[0,4]},"b":{"dtype":"F32","shape":[1],"data_offsets":[8,12]}})", data);
  EXPECT_NE(error_of(p).find("gap"), std::string::npos) << error_of(p);
}
TEST_F(Malformed, TrailingBytes) {
  write_raw(p, good_header, data + "xyz");
  EXPECT_NE(error_of(p).find("trailing"), std::string::npos) << error_of(p);
}
TEST_F(Malformed, ByteSizeDoesNotMatchShapeAndDtype) {
  write_raw(p, R"({"a":{"dtype":"BF16","shape":[2],"data_offsets":[0,8]}})", std::string(8, '\0'));
  auto e = error_of(p);
  EXPECT_NE(e.find("'a'"), std::string::npos) << e;
  EXPECT_NE(e.find("does not match shape"), std::string::npos) << e;
}
TEST_F(Malformed, UnknownDtype) {
  write_raw(p, R"({"a":{"dtype":"F8_E9M9","shape":[1],"data_offsets":[0,1]}})", std::string(1, '\0'));
  EXPECT_NE(error_of(p).find("F8_E9M9"), std::string::npos);
}
TEST_F(Malformed, OffsetsReversedOrMissing) {
  write_raw(p, R"({"a":{"dtype":"F32","shape":[1],"data_offsets":[4,0]}})", std::string(4, '\0'));
  EXPECT_NE(error_of(p).find("end before they begin"), std::string::npos);
  write_raw(p, R"({"a":{"dtype":"F32","shape":[1]}})", std::string(4, '\0'));
  EXPECT_NE(error_of(p).find("data_offsets"), std::string::npos);
}
TEST_F(Malformed, ErrorNamesTheFile) { 
  write_raw(p, good_header, data + "z");
  EXPECT_NE(error_of(p).find(p.string()), std::string::npos);
}

// --- .npy tokens
namespace {
void write_npy(const fs::path& p, const std::string& descr, const std::string& shape, const std::string& payload, bool fortran = false) {
  std::string h = "{'descr': '" + descr + "', 'fortran_order': " + (fortran ? "True" : "False") + ", 'shape': " + shape + ", }";
  h.append((64 - (10 + h.size() + 1) % 64) % 64, ' ');
  h += '\n';
  std::ofstream f(p, std::ios::binary);
  f.write("\x93NUMPY\x01\x00", 8);
  uint16_t n = uint16_t(h.size());
  f.write(reinterpret_cast<const char*>(&n), 2);
  f << h << payload;
}
template <class T>
std::string bytes_of(std::vector<T> v) {
  return std::string(reinterpret_cast<const char*>(v.data()), v.size() * sizeof(T));
}
}  // namespace

TEST(Npy, ReadsSupportedDtypesAndShapes) {
  test::TempDir dir("npy");
  write_npy(dir / "a.npy", "<i4", "(3,)", bytes_of<int32_t>({1, 2, 300}));
  EXPECT_EQ(read_tokens_npy(dir / "a.npy").ids, (std::vector<int32_t>{1, 2, 300}));
  write_npy(dir / "b.npy", "<i8", "(2, 2)", bytes_of<int64_t>({1, 2, 3, 4}));
  auto b = read_tokens_npy(dir / "b.npy");
  EXPECT_EQ(b.shape, (std::vector<int64_t>{2, 2}));
  EXPECT_EQ(b.ids[3], 4);
  write_npy(dir / "c.npy", "<u2", "(2,)", bytes_of<uint16_t>({65535, 7}));
  EXPECT_EQ(read_tokens_npy(dir / "c.npy").ids[0], 65535);
  write_npy(dir / "d.npy", "<u4", "(1,)", bytes_of<uint32_t>({9}));
  EXPECT_EQ(read_tokens_npy(dir / "d.npy").ids[0], 9);
  std::vector<int32_t> ids = {5, 6, 7};
  write_tokens_npy(dir / "e.npy", ids);
  EXPECT_EQ(read_tokens_npy(dir / "e.npy").ids, ids);
}

TEST(Npy, RejectsBadInput) {
  test::TempDir dir("npy-bad");
  write_npy(dir / "f.npy", "<f4", "(1,)", bytes_of<float>({1}));
  EXPECT_THROW(read_tokens_npy(dir / "f.npy"), Error);
  write_npy(dir / "t.npy", "<i4", "(4,)", bytes_of<int32_t>({1, 2}));
  EXPECT_THROW(read_tokens_npy(dir / "t.npy"), Error);
  write_npy(dir / "e.npy", "<i4", "(0,)", "");
  EXPECT_THROW(read_tokens_npy(dir / "e.npy"), Error);
  write_npy(dir / "o.npy", "<i4", "(2, 2)", bytes_of<int32_t>({1, 2, 3, 4}), true);
  EXPECT_THROW(read_tokens_npy(dir / "o.npy"), Error);
  write_npy(dir / "3d.npy", "<i4", "(1, 1, 1)", bytes_of<int32_t>({1}));
  EXPECT_THROW(read_tokens_npy(dir / "3d.npy"), Error);
  write_npy(dir / "neg.npy", "<i8", "(1,)", bytes_of<int64_t>({-1}));
  EXPECT_THROW(read_tokens_npy(dir / "neg.npy"), Error);
  std::ofstream(dir / "junk.npy") << "hello";
  EXPECT_THROW(read_tokens_npy(dir / "junk.npy"), Error);
  EXPECT_THROW(read_tokens_npy(dir / "missing.npy"), Error);
}

TEST(Files, Sha256KnownVectors) {
  EXPECT_EQ(sha256_hex(""), "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855");
  EXPECT_EQ(sha256_hex("abc"), "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad");
  EXPECT_EQ(sha256_hex(std::string(1000, 'a')).size(), 64u);
}

TEST(Half, ConversionsRoundToNearestEven) {
  EXPECT_EQ(f32_to_bf16(1.0f), 0x3f80);
  EXPECT_EQ(bf16_to_f32(0x3f80), 1.0f);
  EXPECT_EQ(f32_to_f16(1.0f), 0x3c00);
  EXPECT_EQ(f16_to_f32(0x3c00), 1.0f);
  EXPECT_EQ(f16_to_f32(0x0001), std::ldexp(1.0f, -24));  // smallest subnormal
  EXPECT_EQ(f32_to_f16(65520.0f), 0x7c00);                 // rounds to inf
  EXPECT_EQ(f32_to_f16(std::ldexp(1.0f, -25)), 0x0000);    // tie to even: 0
  EXPECT_EQ(f32_to_f16(std::ldexp(3.0f, -25)), 0x0002);    // 1.5 ulp -> 2
  // every fp16 value survives a round trip
  for (uint32_t h = 0; h < 0x10000; ++h) {
    if ((h & 0x7c00) == 0x7c00 && (h & 0x3ff)) continue;  // NaN payloads
    ASSERT_EQ(f32_to_f16(f16_to_f32(uint16_t(h))), h) << h;
  }
}
