// GGUF v3 files (llama.cpp's model format): a validating mmap reader and a streaming, atomic writer.
//
// Layout (little endian): "GGUF", u32 version, i64 tensor_count, i64 kv_count, the KV pairs (string key,
// u32 value type, value), the tensor infos (string name, u32 n_dims, i64 ne[n_dims] innermost first,
// u32 ggml type, u64 offset into the data section), padding to `general.alignment` (u32, default 32), then
// the data section: each tensor at its offset, every tensor padded to the alignment. Strings are a u64
// byte count followed by UTF-8 bytes (no terminator). See docs/GGUF.md.
#pragma once
#include <cstdint>
#include <filesystem>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "io/ggml_blocks.h"

namespace moec::io {
namespace fs = std::filesystem;

enum class GgufType : uint32_t {
  U8 = 0, I8 = 1, U16 = 2, I16 = 3, U32 = 4, I32 = 5, F32 = 6, BOOL = 7, STRING = 8, ARRAY = 9,
  U64 = 10, I64 = 11, F64 = 12,
};
const char* gguf_type_name(GgufType t);

constexpr uint32_t kGgufDefaultAlignment = 32;

// One metadata value: a scalar, or an array of scalars of one type (nested arrays are not supported).
// Numbers are kept as their little-endian bytes so that any type round-trips exactly.
class GgufValue {
 public:
  GgufValue() = default;
  static GgufValue u8(uint8_t v);
  static GgufValue i8(int8_t v);
  static GgufValue u16(uint16_t v);
  static GgufValue i16(int16_t v);
  static GgufValue u32(uint32_t v);
  static GgufValue i32(int32_t v);
  static GgufValue u64(uint64_t v);
  static GgufValue i64(int64_t v);
  static GgufValue f32(float v);
  static GgufValue f64(double v);
  static GgufValue boolean(bool v);
  static GgufValue string(std::string v);
  static GgufValue strings(std::vector<std::string> v);  // may be empty
  // An array of a numeric (or bool) type from raw little-endian elements of that type's size.
  static GgufValue array(GgufType elem, const void* data, size_t count);
  template <class T>
  static GgufValue array_of(GgufType elem, const std::vector<T>& v) {
    return array(elem, v.data(), v.size());
  }

  GgufType type() const { return type_; }        // ARRAY for arrays
  GgufType elem_type() const { return elem_; }   // the element type of an array (else == type())
  bool is_array() const { return type_ == GgufType::ARRAY; }
  size_t size() const;                            // array length (1 for a scalar)

  // Typed access; each fails naming `key` when the stored type differs.
  uint32_t as_u32(const std::string& key) const;
  int64_t as_int(const std::string& key) const;   // any integer type, widened
  double as_double(const std::string& key) const; // f32/f64 or any integer
  float as_f32(const std::string& key) const;
  bool as_bool(const std::string& key) const;
  const std::string& as_string(const std::string& key) const;
  const std::vector<std::string>& as_strings(const std::string& key) const;  // string arrays
  // Element i of a numeric array (or the scalar for i == 0) as double.
  double number_at(size_t i, const std::string& key) const;
  // Short human-readable form for `moec inspect` (arrays abbreviated).
  std::string to_string(size_t max_items = 8) const;

  // Raw bytes of numeric scalars/arrays (for the writer).
  const std::vector<uint8_t>& raw() const { return raw_; }
  const std::vector<std::string>& strs() const { return strs_; }

  static size_t scalar_size(GgufType t);  // 0 for STRING/ARRAY

 private:
  GgufType type_ = GgufType::U8;
  GgufType elem_ = GgufType::U8;
  std::vector<uint8_t> raw_;        // numeric/bool payload
  std::vector<std::string> strs_;   // STRING (one) or string array
  friend class GgufFile;
};

struct GgufTensorInfo {
  std::string name;
  std::vector<int64_t> ne;  // GGUF order: ne[0] is the innermost (contiguous) dimension
  GgmlType type = GgmlType::F32;
  uint64_t offset = 0;      // from the start of the data section
  uint64_t nbytes = 0;
  const uint8_t* data = nullptr;  // reader only: into the mmap
  int64_t numel() const;
  int64_t rows() const { return ne.empty() ? 1 : numel() / ne[0]; }
  std::string shape_str() const;  // "[256, 512, 8]" (GGUF order)
};

// Bytes of a tensor of type t and shape ne (GGUF order); fails naming `name` when ne[0] is not a multiple
// of the type's block or a dimension is negative.
uint64_t gguf_tensor_bytes(GgmlType t, const std::vector<int64_t>& ne, const std::string& name);

// A GGUF file, memory mapped and validated: magic, version (2 or 3), counts bounded by the file size,
// string lengths, KV value types, duplicate keys/names, general.alignment (u32 power of two), tensor names
// (< 64 bytes), dims (1..4, non-negative), known ggml types, rows a multiple of the block, offsets aligned
// and the data inside the file and not overlapping. Errors name the file and the key/tensor.
class GgufFile {
 public:
  explicit GgufFile(const fs::path& path);
  ~GgufFile();
  GgufFile(const GgufFile&) = delete;
  GgufFile& operator=(const GgufFile&) = delete;

  const fs::path& path() const { return path_; }
  uint32_t version() const { return version_; }
  uint32_t alignment() const { return alignment_; }
  uint64_t data_offset() const { return data_offset_; }
  uint64_t file_size() const { return size_; }

  const std::vector<std::pair<std::string, GgufValue>>& metadata() const { return kv_; }
  const GgufValue* find(const std::string& key) const;
  const GgufValue& get(const std::string& key) const;  // fails naming the key and file

  const std::vector<GgufTensorInfo>& tensors() const { return tensors_; }
  const GgufTensorInfo* find_tensor(const std::string& name) const;
  const GgufTensorInfo& tensor(const std::string& name) const;
  // The tensor's values as fp32 (types ggml_blocks decodes); fails for other types.
  std::vector<float> to_f32(const GgufTensorInfo& t) const;

 private:
  fs::path path_;
  const uint8_t* map_ = nullptr;
  uint64_t size_ = 0;
  uint32_t version_ = 0;
  uint32_t alignment_ = kGgufDefaultAlignment;
  uint64_t data_offset_ = 0;
  std::vector<std::pair<std::string, GgufValue>> kv_;
  std::vector<GgufTensorInfo> tensors_;
};

// Streaming writer. Declare all metadata and tensor infos first (sizes are known from type and shape, so
// offsets are computed up front), then write each tensor's bytes in declaration order (in as many chunks as
// convenient), then finish(). The file is written to a temp name beside `path` and renamed on finish();
// the destructor removes the temp file if finish() was never reached. Memory: one chunk at a time.
class GgufWriter {
 public:
  explicit GgufWriter(fs::path path, uint32_t alignment = kGgufDefaultAlignment);
  ~GgufWriter();
  GgufWriter(const GgufWriter&) = delete;
  GgufWriter& operator=(const GgufWriter&) = delete;

  // Metadata, in order. general.alignment is written by the writer itself (first). Duplicate keys fail.
  void set(const std::string& key, GgufValue v);
  // Declares a tensor (name < 64 bytes, 1..4 dims in GGUF order, row multiple of the type's block).
  void add_tensor(const std::string& name, const std::vector<int64_t>& ne, GgmlType type);

  // Appends bytes to the current tensor (the first declared tensor not yet complete). The header is
  // written on the first call. A chunk may not run past the end of the current tensor.
  void write(const void* data, size_t nbytes);
  // Convenience: the whole tensor `name` (must be the current one) in one call.
  void write_tensor(const std::string& name, const void* data, size_t nbytes);
  // Name of the tensor the next write() goes to ("" when all are complete).
  std::string current_tensor() const;

  // Checks every tensor is complete, pads, fsyncs, renames into place.
  void finish();

 private:
  void write_header();
  void put(const void* p, size_t n);
  void pad_to(uint64_t multiple);

  fs::path path_, tmp_;
  uint32_t alignment_;
  std::vector<std::pair<std::string, GgufValue>> kv_;
  std::vector<GgufTensorInfo> tensors_;
  int fd_ = -1;
  uint64_t pos_ = 0;          // bytes written to the file
  uint64_t data_start_ = 0;   // file offset of the data section
  size_t cur_ = 0;            // index of the tensor being written
  uint64_t cur_written_ = 0;  // bytes of it written so far
  bool header_done_ = false, finished_ = false;
  std::vector<uint8_t> buf_;
};

}  // namespace moec::io
