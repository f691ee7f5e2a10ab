#include "kernels/codec.h"

#include <algorithm>
#include <cmath>
#include <cstring>

#include "core/error.h"
#include "core/half.h"
#include "kernels/blocks.h"
#include "kernels/subbit.h"

namespace moec {

namespace {
// 2: subbit rows are indexed by per-row codeword counts (`row_lengths`, U8/U16/U32) instead of U32 offsets.
// Version 1 files (subbit `row_offsets`) are still read.
constexpr int kFormatVersion = 2;

uint16_t ld16(const uint16_t* p, size_t i) {
  uint16_t v;
  std::memcpy(&v, reinterpret_cast<const uint8_t*>(p) + 2 * i, 2);
  return v;
}

template <class Block>
void pack_rows(const QuantizedMatrix& q, int bpr, std::vector<uint8_t>& out, bool ternary) {
  out.assign(size_t(q.rows) * size_t(bpr) * sizeof(Block), 0);
  for (int r = 0; r < q.rows; ++r) {
    Block* row = reinterpret_cast<Block*>(out.data()) + size_t(r) * size_t(bpr);
    const int8_t* src = q.q.data() + size_t(r) * size_t(q.cols);
    for (int c = 0; c < q.cols; ++c) {
      unsigned code = ternary ? tern_code(src[c]) : unsigned(uint8_t(src[c]));
      block_set(row[c >> 5], c & 31, code);
    }
  }
}

template <class Block>
void unpack_rows(const PackedView& v, std::vector<int8_t>& q, bool ternary) {
  const size_t bpr = size_t(v.blocks_per_row());
  for (int r = 0; r < v.rows; ++r) {
    const Block* row = reinterpret_cast<const Block*>(v.codes) + size_t(r) * bpr;
    int8_t* dst = q.data() + size_t(r) * size_t(v.cols);
    for (int c = 0; c < v.cols; ++c) {
      unsigned code = block_code(row[c >> 5], c & 31);
      dst[c] = ternary ? int8_t(tern_from_code(code)) : int8_t(uint8_t(code));
    }
  }
}

std::vector<uint16_t> to_f16_exact(const std::vector<float>& v, const char* what, int groups) {
  std::vector<uint16_t> out(v.size());
  for (size_t i = 0; i < v.size(); ++i) {
    out[i] = f32_to_f16(v[i]);
    float back = f16_to_f32(out[i]);
    if (!(back == v[i]) && !(std::isnan(back) && std::isnan(v[i])))
      fail("pack: ", what, "[row ", i / size_t(groups), ", group ", i % size_t(groups), "] = ", v[i],
           " is not exactly representable in fp16 (quantizers must round scales with round_f16)");
  }
  return out;
}

}  // namespace

const char* codec_name(Codec c) {
  switch (c) {
    case Codec::Int8: return "int8";
    case Codec::Int4: return "int4";
    case Codec::Int3: return "int3";
    case Codec::Int2: return "int2";
    case Codec::Tern2: return "tern2";
    case Codec::Subbit: return "subbit";
  }
  return "?";
}

Codec codec_from_name(const std::string& name) {
  for (Codec c : all_codecs())
    if (name == codec_name(c)) return c;
  fail("unknown codec '", name, "' (expected int8, int4, int3, int2, tern2 or subbit)");
}

std::vector<Codec> all_codecs() {
  return {Codec::Int8, Codec::Int4, Codec::Int3, Codec::Int2, Codec::Tern2, Codec::Subbit};
}

int codec_bits(Codec c) {
  switch (c) {
    case Codec::Int8: return 8;
    case Codec::Int4: return 4;
    case Codec::Int3: return 3;
    default: return 2;
  }
}

bool codec_is_ternary(Codec c) { return c == Codec::Tern2 || c == Codec::Subbit; }

int block_bytes(Codec c) {
  switch (c) {
    case Codec::Int8: return int(sizeof(BlockInt8));
    case Codec::Int4: return int(sizeof(BlockInt4));
    case Codec::Int3: return int(sizeof(BlockInt3));
    case Codec::Int2: return int(sizeof(BlockInt2));
    case Codec::Tern2: return int(sizeof(BlockTern2));
    case Codec::Subbit: return 0;
  }
  return 0;
}

float PackedView::scale(int r, int g) const { return f16_to_f32(ld16(scales, size_t(r) * size_t(groups()) + size_t(g))); }
float PackedView::zero(int r, int g) const {
  if (!zeros) return float(1 << (bits - 1));
  return f16_to_f32(ld16(zeros, size_t(r) * size_t(groups()) + size_t(g)));
}
float PackedView::neg_scale(int r, int g) const {
  if (!neg_scales) return scale(r, g);
  return f16_to_f32(ld16(neg_scales, size_t(r) * size_t(groups()) + size_t(g)));
}

PackedView PackedMatrix::view() const {
  PackedView v;
  v.codec = codec;
  v.rows = rows;
  v.cols = cols;
  v.group = group;
  v.bits = bits;
  v.symmetric = symmetric;
  v.codes = codes.data();
  v.codes_bytes = codes.size();
  v.scales = scales.data();
  v.zeros = zeros.empty() ? nullptr : zeros.data();
  v.neg_scales = neg_scales.empty() ? nullptr : neg_scales.data();
  v.row_offsets = row_offsets.empty() ? nullptr : row_offsets.data();
  v.subbit = subbit;
  if (codec == Codec::Subbit) v.dict = &subbit_dict(subbit);
  return v;
}

PackedMatrix pack(const QuantizedMatrix& q, Codec codec, const PackOptions& opt) {
  const char* cn = codec_name(codec);
  if (q.rows < 1 || q.cols < 1) fail("pack ", cn, ": matrix shape [", q.rows, ", ", q.cols, "] must be positive");
  int group = q.group >= q.cols ? 0 : q.group;
  if (group < 0 || group % 32 != 0)
    fail("pack ", cn, ": group size ", q.group, " must be 0 (whole row), >= cols, or a multiple of 32");
  const size_t n = size_t(q.rows) * size_t(q.cols);
  const size_t ng = size_t(q.rows) * size_t(q.groups());
  if (q.q.size() != n) fail("pack ", cn, ": q has ", q.q.size(), " codes, expected rows*cols = ", n);
  if (q.scale.size() != ng) fail("pack ", cn, ": scale has ", q.scale.size(), " entries, expected rows*groups = ", ng);
  const bool ternary = codec_is_ternary(codec);
  const int bits = codec_bits(codec);
  if (ternary != (q.kind == CodeKind::Ternary))
    fail("pack ", cn, ": codec needs ", ternary ? "ternary" : "integer", " codes but the matrix has ",
         q.kind == CodeKind::Ternary ? "ternary" : "integer", " codes");
  if (!ternary && q.bits > bits) fail("pack ", cn, ": matrix has ", q.bits, "-bit codes, codec holds ", bits);
  for (size_t i = 0; i < n; ++i) {
    int v = ternary ? int(q.q[i]) : int(uint8_t(q.q[i]));
    bool ok = ternary ? (v >= -1 && v <= 1) : (v < (1 << bits));
    if (!ok) fail("pack ", cn, ": code ", v, " at row ", i / size_t(q.cols), ", col ", i % size_t(q.cols), " out of range");
  }

  PackedMatrix m;
  m.codec = codec;
  m.rows = q.rows;
  m.cols = q.cols;
  m.group = group;
  m.bits = bits;
  m.scales = to_f16_exact(q.scale, "scale", q.groups());
  if (!ternary) {
    if (q.zero.size() != ng) fail("pack ", cn, ": zero has ", q.zero.size(), " entries, expected rows*groups = ", ng);
    const float zsym = float(1 << (bits - 1));
    m.symmetric = true;
    for (float z : q.zero) m.symmetric = m.symmetric && z == zsym;
    if (!m.symmetric) m.zeros = to_f16_exact(q.zero, "zero", q.groups());
  } else if (!q.neg_scale.empty()) {
    if (q.neg_scale.size() != ng)
      fail("pack ", cn, ": neg_scale has ", q.neg_scale.size(), " entries, expected rows*groups = ", ng);
    m.neg_scales = to_f16_exact(q.neg_scale, "neg_scale", q.groups());
  }

  const int bpr = (q.cols + 31) / 32;
  switch (codec) {
    case Codec::Int8: pack_rows<BlockInt8>(q, bpr, m.codes, false); break;
    case Codec::Int4: pack_rows<BlockInt4>(q, bpr, m.codes, false); break;
    case Codec::Int3: pack_rows<BlockInt3>(q, bpr, m.codes, false); break;
    case Codec::Int2: pack_rows<BlockInt2>(q, bpr, m.codes, false); break;
    case Codec::Tern2: pack_rows<BlockTern2>(q, bpr, m.codes, true); break;
    case Codec::Subbit: {
      uint64_t cnt[3] = {0, 0, 0};
      std::vector<uint8_t> codes(n);
      for (size_t i = 0; i < n; ++i) ++cnt[codes[i] = uint8_t(tern_code(q.q[i]))];
      SubbitParams p = opt.subbit;
      if (p.p0 == 0 && p.pplus == 0 && p.pminus == 0) p = subbit_params_from_counts(cnt[0], cnt[1], cnt[2]);
      if (p.p0 == 0 || p.pplus == 0 || p.pminus == 0)
        fail("pack subbit: PackOptions.subbit probabilities must all be in 1..255");
      m.subbit = p;
      const SubbitDict& d = subbit_dict(p);
      std::vector<uint16_t> words;
      words.reserve(n / 8 + 16);
      m.row_offsets.resize(size_t(q.rows) + 1);
      m.row_offsets[0] = 0;
      for (int r = 0; r < q.rows; ++r) {
        subbit_encode_row(d, codes.data() + size_t(r) * size_t(q.cols), q.cols, words);
        if (words.size() > 0xffffffffu) fail("pack subbit: more than 2^32 codewords");
        m.row_offsets[size_t(r) + 1] = uint32_t(words.size());
      }
      m.codes.resize(words.size() * 2);
      std::memcpy(m.codes.data(), words.data(), m.codes.size());
      break;
    }
  }
  return m;
}

PackedMatrix copy_packed(const PackedView& v) {
  PackedMatrix m;
  m.codec = v.codec;
  m.rows = v.rows;
  m.cols = v.cols;
  m.group = v.group;
  m.bits = v.bits;
  m.symmetric = v.symmetric;
  m.subbit = v.subbit;
  auto copy16 = [&](const uint16_t* p, std::vector<uint16_t>& out) {
    if (!p) return;
    out.resize(size_t(v.rows) * size_t(v.groups()));
    std::memcpy(out.data(), p, out.size() * 2);  // the view may point anywhere (no alignment promised)
  };
  m.codes.assign(v.codes, v.codes + v.codes_bytes);
  copy16(v.scales, m.scales);
  copy16(v.zeros, m.zeros);
  copy16(v.neg_scales, m.neg_scales);
  if (v.row_offsets) {
    m.row_offsets.resize(size_t(v.rows) + 1);
    std::memcpy(m.row_offsets.data(), v.row_offsets, m.row_offsets.size() * 4);
  }
  return m;
}

QuantizedMatrix unpack(const PackedView& v) {
  QuantizedMatrix q;
  q.rows = v.rows;
  q.cols = v.cols;
  q.group = v.group;
  q.bits = v.bits;
  const bool ternary = codec_is_ternary(v.codec);
  q.kind = ternary ? CodeKind::Ternary : CodeKind::Int;
  q.q.resize(size_t(v.rows) * size_t(v.cols));
  const int G = v.groups();
  q.scale.resize(size_t(v.rows) * size_t(G));
  for (int r = 0; r < v.rows; ++r)
    for (int g = 0; g < G; ++g) {
      size_t i = size_t(r) * size_t(G) + size_t(g);
      q.scale[i] = v.scale(r, g);
      if (!ternary) {
        q.zero.resize(q.scale.size());
        q.zero[i] = v.zero(r, g);
      } else if (v.neg_scales) {
        q.neg_scale.resize(q.scale.size());
        q.neg_scale[i] = v.neg_scale(r, g);
      }
    }
  switch (v.codec) {
    case Codec::Int8: unpack_rows<BlockInt8>(v, q.q, false); break;
    case Codec::Int4: unpack_rows<BlockInt4>(v, q.q, false); break;
    case Codec::Int3: unpack_rows<BlockInt3>(v, q.q, false); break;
    case Codec::Int2: unpack_rows<BlockInt2>(v, q.q, false); break;
    case Codec::Tern2: unpack_rows<BlockTern2>(v, q.q, true); break;
    case Codec::Subbit: {
      std::vector<uint64_t> buf(size_t(v.blocks_per_row()) + 1);
      for (int r = 0; r < v.rows; ++r) {
        int64_t produced = subbit_decode_row(v, r, buf.data());
        if (produced < v.cols) fail("unpack subbit: row ", r, " decodes to ", produced, " weights, expected ", v.cols);
        const BlockTern2* row = reinterpret_cast<const BlockTern2*>(buf.data());
        for (int c = 0; c < v.cols; ++c)
          q.q[size_t(r) * size_t(v.cols) + size_t(c)] = int8_t(tern_from_code(block_code(row[c >> 5], c & 31)));
      }
      break;
    }
  }
  return q;
}

void dequantize_ref(const PackedView& v, float* W) {
  const QuantizedMatrix q = unpack(v);  // reference: through the independent QuantizedMatrix formula
  for (int r = 0; r < v.rows; ++r)
    for (int c = 0; c < v.cols; ++c) W[size_t(r) * size_t(v.cols) + size_t(c)] = q.dequant(r, c);
}

size_t stored_bytes(const PackedView& v) {
  size_t ng = size_t(v.rows) * size_t(v.groups());
  size_t b = v.codes_bytes + 2 * ng;
  if (v.zeros) b += 2 * ng;
  if (v.neg_scales) b += 2 * ng;
  if (v.codec == Codec::Subbit)  // row lengths + the 3 dictionary parameters
    b += size_t(subbit_length_bytes(v)) * size_t(v.rows) + 3;
  return b;
}

int subbit_length_bytes(const PackedView& v) {
  uint32_t longest = 0;
  for (int r = 0; r < v.rows; ++r) {
    uint32_t a, b;
    std::memcpy(&a, v.row_offsets + r, 4);
    std::memcpy(&b, v.row_offsets + r + 1, 4);
    longest = std::max(longest, b - a);
  }
  return longest <= 0xffu ? 1 : longest <= 0xffffu ? 2 : 4;
}

double bits_per_weight(const PackedView& v) { return 8.0 * double(stored_bytes(v)) / (double(v.rows) * double(v.cols)); }

// --- serialization ---

namespace {
template <class T>
RawTensor raw(const char* dtype, std::vector<int64_t> shape, const std::vector<T>& v) {
  RawTensor t;
  t.dtype = dtype;
  t.shape = std::move(shape);
  t.bytes.resize(v.size() * sizeof(T));
  if (!v.empty()) std::memcpy(t.bytes.data(), v.data(), t.bytes.size());
  return t;
}
}  // namespace

std::vector<std::pair<std::string, RawTensor>> to_tensors(const PackedMatrix& m) {
  std::vector<std::pair<std::string, RawTensor>> out;
  const PackedView v = m.view();
  if (m.codec == Codec::Subbit) {
    out.emplace_back("codes", raw("U16", {int64_t(m.codes.size() / 2)}, m.codes));
    out.back().second.shape = {int64_t(m.codes.size() / 2)};
  } else {
    out.emplace_back("codes", raw("U8", {m.rows, int64_t(v.row_bytes())}, m.codes));
  }
  out.emplace_back("scales", raw("F16", {m.rows, v.groups()}, m.scales));
  if (!m.zeros.empty()) out.emplace_back("zeros", raw("F16", {m.rows, v.groups()}, m.zeros));
  if (!m.neg_scales.empty()) out.emplace_back("neg_scales", raw("F16", {m.rows, v.groups()}, m.neg_scales));
  if (m.codec == Codec::Subbit) {
    // Per-row codeword counts in the narrowest unsigned type that holds the longest row (readers rebuild the
    // offsets): 8 bits per row instead of 32 for rows under ~4096 weights.
    const int w = subbit_length_bytes(v);
    RawTensor t;
    t.dtype = w == 1 ? "U8" : w == 2 ? "U16" : "U32";
    t.shape = {m.rows};
    t.bytes.resize(size_t(m.rows) * size_t(w));
    for (int r = 0; r < m.rows; ++r) {
      const uint32_t len = m.row_offsets[size_t(r) + 1] - m.row_offsets[size_t(r)];
      for (int k = 0; k < w; ++k) t.bytes[size_t(r) * size_t(w) + size_t(k)] = uint8_t(len >> (8 * k));
    }
    out.emplace_back("row_lengths", std::move(t));
  }
  return out;
}

nlohmann::json codec_meta(const PackedView& v) {
  nlohmann::json j = {{"codec", codec_name(v.codec)},
                      {"format_version", kFormatVersion},
                      {"rows", v.rows},
                      {"cols", v.cols},
                      {"group", v.group},
                      {"bits", v.bits},
                      {"block", kBlockWeights}};
  if (!codec_is_ternary(v.codec)) j["symmetric"] = v.zeros == nullptr;
  else j["neg_scale"] = v.neg_scales != nullptr;
  if (v.codec == Codec::Subbit) {
    j["codeword_bits"] = SubbitDict::kCodewordBits;
    j["max_len"] = SubbitDict::kMaxLen;
    j["probs"] = {v.subbit.p0, v.subbit.pplus, v.subbit.pminus};
  }
  return j;
}

nlohmann::json codec_meta(const PackedMatrix& m) { return codec_meta(m.view()); }

namespace {
template <class T>
T meta_field(const nlohmann::json& meta, const char* key) {
  if (!meta.is_object() || !meta.contains(key)) fail("codec meta: missing field '", key, "'");
  try {
    return meta.at(key).get<T>();
  } catch (const std::exception& e) {
    fail("codec meta: field '", key, "' has the wrong type: ", e.what());
  }
}

const uint8_t* check_tensor(const RawTensorView& t, const std::string& suffix, const char* dtype,
                            const std::vector<int64_t>& shape, size_t elem) {
  if (t.dtype != dtype) fail("codec tensor '", suffix, "': dtype ", t.dtype.empty() ? "(missing)" : t.dtype, ", expected ", dtype);
  if (t.shape != shape) {
    std::string got, want;
    for (auto s : t.shape) got += (got.empty() ? "" : ", ") + std::to_string(s);
    for (auto s : shape) want += (want.empty() ? "" : ", ") + std::to_string(s);
    fail("codec tensor '", suffix, "': shape [", got, "] expected [", want, "]");
  }
  size_t n = 1;
  for (auto s : shape) n *= size_t(s);
  if (t.nbytes != n * elem) fail("codec tensor '", suffix, "': ", t.nbytes, " bytes, expected ", n * elem);
  if (n > 0 && !t.data) fail("codec tensor '", suffix, "': no data");
  return t.data;
}
}  // namespace

PackedView view_from_tensors(const nlohmann::json& meta, const std::function<RawTensorView(const std::string&)>& get,
                             std::vector<uint32_t>& row_offsets) {
  PackedView v;
  v.codec = codec_from_name(meta_field<std::string>(meta, "codec"));
  const int ver = meta_field<int>(meta, "format_version");
  if (ver != 1 && ver != kFormatVersion)
    fail("codec meta: format_version ", ver, " not supported (this moec reads 1 and ", kFormatVersion, ")");
  v.rows = meta_field<int>(meta, "rows");
  v.cols = meta_field<int>(meta, "cols");
  v.group = meta_field<int>(meta, "group");
  v.bits = meta_field<int>(meta, "bits");
  if (meta_field<int>(meta, "block") != kBlockWeights) fail("codec meta: field 'block' must be ", kBlockWeights);
  if (v.rows < 1 || v.cols < 1) fail("codec meta: fields 'rows'/'cols' must be positive, got ", v.rows, " x ", v.cols);
  if (v.group < 0 || v.group % 32 != 0 || (v.group != 0 && v.group >= v.cols))
    fail("codec meta: field 'group' = ", v.group, " must be 0 or a multiple of 32 below cols = ", v.cols);
  if (v.bits != codec_bits(v.codec))
    fail("codec meta: field 'bits' = ", v.bits, " but codec ", codec_name(v.codec), " has ", codec_bits(v.codec));
  const int64_t G = v.groups();
  const bool ternary = codec_is_ternary(v.codec);
  auto f16 = [&](const char* suffix) {
    return reinterpret_cast<const uint16_t*>(check_tensor(get(suffix), suffix, "F16", {v.rows, G}, 2));
  };
  v.scales = f16("scales");
  if (!ternary) {
    v.symmetric = meta_field<bool>(meta, "symmetric");
    if (!v.symmetric) v.zeros = f16("zeros");
  } else if (meta_field<bool>(meta, "neg_scale")) {
    v.neg_scales = f16("neg_scales");
  }
  if (v.codec != Codec::Subbit) {
    v.codes_bytes = v.row_bytes() * size_t(v.rows);
    v.codes = check_tensor(get("codes"), "codes", "U8", {v.rows, int64_t(v.row_bytes())}, 1);
    return v;
  }
  if (meta_field<int>(meta, "codeword_bits") != SubbitDict::kCodewordBits)
    fail("codec meta: field 'codeword_bits' must be ", SubbitDict::kCodewordBits);
  if (meta_field<int>(meta, "max_len") != SubbitDict::kMaxLen) fail("codec meta: field 'max_len' must be ", SubbitDict::kMaxLen);
  auto probs = meta_field<std::vector<int>>(meta, "probs");
  if (probs.size() != 3) fail("codec meta: field 'probs' must have 3 entries");
  for (int p : probs)
    if (p < 1 || p > 255) fail("codec meta: field 'probs' entries must be in 1..255, got ", p);
  v.subbit = SubbitParams{uint8_t(probs[0]), uint8_t(probs[1]), uint8_t(probs[2])};
  if (ver == 1) {
    const RawTensorView offs = get("row_offsets");
    const uint8_t* p = check_tensor(offs, "row_offsets", "U32", {v.rows + 1}, 4);
    row_offsets.resize(size_t(v.rows) + 1);
    std::memcpy(row_offsets.data(), p, row_offsets.size() * 4);
  } else {
    const RawTensorView lens = get("row_lengths");
    const size_t w = lens.dtype == "U8" ? 1 : lens.dtype == "U16" ? 2 : lens.dtype == "U32" ? 4 : 0;
    if (w == 0) fail("codec tensor 'row_lengths': dtype ", lens.dtype.empty() ? "(missing)" : lens.dtype, ", expected U8, U16 or U32");
    const uint8_t* p = check_tensor(lens, "row_lengths", lens.dtype.c_str(), {v.rows}, w);
    row_offsets.assign(size_t(v.rows) + 1, 0);
    for (int r = 0; r < v.rows; ++r) {
      uint32_t len = 0;
      for (size_t k = 0; k < w; ++k) len |= uint32_t(p[size_t(r) * w + k]) << (8 * k);
      if (uint64_t(row_offsets[size_t(r)]) + len > 0xffffffffu) fail("codec tensor 'row_lengths': more than 2^32 codewords");
      row_offsets[size_t(r) + 1] = row_offsets[size_t(r)] + len;
    }
  }
  v.row_offsets = row_offsets.data();
  const char* offs_name = ver == 1 ? "row_offsets" : "row_lengths";
  const RawTensorView codes = get("codes");
  if (codes.shape.size() != 1) fail("codec tensor 'codes': subbit codes must be 1-D");
  v.codes = check_tensor(codes, "codes", "U16", {codes.shape[0]}, 2);
  v.codes_bytes = codes.nbytes;
  // Offsets must start at 0, never decrease and end at the number of codewords; every row needs >= 1 codeword
  // per 32 weights (a codeword carries at most 32), so short rows are caught here without decoding.
  uint32_t prev = 0, first;
  std::memcpy(&first, v.row_offsets, 4);
  if (first != 0) fail("codec tensor '", offs_name, "': first offset is ", first, ", expected 0");
  const uint32_t min_words = uint32_t((v.cols + SubbitDict::kMaxLen - 1) / SubbitDict::kMaxLen);
  for (int r = 1; r <= v.rows; ++r) {
    uint32_t o;
    std::memcpy(&o, v.row_offsets + r, 4);
    if (o < prev || o - prev < min_words)
      fail("codec tensor '", offs_name, "': row ", r - 1, " has ", int64_t(o) - int64_t(prev), " codewords, needs >= ", min_words);
    prev = o;
  }
  if (uint64_t(prev) != uint64_t(codes.shape[0]))
    fail("codec tensor '", offs_name, "': rows hold ", prev, " codewords in total but 'codes' has ", codes.shape[0]);
  v.dict = &subbit_dict(v.subbit);
  return v;
}

}  // namespace moec
