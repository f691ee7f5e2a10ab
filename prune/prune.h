// Expert pruning: choose which routed experts each MoE layer keeps (a plan), then write the pruned
// model as an ordinary Hugging Face checkpoint (router rows sliced, experts renumbered 0..E'-1).
//
// Criteria (formulas and sources in docs/PRUNING.md) score experts from profile statistics:
//   frequency    selected[e]                          (token hits in top-k)
//   gate-mass    gate_mass[e]                         (sum of the renormalised gate weights)
//   reap         reap_sum[e] / selected[e]            (REAP: mean over routed tokens of g * ||e(x)||)
//   easyep       easyep[e]                            (EASY-EP: sum_t s_t * g * ||e(x)||)
//   ean          act_norm_sum[e] / selected[e]        (mean expert output norm over routed tokens)
//   ean-sum      act_norm_sum[e]                      (the same norm accumulated: frequency-weighted)
// and `reconstruct` picks the kept set minimising the MoE output error on calibration activations with
// routing re-run over the kept experts (exhaustive when C(E, E') is small, else greedy backward
// elimination), layer by layer, later layers seeing the already pruned earlier layers.
#pragma once
#include <cmath>
#include <filesystem>
#include <memory>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "core/matrix.h"
#include "model/router.h"
#include "model/source.h"
#include "model/spec.h"
#include "profile/stats.h"

namespace moec::prune {
namespace fs = std::filesystem;

enum class Criterion { Frequency, GateMass, Reap, EasyEp, Ean, EanSum, Reconstruct };
const char* criterion_name(Criterion c);           // "frequency", "gate-mass", ...
Criterion parse_criterion(const std::string& s);   // fails listing the valid names
std::string criterion_names();

// ------------------------------------------------------------------------------------------- scores

// Importance of each expert of one MoE layer (larger = keep). Not defined for Reconstruct.
std::vector<double> expert_scores(const profile::LayerStats& ls, Criterion c);
// One score vector per MoE layer. Each domain's layer scores are normalised to sum 1, then averaged over
// `domains` (names in the stats; empty = {"total"}), so every domain weighs the same whatever its size.
std::vector<std::vector<double>> layer_scores(const profile::ProfileStats& s, Criterion c,
                                              const std::vector<std::string>& domains);
// Fails unless the stats describe this model (config.json SHA-256, layer count, experts, top-k).
void check_stats_for_model(const profile::ProfileStats& s, const model::ModelSpec& spec, const std::string& config_sha256,
                           const std::string& stats_name);

// ------------------------------------------------------------------------------------------ selection

// Experts kept per layer: `keep` when > 0, else E - round(ratio * E) (ratio = fraction pruned).
int keep_count(int num_experts, int keep, double ratio);
// The `keep` highest-scoring experts of each layer, sorted ascending (score ties: lower index wins).
std::vector<std::vector<int>> select_uniform(const std::vector<std::vector<double>>& scores, int keep);
// A global budget of keep * layers experts: every layer first gets its `min_keep` best experts, the rest
// of the budget goes to the highest normalised scores (score / layer sum) across all layers (ties: lower
// layer, then lower expert). Gives a different count per layer, which Hugging Face configs (and so
// transformers, vLLM, llama.cpp) cannot express: such plans can be inspected but not applied.
std::vector<std::vector<int>> select_adaptive(const std::vector<std::vector<double>>& scores, int keep, int min_keep);

// ----------------------------------------------------------------------------------------------- plan

struct LayerPlan {
  int layer = 0;                   // decoder layer index
  int num_experts = 0;             // before pruning
  std::vector<int> keep;           // ascending; expert j of the pruned layer is expert keep[j] of the original
  std::vector<double> scores;      // criterion score per original expert (empty for reconstruct)
  double dropped_gate_mass = NAN;  // fraction of the layer's calibration gate mass on dropped experts (stats)
  double output_error = NAN;       // relative MoE output error on calibration tokens (when measured)
};

struct PrunePlan {
  std::string method;                 // criterion name
  std::string allocation = "uniform"; // or "adaptive"
  std::vector<std::string> domains;   // stats domains the scores come from
  std::string model_type, config_sha256;
  int num_layers = 0, num_experts = 0, top_k = 0;
  std::string stats_file, calib_file;  // as given ("" when not used)
  int64_t calib_tokens = 0;
  bool sequential = true;             // output errors measured with earlier layers already pruned
  std::vector<LayerPlan> layers;      // one per MoE layer, in layer order

  bool uniform() const;
  int kept_per_layer() const;  // fails for non-uniform plans
};

// Per-layer plan entries from the kept sets (one per MoE layer, in layer order) and, when given, the
// criterion scores and measured output errors of each MoE layer.
std::vector<LayerPlan> layer_plans(const model::ModelSpec& spec, const std::vector<std::vector<int>>& kept,
                                   const std::vector<std::vector<double>>& scores = {},
                                   const std::vector<double>& errors = {});

nlohmann::ordered_json plan_to_json(const PrunePlan& p);
// Parses and checks the structure (errors name `context` and the field).
PrunePlan plan_from_json(const nlohmann::json& j, const std::string& context);
PrunePlan read_plan(const fs::path& path);
void write_plan(const PrunePlan& p, const fs::path& path);  // atomic
// Checks a plan against a model: same config.json hash, one entry per MoE layer in order, expert ids in
// range, no duplicates, at least one expert per layer, a routing that can be pruned. `uniform_only`
// additionally requires the same count in every layer (what a checkpoint can hold).
void validate_plan(const PrunePlan& p, const model::ModelSpec& spec, const std::string& config_sha256,
                   const std::string& context, bool uniform_only);

// ----------------------------------------------------------------------------------- pruned forward

// Routing spec of a layer pruned to `kept` experts: top-k lowered only if it would exceed `kept`.
model::RoutingSpec pruned_routing(const model::RoutingSpec& r, int kept);
// Routing of tokens in a layer that only has experts `keep` (ascending): the logits of the others are
// removed and softmax / sigmoid and top-k run over the kept ones, exactly as the pruned model does.
// Expert ids in the result are original ids. `bias`: the original E-long correction bias or null.
model::Routing route_subset(const Matrix& logits, const std::vector<int>& keep, const model::RoutingSpec& r,
                            const float* bias = nullptr);

// The pruned model as a view of the original (no copies): spec with E' experts, router rows (and
// correction bias) sliced, expert j of layer l = expert keep[j]. Uniform plans only. Borrows `src`.
std::unique_ptr<model::WeightSource> pruned_view(const model::WeightSource& src, const PrunePlan& plan);
// The pruned config.json: experts key = E', top-k key lowered only if it exceeds E'.
void update_config(nlohmann::ordered_json& config, const model::ModelSpec& spec, int kept);

// ------------------------------------------------------------------------------------ calibration

struct CalibOptions {
  int keep = 0;                    // E' per layer
  int window = 256;                // calibration tokens are cut into windows that start at position 0
  int64_t max_tokens = 16384;      // use the first N tokens (memory: N x H x E floats for expert outputs)
  bool sequential = true;          // later layers see earlier layers pruned (else the original model)
  int64_t exhaustive_limit = 5000; // exhaustive search when C(E, E') <= this, else greedy elimination
  bool progress = true;
};

struct CalibResult {
  std::vector<std::vector<int>> keep;  // per MoE layer
  std::vector<double> error;           // relative output error per MoE layer
  std::vector<std::string> search;     // "exhaustive over N subsets" / "greedy backward elimination" / "fixed"
};

// Relative MoE output error of a kept set on one layer's calibration data: sum_t ||y_S(t) - y(t)||^2 /
// sum_t ||y(t)||^2, y = routed output of the full layer, y_S with routing re-run over S.
// `outputs[e]` = expert e's output on every token (n x H).
double subset_error(const Matrix& logits, const std::vector<Matrix>& outputs, const std::vector<int>& keep,
                    const model::RoutingSpec& r, const Matrix& reference, const float* bias = nullptr);
// Reconstruction selection: per MoE layer, the kept set of size opt.keep with the least subset_error.
CalibResult reconstruct(const model::WeightSource& src, const std::vector<int32_t>& tokens, const CalibOptions& opt);
// The output error of given kept sets (one per MoE layer), measured the same way (predicted error).
CalibResult measure_error(const model::WeightSource& src, const std::vector<int32_t>& tokens,
                          const std::vector<std::vector<int>>& keep, const CalibOptions& opt);

// -------------------------------------------------------------------------------------------- apply

struct ApplyOptions {
  uint64_t max_shard_bytes = uint64_t(4) << 30;
  bool force = false;
};
// Writes the pruned checkpoint (model/checkpoint_writer.h): tensors in their stored dtype, router rows
// and correction biases sliced, kept experts renumbered, config updated, plan recorded in moec.json.
void apply_plan(const PrunePlan& plan, const fs::path& model_dir, const fs::path& out, const ApplyOptions& opt);

}  // namespace moec::prune
