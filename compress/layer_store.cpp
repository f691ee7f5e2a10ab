// Per-layer commits of the quantize stage (see compress/internal.h).
#include <cstdio>
#include <cstring>
#include <fstream>
#include <set>

#include "compress/internal.h"
#include "core/error.h"
#include "core/files.h"
#include "core/progress.h"

namespace moec::compress {

namespace {
constexpr const char* kPending = "pending";  // base name of the layer file being written

std::string numbered(const char* prefix, int l, const char* ext) {
  char buf[64];
  std::snprintf(buf, sizeof buf, "%s-%05d%s", prefix, l, ext);
  return buf;
}
std::string manifest_name(int l) { return numbered("layer", l, ".json"); }
std::string tensors_name(int l) { return numbered("layer", l, ".safetensors"); }
std::string h_name(int l) { return numbered("h", l, ".f32"); }

nlohmann::ordered_json record_json(const quantize::ExpertRecord& r) {
  nlohmann::ordered_json j;
  j["layer"] = r.layer;
  j["expert"] = r.expert;
  j["tokens"] = r.tokens;
  j["gate_mass"] = r.gate_mass;
  j["spec"] = r.spec;
  j["codec"] = r.codec;
  j["path"] = {r.path[0], r.path[1], r.path[2]};
  j["bits_per_weight"] = r.bits_per_weight;
  return j;
}
quantize::ExpertRecord record_from(const nlohmann::json& j) {
  quantize::ExpertRecord r;
  r.layer = j.at("layer").get<int>();
  r.expert = j.at("expert").get<int>();
  r.tokens = j.at("tokens").get<int64_t>();
  r.gate_mass = j.at("gate_mass").get<double>();
  r.spec = j.at("spec").get<std::string>();
  r.codec = j.at("codec").get<std::string>();
  for (int p = 0; p < 3; ++p) r.path[p] = j.at("path").at(size_t(p)).get<std::string>();
  r.bits_per_weight = j.at("bits_per_weight").get<double>();
  return r;
}

std::string_view bytes_of(const Matrix& m) {
  return {reinterpret_cast<const char*>(m.data()), size_t(m.size()) * sizeof(float)};
}

// The manifest of layer l if it parses and names this layer (else null).
nlohmann::ordered_json read_manifest(const fs::path& dir, int l) {
  const fs::path p = dir / manifest_name(l);
  if (!fs::is_regular_file(p)) return nullptr;
  try {
    auto j = nlohmann::ordered_json::parse(read_file(p));
    if (j.is_object() && j.value("layer", -1) == l) return j;
  } catch (const std::exception&) {
  }
  return nullptr;
}
}  // namespace

LayerStore::LayerStore(fs::path dir) : dir_(std::move(dir)) { fs::create_directories(dir_); }
LayerStore::~LayerStore() = default;  // an unfinished layer writer removes its temp files

int LayerStore::restore(int num_layers, int64_t h_rows, int h_cols, quantize::ResumePoint& rp) {
  rp = {};
  int k = 0;
  quantize::CalibrateReport done;
  nlohmann::ordered_json last;
  for (int l = 0; l < num_layers; ++l) {
    auto j = read_manifest(dir_, l);
    if (j.is_null()) break;
    try {
      if (!j["file"].is_null()) {
        const fs::path f = dir_ / j["file"].get<std::string>();
        if (!fs::is_regular_file(f) || sha256_file(f) != j["file_sha256"].get<std::string>()) break;
      }
      quantize::CalibrateReport part;
      const auto& r = j.at("report");
      part.expert_bytes = r.at("expert_bytes").get<uint64_t>();
      part.expert_weights = r.at("expert_weights").get<int64_t>();
      part.fallbacks = r.at("fallbacks").get<int>();
      for (auto& e : r.at("experts")) part.experts.push_back(record_from(e));
      done.append(part);
    } catch (const std::exception&) {
      break;
    }
    k = l + 1;
    last = std::move(j);
  }
  if (k > 0 && h_rows > 0) {  // the activations after layer k-1
    bool ok = false;
    const auto& hj = last["h"];
    if (hj.is_object() && hj.value("rows", int64_t(-1)) == h_rows && hj.value("cols", -1) == h_cols) {
      const fs::path f = dir_ / hj["file"].get<std::string>();
      std::ifstream in(f, std::ios::binary);
      Matrix h(h_rows, h_cols);
      if (in && in.read(reinterpret_cast<char*>(h.data()), std::streamsize(h.size() * sizeof(float))) &&
          in.peek() == std::char_traits<char>::eof() && sha256_hex(bytes_of(h)) == hj["sha256"].get<std::string>()) {
        rp.h = std::move(h);
        ok = true;
      }
    }
    if (!ok) {
      log_info("quantize: the activations after committed layer " + std::to_string(k - 1) +
               " are missing or corrupt: quantizing from layer 0 again");
      k = 0;
      done = {};
    }
  }
  // Keep exactly the committed layers' files (and the newest activations); drop partial work.
  std::set<std::string> keep;
  for (int l = 0; l < k; ++l) {
    keep.insert(manifest_name(l));
    keep.insert(tensors_name(l));
  }
  if (k > 0) keep.insert(h_name(k - 1));
  for (auto& e : fs::directory_iterator(dir_))
    if (!keep.count(e.path().filename().string())) fs::remove_all(e.path());
  rp.first_layer = k;
  rp.done = std::move(done);
  return k;
}

void LayerStore::add(const std::string& name, const PackedMatrix& m, const nlohmann::ordered_json& info) {
  if (!writer_) writer_ = std::make_unique<io::SafetensorsWriter>(dir_, uint64_t(1) << 62, kPending);
  for (auto& [suffix, raw] : to_tensors(m))
    writer_->add(name + "." + suffix, io::parse_dtype(raw.dtype, name + "." + suffix), raw.shape, raw.bytes.data(),
                 raw.bytes.size());
  tensors_.push_back({{"name", name}, {"codec", codec_meta(m)}, {"info", info}});
}

void LayerStore::commit(int l, const Matrix* h, const quantize::CalibrateReport& part) {
  nlohmann::ordered_json j;
  j["layer"] = l;
  j["tensors"] = std::move(tensors_);
  tensors_ = nlohmann::ordered_json::array();
  if (writer_) {
    writer_->finish();
    writer_.reset();
    fs::rename(dir_ / (std::string(kPending) + ".safetensors"), dir_ / tensors_name(l));
    j["file"] = tensors_name(l);
    j["file_sha256"] = sha256_file(dir_ / tensors_name(l));
  } else {
    j["file"] = nullptr;  // no routed experts in this layer
  }
  nlohmann::ordered_json r;
  r["expert_bytes"] = part.expert_bytes;
  r["expert_weights"] = part.expert_weights;
  r["fallbacks"] = part.fallbacks;
  r["experts"] = nlohmann::ordered_json::array();
  for (auto& e : part.experts) r["experts"].push_back(record_json(e));
  j["report"] = r;
  if (h) {
    write_file_atomic(dir_ / h_name(l), bytes_of(*h));
    j["h"] = {{"file", h_name(l)}, {"rows", h->rows()}, {"cols", h->cols()}, {"sha256", sha256_hex(bytes_of(*h))}};
  } else {
    j["h"] = nullptr;
  }
  write_file_atomic(dir_ / manifest_name(l), j.dump(1) + "\n");  // the commit
  if (l > 0) fs::remove(dir_ / h_name(l - 1));
}

void LayerStore::assemble(int num_layers, quantize::PackedCheckpointWriter& w) const {
  for (int l = 0; l < num_layers; ++l) {
    auto j = read_manifest(dir_, l);
    if (j.is_null()) fail(dir_.string(), ": layer ", l, " of the quantize stage is not committed");
    if (j["file"].is_null()) continue;
    const fs::path f = dir_ / j["file"].get<std::string>();
    auto store = io::TensorStore::open(f);
    for (auto& t : j["tensors"]) {
      const std::string name = t["name"].get<std::string>();
      std::vector<uint32_t> row_offsets;  // subbit: rebuilt from the stored row lengths
      PackedView v = view_from_tensors(t["codec"], [&](const std::string& suffix) {
        const auto& info = store.get(name + "." + suffix);
        return RawTensorView{io::dtype_name(info.dtype), info.shape, info.data, info.nbytes};
      }, row_offsets);
      w.add_packed(name, copy_packed(v), t["info"]);
      for (auto& n : store.names())
        if (n.rfind(name + ".", 0) == 0) store.release(n);
    }
  }
}

}  // namespace moec::compress
