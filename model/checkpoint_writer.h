// Writing a Hugging Face checkpoint directory derived from another one (pruned or merged experts):
// the output is a complete, ordinary HF directory (config.json + safetensors + the input's other files)
// plus a moec.json provenance record, so transformers / llama.cpp converters load it unchanged.
//
//   CheckpointWriter w(input_dir, out_dir, {.force = false});
//   w.config()["num_local_experts"] = 6;              // edit config keys
//   w.copy("model.norm.weight");                      // tensors: raw bytes in their stored dtype,
//   w.add_f32(name, io::DType::BF16, shape, data);    // or fp32 values converted while streaming
//   w.set_provenance({{"method", "prune"}, {"plan", plan_json}});
//   w.finish();                                       // temp dir beside OUT, renamed into place
//
// Safety: the output may not be (or be inside, or contain) the input, and an existing output is only
// replaced with `force` (core/files.h check_output_dir); nothing in the input directory is written.
// Everything goes into a temp directory beside OUT that is renamed at finish(); a writer destroyed
// before finish() removes it. Output is deterministic: no timestamps, files and keys in a fixed order.
#pragma once
#include <cstdint>
#include <filesystem>
#include <memory>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "core/matrix.h"
#include "io/safetensors.h"

namespace moec::model {
namespace fs = std::filesystem;

inline constexpr const char* kDerivedFormatName = "moec-hf";  // moec.json "format" of these directories

struct CheckpointWriterOptions {
  uint64_t max_shard_bytes = uint64_t(4) << 30;  // safetensors shard size limit
  bool force = false;                            // replace an existing output directory
};

class CheckpointWriter {
 public:
  CheckpointWriter(const fs::path& input_dir, const fs::path& out_dir, CheckpointWriterOptions opt = {});
  ~CheckpointWriter();
  CheckpointWriter(const CheckpointWriter&) = delete;
  CheckpointWriter& operator=(const CheckpointWriter&) = delete;

  const io::TensorStore& input() const { return store_; }
  // The output's config.json: starts as the input's (key order kept); edit before finish().
  nlohmann::ordered_json& config() { return config_; }

  // An input tensor copied byte for byte (stored dtype), under its own name or `output_name`.
  void copy(const std::string& input_name, const std::string& output_name = "");
  // Rows `rows` (in that order) of an input tensor along its first dimension, bytes unchanged
  // (router rows, per-expert bias vectors).
  void copy_rows(const std::string& input_name, const std::vector<int>& rows, const std::string& output_name = "");
  void add(const std::string& name, io::DType dtype, const std::vector<int64_t>& shape, const void* data, size_t nbytes);
  // fp32 values converted to `dtype` (F32, F16, BF16) while writing.
  void add_f32(const std::string& name, io::DType dtype, const std::vector<int64_t>& shape, const float* data);
  void add_matrix(const std::string& name, io::DType dtype, const Matrix& m);  // shape [rows, cols]
  bool added(const std::string& name) const;

  // Fields merged into moec.json beside the fixed ones (format, moec_version, source).
  void set_provenance(const nlohmann::ordered_json& fields);
  // Shards written, other files copied, config.json and moec.json written, temp dir renamed to OUT.
  void finish();

  // The files copied as they are: everything in the input directory except weights (safetensors and
  // their index, *.bin/*.pt/*.pth/*.ckpt/*.gguf/*.h5/*.msgpack), config.json and moec.json.
  static bool is_copied_file(const fs::path& name);

 private:
  fs::path input_, out_, tmp_;
  CheckpointWriterOptions opt_;
  io::TensorStore store_;
  nlohmann::ordered_json config_, provenance_;
  std::unique_ptr<io::SafetensorsWriter> writer_;
  std::vector<std::string> names_;
  bool finished_ = false;
};

// moec.json "source" record: path as given, SHA-256 of config.json and of every safetensors file.
nlohmann::ordered_json source_record(const fs::path& input_dir);

}  // namespace moec::model
