// Where the forward pass gets its weights: a Hugging Face checkpoint directory (dense, streamed from
// the mmap tensor by tensor) or a compressed moec checkpoint. Stages that change weights wrap a
// source in an OverlaySource instead of copying the model.
#pragma once
#include <filesystem>
#include <functional>
#include <map>
#include <memory>
#include <string>

#include "io/safetensors.h"
#include "model/linear.h"
#include "model/spec.h"
#include "quantize/qmatrix.h"

namespace moec::model {

class WeightSource {
 public:
  virtual ~WeightSource() = default;
  virtual const ModelSpec& spec() const = 0;
  virtual bool has(const std::string& name) const = 0;
  // A tensor as dense fp32: matrices [out, in], vectors as 1 x n.
  virtual Matrix matrix(const std::string& name) const = 0;
  // A weight for the forward pass (dense or packed).
  virtual std::shared_ptr<const Linear> linear(const std::string& name) const {
    return std::make_shared<DenseLinear>(matrix(name));
  }
  // Drops whatever memory the tensor's data holds once the caller is done with it (streaming).
  virtual void release(const std::string& name) const {}
  // The quantization codes of a weight stored in quantized form (nullptr for dense weights), so that
  // exporters can carry codes over instead of re-quantizing dequantized values.
  virtual std::shared_ptr<const QuantizedMatrix> codes(const std::string& name) const { return nullptr; }
  virtual std::filesystem::path path() const = 0;
  virtual uint64_t bytes_on_disk() const = 0;

  Vector vector(const std::string& name) const;
};

// A Hugging Face checkpoint (config.json + safetensors). The constructor checks that every tensor the
// config implies is present with the right shape, so a bad checkpoint fails before any compute.
class CheckpointSource final : public WeightSource {
 public:
  explicit CheckpointSource(const std::filesystem::path& dir);
  const ModelSpec& spec() const override { return spec_; }
  bool has(const std::string& name) const override { return store_.has(name); }
  Matrix matrix(const std::string& name) const override;
  void release(const std::string& name) const override { store_.release(name); }
  std::filesystem::path path() const override { return dir_; }
  uint64_t bytes_on_disk() const override { return store_.bytes_on_disk(); }
  const io::TensorStore& store() const { return store_; }

 private:
  std::filesystem::path dir_;
  ModelSpec spec_;
  io::TensorStore store_;
};

// A source with some tensors replaced (e.g. experts already compressed); everything else passes through.
class OverlaySource final : public WeightSource {
 public:
  explicit OverlaySource(const WeightSource& base) : base_(base) {}
  void set(const std::string& name, std::shared_ptr<const Linear> w) { linears_[name] = std::move(w); }
  void set_matrix(const std::string& name, Matrix m) { matrices_[name] = std::move(m); }
  const ModelSpec& spec() const override { return spec_override_ ? *spec_override_ : base_.spec(); }
  void set_spec(const ModelSpec& s) { spec_override_ = std::make_shared<ModelSpec>(s); }
  bool has(const std::string& name) const override;
  Matrix matrix(const std::string& name) const override;
  std::shared_ptr<const Linear> linear(const std::string& name) const override;
  void release(const std::string& name) const override { base_.release(name); }
  std::shared_ptr<const QuantizedMatrix> codes(const std::string& name) const override {
    return linears_.count(name) || matrices_.count(name) ? nullptr : base_.codes(name);
  }
  std::filesystem::path path() const override { return base_.path(); }
  uint64_t bytes_on_disk() const override { return base_.bytes_on_disk(); }

 private:
  const WeightSource& base_;
  std::shared_ptr<ModelSpec> spec_override_;
  std::map<std::string, std::shared_ptr<const Linear>> linears_;
  std::map<std::string, Matrix> matrices_;
};

// Every tensor name the spec implies, with its expected shape (used for validation and parameter counts).
struct ExpectedTensor {
  std::string name;
  std::vector<int64_t> shape;
  enum class Role { Embedding, Attention, Norm, Router, RoutedExpert, SharedExpert, DenseMlp, LmHead } role;
};
std::vector<ExpectedTensor> expected_tensors(const ModelSpec& spec);
const char* role_name(ExpectedTensor::Role r);

// Opens a model directory: a Hugging Face checkpoint, or a compressed moec checkpoint when an opener
// registered for it recognises the directory (moec.json).
using ModelOpener = std::function<std::unique_ptr<WeightSource>(const std::filesystem::path&)>;
void register_model_opener(ModelOpener opener);
std::unique_ptr<WeightSource> open_model(const std::filesystem::path& dir);

}  // namespace moec::model
