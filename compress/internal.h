// Internals of moec compress shared by recipe.cpp, pipeline.cpp and layer_store.cpp (not a public header).
#pragma once
#include <filesystem>
#include <memory>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "compress/compress.h"
#include "io/safetensors.h"
#include "merge/apply.h"
#include "quantize/calibrate.h"
#include "quantize/checkpoint.h"

namespace moec::compress {

// The merge pipeline's options from a recipe's merge stage. Every recipe parameter maps to one
// merge::PipelineOptions field through a table in recipe.cpp (adding a merge option is one line there).
// `num_experts` <= 0: the model is not known yet (validation only: ratio= is checked, not resolved).
merge::PipelineOptions merge_options(const Stage& st, int num_experts);
// The recipe parameters of merge stages, for messages.
std::string merge_param_names();

// Per-layer commits of the quantize stage, in OUT/.work/quant:
//   layer-LLLLL.safetensors  the layer's packed tensors (<name>.codes, .scales, ... as in the checkpoint)
//   h-LLLLL.f32              calibration activations after the layer (raw little-endian fp32, rows x cols);
//                            only the newest is kept
//   layer-LLLLL.json         the manifest: tensor names, codec meta and moec.json records, the layer's report,
//                            SHA-256 of the two files. Written last (temp + rename): it is the commit.
// The final checkpoint is always assembled from these files, so a resumed run and an uninterrupted one
// write it through the same code from the same bytes.
class LayerStore {
 public:
  explicit LayerStore(std::filesystem::path dir);
  ~LayerStore();
  const std::filesystem::path& dir() const { return dir_; }

  // Restores the committed prefix (layers 0..k-1 whose manifest and files verify, with the activations
  // after layer k-1 when `h_rows` > 0), removes every other file, and returns k (0: start from scratch).
  int restore(int num_layers, int64_t h_rows, int h_cols, quantize::ResumePoint& rp);

  // The sink of quantize_experts: tensors of the layer in progress.
  void add(const std::string& name, const PackedMatrix& m, const nlohmann::ordered_json& info);
  // Commits layer l (its tensors added so far, the activations after it, its report).
  void commit(int layer, const Matrix* h, const quantize::CalibrateReport& part);

  // Adds the packed tensors of layers 0..num_layers-1 to `w` in order (each layer must be committed).
  void assemble(int num_layers, quantize::PackedCheckpointWriter& w) const;

 private:
  std::filesystem::path dir_;
  std::unique_ptr<io::SafetensorsWriter> writer_;  // the layer in progress
  nlohmann::ordered_json tensors_ = nlohmann::ordered_json::array();
};

}  // namespace moec::compress
