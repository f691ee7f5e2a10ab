#include "quantize/checkpoint.h"

#include <algorithm>
#include <cstring>
#include <string_view>

#include "core/error.h"
#include "core/files.h"
#include "kernels/gemv.h"
#include "model/linear.h"

namespace moec::quantize {

// ---------------------------------------------------------------- PackedLinear

std::shared_ptr<PackedLinear> PackedLinear::owning(PackedMatrix m) {
  auto owner = std::make_shared<PackedMatrix>(std::move(m));
  PackedView v = owner->view();
  return std::make_shared<PackedLinear>(v, std::shared_ptr<const void>(owner, owner.get()));
}

PackedView row_slice(const PackedView& v, int r0, int n) {
  if (r0 < 0 || n < 0 || r0 + n > v.rows) fail("row_slice: rows [", r0, ", ", r0 + n, ") outside 0..", v.rows);
  PackedView s = v;
  s.rows = n;
  const size_t g = size_t(v.groups()) * size_t(r0);
  s.scales = v.scales + g;
  if (v.zeros) s.zeros = v.zeros + g;
  if (v.neg_scales) s.neg_scales = v.neg_scales + g;
  if (v.codec == Codec::Subbit) {
    s.row_offsets = v.row_offsets + r0;  // offsets are absolute positions in the shared codeword stream
  } else {
    s.codes = v.codes + v.row_bytes() * size_t(r0);
    s.codes_bytes = v.row_bytes() * size_t(n);
  }
  return s;
}

void PackedLinear::forward(const Matrix& X, Matrix& Y) const {
  if (X.cols() != v_.cols) fail("PackedLinear: input has ", X.cols(), " columns, weight expects ", v_.cols);
  const int64_t n = X.rows();
  Y.resize(n, v_.rows);
  if (n == 0) return;
  // With int8 activations (the process-wide switch, `moec eval --act-int8`) every batch size runs the fused
  // kernel, so that the whole forward pass uses quantized activations.
  const ActQuant act = default_act_quant();
  if (act != ActQuant::None) {
    for (int64_t t0 = 0; t0 < n; t0 += 1024) {
      const int m = int(std::min<int64_t>(1024, n - t0));
      matmul(v_, X.data() + t0 * v_.cols, m, Y.data() + t0 * v_.rows, best_isa(), act);
    }
    return;
  }
  if (n <= kMatmulRows) {
    matmul(v_, X.data(), int(n), Y.data());
    return;
  }
  // Large batch: decode a slab of output rows (<= ~1 MiB fp32) and GEMM it; Y's columns [r0, r0+m).
  const int slab = std::max(1, std::min(v_.rows, int((size_t(1) << 18) / size_t(v_.cols))));
  Matrix W(slab, v_.cols), part;
  for (int r0 = 0; r0 < v_.rows; r0 += slab) {
    const int m = std::min(slab, v_.rows - r0);
    if (m != W.rows()) W.resize(m, v_.cols);
    dequantize(row_slice(v_, r0, m), W.data());
    if (m == v_.rows) {
      model::gemm_nt(X, W, Y);
    } else {
      model::gemm_nt(X, W, part);
      Y.middleCols(r0, m) = part;
    }
  }
}

Matrix PackedLinear::dense() const {
  Matrix W(v_.rows, v_.cols);
  dequantize(v_, W.data());
  return W;
}

std::string tensor_sha256(const uint8_t* data, size_t n) {
  return sha256_hex(std::string_view(reinterpret_cast<const char*>(data), n));
}

// ---------------------------------------------------------------- writer

PackedCheckpointWriter::PackedCheckpointWriter(const fs::path& out_dir, const fs::path& source_dir,
                                               nlohmann::ordered_json recipe, uint64_t max_shard_bytes)
    : out_(out_dir), created_(!fs::exists(out_dir)), writer_((fs::create_directories(out_dir), out_dir), max_shard_bytes) {
  const std::string config = read_file(source_dir / "config.json");
  write_file_atomic(out_ / "config.json", config);
  meta_["format"] = kPackedFormatName;
  meta_["version"] = kPackedFormatVersion;
  meta_["moec_version"] = MOEC_VERSION;
  meta_["source"] = {{"path", fs::absolute(source_dir).lexically_normal().string()},
                     {"config_sha256", sha256_hex(config)}};
  meta_["recipe"] = std::move(recipe);
  meta_["tensors"] = nlohmann::ordered_json::object();
}

void PackedCheckpointWriter::replace_config(const std::string& config_json) {
  write_file_atomic(out_ / "config.json", config_json);
}

void PackedCheckpointWriter::add_dense(const std::string& name, io::DType dtype, const std::vector<int64_t>& shape,
                                       const void* data, size_t nbytes) {
  if (added_.count(name)) fail(out_.string(), ": tensor '", name, "' added twice");
  writer_.add(name, dtype, shape, data, nbytes);
  added_[name] = true;
}

void PackedCheckpointWriter::add_packed(const std::string& name, const PackedMatrix& m, nlohmann::ordered_json info) {
  if (added_.count(name)) fail(out_.string(), ": tensor '", name, "' added twice");
  nlohmann::ordered_json t;
  t["shape"] = {m.rows, m.cols};
  t["codec"] = codec_meta(m);
  t["bits_per_weight"] = bits_per_weight(m.view());
  t["stored_bytes"] = stored_bytes(m.view());
  nlohmann::ordered_json sha = nlohmann::ordered_json::object();
  for (auto& [suffix, raw] : to_tensors(m)) {
    writer_.add(name + "." + suffix, io::parse_dtype(raw.dtype, name + "." + suffix), raw.shape, raw.bytes.data(),
                raw.bytes.size());
    sha[suffix] = tensor_sha256(raw.bytes.data(), raw.bytes.size());
  }
  t["sha256"] = sha;
  for (auto& [k, v] : info.items()) t[k] = v;
  meta_["tensors"][name] = t;
  added_[name] = true;
}


void PackedCheckpointWriter::add_matrix(const std::string& name, io::DType dtype, const Matrix& m) {
  const auto bytes = io::f32_to_bytes(m.data(), size_t(m.size()), dtype, out_.string() + ": tensor '" + name + "'");
  add_dense(name, dtype, {m.rows(), m.cols()}, bytes.data(), bytes.size());
}

void PackedCheckpointWriter::add_factor(const std::string& factor_name, io::DType dtype, const Matrix& m) {
  if (added_.count(factor_name) || factors_.count(factor_name))
    fail(out_.string(), ": tensor '", factor_name, "' added twice");
  if (m.size() == 0 || !m.allFinite()) fail(out_.string(), ": factor '", factor_name, "' is empty or not finite");
  const auto bytes = io::f32_to_bytes(m.data(), size_t(m.size()), dtype, out_.string() + ": factor '" + factor_name + "'");
  writer_.add(factor_name, dtype, {m.rows(), m.cols()}, bytes.data(), bytes.size());
  factors_[factor_name] = {m.rows(), m.cols(), tensor_sha256(bytes.data(), bytes.size())};
}

void PackedCheckpointWriter::add_lowrank(const std::string& name, const std::string& left, const std::string& right,
                                         nlohmann::ordered_json info) {
  if (added_.count(name)) fail(out_.string(), ": tensor '", name, "' added twice");
  auto l = factors_.find(left), r = factors_.find(right);
  if (l == factors_.end() || r == factors_.end())
    fail(out_.string(), ": low-rank tensor '", name, "': factor '", l == factors_.end() ? left : right, "' was not added");
  if (l->second.cols != r->second.rows)
    fail(out_.string(), ": low-rank tensor '", name, "': left factor is ", l->second.rows, "x", l->second.cols,
         ", right factor ", r->second.rows, "x", r->second.cols);
  nlohmann::ordered_json t;
  t["shape"] = {l->second.rows, r->second.cols};
  t["lowrank"] = {{"left", left}, {"right", right}, {"rank", l->second.cols}};
  t["sha256"] = {{"left", l->second.sha}, {"right", r->second.sha}};
  for (auto& [k, v] : info.items()) t[k] = v;
  meta_["tensors"][name] = t;
  added_[name] = true;
}

void PackedCheckpointWriter::add_remaining(const model::WeightSource& src) {
  const auto& spec = src.spec();
  auto* ckpt = dynamic_cast<const model::CheckpointSource*>(&src);
  for (auto& t : model::expected_tensors(spec)) {
    if (added_.count(t.name)) continue;
    if (t.role == model::ExpectedTensor::Role::LmHead && spec.tie_embeddings) continue;
    if (ckpt) {
      const auto& info = ckpt->store().get(t.name);
      add_dense(t.name, info.dtype, info.shape, info.data, info.nbytes);
    } else {
      Matrix m = src.matrix(t.name);
      writer_.add_f32(t.name, io::DType::BF16, t.shape, m.data());
      added_[t.name] = true;
    }
    src.release(t.name);
  }
}

void PackedCheckpointWriter::finish() {
  auto files = writer_.finish();
  meta_["files"] = files;
  write_file_atomic(out_ / kPackedMetaFile, meta_.dump(1) + "\n");
  finished_ = true;
}

PackedCheckpointWriter::~PackedCheckpointWriter() {
  // A failed run leaves no half-written directory behind (it would also block a re-run without --force).
  // A directory that existed before (--force, or compress's OUT holding .work) is left to its owner.
  if (created_ && !finished_) {
    std::error_code ec;
    fs::remove_all(out_, ec);
  }
}

// ---------------------------------------------------------------- reader

namespace {
const nlohmann::json& field(const nlohmann::json& j, const char* key, const std::string& ctx) {
  if (!j.is_object() || !j.contains(key)) fail(ctx, ": missing field '", key, "'");
  return j.at(key);
}
std::string shape_str(const std::vector<int64_t>& s) {
  std::string r = "[";
  for (size_t i = 0; i < s.size(); ++i) r += (i ? ", " : "") + std::to_string(s[i]);
  return r + "]";
}
}  // namespace

bool is_packed_checkpoint(const fs::path& dir) {
  const fs::path p = dir / kPackedMetaFile;
  if (!fs::is_regular_file(p)) return false;
  try {
    auto j = nlohmann::json::parse(read_file(p));
    return j.is_object() && j.value("format", "") == kPackedFormatName;
  } catch (const nlohmann::json::exception&) {
    return true;  // claimed by name: let PackedSource report the parse error
  }
}

PackedSource::PackedSource(const fs::path& dir) : dir_(dir) {
  const std::string ctx = (dir / kPackedMetaFile).string();
  try {
    meta_ = nlohmann::json::parse(read_file(dir / kPackedMetaFile));
  } catch (const nlohmann::json::exception& e) {
    fail(ctx, ": not valid JSON: ", e.what());
  }
  if (field(meta_, "format", ctx) != kPackedFormatName)
    fail(ctx, ": format '", field(meta_, "format", ctx).dump(), "' is not ", kPackedFormatName);
  const auto& ver = field(meta_, "version", ctx);
  if (!ver.is_number_integer() || ver.get<int>() != kPackedFormatVersion)
    fail(ctx, ": format version ", ver.dump(), " is not supported (this moec reads version ", kPackedFormatVersion, ")");
  spec_ = model::load_spec(dir);
  store_ = std::make_shared<io::TensorStore>(io::TensorStore::open(dir));
  const auto& tensors = field(meta_, "tensors", ctx);
  if (!tensors.is_object()) fail(ctx, ": field 'tensors' must be an object");

  std::map<std::string, std::vector<int64_t>> expected;
  for (auto& t : model::expected_tensors(spec_)) expected[t.name] = t.shape;
  for (auto& [name, t] : tensors.items()) {
    const std::string tctx = ctx + ": tensor '" + name + "'";
    auto it = expected.find(name);
    if (it == expected.end()) fail(tctx, " is not a tensor of this model (config.json)");
    const auto shape = field(t, "shape", tctx).get<std::vector<int64_t>>();
    if (shape != it->second) fail(tctx, ": shape ", shape_str(shape), " but config.json implies ", shape_str(it->second));
    if (t.is_object() && t.contains("lowrank")) {
      const auto& lr = t.at("lowrank");
      auto e = std::make_unique<LowRank>();
      const auto& sha = field(t, "sha256", tctx);
      try {
        e->left = field(lr, "left", tctx + ": lowrank").get<std::string>();
        e->right = field(lr, "right", tctx + ": lowrank").get<std::string>();
        e->rank = field(lr, "rank", tctx + ": lowrank").get<int>();
      } catch (const nlohmann::json::exception& err) {
        fail(tctx, ": malformed 'lowrank' field: ", err.what());
      }
      if (e->rank < 1) fail(tctx, ": lowrank rank ", e->rank, " must be >= 1");
      const std::vector<int64_t> want_left{shape[0], e->rank}, want_right{e->rank, shape[1]};
      for (const auto& [side, fname, want] : {std::tuple<const char*, const std::string&, const std::vector<int64_t>&>{
                                                  "left", e->left, want_left},
                                              {"right", e->right, want_right}}) {
        if (!store_->has(fname)) fail(tctx, ": ", side, " factor '", fname, "' is missing from the safetensors files");
        const auto& info = store_->get(fname);
        if (!io::dtype_is_float(info.dtype)) fail(tctx, ": ", side, " factor '", fname, "' has dtype ", io::dtype_name(info.dtype), ", expected a float type");
        if (info.shape != want)
          fail(tctx, ": ", side, " factor '", fname, "' has shape ", shape_str(info.shape), ", expected ", shape_str(want));
        if (!sha.contains(side)) fail(tctx, ": no sha256 recorded for the ", side, " factor");
        e->sha[side] = sha.at(side).get<std::string>();
      }
      lowrank_[name] = std::move(e);
      continue;
    }
    auto e = std::make_unique<Entry>();
    e->row_offsets = std::make_shared<std::vector<uint32_t>>();
    const auto& sha = field(t, "sha256", tctx);
    try {
      e->view = view_from_tensors(field(t, "codec", tctx), [&](const std::string& suffix) {
        const std::string full = name + "." + suffix;
        if (!store_->has(full)) fail("packed tensor '", full, "' is missing from the safetensors files");
        const auto& info = store_->get(full);
        e->suffixes.push_back(suffix);
        if (!sha.contains(suffix)) fail("no sha256 recorded for '", full, "'");
        e->sha[suffix] = sha.at(suffix).get<std::string>();
        return RawTensorView{io::dtype_name(info.dtype), info.shape, info.data, info.nbytes};
      }, *e->row_offsets);
    } catch (const Error& err) {
      fail(tctx, ": ", err.what());
    }
    if (int64_t(e->view.rows) != shape[0] || int64_t(e->view.cols) != shape[1])
      fail(tctx, ": codec meta says ", e->view.rows, " x ", e->view.cols, " but shape is ", shape_str(shape));
    packed_[name] = std::move(e);
  }
  // Left factors may be shared: split their bytes over the tensors that use them (remainder to the first).
  std::map<std::string, std::vector<LowRank*>> users;
  for (auto& [name, e] : lowrank_) users[e->left].push_back(e.get());
  for (auto& [left, us] : users) {
    const uint64_t lb = store_->get(left).nbytes, n = us.size();
    for (size_t i = 0; i < us.size(); ++i) us[i]->bytes = lb / n + (i == 0 ? lb % n : 0);
  }
  for (auto& [name, e] : lowrank_) e->bytes += store_->get(e->right).nbytes;
  for (auto& [name, shape] : expected) {
    if (packed_.count(name) || lowrank_.count(name)) continue;
    if (name == spec_.lm_head() && spec_.tie_embeddings) continue;
    if (!store_->has(name)) fail(dir.string(), ": tensor '", name, "' required by config.json is missing (neither dense nor packed)");
    const auto& info = store_->get(name);
    io::expect_shape(info, shape);
    if (!io::dtype_is_float(info.dtype)) fail(info.file, ": tensor '", name, "' has dtype ", io::dtype_name(info.dtype), ", expected a float type");
  }
}

void PackedSource::verify(const std::string& name, const Entry& e) const {
  if (e.verified.load(std::memory_order_acquire)) return;
  std::lock_guard<std::mutex> lock(verify_mu_);
  if (e.verified.load(std::memory_order_relaxed)) return;
  for (auto& suffix : e.suffixes) {
    const auto& info = store_->get(name + "." + suffix);
    const std::string got = tensor_sha256(info.data, info.nbytes);
    if (got != e.sha.at(suffix))
      fail(info.file, ": checksum mismatch in packed tensor '", name, ".", suffix, "' (sha256 ", got, ", moec.json records ",
           e.sha.at(suffix), "): the file is corrupt");
  }
  e.verified.store(true, std::memory_order_release);
}

void PackedSource::verify_lowrank(const std::string& name, const LowRank& e) const {
  if (e.verified.load(std::memory_order_acquire)) return;
  std::lock_guard<std::mutex> lock(verify_mu_);
  if (e.verified.load(std::memory_order_relaxed)) return;
  for (const auto& [side, fname] : {std::pair<const char*, const std::string&>{"left", e.left}, {"right", e.right}}) {
    const auto& info = store_->get(fname);
    const std::string got = tensor_sha256(info.data, info.nbytes);
    if (got != e.sha.at(side))
      fail(info.file, ": checksum mismatch in the ", side, " factor '", info.name, "' of low-rank tensor '", name,
           "' (sha256 ", got, ", moec.json records ", e.sha.at(side), "): the file is corrupt");
  }
  e.verified.store(true, std::memory_order_release);
}

void PackedSource::verify_all() const {
  for (auto& [name, e] : packed_) verify(name, *e);
  for (auto& [name, e] : lowrank_) verify_lowrank(name, *e);
}

const PackedSource::LowRank& PackedSource::lowrank_entry(const std::string& name) const {
  auto it = lowrank_.find(name);
  if (it == lowrank_.end()) fail(dir_.string(), ": tensor '", name, "' is not low-rank");
  return *it->second;
}

int PackedSource::lowrank_rank(const std::string& name) const { return lowrank_entry(name).rank; }

uint64_t PackedSource::lowrank_bytes(const std::string& name) const { return lowrank_entry(name).bytes; }

const PackedView& PackedSource::packed(const std::string& name) const {
  auto it = packed_.find(name);
  if (it == packed_.end()) fail(dir_.string(), ": tensor '", name, "' is not packed");
  verify(name, *it->second);
  return it->second->view;
}

uint64_t PackedSource::stored_bytes(const std::string& name) const {
  auto it = packed_.find(name);
  if (it == packed_.end()) fail(dir_.string(), ": tensor '", name, "' is not packed");
  return moec::stored_bytes(it->second->view);
}

std::shared_ptr<const QuantizedMatrix> PackedSource::codes(const std::string& name) const {
  if (!packed_.count(name)) return nullptr;
  return std::make_shared<QuantizedMatrix>(unpack(packed(name)));
}

Matrix PackedSource::matrix(const std::string& name) const {
  if (lowrank_.count(name)) return linear(name)->dense();
  if (packed_.count(name)) {
    const PackedView& v = packed(name);
    Matrix W(v.rows, v.cols);
    dequantize(v, W.data());
    return W;
  }
  return io::to_matrix(store_->get(name));
}

std::shared_ptr<const model::Linear> PackedSource::linear(const std::string& name) const {
  if (auto lr = lowrank_.find(name); lr != lowrank_.end()) {
    verify_lowrank(name, *lr->second);
    return std::make_shared<model::LowRankLinear>(io::to_matrix(store_->get(lr->second->left)),
                                                  io::to_matrix(store_->get(lr->second->right)));
  }
  auto it = packed_.find(name);
  if (it != packed_.end()) {
    // The view points into the mmap and (subbit) into the rebuilt row offsets: the layer keeps both alive.
    auto keep = std::make_shared<std::pair<std::shared_ptr<const io::TensorStore>, std::shared_ptr<std::vector<uint32_t>>>>(
        store_, it->second->row_offsets);
    return std::make_shared<PackedLinear>(packed(name), keep);
  }
  return std::make_shared<model::DenseLinear>(matrix(name));
}

void PackedSource::release(const std::string& name) const {
  if (auto lr = lowrank_.find(name); lr != lowrank_.end()) {
    store_->release(lr->second->left);
    store_->release(lr->second->right);
    return;
  }
  auto it = packed_.find(name);
  if (it == packed_.end()) {
    store_->release(name);
    return;
  }
  for (auto& suffix : it->second->suffixes) store_->release(name + "." + suffix);
}

void register_packed_format() {
  static std::once_flag once;
  std::call_once(once, [] {
    model::register_model_opener([](const fs::path& dir) -> std::unique_ptr<model::WeightSource> {
      if (!is_packed_checkpoint(dir)) return nullptr;
      return std::make_unique<PackedSource>(dir);
    });
  });
}

}  // namespace moec::quantize
