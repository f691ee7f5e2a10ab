#include "io/gguf.h"

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cctype>
#include <cstring>
#include <map>
#include <set>
#include <sstream>

#include "core/error.h"
#include "core/files.h"

namespace moec::io {

namespace {
constexpr char kMagic[4] = {'G', 'G', 'U', 'F'};
constexpr uint32_t kMaxDims = 4;
constexpr size_t kMaxName = 64;  // llama.cpp's GGML_MAX_NAME, including the terminator

uint64_t pad_up(uint64_t x, uint64_t a) { return (x + a - 1) / a * a; }

bool valid_scalar_type(uint32_t t) { return t <= 12 && t != uint32_t(GgufType::ARRAY) && t != uint32_t(GgufType::STRING); }
}  // namespace

const char* gguf_type_name(GgufType t) {
  switch (t) {
    case GgufType::U8: return "u8";
    case GgufType::I8: return "i8";
    case GgufType::U16: return "u16";
    case GgufType::I16: return "i16";
    case GgufType::U32: return "u32";
    case GgufType::I32: return "i32";
    case GgufType::F32: return "f32";
    case GgufType::BOOL: return "bool";
    case GgufType::STRING: return "string";
    case GgufType::ARRAY: return "array";
    case GgufType::U64: return "u64";
    case GgufType::I64: return "i64";
    case GgufType::F64: return "f64";
  }
  return "unknown";
}

// ---------------------------------------------------------------- GgufValue

size_t GgufValue::scalar_size(GgufType t) {
  switch (t) {
    case GgufType::U8: case GgufType::I8: case GgufType::BOOL: return 1;
    case GgufType::U16: case GgufType::I16: return 2;
    case GgufType::U32: case GgufType::I32: case GgufType::F32: return 4;
    case GgufType::U64: case GgufType::I64: case GgufType::F64: return 8;
    default: return 0;
  }
}

namespace {
template <class T>
GgufValue make_scalar(GgufType t, T v) {
  return GgufValue::array(t, &v, 1);  // built as a 1-element payload, then marked scalar below
}
}  // namespace

#define MOEC_GGUF_SCALAR(fn, T, TAG)          \
  GgufValue GgufValue::fn(T v) {              \
    GgufValue g = make_scalar(GgufType::TAG, v); \
    g.type_ = GgufType::TAG;                  \
    return g;                                 \
  }
MOEC_GGUF_SCALAR(u8, uint8_t, U8)
MOEC_GGUF_SCALAR(i8, int8_t, I8)
MOEC_GGUF_SCALAR(u16, uint16_t, U16)
MOEC_GGUF_SCALAR(i16, int16_t, I16)
MOEC_GGUF_SCALAR(u32, uint32_t, U32)
MOEC_GGUF_SCALAR(i32, int32_t, I32)
MOEC_GGUF_SCALAR(u64, uint64_t, U64)
MOEC_GGUF_SCALAR(i64, int64_t, I64)
MOEC_GGUF_SCALAR(f32, float, F32)
MOEC_GGUF_SCALAR(f64, double, F64)
#undef MOEC_GGUF_SCALAR

GgufValue GgufValue::boolean(bool v) {
  uint8_t b = v ? 1 : 0;
  GgufValue g = array(GgufType::BOOL, &b, 1);
  g.type_ = GgufType::BOOL;
  return g;
}

GgufValue GgufValue::string(std::string v) {
  GgufValue g;
  g.type_ = g.elem_ = GgufType::STRING;
  g.strs_.push_back(std::move(v));
  return g;
}

GgufValue GgufValue::strings(std::vector<std::string> v) {
  GgufValue g;
  g.type_ = GgufType::ARRAY;
  g.elem_ = GgufType::STRING;
  g.strs_ = std::move(v);
  return g;
}

GgufValue GgufValue::array(GgufType elem, const void* data, size_t count) {
  size_t es = scalar_size(elem);
  if (es == 0) fail("GGUF numeric array: element type ", gguf_type_name(elem), " is not a numeric/bool type");
  GgufValue g;
  g.type_ = GgufType::ARRAY;
  g.elem_ = elem;
  g.raw_.resize(es * count);
  if (count) std::memcpy(g.raw_.data(), data, es * count);
  return g;
}

size_t GgufValue::size() const {
  if (!is_array()) return 1;
  if (elem_ == GgufType::STRING) return strs_.size();
  return raw_.size() / scalar_size(elem_);
}

namespace {
template <class T>
T load(const uint8_t* p) {
  T v;
  std::memcpy(&v, p, sizeof v);
  return v;
}

bool is_int_type(GgufType t) {
  switch (t) {
    case GgufType::U8: case GgufType::I8: case GgufType::U16: case GgufType::I16: case GgufType::U32:
    case GgufType::I32: case GgufType::U64: case GgufType::I64:
      return true;
    default:
      return false;
  }
}

double element_as_double(GgufType t, const uint8_t* p) {
  switch (t) {
    case GgufType::U8: return load<uint8_t>(p);
    case GgufType::I8: return load<int8_t>(p);
    case GgufType::U16: return load<uint16_t>(p);
    case GgufType::I16: return load<int16_t>(p);
    case GgufType::U32: return load<uint32_t>(p);
    case GgufType::I32: return load<int32_t>(p);
    case GgufType::U64: return double(load<uint64_t>(p));
    case GgufType::I64: return double(load<int64_t>(p));
    case GgufType::F32: return load<float>(p);
    case GgufType::F64: return load<double>(p);
    case GgufType::BOOL: return p[0] ? 1.0 : 0.0;
    default: return 0.0;
  }
}
}  // namespace

uint32_t GgufValue::as_u32(const std::string& key) const {
  if (type_ != GgufType::U32) fail("GGUF key '", key, "' is ", gguf_type_name(type_), ", expected u32");
  return load<uint32_t>(raw_.data());
}

int64_t GgufValue::as_int(const std::string& key) const {
  if (!is_int_type(type_)) fail("GGUF key '", key, "' is ", gguf_type_name(type_), ", expected an integer");
  switch (type_) {
    case GgufType::U64: {
      uint64_t v = load<uint64_t>(raw_.data());
      if (v > uint64_t(INT64_MAX)) fail("GGUF key '", key, "' value ", v, " does not fit in int64");
      return int64_t(v);
    }
    case GgufType::I64: return load<int64_t>(raw_.data());
    default: return int64_t(element_as_double(type_, raw_.data()));
  }
}

double GgufValue::as_double(const std::string& key) const {
  if (!is_int_type(type_) && type_ != GgufType::F32 && type_ != GgufType::F64)
    fail("GGUF key '", key, "' is ", gguf_type_name(type_), ", expected a number");
  return element_as_double(type_, raw_.data());
}

float GgufValue::as_f32(const std::string& key) const {
  if (type_ != GgufType::F32) fail("GGUF key '", key, "' is ", gguf_type_name(type_), ", expected f32");
  return load<float>(raw_.data());
}

bool GgufValue::as_bool(const std::string& key) const {
  if (type_ != GgufType::BOOL) fail("GGUF key '", key, "' is ", gguf_type_name(type_), ", expected bool");
  return raw_[0] != 0;
}

const std::string& GgufValue::as_string(const std::string& key) const {
  if (type_ != GgufType::STRING) fail("GGUF key '", key, "' is ", gguf_type_name(type_), ", expected string");
  return strs_[0];
}

const std::vector<std::string>& GgufValue::as_strings(const std::string& key) const {
  if (!is_array() || elem_ != GgufType::STRING)
    fail("GGUF key '", key, "' is ", gguf_type_name(type_), ", expected an array of strings");
  return strs_;
}

double GgufValue::number_at(size_t i, const std::string& key) const {
  if (elem_ == GgufType::STRING) fail("GGUF key '", key, "' holds strings, not numbers");
  if (i >= size()) fail("GGUF key '", key, "': index ", i, " out of range (", size(), " elements)");
  return element_as_double(elem_, raw_.data() + i * scalar_size(elem_));
}

std::string GgufValue::to_string(size_t max_items) const {
  std::ostringstream os;
  auto one = [&](size_t i) {
    if (elem_ == GgufType::STRING) {
      os << '"' << strs_[i] << '"';
    } else if (elem_ == GgufType::BOOL) {
      os << (raw_[i] ? "true" : "false");
    } else if (elem_ == GgufType::U64) {
      os << load<uint64_t>(raw_.data() + 8 * i);
    } else if (elem_ == GgufType::I64) {
      os << load<int64_t>(raw_.data() + 8 * i);
    } else {
      os << element_as_double(elem_, raw_.data() + i * scalar_size(elem_));
    }
  };
  if (!is_array()) {
    one(0);
    return os.str();
  }
  os << gguf_type_name(elem_) << "[" << size() << "] [";
  for (size_t i = 0; i < size() && i < max_items; ++i) {
    if (i) os << ", ";
    one(i);
  }
  if (size() > max_items) os << ", ...";
  os << "]";
  return os.str();
}

// ---------------------------------------------------------------- tensors

int64_t GgufTensorInfo::numel() const {
  int64_t n = 1;
  for (int64_t d : ne) n *= d;
  return n;
}

std::string GgufTensorInfo::shape_str() const {
  std::ostringstream os;
  os << "[";
  for (size_t i = 0; i < ne.size(); ++i) os << (i ? ", " : "") << ne[i];
  os << "]";
  return os.str();
}

uint64_t gguf_tensor_bytes(GgmlType t, const std::vector<int64_t>& ne, const std::string& name) {
  if (ne.empty() || ne.size() > kMaxDims) fail("tensor '", name, "': ", ne.size(), " dimensions (GGUF allows 1 to 4)");
  for (int64_t d : ne)
    if (d < 0) fail("tensor '", name, "': negative dimension ", d);
  const uint64_t row = ggml_row_bytes(t, ne[0], "tensor '" + name + "'");
  uint64_t rows = 1;
  for (size_t i = 1; i < ne.size(); ++i) {
    if (ne[i] != 0 && rows > (uint64_t(1) << 62) / uint64_t(ne[i])) fail("tensor '", name, "': shape too large");
    rows *= uint64_t(ne[i]);
  }
  if (row != 0 && rows > (uint64_t(1) << 62) / row) fail("tensor '", name, "': size in bytes overflows");
  return row * rows;
}

// ---------------------------------------------------------------- reader

namespace {
// Bounds-checked cursor over the mapped file; every read names what it was reading.
struct Cursor {
  const uint8_t* p;
  uint64_t size;
  uint64_t pos = 0;
  const std::string& file;

  void need(uint64_t n, const std::string& what) const {
    if (n > size - pos)
      fail(file, ": truncated GGUF file: ", what, " needs ", n, " bytes at offset ", pos, " but only ", size - pos,
           " remain");
  }
  template <class T>
  T get(const std::string& what) {
    need(sizeof(T), what);
    T v = load<T>(p + pos);
    pos += sizeof(T);
    return v;
  }
  std::string str(const std::string& what) {
    uint64_t n = get<uint64_t>(what + " length");
    if (n > size - pos)
      fail(file, ": ", what, ": string length ", n, " exceeds the ", size - pos, " bytes left in the file");
    std::string s(reinterpret_cast<const char*>(p + pos), size_t(n));
    pos += n;
    return s;
  }
};

GgufValue read_value(Cursor& c, uint32_t type, const std::string& key) {
  const std::string what = "value of key '" + key + "'";
  if (type == uint32_t(GgufType::STRING)) return GgufValue::string(c.str(what));
  if (type == uint32_t(GgufType::ARRAY)) {
    uint32_t elem = c.get<uint32_t>(what + " (array type)");
    uint64_t n = c.get<uint64_t>(what + " (array length)");
    if (elem == uint32_t(GgufType::STRING)) {
      // Each string takes at least its 8-byte length: bounds the count before allocating.
      if (n > (c.size - c.pos) / 8)
        fail(c.file, ": key '", key, "': array of ", n, " strings cannot fit in the ", c.size - c.pos, " bytes left");
      std::vector<std::string> v;
      v.reserve(size_t(n));
      for (uint64_t i = 0; i < n; ++i) v.push_back(c.str(what + " element " + std::to_string(i)));
      return GgufValue::strings(std::move(v));
    }
    if (!valid_scalar_type(elem))
      fail(c.file, ": key '", key, "': invalid array element type ", elem,
           elem == uint32_t(GgufType::ARRAY) ? " (nested arrays are not supported)" : "");
    size_t es = GgufValue::scalar_size(GgufType(elem));
    if (n > (c.size - c.pos) / es)
      fail(c.file, ": key '", key, "': array of ", n, " ", gguf_type_name(GgufType(elem)), " elements exceeds the ",
           c.size - c.pos, " bytes left in the file");
    GgufValue v = GgufValue::array(GgufType(elem), c.p + c.pos, size_t(n));
    c.pos += n * es;
    return v;
  }
  if (!valid_scalar_type(type)) fail(c.file, ": key '", key, "' has invalid GGUF value type ", type);
  size_t es = GgufValue::scalar_size(GgufType(type));
  c.need(es, what);
  uint8_t buf[8];
  std::memcpy(buf, c.p + c.pos, es);
  c.pos += es;
  switch (GgufType(type)) {
    case GgufType::U8: return GgufValue::u8(buf[0]);
    case GgufType::I8: return GgufValue::i8(int8_t(buf[0]));
    case GgufType::BOOL:
      if (buf[0] > 1) fail(c.file, ": key '", key, "': bool value ", int(buf[0]), " is not 0 or 1");
      return GgufValue::boolean(buf[0] != 0);
    case GgufType::U16: return GgufValue::u16(load<uint16_t>(buf));
    case GgufType::I16: return GgufValue::i16(load<int16_t>(buf));
    case GgufType::U32: return GgufValue::u32(load<uint32_t>(buf));
    case GgufType::I32: return GgufValue::i32(load<int32_t>(buf));
    case GgufType::F32: return GgufValue::f32(load<float>(buf));
    case GgufType::U64: return GgufValue::u64(load<uint64_t>(buf));
    case GgufType::I64: return GgufValue::i64(load<int64_t>(buf));
    case GgufType::F64: return GgufValue::f64(load<double>(buf));
    default: fail(c.file, ": key '", key, "' has invalid GGUF value type ", type);
  }
}
}  // namespace

GgufFile::GgufFile(const fs::path& path) : path_(path) {
  const std::string file = path.string();
  int fd = ::open(path.c_str(), O_RDONLY);
  if (fd < 0) fail("cannot open GGUF file ", file, ": ", std::strerror(errno));
  struct stat st{};
  if (::fstat(fd, &st) != 0) {
    int e = errno;
    ::close(fd);
    fail("cannot stat ", file, ": ", std::strerror(e));
  }
  size_ = uint64_t(st.st_size);
  if (size_ > 0) {
    void* m = ::mmap(nullptr, size_, PROT_READ, MAP_PRIVATE, fd, 0);
    if (m == MAP_FAILED) {
      int e = errno;
      ::close(fd);
      fail("cannot mmap ", file, ": ", std::strerror(e));
    }
    map_ = static_cast<const uint8_t*>(m);
  }
  ::close(fd);

  try {
    Cursor c{map_, size_, 0, file};
    c.need(4, "magic");
    if (std::memcmp(map_, kMagic, 4) != 0) {
      std::string got;
      for (int i = 0; i < 4; ++i) got += std::isprint(map_[i]) ? char(map_[i]) : '?';
      fail(file, ": not a GGUF file (magic '", got, "', expected 'GGUF')");
    }
    c.pos = 4;
    version_ = c.get<uint32_t>("version");
    if (version_ != 2 && version_ != 3)
      fail(file, ": unsupported GGUF version ", version_, " (this reader handles versions 2 and 3)");
    const int64_t n_tensors = c.get<int64_t>("tensor count");
    const int64_t n_kv = c.get<int64_t>("metadata count");
    // Each KV needs at least 8 (key length) + 4 (type) + 1 bytes; each tensor info at least 8 + 4 + 8 + 4 + 8.
    const uint64_t left = size_ - c.pos;
    if (n_kv < 0 || uint64_t(n_kv) > left / 13)
      fail(file, ": metadata count ", n_kv, " is impossible for a file of ", size_, " bytes");
    if (n_tensors < 0 || uint64_t(n_tensors) > left / 32)
      fail(file, ": tensor count ", n_tensors, " is impossible for a file of ", size_, " bytes");

    std::set<std::string> keys;
    for (int64_t i = 0; i < n_kv; ++i) {
      std::string key = c.str("key of metadata entry " + std::to_string(i));
      if (key.empty()) fail(file, ": metadata entry ", i, " has an empty key");
      if (!keys.insert(key).second) fail(file, ": duplicate metadata key '", key, "'");
      uint32_t type = c.get<uint32_t>("type of key '" + key + "'");
      kv_.emplace_back(key, read_value(c, type, key));
    }
    if (const GgufValue* a = find("general.alignment")) {
      if (a->type() != GgufType::U32)
        fail(file, ": key 'general.alignment' must be u32, found ", gguf_type_name(a->type()));
      alignment_ = a->as_u32("general.alignment");
      if (alignment_ == 0 || (alignment_ & (alignment_ - 1)) != 0)
        fail(file, ": general.alignment ", alignment_, " is not a power of two");
    }

    std::set<std::string> names;
    for (int64_t i = 0; i < n_tensors; ++i) {
      GgufTensorInfo t;
      t.name = c.str("name of tensor " + std::to_string(i));
      const std::string tn = "tensor '" + t.name + "'";
      if (t.name.size() >= kMaxName)
        fail(file, ": ", tn, ": name is ", t.name.size(), " bytes (llama.cpp allows at most ", kMaxName - 1, ")");
      if (!names.insert(t.name).second) fail(file, ": duplicate tensor name '", t.name, "'");
      uint32_t n_dims = c.get<uint32_t>(tn + " dimension count");
      if (n_dims == 0 || n_dims > kMaxDims) fail(file, ": ", tn, " has ", n_dims, " dimensions (expected 1 to 4)");
      for (uint32_t d = 0; d < n_dims; ++d) {
        int64_t v = c.get<int64_t>(tn + " dimension " + std::to_string(d));
        if (v < 0) fail(file, ": ", tn, " dimension ", d, " is negative (", v, ")");
        t.ne.push_back(v);
      }
      uint32_t type = c.get<uint32_t>(tn + " type");
      if (!ggml_type_traits(type)) fail(file, ": ", tn, " has unknown ggml type ", type);
      t.type = GgmlType(type);
      t.offset = c.get<uint64_t>(tn + " offset");
      try {
        t.nbytes = gguf_tensor_bytes(t.type, t.ne, t.name);
      } catch (const Error& e) {
        fail(file, ": ", e.what());
      }
      tensors_.push_back(std::move(t));
    }

    data_offset_ = pad_up(c.pos, alignment_);
    if (n_tensors > 0 && data_offset_ > size_)
      fail(file, ": truncated GGUF file: data section would start at ", data_offset_, " but the file has ", size_,
           " bytes");
    // Offsets: aligned, inside the file, no two tensors overlapping.
    std::multimap<uint64_t, size_t> by_offset;
    for (size_t i = 0; i < tensors_.size(); ++i) {
      GgufTensorInfo& t = tensors_[i];
      if (t.offset % alignment_ != 0)
        fail(file, ": tensor '", t.name, "' offset ", t.offset, " is not a multiple of the alignment ", alignment_);
      const uint64_t avail = size_ - data_offset_;
      if (t.offset > avail || t.nbytes > avail - t.offset)
        fail(file, ": tensor '", t.name, "' data [", t.offset, ", ", t.offset + t.nbytes,
             ") runs past the end of the data section (", avail, " bytes); file truncated?");
      t.data = map_ + data_offset_ + t.offset;
      by_offset.emplace(t.offset, i);
    }
    const GgufTensorInfo* prev = nullptr;
    for (const auto& [off, i] : by_offset) {
      const GgufTensorInfo& t = tensors_[i];
      if (prev && prev->nbytes > 0 && t.nbytes > 0 && prev->offset + prev->nbytes > off)
        fail(file, ": tensors '", prev->name, "' and '", t.name, "' overlap");
      prev = &t;
    }
  } catch (...) {
    if (map_) ::munmap(const_cast<uint8_t*>(map_), size_);
    map_ = nullptr;
    throw;
  }
}

GgufFile::~GgufFile() {
  if (map_) ::munmap(const_cast<uint8_t*>(map_), size_);
}

const GgufValue* GgufFile::find(const std::string& key) const {
  for (const auto& kv : kv_)
    if (kv.first == key) return &kv.second;
  return nullptr;
}

const GgufValue& GgufFile::get(const std::string& key) const {
  const GgufValue* v = find(key);
  if (!v) fail(path_.string(), ": GGUF metadata key '", key, "' not found");
  return *v;
}

const GgufTensorInfo* GgufFile::find_tensor(const std::string& name) const {
  for (const auto& t : tensors_)
    if (t.name == name) return &t;
  return nullptr;
}

const GgufTensorInfo& GgufFile::tensor(const std::string& name) const {
  const GgufTensorInfo* t = find_tensor(name);
  if (!t) fail(path_.string(), ": tensor '", name, "' not found");
  return *t;
}

std::vector<float> GgufFile::to_f32(const GgufTensorInfo& t) const {
  std::vector<float> out(size_t(t.numel()));
  if (out.empty()) return out;
  const int64_t n = t.ne[0];
  const size_t row_bytes = ggml_row_bytes(t.type, n, path_.string() + ": tensor '" + t.name + "'");
  for (int64_t r = 0; r < t.rows(); ++r)
    dequantize_row(t.type, t.data + size_t(r) * row_bytes, out.data() + size_t(r) * size_t(n), n,
                   path_.string() + ": tensor '" + t.name + "'");
  return out;
}

// ---------------------------------------------------------------- writer

GgufWriter::GgufWriter(fs::path path, uint32_t alignment) : path_(std::move(path)), alignment_(alignment) {
  if (alignment_ == 0 || (alignment_ & (alignment_ - 1)) != 0)
    fail(path_.string(), ": GGUF alignment ", alignment_, " is not a power of two");
  kv_.emplace_back("general.alignment", GgufValue::u32(alignment_));
}

GgufWriter::~GgufWriter() {
  if (fd_ >= 0) ::close(fd_);
  if (!finished_ && !tmp_.empty()) {
    std::error_code ec;
    fs::remove(tmp_, ec);
  }
}

void GgufWriter::set(const std::string& key, GgufValue v) {
  if (header_done_) fail(path_.string(), ": metadata key '", key, "' set after tensor data started");
  if (key.empty()) fail(path_.string(), ": empty metadata key");
  if (key == "general.alignment") fail(path_.string(), ": general.alignment is set through the GgufWriter constructor");
  for (const auto& kv : kv_)
    if (kv.first == key) fail(path_.string(), ": duplicate metadata key '", key, "'");
  kv_.emplace_back(key, std::move(v));
}

void GgufWriter::add_tensor(const std::string& name, const std::vector<int64_t>& ne, GgmlType type) {
  if (header_done_) fail(path_.string(), ": tensor '", name, "' declared after tensor data started");
  if (name.empty() || name.size() >= kMaxName)
    fail(path_.string(), ": tensor name '", name, "' must be 1 to ", kMaxName - 1, " bytes");
  for (const auto& t : tensors_)
    if (t.name == name) fail(path_.string(), ": duplicate tensor '", name, "'");
  GgufTensorInfo t;
  t.name = name;
  t.ne = ne;
  t.type = type;
  t.nbytes = gguf_tensor_bytes(type, ne, name);
  t.offset = tensors_.empty() ? 0 : pad_up(tensors_.back().offset + tensors_.back().nbytes, alignment_);
  tensors_.push_back(std::move(t));
}

void GgufWriter::put(const void* p, size_t n) {
  const auto* b = static_cast<const uint8_t*>(p);
  size_t off = 0;
  while (off < n) {
    ssize_t w = ::write(fd_, b + off, n - off);
    if (w < 0) {
      if (errno == EINTR) continue;
      fail("write failed on ", tmp_.string(), ": ", std::strerror(errno));
    }
    off += size_t(w);
  }
  pos_ += n;
}

void GgufWriter::pad_to(uint64_t multiple) {
  static const uint8_t zeros[256] = {};
  uint64_t n = pad_up(pos_, multiple) - pos_;
  while (n > 0) {
    size_t k = size_t(std::min<uint64_t>(n, sizeof zeros));
    put(zeros, k);
    n -= k;
  }
}

void GgufWriter::write_header() {
  tmp_ = temp_path_for(path_);
  fd_ = ::open(tmp_.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0644);
  if (fd_ < 0) fail("cannot create ", tmp_.string(), ": ", std::strerror(errno));
  header_done_ = true;

  // The header is assembled in memory (it is small: names, shapes, tokenizer strings), then written.
  std::vector<uint8_t>& h = buf_;
  h.clear();
  auto raw = [&](const void* p, size_t n) {
    const auto* b = static_cast<const uint8_t*>(p);
    h.insert(h.end(), b, b + n);
  };
  auto u32 = [&](uint32_t v) { raw(&v, 4); };
  auto u64 = [&](uint64_t v) { raw(&v, 8); };
  auto str = [&](const std::string& s) {
    u64(s.size());
    raw(s.data(), s.size());
  };
  raw(kMagic, 4);
  u32(3);
  u64(tensors_.size());
  u64(kv_.size());
  for (const auto& [key, v] : kv_) {
    str(key);
    u32(uint32_t(v.type()));
    if (v.is_array()) {
      u32(uint32_t(v.elem_type()));
      u64(v.size());
    }
    if (v.elem_type() == GgufType::STRING)
      for (const auto& s : v.strs()) str(s);
    else
      raw(v.raw().data(), v.raw().size());
  }
  for (const auto& t : tensors_) {
    str(t.name);
    u32(uint32_t(t.ne.size()));
    for (int64_t d : t.ne) u64(uint64_t(d));
    u32(uint32_t(t.type));
    u64(t.offset);
  }
  put(h.data(), h.size());
  h.clear();
  h.shrink_to_fit();
  pad_to(alignment_);
  data_start_ = pos_;
  cur_ = 0;
  cur_written_ = 0;
  while (cur_ < tensors_.size() && tensors_[cur_].nbytes == 0) ++cur_;
}

std::string GgufWriter::current_tensor() const {
  if (!header_done_) {
    for (const auto& t : tensors_)
      if (t.nbytes > 0) return t.name;
    return "";
  }
  return cur_ < tensors_.size() ? tensors_[cur_].name : "";
}

void GgufWriter::write(const void* data, size_t nbytes) {
  if (finished_) fail(path_.string(), ": write after finish()");
  if (!header_done_) write_header();
  const auto* p = static_cast<const uint8_t*>(data);
  while (nbytes > 0) {
    if (cur_ >= tensors_.size())
      fail(path_.string(), ": ", nbytes, " bytes written past the last declared tensor");
    GgufTensorInfo& t = tensors_[cur_];
    if (cur_written_ == 0) pad_to(alignment_);  // each tensor starts aligned
    if (pos_ - data_start_ != t.offset + cur_written_)
      fail(path_.string(), ": internal error: tensor '", t.name, "' lands at ", pos_ - data_start_, " not ", t.offset);
    const uint64_t take = std::min<uint64_t>(nbytes, t.nbytes - cur_written_);
    put(p, size_t(take));
    p += take;
    nbytes -= size_t(take);
    cur_written_ += take;
    if (cur_written_ == t.nbytes) {
      ++cur_;
      cur_written_ = 0;
      while (cur_ < tensors_.size() && tensors_[cur_].nbytes == 0) ++cur_;
    }
  }
}

void GgufWriter::write_tensor(const std::string& name, const void* data, size_t nbytes) {
  if (!header_done_) write_header();
  if (cur_ >= tensors_.size() || tensors_[cur_].name != name || cur_written_ != 0)
    fail(path_.string(), ": tensor '", name, "' written out of order (expected '", current_tensor(), "')");
  if (nbytes != tensors_[cur_].nbytes)
    fail(path_.string(), ": tensor '", name, "' ", tensors_[cur_].shape_str(), " ", ggml_type_name(tensors_[cur_].type),
         " needs ", tensors_[cur_].nbytes, " bytes, got ", nbytes);
  write(data, nbytes);
}

void GgufWriter::finish() {
  if (finished_) return;
  if (!header_done_) write_header();
  if (cur_ < tensors_.size())
    fail(path_.string(), ": tensor '", tensors_[cur_].name, "' incomplete (", cur_written_, " of ",
         tensors_[cur_].nbytes, " bytes written) at finish()");
  pad_to(alignment_);  // llama.cpp sizes the data section with every tensor padded, the last one included
  if (::fsync(fd_) != 0) fail("fsync failed on ", tmp_.string(), ": ", std::strerror(errno));
  ::close(fd_);
  fd_ = -1;
  std::error_code ec;
  fs::rename(tmp_, path_, ec);
  if (ec) fail("cannot rename ", tmp_.string(), " to ", path_.string(), ": ", ec.message());
  finished_ = true;
}

}  // namespace moec::io
