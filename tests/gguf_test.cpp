// GGUF v3 writer/reader: every metadata type round-trips, alignment and offsets follow the spec,
// malformed files are rejected with errors naming the problem; the model export maps tiny-mixtral's
// tensors as docs/GGUF.md says (checked against the safetensors values with independent code).
#include <gtest/gtest.h>

#include <cmath>
#include <cstring>
#include <fstream>
#include <random>

#include "core/error.h"
#include "core/files.h"
#include "core/half.h"
#include "io/gguf.h"
#include "io/gguf_export.h"
#include "io/safetensors.h"

using namespace moec;
using namespace moec::io;
namespace fs = std::filesystem;

namespace {

fs::path scratch(const std::string& name) {
  fs::path d = fs::path(MOEC_BINARY_DIR) / "test_scratch" / "gguf";
  fs::create_directories(d);
  return d / name;
}

std::string bytes_of(const fs::path& p) { return read_file(p); }
void put_bytes(const fs::path& p, const std::string& s) { std::ofstream(p, std::ios::binary) << s; }

template <class T>
T at(const std::string& s, size_t off) {
  T v;
  std::memcpy(&v, s.data() + off, sizeof v);
  return v;
}
template <class T>
void set_at(std::string& s, size_t off, T v) {
  std::memcpy(s.data() + off, &v, sizeof v);
}

// A small file with every KV type and three tensors of different types.
fs::path write_sample(const std::string& name, uint32_t alignment = 32) {
  fs::path p = scratch(name);
  GgufWriter w(p, alignment);
  w.set("t.u8", GgufValue::u8(200));
  w.set("t.i8", GgufValue::i8(-100));
  w.set("t.u16", GgufValue::u16(60000));
  w.set("t.i16", GgufValue::i16(-30000));
  w.set("t.u32", GgufValue::u32(4000000000u));
  w.set("t.i32", GgufValue::i32(-2000000000));
  w.set("t.u64", GgufValue::u64(uint64_t(1) << 63));
  w.set("t.i64", GgufValue::i64(-(int64_t(1) << 62)));
  w.set("t.f32", GgufValue::f32(1.5e-5f));
  w.set("t.f64", GgufValue::f64(3.141592653589793));
  w.set("t.bool", GgufValue::boolean(true));
  w.set("t.str", GgufValue::string("héllo"));
  w.set("t.empty_str", GgufValue::string(""));
  w.set("t.strs", GgufValue::strings({"a", "", "ccc"}));
  w.set("t.no_strs", GgufValue::strings({}));
  w.set("t.arr_i32", GgufValue::array_of(GgufType::I32, std::vector<int32_t>{1, -2, 3}));
  w.set("t.arr_f32_empty", GgufValue::array_of(GgufType::F32, std::vector<float>{}));
  std::vector<float> a(3 * 5), b(64 * 2);
  for (size_t i = 0; i < a.size(); ++i) a[i] = float(i) * 0.25f;
  for (size_t i = 0; i < b.size(); ++i) b[i] = std::sin(float(i));
  w.add_tensor("a", {5, 3}, GgmlType::F32);          // 60 bytes: forces padding before the next tensor
  w.add_tensor("b", {64, 2}, GgmlType::Q8_0);        // 4 blocks = 136 bytes
  w.add_tensor("c", {7}, GgmlType::F16);             // 14 bytes
  w.write_tensor("a", a.data(), a.size() * 4);
  std::vector<uint8_t> qb(136);
  quantize_row(GgmlType::Q8_0, b.data(), qb.data(), 64);
  quantize_row(GgmlType::Q8_0, b.data() + 64, qb.data() + 68, 64);
  w.write(qb.data(), 50);  // chunked writes are fine
  w.write(qb.data() + 50, 86);
  std::vector<uint16_t> c(7);
  for (int i = 0; i < 7; ++i) c[size_t(i)] = f32_to_f16(float(i) - 3.0f);
  w.write_tensor("c", c.data(), 14);
  w.finish();
  return p;
}

void expect_rejected(const fs::path& p, const std::string& needle) {
  try {
    GgufFile f(p);
    FAIL() << "accepted a malformed file (expected an error containing '" << needle << "')";
  } catch (const Error& e) {
    std::string m = e.what();
    EXPECT_NE(m.find(needle), std::string::npos) << m;
    EXPECT_NE(m.find(p.string()), std::string::npos) << "error does not name the file: " << m;
  }
}

}  // namespace

TEST(Gguf, AllMetadataTypesRoundTrip) {
  GgufFile f(write_sample("sample.gguf"));
  EXPECT_EQ(f.version(), 3u);
  EXPECT_EQ(f.alignment(), 32u);
  EXPECT_EQ(f.metadata().front().first, "general.alignment");
  EXPECT_EQ(f.get("t.u8").type(), GgufType::U8);
  EXPECT_EQ(f.get("t.u8").as_int("t.u8"), 200);
  EXPECT_EQ(f.get("t.i8").as_int("t.i8"), -100);
  EXPECT_EQ(f.get("t.u16").as_int("t.u16"), 60000);
  EXPECT_EQ(f.get("t.i16").as_int("t.i16"), -30000);
  EXPECT_EQ(f.get("t.u32").as_u32("t.u32"), 4000000000u);
  EXPECT_EQ(f.get("t.i32").as_int("t.i32"), -2000000000);
  EXPECT_EQ(f.get("t.u64").type(), GgufType::U64);
  EXPECT_EQ(f.get("t.u64").number_at(0, "t.u64"), std::ldexp(1.0, 63));
  EXPECT_EQ(f.get("t.i64").as_int("t.i64"), -(int64_t(1) << 62));
  EXPECT_EQ(f.get("t.f32").as_f32("t.f32"), 1.5e-5f);
  EXPECT_EQ(f.get("t.f64").as_double("t.f64"), 3.141592653589793);
  EXPECT_TRUE(f.get("t.bool").as_bool("t.bool"));
  EXPECT_EQ(f.get("t.str").as_string("t.str"), "héllo");
  EXPECT_EQ(f.get("t.empty_str").as_string("t.empty_str"), "");
  EXPECT_EQ(f.get("t.strs").as_strings("t.strs"), (std::vector<std::string>{"a", "", "ccc"}));
  EXPECT_TRUE(f.get("t.no_strs").is_array());
  EXPECT_EQ(f.get("t.no_strs").elem_type(), GgufType::STRING);
  EXPECT_EQ(f.get("t.no_strs").size(), 0u);
  EXPECT_EQ(f.get("t.arr_i32").elem_type(), GgufType::I32);
  EXPECT_EQ(f.get("t.arr_i32").number_at(1, "t.arr_i32"), -2.0);
  EXPECT_EQ(f.get("t.arr_f32_empty").size(), 0u);
  EXPECT_THROW(f.get("t.u8").as_string("t.u8"), Error);
  try {
    f.get("missing.key");
    FAIL();
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("missing.key"), std::string::npos);
  }
}

TEST(Gguf, TensorsLayoutAndValues) {
  fs::path p = write_sample("layout.gguf");
  GgufFile f(p);
  ASSERT_EQ(f.tensors().size(), 3u);
  const auto& a = f.tensor("a");
  const auto& b = f.tensor("b");
  const auto& c = f.tensor("c");
  EXPECT_EQ(a.ne, (std::vector<int64_t>{5, 3}));
  EXPECT_EQ(a.offset, 0u);
  EXPECT_EQ(b.offset, 64u);   // 60 bytes padded to 32
  EXPECT_EQ(c.offset, 224u);  // 64 + 136 = 200 -> 224
  EXPECT_EQ(f.data_offset() % 32, 0u);
  EXPECT_EQ(f.file_size(), f.data_offset() + 224 + 32);  // last tensor padded too
  auto av = f.to_f32(a);
  for (size_t i = 0; i < av.size(); ++i) EXPECT_EQ(av[i], float(i) * 0.25f);
  auto bv = f.to_f32(b);
  for (size_t i = 0; i < bv.size(); ++i) EXPECT_NEAR(bv[i], std::sin(float(i)), 0.01);
  auto cv = f.to_f32(c);
  for (int i = 0; i < 7; ++i) EXPECT_EQ(cv[size_t(i)], float(i) - 3.0f);
  // Header fields straight from the bytes (independent of the reader).
  std::string raw = bytes_of(p);
  EXPECT_EQ(raw.substr(0, 4), "GGUF");
  EXPECT_EQ(at<uint32_t>(raw, 4), 3u);
  EXPECT_EQ(at<int64_t>(raw, 8), 3);   // tensors
  EXPECT_EQ(at<int64_t>(raw, 16), 18); // 17 keys + general.alignment
  EXPECT_EQ(at<uint64_t>(raw, 24), std::string("general.alignment").size());
  // Padding bytes between tensors are zero.
  for (size_t i = f.data_offset() + 60; i < f.data_offset() + 64; ++i) EXPECT_EQ(raw[i], 0);
}

TEST(Gguf, CustomAlignment) {
  GgufFile f(write_sample("align64.gguf", 64));
  EXPECT_EQ(f.alignment(), 64u);
  EXPECT_EQ(f.data_offset() % 64, 0u);
  EXPECT_EQ(f.tensor("b").offset, 64u);
  EXPECT_EQ(f.tensor("c").offset, 256u);  // 64 + 136 = 200 -> 256
  EXPECT_THROW(GgufWriter(scratch("bad_align.gguf"), 48), Error);
}

TEST(Gguf, WriterIsAtomicAndChecksOrder) {
  fs::path p = scratch("atomic.gguf");
  fs::remove(p);
  {
    GgufWriter w(p);
    w.add_tensor("x", {32}, GgmlType::F32);
    w.add_tensor("y", {32}, GgmlType::F32);
    std::vector<float> v(32, 1.0f);
    EXPECT_THROW(w.write_tensor("y", v.data(), 128), Error);  // out of order
    EXPECT_THROW(w.write_tensor("x", v.data(), 64), Error);   // wrong size
    w.write_tensor("x", v.data(), 128);
    EXPECT_THROW(w.finish(), Error);  // y incomplete
    EXPECT_FALSE(fs::exists(p));      // nothing at the final name until finish()
  }
  // The abandoned writer left no temp file behind.
  for (const auto& e : fs::directory_iterator(p.parent_path()))
    EXPECT_EQ(e.path().filename().string().find(".atomic.gguf.tmp"), std::string::npos) << e.path();
  {
    GgufWriter w(p);
    EXPECT_THROW(w.add_tensor("bad", {100}, GgmlType::Q8_0), Error);  // row not a multiple of 32
    EXPECT_THROW(w.add_tensor(std::string(64, 'n'), {4}, GgmlType::F32), Error);  // name too long
    w.set("k", GgufValue::u8(1));
    EXPECT_THROW(w.set("k", GgufValue::u8(2)), Error);  // duplicate key
  }
}

TEST(Gguf, MalformedFilesAreRejected) {
  const fs::path good = write_sample("good.gguf");
  const std::string raw = bytes_of(good);
  GgufFile ref(good);
  const uint64_t data_off = ref.data_offset();
  // Find the info of tensor "a": u64 name length 1, 'a', u32 n_dims 2.
  const std::string a_info = std::string("\x01\0\0\0\0\0\0\0a\x02\0\0\0", 13);
  const size_t a_pos = raw.find(a_info, 32);
  ASSERT_NE(a_pos, std::string::npos);
  const size_t a_ndims = a_pos + 9, a_ne0 = a_ndims + 4, a_type = a_ne0 + 16, a_off = a_type + 4;
  ASSERT_EQ(at<uint32_t>(raw, a_ndims), 2u);
  ASSERT_EQ(at<uint64_t>(raw, a_off), 0u);

  auto variant = [&](const std::string& name, const std::function<void(std::string&)>& edit) {
    std::string s = raw;
    edit(s);
    fs::path p = scratch(name);
    put_bytes(p, s);
    return p;
  };
  expect_rejected(variant("magic.gguf", [](std::string& s) { s[0] = 'X'; }), "not a GGUF file");
  expect_rejected(variant("version.gguf", [](std::string& s) { set_at<uint32_t>(s, 4, 7); }), "version 7");
  expect_rejected(variant("empty.gguf", [](std::string& s) { s.clear(); }), "truncated");
  expect_rejected(variant("trunc_header.gguf", [&](std::string& s) { s.resize(a_pos + 4); }), "truncated");
  expect_rejected(variant("trunc_data.gguf", [&](std::string& s) { s.resize(data_off + 100); }), "tensor 'b'");
  expect_rejected(variant("kv_count.gguf", [](std::string& s) { set_at<int64_t>(s, 16, int64_t(1) << 40); }),
                  "metadata count");
  expect_rejected(variant("t_count.gguf", [](std::string& s) { set_at<int64_t>(s, 8, -1); }), "tensor count");
  expect_rejected(variant("strlen.gguf", [](std::string& s) { set_at<uint64_t>(s, 24, uint64_t(1) << 50); }),
                  "string length");
  expect_rejected(variant("offset_range.gguf", [&](std::string& s) { set_at<uint64_t>(s, a_off, uint64_t(1) << 20); }),
                  "tensor 'a'");
  expect_rejected(variant("offset_align.gguf", [&](std::string& s) { set_at<uint64_t>(s, a_off, 8); }),
                  "not a multiple of the alignment");
  expect_rejected(variant("overlap.gguf", [&](std::string& s) { set_at<uint64_t>(s, a_off, 64); }), "overlap");
  expect_rejected(variant("dims.gguf", [&](std::string& s) { set_at<uint32_t>(s, a_ndims, 9); }), "dimensions");
  expect_rejected(variant("type.gguf", [&](std::string& s) { set_at<uint32_t>(s, a_type, 31); }), "unknown ggml type 31");
  expect_rejected(variant("blockrow.gguf", [&](std::string& s) { set_at<uint32_t>(s, a_type, 8); }),
                  "multiple of 32");  // "a" (5 per row) as q8_0
  expect_rejected(variant("negdim.gguf", [&](std::string& s) { set_at<int64_t>(s, a_ne0, -5); }), "negative");
  // The value type of the first key (general.alignment, u32) made invalid.
  expect_rejected(variant("kvtype.gguf", [](std::string& s) { set_at<uint32_t>(s, 24 + 8 + 17, 99); }),
                  "invalid GGUF value type 99");
  expect_rejected(variant("align_type.gguf", [](std::string& s) { set_at<uint32_t>(s, 24 + 8 + 17, 5); }),
                  "general.alignment");  // now an i32: must be u32
  expect_rejected(variant("align_pow2.gguf", [](std::string& s) { set_at<uint32_t>(s, 24 + 8 + 17 + 4, 24); }),
                  "power of two");
  expect_rejected(scratch("does_not_exist.gguf"), "cannot open");
}

// ---------------------------------------------------------------- export structure (no llama.cpp needed)

TEST(GgufExport, PermutationIsThePairwiseRopeLayout) {
  // 2 heads of dim 4, 3 columns: HF rows per head are [x0 x1 | y0 y1] (halves); llama wants x0 y0 x1 y1.
  const int nh = 2, hd = 4, cols = 3;
  std::vector<float> src(nh * hd * cols), dst(src.size());
  for (size_t i = 0; i < src.size(); ++i) src[i] = float(i);
  permute_rope_rows(src.data(), dst.data(), nh, hd, cols);
  const int order[] = {0, 2, 1, 3, 4, 6, 5, 7};  // new row r takes old row order[r]
  for (int r = 0; r < nh * hd; ++r)
    for (int c = 0; c < cols; ++c) EXPECT_EQ(dst[size_t(r * cols + c)], src[size_t(order[r] * cols + c)]);
}

TEST(GgufExport, Gpt2ByteTokens) {
  auto t = gpt2_byte_tokens();
  ASSERT_EQ(t.size(), 256u);
  EXPECT_EQ(t['A'], "A");
  EXPECT_EQ(t['!'], "!");
  EXPECT_EQ(t[' '], "\xc4\xa0");   // U+0120 'Ġ'
  EXPECT_EQ(t['\n'], "\xc4\x8a");  // U+010A 'Ċ'
  EXPECT_EQ(t[0], "\xc4\x80");     // U+0100
  EXPECT_EQ(t[0xff], "\xc3\xbf");  // ÿ maps to itself
  EXPECT_EQ(t[0xad], "\xc5\x83");  // soft hyphen: U+0143, the last remapped byte
  std::set<std::string> uniq(t.begin(), t.end());
  EXPECT_EQ(uniq.size(), 256u);
}

TEST(GgufExport, TinyMixtralTensorsAndMetadata) {
  const fs::path model = fs::path(MOEC_SOURCE_DIR) / "examples/tiny-mixtral";
  const fs::path out = scratch("tiny_q8.gguf");
  GgufExportOptions opt;
  opt.expert_type = GgmlType::Q8_0;
  opt.force = true;
  opt.progress = false;
  auto rep = export_gguf(model, out, opt);
  EXPECT_EQ(rep.arch, "llama");
  EXPECT_EQ(rep.expert_params, 12582912);
  EXPECT_NEAR(rep.expert_bits_per_weight(), 8.5, 1e-9);

  GgufFile f(out);
  EXPECT_EQ(f.get("general.architecture").as_string("a"), "llama");
  EXPECT_EQ(f.get("llama.block_count").as_u32("k"), 4u);
  EXPECT_EQ(f.get("llama.embedding_length").as_u32("k"), 256u);
  EXPECT_EQ(f.get("llama.feed_forward_length").as_u32("k"), 512u);
  EXPECT_EQ(f.get("llama.attention.head_count").as_u32("k"), 8u);
  EXPECT_EQ(f.get("llama.attention.head_count_kv").as_u32("k"), 4u);
  EXPECT_EQ(f.get("llama.attention.key_length").as_u32("k"), 32u);
  EXPECT_EQ(f.get("llama.expert_count").as_u32("k"), 8u);
  EXPECT_EQ(f.get("llama.expert_used_count").as_u32("k"), 2u);
  EXPECT_EQ(f.get("llama.rope.freq_base").as_f32("k"), 10000.0f);
  EXPECT_EQ(f.get("llama.attention.layer_norm_rms_epsilon").as_f32("k"), 1e-5f);
  EXPECT_EQ(f.get("llama.context_length").as_u32("k"), 1024u);
  EXPECT_EQ(f.get("tokenizer.ggml.model").as_string("k"), "gpt2");
  EXPECT_EQ(f.get("tokenizer.ggml.tokens").size(), 256u);
  EXPECT_EQ(f.get("tokenizer.ggml.merges").size(), 0u);
  EXPECT_EQ(f.tensors().size(), 3u + 4u * 10u);

  auto store = TensorStore::open(model);
  auto hf = [&](const std::string& n) { return to_f32(store.get(n)); };
  // Dense tensors default to F16 when experts are quantized; norms and the router stay F32.
  EXPECT_EQ(f.tensor("token_embd.weight").type, GgmlType::F16);
  EXPECT_EQ(f.tensor("token_embd.weight").ne, (std::vector<int64_t>{256, 256}));
  EXPECT_EQ(f.tensor("blk.2.attn_norm.weight").type, GgmlType::F32);
  EXPECT_EQ(f.tensor("blk.2.ffn_gate_inp.weight").type, GgmlType::F32);
  EXPECT_EQ(f.tensor("blk.2.ffn_gate_inp.weight").ne, (std::vector<int64_t>{256, 8}));
  EXPECT_EQ(f.to_f32(f.tensor("blk.2.ffn_gate_inp.weight")), hf("model.layers.2.block_sparse_moe.gate.weight"));
  EXPECT_EQ(f.to_f32(f.tensor("output_norm.weight")), hf("model.norm.weight"));
  EXPECT_EQ(f.tensor("blk.1.ffn_down_exps.weight").ne, (std::vector<int64_t>{512, 256, 8}));
  EXPECT_EQ(f.tensor("blk.1.ffn_gate_exps.weight").ne, (std::vector<int64_t>{256, 512, 8}));
  EXPECT_EQ(f.tensor("blk.1.ffn_up_exps.weight").type, GgmlType::Q8_0);

  // Expert 5's w2 (down) is slab 5 of ffn_down_exps, rows intact, values within Q8_0 error.
  auto down = f.to_f32(f.tensor("blk.1.ffn_down_exps.weight"));
  auto w2 = hf("model.layers.1.block_sparse_moe.experts.5.w2.weight");  // [256, 512]
  const size_t slab = 256 * 512;
  double max_err = 0, max_abs = 0;
  for (size_t i = 0; i < slab; ++i) {
    max_err = std::max(max_err, double(std::fabs(down[5 * slab + i] - w2[i])));
    max_abs = std::max(max_abs, double(std::fabs(w2[i])));
  }
  EXPECT_LT(max_err, max_abs / 127.0);
  EXPECT_GT(max_err, 0.0);

  // k: 4 KV heads of 32, rows permuted from halves to pairs. Row h*32 + 2i + s == HF row h*32 + 16s + i (F16).
  auto k = f.to_f32(f.tensor("blk.0.attn_k.weight"));
  auto khf = hf("model.layers.0.self_attn.k_proj.weight");
  for (int h = 0; h < 4; ++h)
    for (int i = 0; i < 16; ++i)
      for (int s = 0; s < 2; ++s)
        for (int c = 0; c < 256; c += 37)
          ASSERT_EQ(k[size_t((h * 32 + 2 * i + s) * 256 + c)], round_f16(khf[size_t((h * 32 + 16 * s + i) * 256 + c)]));
  // v is not permuted.
  auto v = f.to_f32(f.tensor("blk.0.attn_v.weight"));
  auto vhf = hf("model.layers.0.self_attn.v_proj.weight");
  for (size_t i = 0; i < v.size(); i += 101) ASSERT_EQ(v[i], round_f16(vhf[i]));
}

TEST(GgufExport, RefusesBadRequests) {
  const fs::path model = fs::path(MOEC_SOURCE_DIR) / "examples/tiny-mixtral";
  GgufExportOptions opt;
  opt.progress = false;
  // Never overwrite an input, even with force.
  opt.force = true;
  try {
    export_gguf(model, model / "model.safetensors", opt);
    FAIL();
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("refusing"), std::string::npos) << e.what();
  }
  // Existing output without force.
  const fs::path out = scratch("exists.gguf");
  put_bytes(out, "x");
  opt.force = false;
  EXPECT_THROW(export_gguf(model, out, opt), Error);
  EXPECT_EQ(bytes_of(out), "x");
  // Dense type must be a float type.
  opt.force = true;
  opt.dense_type = GgmlType::Q8_0;
  EXPECT_THROW(export_gguf(model, out, opt), Error);
  EXPECT_EQ(bytes_of(out), "x");
}
