// Expert merging on a whole checkpoint: plan (clusters per layer from profile statistics) then apply
// (merge each cluster into one expert, one router row per cluster) and write a Hugging Face checkpoint
// with fewer dense experts. The math lives in merge/merge.h; this is the pipeline around it.
//
// Streaming: one decoder layer at a time. When calibration tokens are given, the layer's MoE input is
// computed by the forward pass of the ORIGINAL model (earlier layers unmerged), the statistics the
// method needs are collected from it, the layer is merged, and its merged experts go to the writer
// before the next layer runs. Peak memory: one layer's experts + calibration activations.
#pragma once
#include <cstdint>
#include <filesystem>
#include <functional>
#include <optional>
#include <nlohmann/json.hpp>
#include <vector>

#include "merge/merge.h"
#include "model/source.h"
#include "profile/stats.h"

namespace moec::merge {

enum class ClusterAlgo { KMeans /* Sub-MoE: k-means++ on normalized mean outputs */,
                         Hierarchical /* HC-SMoE: average linkage on output similarity */,
                         Dominant /* M-SMoE grouping: the K most frequent experts lead; every other expert
                                     joins the leader whose outputs it is most similar to */ };
const char* to_string(ClusterAlgo c);
ClusterAlgo cluster_algo_from_string(const std::string& s);  // "kmeans" | "hc" | "dominant"

// What the merged model is written as (docs/MERGING.md §9).
enum class OutputForm {
  Dense,       // K dense experts per layer: a Hugging Face checkpoint that loads anywhere
  Factored,    // K experts, each projection stored as its cluster's U·Σ [out x r] times the merged V [r x in]
  SharedBasis  // all E experts kept (router unchanged), expert e = U_c·Σ_c · V_e with U_c shared by its cluster
};
const char* to_string(OutputForm f);
OutputForm output_form_from_string(const std::string& s);  // "dense" | "factored" | "shared-basis"

struct PipelineOptions {
  MergeMethod method = MergeMethod::Subspace;
  OutputForm form = OutputForm::Dense;  // Factored / SharedBasis need MergeMethod::Subspace
  int keep = 0;                       // experts (clusters) per layer after merging, 1..E
  ClusterAlgo cluster = ClusterAlgo::Dominant;
  SubspaceOptions subspace;           // rank / energy (Subspace only)
  bool align = false;                 // Subspace: align neurons to the dominant member first
  bool dominant_gate_up = false;      // Subspace: keep the dominant member's gate/up (only down merged)
  double weight_power = 1.0;          // merge weights = frequency^power (1: Sub-MoE / M-SMoE; larger: towards the dominant)
  RouterMerge router = RouterMerge::Dominant;
  bool whiten = false;                // Subspace: activation-aware whitening (needs calibration tokens)
  uint64_t seed = 0;                  // k-means seed
  int window = 256;                   // calibration sequence length
  int64_t calib_tokens = 32768;       // first N calibration tokens used
  int align_tokens = 2048;            // shared tokens for activation-based neuron alignment (M-SMoE)
  int sample_tokens = 512;            // tokens sampled for output similarity when computing stats here
  // Calibration refit after merging (needs calibration tokens; docs/MERGING.md §8).
  bool refit_router = false;          // router rows fitted to the clusters' log-sum-exp logits
  bool refit_down = false;            // down projections fitted (jointly) to the original routed output
  double router_damp = 1e-3;          // router ridge λ relative to mean(diag XᵀX)
  ClusterLogit router_target = ClusterLogit::Max;  // what the refit router rows reproduce
  RefitOptions refit;                 // down projection solve
  bool sequential = false;            // refit on inputs of the model with earlier layers already merged
  bool residual_target = false;       // sequential: target the original residual stream (corrects earlier layers' error)
  bool progress = true;
};

// Planning signals of one MoE layer: what profile::LayerStats provides.
struct LayerSignals {
  std::vector<double> frequency;  // E: selection counts (weights of the frequency-weighted merges, dominants)
  Matrix output_mean;             // E x H: mean output per expert on sampled tokens (k-means features)
  MatrixD output_similarity;      // E x E: mean cosine of expert outputs (agglomerative similarity)
};

// Signals from a stats file's "total" domain (after check_stats_match).
std::vector<LayerSignals> signals_from_profile(const profile::ProfileStats& stats, const model::ModelSpec& spec);

// The clusters of one layer (keep clusters) with dominants by frequency, as a plan layer.
LayerPlan plan_layer(const LayerSignals& sig, const PipelineOptions& opt);

// One merged MoE layer: K experts (cluster order of the plan) and the merged router [K x H].
// With OutputForm::Factored / SharedBasis, every expert projection that has factors is also given as
// left factor (an index into `lefts`, shared by the cluster's experts) times its own right factor; `experts`
// then holds the products (what the factored model computes). left < 0: the projection is stored dense
// (e.g. gate/up with --dominant-gate-up).
struct FactoredProj {
  int left = -1;
  Matrix right;  // [r x in]
};

struct MergedLayer {
  std::vector<Expert> experts;
  Matrix router;
  std::vector<Matrix> lefts;                         // [out x r] shared left factors (U·Σ)
  std::vector<std::array<FactoredProj, 3>> factors;  // per expert (gate, up, down); empty for OutputForm::Dense
};

// Runs the pipeline. Exactly one of `signals` (plan from statistics) and `plan` (given) is used; with
// neither, and calibration tokens present, the signals are computed from the calibration pass
// (TEMPORARY stand-in for profile::read_stats_h5 until the profile stage lands). `calib` may be empty
// unless whitening / activation alignment / stats collection needs it. `sink(l, layer)` receives each
// merged layer in order. Returns the plan actually applied, ranks and energies filled in.
MergePlan merge_model(const model::WeightSource& src, const PipelineOptions& opt,
                      const std::vector<LayerSignals>* signals, const MergePlan* plan,
                      const std::vector<int32_t>& calib,
                      const std::function<void(int, MergedLayer&&)>& sink);

// Only the plan (clusters, dominants; ranks/energies left at 0/1): no weights are merged.
MergePlan plan_model(const model::WeightSource& src, const PipelineOptions& opt,
                     const std::vector<LayerSignals>* signals, const std::vector<int32_t>& calib);

// Writes a Hugging Face checkpoint through the shared model::CheckpointWriter: every tensor of the
// source except routed experts and routers, plus the merged ones (renumbered 0..K-1, in the source
// experts' dtype), config.json with the expert count set to K, the plan in moec.json ("plan").
class MergedCheckpointWriter {
 public:
  MergedCheckpointWriter(const model::CheckpointSource& src, std::filesystem::path out_dir, bool force);
  ~MergedCheckpointWriter();
  void add_layer(int layer, const MergedLayer& m);
  void finish(int keep, const MergePlan& plan);

 private:
  const model::CheckpointSource& src_;
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

// Writes a factored merge (OutputForm::Factored / SharedBasis) as a packed moec checkpoint (docs/FORMAT.md,
// "Low-rank tensors"): each factored expert projection is a low-rank tensor whose left factor is shared by
// the experts of its cluster; everything else dense in the source's dtype; config.json with the layer's
// expert count; the plan and options in moec.json's recipe. `moec eval` runs it directly (two GEMMs per
// projection, the product is never formed); `moec export --format hf-dense` expands it.
class FactoredCheckpointWriter {
 public:
  FactoredCheckpointWriter(const model::CheckpointSource& src, std::filesystem::path out_dir, bool force);
  ~FactoredCheckpointWriter();
  void add_layer(int layer, const MergedLayer& m);
  void finish(int experts_per_layer, const MergePlan& plan, const nlohmann::ordered_json& options);

 private:
  const model::CheckpointSource& src_;
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

}  // namespace moec::merge
