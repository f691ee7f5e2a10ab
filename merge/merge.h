// Expert merging: cluster the experts of an MoE layer and fuse each cluster into one expert.
//
// Pure functions on moec::Matrix (row-major fp32, Hugging Face layout W[out, in]); no checkpoint I/O.
// Methods (formulas, defaults and trade-offs in docs/MERGING.md):
//   - clustering: k-means++ (Sub-MoE), agglomerative average linkage on a similarity matrix (HC-SMoE),
//     adaptive per-layer cluster counts;
//   - Subspace (Sub-MoE): joint SVD of the members' concatenated weights, shared U·Σ, frequency-weighted V;
//     optional activation-aware whitening;
//   - Average / FrequencyAverage baselines, MSmoe (M-SMoE): align intermediate neurons to the dominant
//     member by linear assignment, then frequency-weighted average;
//   - router rows of merged experts; a merge plan that round-trips through JSON;
//   - calibration refit: ridge least squares of a merged layer's down projections (jointly over its
//     clusters) and router rows against the original layer's outputs on calibration tokens.
// Everything is deterministic: the same inputs (and seed) give byte-identical outputs.
#pragma once
#include <array>
#include <cstdint>
#include <span>
#include <string>
#include <vector>

#include <nlohmann/json_fwd.hpp>

#include "core/matrix.h"
#include "model/router.h"

namespace moec::merge {

// One SwiGLU expert as stored by Hugging Face: out = down · (silu(gate · x) ⊙ (up · x)).
struct Expert {
  Matrix gate;  // [I x H]
  Matrix up;    // [I x H]
  Matrix down;  // [H x I]
};

// A clustering of one layer's experts: each cluster lists expert ids in increasing order, and clusters
// are ordered by their smallest member (a canonical form, so equal clusterings compare equal).
using Clusters = std::vector<std::vector<int>>;

// ---------------------------------------------------------------------------------------------- clustering

// k-means (Lloyd) with k-means++ seeding on the rows of `points` [E x d], squared Euclidean distance.
// Deterministic given `seed` (own RNG, not std:: distributions); distance ties go to the lower index.
// `restarts` independent seedings are run and the lowest inertia wins (ties: the earliest run).
// Every cluster is non-empty. For cosine similarity (Sub-MoE) pass L2-normalized rows.
Clusters kmeans(const Matrix& points, int k, uint64_t seed, int restarts = 4, int max_iter = 100);

enum class Linkage { Average, Single, Complete };

// Agglomerative clustering on a symmetric similarity matrix [E x E] (larger = more alike) down to k
// clusters. Average linkage (HC-SMoE) = mean pairwise similarity between two clusters. Ties merge the
// pair with the lowest (smaller-min-member, larger-min-member) ids.
Clusters agglomerative(const Matrix& similarity, int k, Linkage linkage = Linkage::Average);

// Cosine similarity between rows of `features` [E x d] (e.g. mean expert outputs on calibration tokens),
// computed in double; a zero row has similarity 0 to everything but 1 to itself.
Matrix cosine_similarity(const Matrix& features);

// Per cluster, the member with the highest frequency (ties: lowest id). `frequency` is indexed by expert id.
std::vector<int> dominant_members(const Clusters& clusters, std::span<const double> frequency);

// Adaptive allocation of cluster counts over layers. `scores[l] >= 0` says how much layer l needs to keep
// (e.g. 1 - mean pairwise output similarity of its experts: diverse layers keep more). The total budget
// round(keep_ratio * L * E) is split proportionally to the scores, each layer clamped to [min_clusters, E]
// with the excess redistributed among the unclamped layers, then rounded by largest remainder (ties: lower
// layer). All-zero scores give a uniform split. The result sums exactly to the (clamped) budget.
std::vector<int> allocate_clusters(std::span<const double> scores, int num_experts, double keep_ratio,
                                   int min_clusters = 1);

// --------------------------------------------------------------------------------------- linear assignment

// Minimum-cost assignment of each row to a distinct column of `cost` [n x m], n <= m (shortest augmenting
// path with potentials, Jonker-Volgenant style, O(n^2 m) worst case, in double). Returns col[row].
std::vector<int> linear_assignment(const MatrixD& cost);
// Same, maximizing the total.
std::vector<int> linear_assignment_max(const MatrixD& score);

// ------------------------------------------------------------------------------------------ subspace merge

enum class SvdMethod { Exact, Randomized };

struct SubspaceOptions {
  int rank = 0;              // > 0: keep this rank (clamped to the full rank); 0: use `energy`
  double energy = 1.0;       // keep the smallest rank whose sum of σ² reaches this fraction (1 = full rank)
  SvdMethod svd = SvdMethod::Exact;  // Randomized requires rank > 0
  int oversample = 16;       // randomized SVD: extra sketch columns
  int power_iters = 2;       // randomized SVD: subspace iterations
  uint64_t seed = 0;         // randomized SVD: sketch seed
  bool double_precision = false;  // SVD in double (dgesdd) instead of float (sgesdd)
  double whiten_damp = 0.01;  // whitening: C + damp * mean(diag C) * I before the Cholesky factor
};

struct SubspaceResult {
  Matrix merged;                  // [out x in] = us · v_merged
  Matrix us;                      // [out x r] shared U·Σ
  Matrix v_merged;                // [r x in] frequency-weighted mean of the members' V blocks (un-whitened)
  std::vector<Matrix> v_members;  // [r x in] per member: member i ≈ us · v_members[i]
  int rank = 0;
  double energy_kept = 1.0;       // Σ_{j<r} σ_j² / Σ_j σ_j² (in the whitened space when whitening)
};

// Joint SVD of members W_i [out x in] concatenated along the input dimension, [W_1 S_1 | ... | W_k S_k] =
// U Σ [V_1ᵀ | ... | V_kᵀ], truncated to rank r; merged = U Σ · Σ_i w_i V_iᵀ S_i⁻¹ with w = weights / sum
// (uniform if the weights sum to 0). S_i = chol(C_i + damp I) (lower) when `input_corr` is given: none
// (S = I), one matrix [in x in] pooled for all members, or one per member (C = XᵀX / n of the member's
// inputs). Members must all have the same shape.
SubspaceResult subspace_merge(const std::vector<const Matrix*>& members, std::span<const double> weights,
                              const SubspaceOptions& opt = {},
                              const std::vector<const Matrix*>& input_corr = {});

// Thin SVD A = U diag(s) Vᵀ of the top `rank` triplets (rank <= 0: all min(m, n)). Exposed for tests/bench.
struct Svd {
  MatrixD u;         // [m x r]
  std::vector<double> s;
  MatrixD vt;        // [r x n]
  double total_energy = 0;  // Σ of all σ² (exact) or ||A||_F² (randomized): denominator of energy fractions
};
Svd svd_thin(const Matrix& a, int rank, const SubspaceOptions& opt);

// ------------------------------------------------------------------------------------- averaging baselines

// Normalized non-negative weights (uniform if they sum to 0). Fails on negative or non-finite entries.
std::vector<double> normalize_weights(std::span<const double> weights, size_t count, const char* what);

// Σ_i w_i W_i with normalized weights.
Matrix weighted_average(const std::vector<const Matrix*>& members, std::span<const double> weights);

// Neuron alignment (M-SMoE): perm such that neuron j of the reference matches neuron perm[j] of `member`,
// maximizing Σ_j <f_ref(j), f_member(perm[j])>. Features per neuron: with activations (both [n x I] on the
// same calibration tokens) the centred, unit-norm activation column (Pearson correlation); otherwise the
// weights [gate row | up row | down column] (3H values).
std::vector<int> align_neurons(const Expert& reference, const Expert& member,
                               const Matrix* reference_act = nullptr, const Matrix* member_act = nullptr);

// Reorders intermediate neurons: gate/up row j and down column j of the result come from neuron perm[j].
// The expert computes the same function.
Expert permute_neurons(const Expert& e, std::span<const int> perm);

// --------------------------------------------------------------------------------- whole-expert merging

enum class MergeMethod { Average, FrequencyAverage, MSmoe, Subspace };

struct MergeOptions {
  MergeMethod method = MergeMethod::Subspace;
  SubspaceOptions subspace;     // for gate, up and down alike
  bool align_for_subspace = false;  // Subspace: align neurons to the dominant member first (as MSmoe does)
  bool dominant_gate_up = false;    // Subspace: keep the dominant member's gate/up unchanged (only down is merged)
};

// Optional calibration statistics of one member (any pointer may be null).
struct ExpertStats {
  const Matrix* hidden_corr = nullptr;  // [H x H] XᵀX / n of the tokens routed to the member (gate/up)
  const Matrix* inter_corr = nullptr;   // [I x I] the same of its intermediate activations (down)
  const Matrix* activations = nullptr;  // [n x I] intermediate activations on shared tokens (alignment)
};

struct MergedExpert {
  Expert weights;
  std::array<int, 3> rank{0, 0, 0};            // gate, up, down (0 for non-subspace methods)
  std::array<double, 3> energy{1.0, 1.0, 1.0};
  std::array<SubspaceResult, 3> factors;       // Subspace only: gate, up, down factored forms
};

// Merges the members of one cluster. `frequency` per member (routing frequency or mass), `dominant` =
// position of the dominant member in `members`, `stats` empty or one per member.
MergedExpert merge_cluster(const std::vector<const Expert*>& members, std::span<const double> frequency,
                           int dominant, const MergeOptions& opt = {},
                           std::span<const ExpertStats> stats = {});

// ------------------------------------------------------------------------------------ calibration refit
//
// After the weights of a layer are merged, the merged layer can be fitted to what the ORIGINAL layer
// produced on calibration tokens (docs/MERGING.md §8). Both refits are closed-form ridge least squares in
// double, regularized towards the merged weights (so directions the calibration data never excites keep
// their merged values).

// Ridge least squares with a prior: the B [m x d] minimizing Σ_t ||y_t − B z_t||² + λ ||B − B0||_F²,
// given the sums zz = Σ_t z_t z_tᵀ [d x d] and yz = Σ_t y_t z_tᵀ [m x d]:
//   B = (yz + λ B0) (zz + λ I)⁻¹,   λ = damp · mean(diag zz)
// (λ = damp when diag zz is all zero). B0 empty = zero prior. Cholesky in double; fails when zz + λI is
// not positive definite (damp = 0 on rank-deficient data).
MatrixD ridge_solve(const MatrixD& zz, const MatrixD& yz, double damp, const MatrixD& prior = {});

// Intermediate activations silu(gate · x) ⊙ (up · x) of an expert on rows x [n x H]: [n x I].
Matrix expert_activations(const Expert& e, const Matrix& x);

// The routed part of an MoE layer: y_t = Σ_j w_tj · E_{e_tj}(x_t) for the routing r of rows x [n x H].
Matrix routed_output(const std::vector<Expert>& experts, const model::Routing& r, const Matrix& x);

// Router logits a merged layer should reproduce, per token and cluster, from the original logits [n x E]:
//   Max:        max_{e∈c} logit_e — the top-k selection and renormalized weights of every token whose
//               chosen experts lie in distinct clusters are exactly the original ones;
//   LogSumExp:  log Σ_{e∈c} exp(logit_e) — softmax over clusters gives each cluster the summed
//               probability of its members.
// Softmax routers only.
enum class ClusterLogit { Max, LogSumExp };
Matrix cluster_logits(const Matrix& logits, const Clusters& clusters, ClusterLogit how = ClusterLogit::Max);

struct RefitOptions {
  double damp = 1e-3;        // ridge λ for the down projections, relative to mean(diag ZᵀZ)
  int64_t max_joint = 8192;  // one joint solve when K·I <= max_joint, else block coordinate descent
  int sweeps = 8;            // block coordinate descent: passes over the clusters
  int64_t chunk = 2048;      // tokens per accumulation chunk
};

// Refits merged router rows: W [K x H] minimizing ||T − X Wᵀ||² + λ ||W − W0||² (T = target logits [n x K],
// X = MoE inputs [n x H], W0 = the merged router). Returns the new router.
Matrix refit_router(const Matrix& router, const Matrix& x, const Matrix& target_logits, double damp);

struct RefitReport {
  double error_before = 0;  // Σ_t ||target_t − y_t||² / Σ_t ||target_t||² with the merged downs
  double error_after = 0;   // the same after the refit
};

// Refits the down projections of a merged layer. With the merged routing r of rows x (expert ids = indices
// of `experts`) and activations h_c = expert_activations(experts[c], x), the layer's routed output
// Σ_j w_tj D_{c_tj} h_{c_tj}(x_t) is linear in (D_1 … D_K): solve
//   min Σ_t ||target_t − Σ_j w_tj D_{c_tj} h_{c_tj}(x_t)||² + λ Σ_c ||D_c − D_c⁰||²
// (λ = damp · mean of the diagonal of the joint Gram matrix) jointly when K·I <= max_joint, else by block
// coordinate descent over clusters (each block an exact ridge solve, `sweeps` passes; converges to the
// joint solution). Gate/up are unchanged.
RefitReport refit_down(std::vector<Expert>& experts, const model::Routing& r, const Matrix& x, const Matrix& target,
                       const RefitOptions& opt = {});

// -------------------------------------------------------------------------------------------------- router

enum class RouterMerge { Dominant, FrequencyWeighted };

// Router row of a merged expert from the router weight [E x H]: the dominant member's row, or the
// frequency-weighted mean of the members' rows.
Vector merge_router_row(const Matrix& router, std::span<const int> members, std::span<const double> frequency,
                        int dominant, RouterMerge how);

// The merged router [K x H], one row per cluster (frequency indexed by expert id).
Matrix merge_router(const Matrix& router, const Clusters& clusters, std::span<const int> dominant,
                    std::span<const double> frequency, RouterMerge how);

// ---------------------------------------------------------------------------------------------------- plan

struct ClusterPlan {
  std::vector<int> members;  // sorted expert ids
  int dominant = -1;         // one of members
  std::array<int, 3> rank{0, 0, 0};  // gate, up, down (0 = not factored)
  std::array<double, 3> energy{1.0, 1.0, 1.0};
};

struct LayerPlan {
  int num_experts = 0;  // experts before merging; the clusters must partition 0..num_experts-1
  MergeMethod method = MergeMethod::Subspace;
  std::vector<ClusterPlan> clusters;
};

struct MergePlan {
  RouterMerge router = RouterMerge::Dominant;
  std::vector<LayerPlan> layers;  // index = layer
};

// A layer plan from a clustering: dominant members by frequency (indexed by expert id), rank 0, energy 1
// (fill ranks/energies from MergedExpert after merging).
LayerPlan make_layer_plan(const Clusters& clusters, std::span<const double> frequency, int num_experts,
                          MergeMethod method);

const char* to_string(MergeMethod m);
const char* to_string(RouterMerge r);
MergeMethod merge_method_from_string(const std::string& s);
RouterMerge router_merge_from_string(const std::string& s);

// Throws moec::Error naming the layer/cluster/expert if the plan is inconsistent (ids out of range,
// duplicates, unsorted members, experts in no cluster, dominant not a member, bad rank/energy), or if
// expected_layers >= 0 and the layer count differs.
void validate_plan(const MergePlan& plan, int expected_layers = -1);

nlohmann::json plan_to_json(const MergePlan& plan);
// Parses and validates (see validate_plan); missing or mistyped fields are errors naming the field.
MergePlan plan_from_json(const nlohmann::json& j, int expected_layers = -1);

}  // namespace moec::merge
