#include "io/safetensors.h"

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/sendfile.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <numeric>
#include <sstream>

#include "core/error.h"
#include "core/files.h"
#include "core/half.h"

namespace moec::io {

namespace {
struct DTypeRow {
  DType t;
  const char* name;
  size_t size;
  bool is_float;
};
constexpr DTypeRow kDTypes[] = {
    {DType::F64, "F64", 8, true},  {DType::F32, "F32", 4, true},  {DType::F16, "F16", 2, true},
    {DType::BF16, "BF16", 2, true}, {DType::I64, "I64", 8, false}, {DType::I32, "I32", 4, false},
    {DType::I16, "I16", 2, false}, {DType::I8, "I8", 1, false},   {DType::U64, "U64", 8, false},
    {DType::U32, "U32", 4, false}, {DType::U16, "U16", 2, false}, {DType::U8, "U8", 1, false},
    {DType::BOOL, "BOOL", 1, false}};
const DTypeRow& row(DType t) { return kDTypes[size_t(t)]; }
constexpr uint64_t kMaxHeader = 100'000'000;  // as the reference implementation
}  // namespace

size_t dtype_size(DType t) { return row(t).size; }
const char* dtype_name(DType t) { return row(t).name; }
bool dtype_is_float(DType t) { return row(t).is_float; }
DType parse_dtype(const std::string& s, const std::string& context) {
  for (auto& r : kDTypes)
    if (s == r.name) return r.t;
  fail(context, ": unsupported dtype '", s, "' (supported: F64 F32 F16 BF16 I64 I32 I16 I8 U64 U32 U16 U8 BOOL)");
}

int64_t TensorInfo::numel() const {
  int64_t n = 1;
  for (auto d : shape) n *= d;
  return n;
}
std::string TensorInfo::shape_str() const {
  std::ostringstream os;
  os << "[";
  for (size_t i = 0; i < shape.size(); ++i) os << (i ? ", " : "") << shape[i];
  os << "]";
  return os.str();
}

// ---------------------------------------------------------------- MappedFile
MappedFile::MappedFile(const fs::path& path) : path_(path) {
  int fd = ::open(path.c_str(), O_RDONLY);
  if (fd < 0) fail("cannot open ", path.string(), ": ", std::strerror(errno));
  struct stat st {};
  if (::fstat(fd, &st) != 0) {
    ::close(fd);
    fail("cannot stat ", path.string());
  }
  size_ = size_t(st.st_size);
  if (size_ > 0) {
    void* p = ::mmap(nullptr, size_, PROT_READ, MAP_PRIVATE, fd, 0);
    if (p == MAP_FAILED) {
      ::close(fd);
      fail("cannot mmap ", path.string(), ": ", std::strerror(errno));
    }
    data_ = static_cast<const uint8_t*>(p);
  }
  ::close(fd);
}
MappedFile::~MappedFile() {
  if (data_) ::munmap(const_cast<uint8_t*>(data_), size_);
}
void MappedFile::release(const uint8_t* p, size_t n) const {
  if (!data_ || n == 0) return;
  // Rounded outward to the kernel's fault-around window (64 KiB-aligned blocks of the address space, by
  // default): a read fault in this tensor also maps the cached pages of its block, which may belong to
  // neighbours released earlier; those pages would otherwise stay resident for good (about 0.3 MiB per
  // layer on a Mixtral-style checkpoint). The mapping is read-only, so dropping pages a neighbour still
  // uses only costs a minor re-fault.
  const size_t page = size_t(::sysconf(_SC_PAGESIZE));
  const size_t block = std::max<size_t>(page, size_t(64) << 10);
  uintptr_t a = reinterpret_cast<uintptr_t>(p) & ~(block - 1);
  uintptr_t b = (reinterpret_cast<uintptr_t>(p) + n + block - 1) & ~(block - 1);
  a = std::max(a, reinterpret_cast<uintptr_t>(data_));
  b = std::min(b, (reinterpret_cast<uintptr_t>(data_) + size_ + page - 1) & ~(page - 1));
  if (b > a) ::madvise(reinterpret_cast<void*>(a), b - a, MADV_DONTNEED);
}

// ---------------------------------------------------------------- SafetensorsFile
SafetensorsFile::SafetensorsFile(const fs::path& path) {
  map_ = std::make_unique<MappedFile>(path);
  const std::string f = path.string();
  const size_t size = map_->size();
  if (size < 8) fail(f, ": not a safetensors file (", size, " bytes, shorter than the 8-byte header length)");
  uint64_t n = 0;
  std::memcpy(&n, map_->data(), 8);  // little-endian u64
  if (n > kMaxHeader) fail(f, ": header length ", n, " exceeds the 100 MB limit (corrupt or not safetensors)");
  if (8 + n > size) fail(f, ": header length ", n, " runs past the end of the file (", size, " bytes): truncated?");
  nlohmann::json h;
  try {
    h = nlohmann::json::parse(reinterpret_cast<const char*>(map_->data()) + 8,
                              reinterpret_cast<const char*>(map_->data()) + 8 + n);
  } catch (const std::exception& e) {
    fail(f, ": header is not valid JSON: ", e.what());
  }
  if (!h.is_object()) fail(f, ": header is not a JSON object");
  const uint8_t* base = map_->data() + 8 + n;
  const uint64_t data_len = size - 8 - n;
  std::vector<std::pair<uint64_t, uint64_t>> spans;
  for (auto it = h.begin(); it != h.end(); ++it) {
    const std::string& name = it.key();
    if (name == "__metadata__") {
      if (!it->is_object()) fail(f, ": __metadata__ must be an object of strings");
      for (auto m = it->begin(); m != it->end(); ++m)
        if (!m->is_string()) fail(f, ": __metadata__ value '", m.key(), "' is not a string");
      metadata_ = *it;
      continue;
    }
    const std::string ctx = f + ": tensor '" + name + "'";
    const auto& v = *it;
    if (!v.is_object() || !v.contains("dtype") || !v.contains("shape") || !v.contains("data_offsets"))
      fail(ctx, ": entry must have dtype, shape and data_offsets");
    if (!v["dtype"].is_string()) fail(ctx, ": dtype is not a string");
    TensorInfo t;
    t.name = name;
    t.file = f;
    t.dtype = parse_dtype(v["dtype"].get<std::string>(), ctx);
    if (!v["shape"].is_array()) fail(ctx, ": shape is not an array");
    uint64_t numel = 1;
    for (auto& d : v["shape"]) {
      if (!d.is_number_unsigned() && !(d.is_number_integer() && d.get<int64_t>() >= 0))
        fail(ctx, ": shape entries must be non-negative integers");
      uint64_t dim = d.get<uint64_t>();
      if (dim != 0 && numel > (uint64_t(1) << 62) / dim) fail(ctx, ": shape overflows");
      numel *= dim;
      t.shape.push_back(int64_t(dim));
    }
    const auto& off = v["data_offsets"];
    if (!off.is_array() || off.size() != 2 || !off[0].is_number_unsigned() || !off[1].is_number_unsigned())
      fail(ctx, ": data_offsets must be two non-negative integers");
    uint64_t b = off[0].get<uint64_t>(), e = off[1].get<uint64_t>();
    if (e < b) fail(ctx, ": data_offsets [", b, ", ", e, "] end before they begin");
    if (e > data_len) fail(ctx, ": data_offsets end ", e, " past the data section (", data_len, " bytes): truncated file?");
    if (e - b != numel * dtype_size(t.dtype))
      fail(ctx, ": byte size ", e - b, " does not match shape ", t.shape_str(), " x ", dtype_name(t.dtype), " (",
           numel * dtype_size(t.dtype), " bytes)");
    t.data = base + b;
    t.nbytes = size_t(e - b);
    spans.push_back({b, e});
    tensors_.push_back(std::move(t));
  }
  // The tensors must tile the data section exactly: no overlap, no gap, no trailing bytes.
  std::vector<size_t> order(tensors_.size());
  std::iota(order.begin(), order.end(), 0);
  std::sort(order.begin(), order.end(), [&](size_t a, size_t b) { return spans[a] < spans[b]; });
  uint64_t pos = 0;
  for (size_t i : order) {
    if (spans[i].first < pos) fail(f, ": tensor '", tensors_[i].name, "' overlaps the previous tensor (offset ", spans[i].first, " < ", pos, ")");
    if (spans[i].first > pos) fail(f, ": gap in the data section before tensor '", tensors_[i].name, "' (offset ", spans[i].first, ", expected ", pos, ")");
    pos = spans[i].second;
  }
  if (pos != data_len) fail(f, ": ", data_len - pos, " trailing bytes after the last tensor");
  std::vector<TensorInfo> sorted;
  for (size_t i : order) sorted.push_back(std::move(tensors_[i]));
  tensors_ = std::move(sorted);
  for (size_t i = 0; i < tensors_.size(); ++i) index_[tensors_[i].name] = i;
}

const TensorInfo* SafetensorsFile::find(const std::string& name) const {
  auto it = index_.find(name);
  return it == index_.end() ? nullptr : &tensors_[it->second];
}

// ---------------------------------------------------------------- TensorStore
TensorStore TensorStore::open(const fs::path& p) {
  TensorStore s;
  s.root_ = p;
  if (!fs::exists(p)) fail(p.string(), ": no such file or directory");
  std::vector<fs::path> files;
  if (fs::is_directory(p)) {
    fs::path index = p / "model.safetensors.index.json";
    if (fs::exists(index)) {
      nlohmann::json j;
      try {
        j = nlohmann::json::parse(read_file(index));
      } catch (const nlohmann::json::exception& e) {
        fail(index.string(), ": not valid JSON: ", e.what());
      }
      if (!j.contains("weight_map") || !j["weight_map"].is_object()) fail(index.string(), ": missing object 'weight_map'");
      std::map<std::string, size_t> file_ix;
      std::map<std::string, std::string> expect;
      for (auto it = j["weight_map"].begin(); it != j["weight_map"].end(); ++it) {
        if (!it->is_string()) fail(index.string(), ": weight_map entry '", it.key(), "' is not a file name");
        std::string fn = it->get<std::string>();
        if (fn.find('/') != std::string::npos) fail(index.string(), ": weight_map file '", fn, "' must be a plain name");
        if (!file_ix.count(fn)) {
          file_ix[fn] = files.size();
          files.push_back(p / fn);
        }
        expect[it.key()] = fn;
      }
      for (auto& f : files) {
        if (!fs::exists(f)) fail(index.string(), ": shard ", f.filename().string(), " is missing");
        s.files_.push_back(std::make_shared<SafetensorsFile>(f));
      }
      for (size_t fi = 0; fi < s.files_.size(); ++fi) {
        auto& ts = s.files_[fi]->tensors();
        for (size_t ti = 0; ti < ts.size(); ++ti) {
          auto e = expect.find(ts[ti].name);
          if (e == expect.end() || e->second != files[fi].filename().string())
            fail(index.string(), ": tensor '", ts[ti].name, "' is in ", files[fi].filename().string(),
                 " but the index does not place it there");
          if (s.where_.count(ts[ti].name)) fail(p.string(), ": tensor '", ts[ti].name, "' appears in two shards");
          s.where_[ts[ti].name] = {fi, ti};
        }
      }
      for (auto& [name, fn] : expect)
        if (!s.where_.count(name)) fail(index.string(), ": tensor '", name, "' listed in the index is not in ", fn);
      return s;
    }
    fs::path single = p / "model.safetensors";
    if (!fs::exists(single)) fail(p.string(), ": no model.safetensors or model.safetensors.index.json in this directory");
    files.push_back(single);
  } else {
    files.push_back(p);
  }
  s.files_.push_back(std::make_shared<SafetensorsFile>(files[0]));
  auto& ts = s.files_[0]->tensors();
  for (size_t ti = 0; ti < ts.size(); ++ti) s.where_[ts[ti].name] = {0, ti};
  return s;
}

const TensorInfo& TensorStore::get(const std::string& name) const {
  auto it = where_.find(name);
  if (it == where_.end()) fail("tensor '", name, "' not found in ", root_.string());
  return files_[it->second.first]->tensors()[it->second.second];
}

std::vector<std::string> TensorStore::names() const {
  std::vector<std::string> n;
  for (auto& [k, v] : where_) n.push_back(k);
  return n;
}

uint64_t TensorStore::bytes_on_disk() const {
  uint64_t b = 0;
  for (auto& f : files_) b += f->mapped().size();
  return b;
}

void TensorStore::release(const std::string& name) const {
  auto it = where_.find(name);
  if (it == where_.end()) return;
  auto& f = *files_[it->second.first];
  auto& t = f.tensors()[it->second.second];
  f.mapped().release(t.data, t.nbytes);
}

// ---------------------------------------------------------------- conversion
void to_f32(const TensorInfo& t, float* out) {
  const int64_t n = t.numel();
  const uint8_t* p = t.data;
  auto load = [&](auto tag) {
    using T = decltype(tag);
    for (int64_t i = 0; i < n; ++i) {
      T v;
      std::memcpy(&v, p + size_t(i) * sizeof(T), sizeof(T));
      out[i] = float(v);
    }
  };
  switch (t.dtype) {
    case DType::F32: std::memcpy(out, p, size_t(n) * 4); break;
    case DType::BF16:
      for (int64_t i = 0; i < n; ++i) {
        uint16_t h;
        std::memcpy(&h, p + 2 * i, 2);
        out[i] = bf16_to_f32(h);
      }
      break;
    case DType::F16:
      for (int64_t i = 0; i < n; ++i) {
        uint16_t h;
        std::memcpy(&h, p + 2 * i, 2);
        out[i] = f16_to_f32(h);
      }
      break;
    case DType::F64: load(double{}); break;
    case DType::I64: load(int64_t{}); break;
    case DType::I32: load(int32_t{}); break;
    case DType::I16: load(int16_t{}); break;
    case DType::I8: load(int8_t{}); break;
    case DType::U64: load(uint64_t{}); break;
    case DType::U32: load(uint32_t{}); break;
    case DType::U16: load(uint16_t{}); break;
    case DType::U8: load(uint8_t{}); break;
    case DType::BOOL:
      for (int64_t i = 0; i < n; ++i) out[i] = p[i] ? 1.0f : 0.0f;
      break;
  }
}

std::vector<float> to_f32(const TensorInfo& t) {
  std::vector<float> v(size_t(t.numel()));
  to_f32(t, v.data());
  return v;
}

Matrix to_matrix(const TensorInfo& t) {
  if (t.shape.size() == 2) {
    Matrix m(t.shape[0], t.shape[1]);
    to_f32(t, m.data());
    return m;
  }
  if (t.shape.size() == 1) {
    Matrix m(1, t.shape[0]);
    to_f32(t, m.data());
    return m;
  }
  fail(t.file, ": tensor '", t.name, "' has shape ", t.shape_str(), ", expected a matrix");
}

void expect_shape(const TensorInfo& t, const std::vector<int64_t>& shape) {
  if (t.shape == shape) return;
  TensorInfo want;
  want.shape = shape;
  fail(t.file, ": tensor '", t.name, "' has shape ", t.shape_str(), " but the config implies ", want.shape_str());
}

// ---------------------------------------------------------------- SafetensorsWriter
SafetensorsWriter::SafetensorsWriter(fs::path dir, uint64_t max_shard_bytes, std::string base, nlohmann::json metadata)
    : dir_(std::move(dir)), max_shard_(max_shard_bytes), base_(std::move(base)), metadata_(std::move(metadata)) {
  if (!fs::is_directory(dir_)) fail("output directory ", dir_.string(), " does not exist");
}

SafetensorsWriter::~SafetensorsWriter() {
  if (finished_) return;
  for (auto& s : shards_) {
    if (s.fd >= 0) ::close(s.fd);
    std::error_code ec;
    fs::remove(s.spool, ec);
    if (!s.done.empty()) fs::remove(s.done, ec);
  }
}

void SafetensorsWriter::open_shard() {
  Shard s;
  s.spool = temp_path_for(dir_ / (base_ + ".spool"));
  s.fd = ::open(s.spool.c_str(), O_RDWR | O_CREAT | O_TRUNC, 0644);
  if (s.fd < 0) fail("cannot create ", s.spool.string(), ": ", std::strerror(errno));
  nlohmann::ordered_json meta = nlohmann::ordered_json::object();
  for (auto it = metadata_.begin(); it != metadata_.end(); ++it)
    meta[it.key()] = it->is_string() ? it->get<std::string>() : it->dump();
  s.header["__metadata__"] = meta;
  shards_.push_back(std::move(s));
}

static void write_all(int fd, const void* p, size_t n, const fs::path& what) {
  const char* c = static_cast<const char*>(p);
  while (n > 0) {
    ssize_t w = ::write(fd, c, n);
    if (w < 0) {
      if (errno == EINTR) continue;
      fail("write failed on ", what.string(), ": ", std::strerror(errno));
    }
    c += w;
    n -= size_t(w);
  }
}

void SafetensorsWriter::add(const std::string& name, DType dtype, const std::vector<int64_t>& shape, const void* data,
                            size_t nbytes) {
  if (finished_) fail("safetensors writer: add('", name, "') after finish()");
  if (seen_.count(name)) fail("safetensors writer: tensor '", name, "' written twice");
  int64_t numel = 1;
  for (auto d : shape) numel *= d;
  if (size_t(numel) * dtype_size(dtype) != nbytes) fail("safetensors writer: tensor '", name, "': ", nbytes, " bytes for shape of ", numel, " elements of ", dtype_name(dtype));
  if (shards_.empty() || shards_.back().fd < 0 || (shards_.back().bytes > 0 && shards_.back().bytes + nbytes > max_shard_)) {
    if (!shards_.empty() && shards_.back().fd >= 0) close_shard();
    open_shard();
  }
  Shard& s = shards_.back();
  s.header[name] = {{"dtype", dtype_name(dtype)}, {"shape", shape}, {"data_offsets", {s.bytes, s.bytes + nbytes}}};
  write_all(s.fd, data, nbytes, s.spool);
  s.bytes += nbytes;
  s.names.push_back(name);
  seen_[name] = true;
}

std::vector<uint8_t> f32_to_bytes(const float* data, size_t n, DType dtype, const std::string& what) {
  std::vector<uint8_t> out;
  if (dtype == DType::F32) {
    out.resize(4 * n);
    if (n) std::memcpy(out.data(), data, 4 * n);
    return out;
  }
  if (dtype != DType::BF16 && dtype != DType::F16)
    fail(what, ": cannot store fp32 values as ", dtype_name(dtype), " (F32, F16 or BF16)");
  out.resize(2 * n);
  for (size_t i = 0; i < n; ++i) {
    const uint16_t h = dtype == DType::BF16 ? f32_to_bf16(data[i]) : f32_to_f16(data[i]);
    std::memcpy(out.data() + 2 * i, &h, 2);
  }
  return out;
}

void SafetensorsWriter::add_f32(const std::string& name, DType dtype, const std::vector<int64_t>& shape, const float* data) {
  int64_t n = 1;
  for (auto d : shape) n *= d;
  if (dtype == DType::F32) return add(name, dtype, shape, data, size_t(n) * 4);
  const auto bytes = f32_to_bytes(data, size_t(n), dtype, "safetensors writer: tensor '" + name + "'");
  add(name, dtype, shape, bytes.data(), bytes.size());
}

void SafetensorsWriter::close_shard() {
  Shard& s = shards_.back();
  std::string h = s.header.dump();
  h.append((8 - h.size() % 8) % 8, ' ');  // keep the data section 8-byte aligned
  s.done = temp_path_for(dir_ / (base_ + ".shard"));
  int out = ::open(s.done.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0644);
  if (out < 0) fail("cannot create ", s.done.string(), ": ", std::strerror(errno));
  uint64_t n = h.size();
  write_all(out, &n, 8, s.done);
  write_all(out, h.data(), h.size(), s.done);
  off_t off = 0;
  while (uint64_t(off) < s.bytes) {
    ssize_t c = ::sendfile(out, s.fd, &off, size_t(s.bytes - uint64_t(off)));
    if (c <= 0) fail("copy failed while writing ", s.done.string(), ": ", std::strerror(errno));
  }
  ::fsync(out);
  ::close(out);
  ::close(s.fd);
  s.fd = -1;
  fs::remove(s.spool);
}

std::vector<std::string> SafetensorsWriter::finish() {
  if (shards_.empty()) open_shard();  // an empty checkpoint is still a valid file
  if (shards_.back().fd >= 0) close_shard();
  std::vector<std::string> names;
  const size_t n = shards_.size();
  char buf[64];
  for (size_t i = 0; i < n; ++i) {
    if (n == 1) {
      names.push_back(base_ + ".safetensors");
    } else {
      std::snprintf(buf, sizeof buf, "-%05zu-of-%05zu.safetensors", i + 1, n);
      names.push_back(base_ + buf);
    }
  }
  if (n > 1) {
    nlohmann::ordered_json idx;
    uint64_t total = 0;
    for (auto& s : shards_) total += s.bytes;
    idx["metadata"] = {{"total_size", total}};
    nlohmann::ordered_json wm = nlohmann::ordered_json::object();
    std::vector<std::pair<std::string, std::string>> all;
    for (size_t i = 0; i < n; ++i)
      for (auto& t : shards_[i].names) all.push_back({t, names[i]});
    std::sort(all.begin(), all.end());
    for (auto& [t, f] : all) wm[t] = f;
    idx["weight_map"] = wm;
    write_file_atomic(dir_ / (base_ + ".safetensors.index.json"), idx.dump(2) + "\n");
  }
  for (size_t i = 0; i < n; ++i) fs::rename(shards_[i].done, dir_ / names[i]);
  finished_ = true;
  return names;
}

}  // namespace moec::io
