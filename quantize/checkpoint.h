// Packed moec checkpoints: a Hugging Face directory (config.json + safetensors) in which some weight
// matrices are stored as packed codec tensors (`<name>.codes`, `<name>.scales`, ...) and described by
// moec.json. Byte-exact specification: docs/FORMAT.md (block layouts: docs/CODECS.md).
//
//   PackedLinear            model::Linear over a PackedView (fused decode + multiply)
//   PackedCheckpointWriter  streams dense and packed tensors into such a directory
//   PackedSource            model::WeightSource over such a directory (mmap, no copies)
//   register_packed_format  lets model::open_model (and so `moec eval`) open packed checkpoints
#pragma once
#include <atomic>
#include <filesystem>
#include <map>
#include <memory>
#include <mutex>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "io/safetensors.h"
#include "kernels/codec.h"
#include "model/source.h"

namespace moec::quantize {
namespace fs = std::filesystem;

inline constexpr const char* kPackedFormatName = "moec-packed";
inline constexpr int kPackedFormatVersion = 1;
inline constexpr const char* kPackedMetaFile = "moec.json";

// y = x W^T for a packed W. Up to kMatmulRows tokens: the fused decode-multiply kernel (kernels/gemv.h);
// more tokens: W is dequantized kRowBlock output rows at a time into a small scratch and multiplied with
// BLAS (the kernel decodes each block once per call, but BLAS is much faster per flop on large batches).
class PackedLinear final : public model::Linear {
 public:
  static constexpr int kMatmulRows = 16;
  // `keep` holds whatever memory the view points into (an owning PackedMatrix, or the mmap).
  PackedLinear(PackedView v, std::shared_ptr<const void> keep) : v_(v), keep_(std::move(keep)) {}
  static std::shared_ptr<PackedLinear> owning(PackedMatrix m);
  int out_features() const override { return v_.rows; }
  int in_features() const override { return v_.cols; }
  void forward(const Matrix& X, Matrix& Y) const override;
  Matrix dense() const override;
  const PackedView& view() const { return v_; }

 private:
  PackedView v_;
  std::shared_ptr<const void> keep_;
};

// Rows [r0, r0 + n) of a packed matrix as a view of their own (no copy).
PackedView row_slice(const PackedView& v, int r0, int n);

// SHA-256 (hex) of a raw tensor's bytes, as moec.json records them.
std::string tensor_sha256(const uint8_t* data, size_t n);

// Writes a packed checkpoint. Tensors may be added in any order (each is streamed to disk as it comes);
// finish() writes moec.json last (atomically), so a directory without moec.json is not a checkpoint.
class PackedCheckpointWriter {
 public:
  // `source_dir` provides config.json (copied byte for byte) and the provenance recorded in moec.json.
  PackedCheckpointWriter(const fs::path& out_dir, const fs::path& source_dir, nlohmann::ordered_json recipe,
                         uint64_t max_shard_bytes = uint64_t(4) << 30);
  // A dense tensor, stored as given (dtype and bytes unchanged).
  void add_dense(const std::string& name, io::DType dtype, const std::vector<int64_t>& shape, const void* data, size_t nbytes);
  // A packed matrix; `info` (method, spec, path, tokens, loss, ...) is recorded in moec.json beside the codec meta.
  void add_packed(const std::string& name, const PackedMatrix& m, nlohmann::ordered_json info = {});
  // A dense model tensor from fp32 values, stored as `dtype` (F32, F16 or BF16).
  void add_matrix(const std::string& name, io::DType dtype, const Matrix& m);
  // A factor of low-rank matrices, stored under `factor_name` (a name that is not a model tensor) as `dtype`.
  // One factor may serve several matrices (e.g. the shared U of a merged cluster).
  void add_factor(const std::string& factor_name, io::DType dtype, const Matrix& m);
  // Model tensor `name` stored as left [rows x r] * right [r x cols], both added before with add_factor
  // (docs/FORMAT.md, "Low-rank tensors").
  void add_lowrank(const std::string& name, const std::string& left, const std::string& right,
                   nlohmann::ordered_json info = {});
  // Copies every tensor of `src` not added yet in its stored form (CheckpointSource: raw bytes; otherwise
  // fp32 -> BF16), in model::expected_tensors order.
  void add_remaining(const model::WeightSource& src);
  // Replaces config.json (e.g. a pruned model's config: fewer experts); provenance keeps the source's hash.
  void replace_config(const std::string& config_json);
  // Replaces the recipe recorded in moec.json (e.g. when it is only known at the end).
  void set_recipe(nlohmann::ordered_json recipe) { meta_["recipe"] = std::move(recipe); }
  void finish();
  bool added(const std::string& name) const { return added_.count(name) > 0; }

 ~PackedCheckpointWriter();
  PackedCheckpointWriter(const PackedCheckpointWriter&) = delete;
  PackedCheckpointWriter& operator=(const PackedCheckpointWriter&) = delete;

 private:
  fs::path out_;
  bool created_ = false;   // out_ did not exist: a writer destroyed before finish() removes it again
  bool finished_ = false;
  io::SafetensorsWriter writer_;
  nlohmann::ordered_json meta_;
  std::map<std::string, bool> added_;
  struct Factor {
    int64_t rows = 0, cols = 0;
    std::string sha;
  };
  std::map<std::string, Factor> factors_;
};

// A packed checkpoint as a weight source. Opening validates moec.json (format name and version), every
// tensor the config implies (present, dense or packed, with the expected shape), and every packed tensor's
// codec meta and raw tensor shapes. Checksums are verified lazily, once per packed matrix, on first use
// (verify_all() checks everything now).
class PackedSource final : public model::WeightSource {
 public:
  explicit PackedSource(const fs::path& dir);
  const model::ModelSpec& spec() const override { return spec_; }
  bool has(const std::string& name) const override { return packed_.count(name) || lowrank_.count(name) || store_->has(name); }
  Matrix matrix(const std::string& name) const override;
  std::shared_ptr<const model::Linear> linear(const std::string& name) const override;
  void release(const std::string& name) const override;
  std::shared_ptr<const QuantizedMatrix> codes(const std::string& name) const override;
  fs::path path() const override { return dir_; }
  uint64_t bytes_on_disk() const override { return store_->bytes_on_disk(); }

  bool is_packed(const std::string& name) const { return packed_.count(name) > 0; }
  // Stored as left * right factors (docs/FORMAT.md, "Low-rank tensors").
  bool is_lowrank(const std::string& name) const { return lowrank_.count(name) > 0; }
  int lowrank_rank(const std::string& name) const;
  // Bytes of a low-rank tensor: its right factor plus its share of the left factor (split evenly over the
  // tensors that use it, the remainder to the first), so that summing over all tensors counts each factor once.
  uint64_t lowrank_bytes(const std::string& name) const;
  // The view of a packed tensor (checksum verified).
  const PackedView& packed(const std::string& name) const;
  // Its stored bytes (codes, scales, ...), from the codec meta alone: touches none of the tensor's data.
  uint64_t stored_bytes(const std::string& name) const;
  const io::TensorStore& store() const { return *store_; }
  const nlohmann::json& meta() const { return meta_; }
  void verify_all() const;

 private:
  struct Entry {
    PackedView view;
    std::shared_ptr<std::vector<uint32_t>> row_offsets;  // subbit: rebuilt from the stored row lengths
    std::vector<std::string> suffixes;
    std::map<std::string, std::string> sha;  // suffix -> hex
    mutable std::atomic<bool> verified{false};
  };
  void verify(const std::string& name, const Entry& e) const;
  fs::path dir_;
  model::ModelSpec spec_;
  std::shared_ptr<const io::TensorStore> store_;  // PackedLinears share it: the mmap outlives them
  nlohmann::json meta_;
  std::map<std::string, std::unique_ptr<Entry>> packed_;
  struct LowRank {
    std::string left, right;
    int rank = 0;
    std::map<std::string, std::string> sha;  // "left"/"right" -> hex
    uint64_t bytes = 0;
    mutable std::atomic<bool> verified{false};
  };
  void verify_lowrank(const std::string& name, const LowRank& e) const;
  const LowRank& lowrank_entry(const std::string& name) const;  // fails naming the tensor when it is not low-rank
  std::map<std::string, std::unique_ptr<LowRank>> lowrank_;
  mutable std::mutex verify_mu_;
};

// True when `dir` holds a moec.json naming the packed format.
bool is_packed_checkpoint(const fs::path& dir);
// Registers the opener with model::open_model (idempotent). Call before open_model (cli/main.cpp, tests).
void register_packed_format();

}  // namespace moec::quantize
