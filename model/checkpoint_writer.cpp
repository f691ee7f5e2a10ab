#include "model/checkpoint_writer.h"

#include <algorithm>
#include <cstring>

#include "core/error.h"
#include "core/files.h"
#include "core/progress.h"

namespace moec::model {

namespace {
bool ends_with(const std::string& s, const std::string& suffix) {
  return s.size() >= suffix.size() && s.compare(s.size() - suffix.size(), suffix.size(), suffix) == 0;
}
}  // namespace

bool CheckpointWriter::is_copied_file(const fs::path& name) {
  const std::string n = name.filename().string();
  if (n == "config.json" || n == "moec.json") return false;
  for (const char* ext : {".safetensors", ".safetensors.index.json", ".bin", ".bin.index.json", ".pt", ".pth", ".ckpt",
                          ".gguf", ".h5", ".msgpack"})
    if (ends_with(n, ext)) return false;
  return true;
}

nlohmann::ordered_json source_record(const fs::path& input_dir) {
  nlohmann::ordered_json src;
  src["path"] = input_dir.string();
  src["config_sha256"] = sha256_file(input_dir / "config.json");
  auto store = io::TensorStore::open(input_dir);
  std::vector<std::string> files;
  for (auto& f : store.files()) files.push_back(f->mapped().path().filename().string());
  std::sort(files.begin(), files.end());
  nlohmann::ordered_json st = nlohmann::ordered_json::object();
  for (auto& f : files) st[f] = sha256_file(input_dir / f);
  src["safetensors_sha256"] = st;
  return src;
}

CheckpointWriter::CheckpointWriter(const fs::path& input_dir, const fs::path& out_dir, CheckpointWriterOptions opt)
    : input_(input_dir), out_(out_dir), opt_(opt), store_(io::TensorStore::open(input_dir)) {
  out_ = out_.lexically_normal();
  if (out_.filename().empty()) out_ = out_.parent_path();  // "out/" -> "out"
  check_output_dir(out_, input_, opt_.force);
  if (!fs::is_regular_file(input_ / "config.json")) fail(input_.string(), ": no config.json");
  config_ = nlohmann::ordered_json::parse(read_file(input_ / "config.json"), nullptr, false);
  if (config_.is_discarded() || !config_.is_object()) fail((input_ / "config.json").string(), ": not a JSON object");
  fs::path parent = out_.parent_path().empty() ? fs::path(".") : out_.parent_path();
  if (!fs::is_directory(parent)) fail("output ", out_.string(), ": parent directory ", parent.string(), " does not exist");
  tmp_ = temp_path_for(out_);
  fs::create_directory(tmp_);
  writer_ = std::make_unique<io::SafetensorsWriter>(tmp_, opt_.max_shard_bytes);
}

CheckpointWriter::~CheckpointWriter() {
  if (finished_) return;
  writer_.reset();  // removes its spool files first
  std::error_code ec;
  fs::remove_all(tmp_, ec);
}

bool CheckpointWriter::added(const std::string& name) const {
  return std::find(names_.begin(), names_.end(), name) != names_.end();
}

void CheckpointWriter::add(const std::string& name, io::DType dtype, const std::vector<int64_t>& shape, const void* data,
                           size_t nbytes) {
  writer_->add(name, dtype, shape, data, nbytes);
  names_.push_back(name);
}

void CheckpointWriter::add_f32(const std::string& name, io::DType dtype, const std::vector<int64_t>& shape, const float* data) {
  writer_->add_f32(name, dtype, shape, data);
  names_.push_back(name);
}

void CheckpointWriter::add_matrix(const std::string& name, io::DType dtype, const Matrix& m) {
  add_f32(name, dtype, {m.rows(), m.cols()}, m.data());
}

void CheckpointWriter::copy(const std::string& input_name, const std::string& output_name) {
  const auto& t = store_.get(input_name);
  add(output_name.empty() ? input_name : output_name, t.dtype, t.shape, t.data, t.nbytes);
  store_.release(input_name);
}

void CheckpointWriter::copy_rows(const std::string& input_name, const std::vector<int>& rows, const std::string& output_name) {
  const auto& t = store_.get(input_name);
  if (t.shape.empty()) fail(t.file, ": tensor '", input_name, "' is a scalar, it has no rows to select");
  const int64_t n = t.shape[0];
  const size_t row_bytes = t.nbytes / size_t(std::max<int64_t>(n, 1));
  std::vector<uint8_t> buf(rows.size() * row_bytes);
  for (size_t i = 0; i < rows.size(); ++i) {
    if (rows[i] < 0 || rows[i] >= n) fail(t.file, ": row ", rows[i], " of tensor '", input_name, "' out of range [0, ", n, ")");
    std::memcpy(buf.data() + i * row_bytes, t.data + size_t(rows[i]) * row_bytes, row_bytes);
  }
  auto shape = t.shape;
  shape[0] = int64_t(rows.size());
  add(output_name.empty() ? input_name : output_name, t.dtype, shape, buf.data(), buf.size());
  store_.release(input_name);
}

void CheckpointWriter::set_provenance(const nlohmann::ordered_json& fields) {
  for (auto it = fields.begin(); it != fields.end(); ++it) provenance_[it.key()] = it.value();
}

void CheckpointWriter::finish() {
  if (finished_) fail("checkpoint writer for ", out_.string(), ": finish() called twice");
  writer_->finish();
  // Non-weight files (tokenizer, generation_config, README, ...), sorted for a fixed order.
  std::vector<fs::path> files;
  for (auto& e : fs::directory_iterator(input_))
    if (e.is_regular_file() && is_copied_file(e.path())) files.push_back(e.path());
  std::sort(files.begin(), files.end());
  for (auto& f : files) write_file_atomic(tmp_ / f.filename(), read_file(f));
  write_file_atomic(tmp_ / "config.json", config_.dump(2) + "\n");
  nlohmann::ordered_json meta;
  meta["format"] = kDerivedFormatName;
  meta["moec_version"] = MOEC_VERSION;
  meta["source"] = source_record(input_);
  for (auto it = provenance_.begin(); it != provenance_.end(); ++it) meta[it.key()] = it.value();
  write_file_atomic(tmp_ / "moec.json", meta.dump(2) + "\n");
  // Replace an existing output (allowed by --force, checked at construction) only now.
  check_output_dir(out_, input_, opt_.force);
  fs::path old;
  if (fs::exists(out_)) {
    old = temp_path_for(out_);
    fs::rename(out_, old);
  }
  fs::rename(tmp_, out_);
  finished_ = true;
  if (!old.empty()) fs::remove_all(old);
  log_info("wrote " + out_.string() + " (" + std::to_string(names_.size()) + " tensors)");
}

}  // namespace moec::model
