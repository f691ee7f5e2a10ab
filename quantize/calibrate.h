// Calibrated quantization of a model's routed experts, streamed layer by layer (GPTQ's sequential mode):
// for layer l, attention + router run on activations that already went through the quantized layers
// 0..l-1; per expert, the Hessian of its gate/up inputs comes from the tokens the router sends it, gate
// and up are quantized, the Hessian of down_proj's input is taken from the intermediate activations
// computed with the *quantized* gate/up ("true sequential"), down is quantized, and the layer's output is
// recomputed with the quantized experts to feed layer l + 1. Memory: one layer's weights and Hessians plus
// the calibration activations (tokens x hidden fp32, twice).
#pragma once
#include <cstdint>
#include <functional>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "kernels/codec.h"
#include "model/source.h"
#include "quantize/gptq.h"
#include "quantize/spec.h"

namespace moec::quantize {

enum class Method { Rtn, Gptq };

struct CalibrateOptions {
  Method method = Method::Gptq;
  QuantSpec spec;               // the single spec (when budget_bits <= 0)
  bool subbit = false;          // ternary codes stored with the subbit codec (else tern2)
  GptqOptions gptq;
  // Mixed precision: > 0 chooses per expert among `candidates` so that the layer's routed-expert storage
  // (bits per weight incl. scales, as packed) stays <= budget_bits; error = importance * proxy loss.
  double budget_bits = 0.0;
  std::vector<QuantSpec> candidates;
  // Importance per [layer][expert] (e.g. from profile statistics); empty = gate mass of the calibration pass.
  std::vector<std::vector<double>> importance;
  int seq_len = 256;
  int64_t chunk_tokens = 16384;  // rows per MoE pass (bounds the per-expert activation copies)
  bool progress = true;
};

// Default candidates for mixed precision. Without sub-bit: int4/int3/int2 (g128, asym) and ternary {min,0,max}
// per row. With sub-bit (ternary codes entropy-coded): int3/int2 and ternary codes from dense to very sparse
// (rate-aware deadzones rd0.1 .. rd0.8 and dz1), so budgets from ~0.9 to ~3 bits per weight can be met.
std::vector<QuantSpec> default_candidates(bool subbit);

struct ExpertRecord {
  int layer = 0, expert = 0;
  int64_t tokens = 0;        // calibration tokens routed to the expert
  double gate_mass = 0.0;    // sum of its routing weights / calibration tokens
  std::string spec;          // canonical spec string
  std::string codec;
  std::string path[3];       // GPTQ path per projection (gate, up, down) or "rtn"
  double bits_per_weight = 0.0;  // packed storage of the three matrices / their weights
};

struct CalibrateReport {
  std::vector<ExpertRecord> experts;
  int64_t calib_tokens = 0;
  int64_t expert_weights = 0;
  uint64_t expert_bytes = 0;  // stored bytes of all packed expert matrices
  double seconds = 0.0;
  int fallbacks = 0;          // matrices not quantized by plain GPTQ
  // Adds another part (e.g. one layer's report): experts, weights, bytes and fallbacks.
  void append(const CalibrateReport& part);
  double expert_bits_per_weight() const { return expert_weights ? 8.0 * double(expert_bytes) / double(expert_weights) : 0.0; }
};

// Resumable runs (moec compress --resume). Layers are quantized in order; after layer l is final (all its
// matrices went to the sink), `on_layer(l, h, part)` receives the calibration activations entering layer
// l + 1 (nullptr when the method needs no calibration data) and `part`, the layer's own part of the report
// (experts, expert_bytes, expert_weights, fallbacks). A later run given `ResumePoint{l + 1, h, sum of the
// layer reports}` continues exactly where that one stopped: the same h gives the same remaining layers
// (resume->h is moved from).
struct ResumePoint {
  int first_layer = 0;   // layers before it are done (their matrices are not produced again)
  Matrix h;              // activations entering first_layer [calibration tokens x hidden] (empty without data)
  CalibrateReport done;  // the report of layers 0..first_layer-1
};
using LayerDone = std::function<void(int layer, const Matrix* h, const CalibrateReport& part)>;

// Receives each packed expert matrix as soon as it is final (tensor name, matrix, record for moec.json).
using PackedSink = std::function<void(const std::string& name, const PackedMatrix& m, const nlohmann::ordered_json& info)>;

// The codec that stores codes of `spec` (int8/4/3/2, ternary -> tern2 or subbit).
Codec codec_for(const QuantSpec& spec, bool subbit);
// Throws unless the spec can be packed (group 0 or a multiple of 32).
void check_packable(const QuantSpec& spec, const std::string& what);

// Quantizes every routed expert of `src`. `tokens` are cut into windows of seq_len (a trailing partial window
// is dropped); RTN without a budget needs no calibration data (tokens may be empty).
CalibrateReport quantize_experts(const model::WeightSource& src, const std::vector<int32_t>& tokens,
                                 const CalibrateOptions& opt, const PackedSink& sink, ResumePoint* resume = nullptr,
                                 const LayerDone& on_layer = {});

}  // namespace moec::quantize
