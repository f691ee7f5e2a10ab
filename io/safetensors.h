// Safetensors checkpoints: an mmap'd, validated reader (single file or sharded directory) and a
// streaming, sharded, atomic writer. Nothing here reads a whole file into memory.
#pragma once
#include <cstdint>
#include <filesystem>
#include <map>
#include <memory>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "core/matrix.h"

namespace moec::io {
namespace fs = std::filesystem;

enum class DType : uint8_t { F64, F32, F16, BF16, I64, I32, I16, I8, U64, U32, U16, U8, BOOL };
size_t dtype_size(DType t);
const char* dtype_name(DType t);
// Parses a safetensors dtype string; `context` names the file/tensor in the error.
DType parse_dtype(const std::string& s, const std::string& context);
bool dtype_is_float(DType t);

struct TensorInfo {
  std::string name;
  DType dtype = DType::F32;
  std::vector<int64_t> shape;
  const uint8_t* data = nullptr;  // into the mmap
  size_t nbytes = 0;
  std::string file;  // the file it lives in (for error messages)
  int64_t numel() const;
  std::string shape_str() const;  // "[512, 256]"
};

// A read-only memory map of a whole file.
class MappedFile {
 public:
  explicit MappedFile(const fs::path& path);
  ~MappedFile();
  MappedFile(const MappedFile&) = delete;
  MappedFile& operator=(const MappedFile&) = delete;
  const uint8_t* data() const { return data_; }
  size_t size() const { return size_; }
  const fs::path& path() const { return path_; }
  // Tells the kernel the pages are no longer needed (keeps resident memory to about one layer).
  void release(const uint8_t* p, size_t n) const;

 private:
  fs::path path_;
  const uint8_t* data_ = nullptr;
  size_t size_ = 0;
};

// One .safetensors file, validated as the reference implementation does: header length bound
// (100 MB), JSON that parses, known dtypes, offsets in range, byte size = numel x dtype size,
// tensors covering the data section with no overlap, gap or trailing bytes.
class SafetensorsFile {
 public:
  explicit SafetensorsFile(const fs::path& path);
  const std::vector<TensorInfo>& tensors() const { return tensors_; }
  const TensorInfo* find(const std::string& name) const;
  const nlohmann::json& metadata() const { return metadata_; }
  const MappedFile& mapped() const { return *map_; }

 private:
  std::unique_ptr<MappedFile> map_;
  std::vector<TensorInfo> tensors_;
  std::map<std::string, size_t> index_;
  nlohmann::json metadata_ = nlohmann::json::object();
};

// All tensors of a checkpoint: a directory holding model.safetensors, or a sharded set described by
// model.safetensors.index.json, or a single .safetensors file path.
class TensorStore {
 public:
  static TensorStore open(const fs::path& dir_or_file);
  bool has(const std::string& name) const { return where_.count(name) > 0; }
  // Fails with a message naming the tensor and the checkpoint when absent.
  const TensorInfo& get(const std::string& name) const;
  std::vector<std::string> names() const;  // sorted
  const fs::path& root() const { return root_; }
  uint64_t bytes_on_disk() const;
  const std::vector<std::shared_ptr<SafetensorsFile>>& files() const { return files_; }
  // Drops the pages of a tensor from memory once it has been consumed (streaming).
  void release(const std::string& name) const;

 private:
  fs::path root_;
  std::vector<std::shared_ptr<SafetensorsFile>> files_;
  std::map<std::string, std::pair<size_t, size_t>> where_;  // name -> (file, tensor index)
};

// Converts any numeric tensor to fp32 (bf16/f16 exactly, integers by value).
void to_f32(const TensorInfo& t, float* out);
std::vector<float> to_f32(const TensorInfo& t);
// A 2-D tensor as a row-major fp32 matrix (1-D tensors give a 1 x n matrix).
Matrix to_matrix(const TensorInfo& t);
// Checks the shape (message names tensor, expected and actual shape).
void expect_shape(const TensorInfo& t, const std::vector<int64_t>& shape);

// n fp32 values as the little-endian bytes of `dtype` (F32, F16 or BF16; round to nearest even), as add_f32
// stores them. Other dtypes fail with `what` at the start of the message.
std::vector<uint8_t> f32_to_bytes(const float* data, size_t n, DType dtype, const std::string& what);

// Streaming writer. Tensors are appended in order; each shard's data is spooled to a temp file beside
// the output, and on close the shard is written as header + data to a temp name and renamed. finish()
// names shards as Hugging Face does (model.safetensors, or model-0000i-of-0000N.safetensors plus
// model.safetensors.index.json). Memory use: one tensor at a time, whatever the model size.
class SafetensorsWriter {
 public:
  SafetensorsWriter(fs::path dir, uint64_t max_shard_bytes = uint64_t(4) << 30, std::string base = "model",
                    nlohmann::json metadata = {{"format", "pt"}});
  ~SafetensorsWriter();  // removes temp files when finish() was not reached
  void add(const std::string& name, DType dtype, const std::vector<int64_t>& shape, const void* data,
           size_t nbytes);
  // Converts fp32 values to `dtype` (F32, F16 or BF16) while writing.
  void add_f32(const std::string& name, DType dtype, const std::vector<int64_t>& shape, const float* data);
  // Returns the names of the files written.
  std::vector<std::string> finish();

 private:
  struct Shard {
    fs::path spool;
    int fd = -1;
    uint64_t bytes = 0;
    nlohmann::ordered_json header;
    fs::path done;  // temp file holding the complete shard
    std::vector<std::string> names;
  };
  void open_shard();
  void close_shard();
  fs::path dir_;
  uint64_t max_shard_;
  std::string base_;
  nlohmann::json metadata_;
  std::vector<Shard> shards_;
  std::map<std::string, bool> seen_;
  bool finished_ = false;
};

}  // namespace moec::io
