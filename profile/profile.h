// `moec profile` as a library: runs the streaming forward pass over calibration tokens (one or more
// domains) and records the routing statistics of profile/stats.h. Layout of the files: docs/PROFILE.md.
#pragma once
#include <cstdint>
#include <filesystem>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "model/source.h"
#include "profile/stats.h"

namespace moec::report {
class Page;
}

namespace moec::profile {

// One calibration set. Tokens are taken as one stream and cut into windows of seq_len.
struct Domain {
  std::string name;         // "python"; "total" is reserved
  std::string token_file;   // as given (recorded in the stats)
  std::string token_sha256; // of the file
  std::vector<int32_t> tokens;
};
// Reads an .npy token file (checks: non-empty, integer dtype, ids inside the vocabulary when vocab > 0).
Domain load_domain(const std::string& name, const std::filesystem::path& npy, int vocab = 0);

struct ProfileOptions {
  int seq_len = 256;                 // window length; the trailing partial window is profiled too
  int64_t max_tokens = -1;           // per domain: only the first N tokens (-1 = all)
  int sample_tokens = 256;           // K: tokens (per domain) on which every expert is evaluated
  int64_t chunk_tokens = 1 << 16;    // windows run through the layers together (memory)
  bool progress = true;
  std::string model_path;            // recorded in the stats (default: src.path())
  std::string created;               // ISO date to record ("" = now; env MOEC_PROFILE_DATE overrides now)
};

// Profiles every domain separately; the result holds one DomainStats per domain plus "total" (exact
// sums over all domains). Cost: one forward pass (no lm_head) plus K x E expert evaluations per layer.
ProfileStats profile_model(const model::WeightSource& src, const std::vector<Domain>& domains, const ProfileOptions& opt);

// The JSON summary written beside the .h5 (also `moec inspect stats.h5 --json`).
nlohmann::ordered_json summary_json(const ProfileStats& s, int hot_cold = 3);
// Per-layer tables (hot and cold experts, balance, entropy) for people.
std::string summary_text(const ProfileStats& s, int hot_cold = 3);
// Adds the routing-profile sections (usage heatmap, co-activation, importance, domain differences).
void add_profile_report(report::Page& page, const ProfileStats& s);

// The stats file's JSON summary path: stats.h5 -> stats.json.
std::filesystem::path summary_path(const std::filesystem::path& h5);

}  // namespace moec::profile
