// Routing statistics: the reusable artifact every compression decision rests on. Produced by
// `moec profile` (profile/profile.h), stored as HDF5 (docs/PROFILE.md) with a JSON summary, and read
// back by prune / merge / quantize. Counts and sums are stored, so domains can be added exactly.
#pragma once
#include <cstdint>
#include <filesystem>
#include <string>
#include <vector>

#include "core/matrix.h"
#include "model/spec.h"

namespace moec::profile {

struct LayerStats {
  int layer = 0;                   // decoder layer index in the model
  int experts = 0, top_k = 0;
  int64_t tokens = 0;              // calibration tokens that reached this MoE layer
  std::vector<int64_t> selected;   // E: token hits in top-k
  std::vector<int64_t> top1;       // E: times ranked first
  std::vector<double> gate_mass;   // E: sum of the (renormalised) gate weights received
  std::vector<double> prob_sum;    // E: sum over all tokens of the router probability
  std::vector<double> logit_sum, logit_sq_sum;  // E: router logit moments over all tokens
  std::vector<double> easyep;      // E: sum_t s_t * g_{e,t} * ||e_t(x)||, s_t = 1 - cos(h_t, h_t + y_t)
  std::vector<double> reap_sum;    // E: sum over routed tokens of g * ||e(x)|| (REAP = reap_sum / selected)
  std::vector<double> act_norm_sum;  // E: sum over routed tokens of ||e(x)|| (EAN = / selected)
  std::vector<double> entropy_sum;   // 1 value: sum over tokens of the routing entropy (nats) of the probs
  MatrixD coactivation;            // E x E: tokens for which i and j were both selected (diag = selected)
  MatrixD output_similarity;       // E x E: mean cosine of expert outputs on the same K sampled tokens
  MatrixD output_mean;             // E x H: mean output of each expert on the K sampled tokens (clustering)
  int64_t sampled_tokens = 0;      // K
  double ratio_median = 0;         // top-2 routers: median over tokens of w2 / w1 (dynamic skipping)

  // Derived figures.
  double fraction(int e) const;          // selected / (tokens * top_k)
  double mean_prob(int e) const;         // prob_sum / tokens
  double reap(int e) const;              // mean g * ||e|| over routed tokens (0 when never routed)
  double ean(int e) const;
  double entropy() const;                // mean routing entropy per token
  double load_cv() const;                // coefficient of variation of selection counts
  double load_max_over_mean() const;
  double logit_mean(int e) const;        // logit_sum / tokens
  double logit_std(int e) const;         // population std of the router logit over tokens
};

struct DomainStats {
  std::string name;        // "total" for the union of all domains
  std::string token_file;  // path as given ("" for total)
  std::string token_sha256;
  int64_t tokens = 0;
  std::vector<LayerStats> layers;  // one per MoE layer, in layer order
};

struct ProfileStats {
  std::string model_path;
  std::string model_type;
  std::string config_sha256;  // of config.json: later stages refuse stats from another model
  int num_layers = 0, experts = 0, top_k = 0, hidden = 0;
  int seq_len = 256;
  std::string moec_version, created;  // ISO date (the only field allowed to differ between re-runs)
  std::vector<DomainStats> domains;   // per domain, then "total" last
  const DomainStats& total() const;   // the "total" domain
  const DomainStats& domain(const std::string& name) const;
};

// Stats file I/O (HDF5; layout in docs/PROFILE.md). Writes atomically.
void write_stats_h5(const ProfileStats& s, const std::filesystem::path& path);
ProfileStats read_stats_h5(const std::filesystem::path& path);
// Fails with a clear message when the stats were not made from this model (config hash / shapes).
void check_stats_match(const ProfileStats& s, const model::ModelSpec& spec, const std::filesystem::path& model_dir);
// SHA-256 of a model's config.json (what check_stats_match compares).
std::string config_sha256(const std::filesystem::path& model_dir);

}  // namespace moec::profile
