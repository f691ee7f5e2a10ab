// Ready-made report sections for moec's two reports, built from plain data so that the profiling and
// compression stages only have to fill a struct. Charts and tables come from report/report.h.
#pragma once
#include <string>
#include <utility>
#include <vector>

#include "report/report.h"

namespace moec::report {

// What `moec profile` measured. Shapes: usage[domain][layer][expert], coactivation[layer][i][j],
// importance[layer][expert]. Empty vectors skip their charts.
struct RoutingProfileData {
  std::string model;
  int top_k = 2;
  std::vector<std::string> domains;                          // calibration sets, e.g. "python", "kernel"
  std::vector<long long> domain_tokens;                      // tokens profiled per domain
  std::vector<std::vector<std::vector<double>>> usage;       // share of the layer's top-k selections (sums to 1)
  std::vector<std::vector<std::vector<double>>> coactivation;  // share of tokens routed to both i and j
  std::vector<std::vector<double>> importance;
  std::string importance_label = "importance";
};
void add_routing_profile(Page& page, const RoutingProfileData& d);

// What `moec compress` did.
struct CompressionData {
  std::string model;
  std::string command;  // exact command line
  std::string recipe;   // the recipe as given (JSON/YAML text)
  struct SizeRow {
    std::string category;  // "routed experts", "attention", "embeddings", ...
    double before_bytes = 0, after_bytes = 0;
  };
  std::vector<SizeRow> sizes;
  std::vector<std::string> layer_names;
  std::vector<double> bits_per_weight;  // per layer, routed experts, scales included
  std::vector<double> recon_error;      // per layer relative reconstruction error ||W - W'|| / ||W||
  struct PplRow {
    std::string eval_file;
    double before = 0, after = 0;
  };
  std::vector<PplRow> perplexity;
  std::vector<Series> tradeoff;  // perplexity vs bits per weight: this run, sweeps, peers
  std::vector<std::pair<std::string, double>> stage_seconds;
};
void add_compression(Page& page, const CompressionData& d);

// Quality vs size of several compressed models: one series per method family (drawn as a line through its
// points in bits order), e.g. from `moec inspect --json` (expert_bits_per_weight) and `moec eval --json` (ppl).
struct QualityPoint {
  std::string series, label;
  double bits = 0, ppl = 0;
};
void add_quality_curve(Page& page, const std::vector<QualityPoint>& points, double reference_ppl = 0);
// Parses CSV text with the header `series,label,bits,ppl` (comma-separated, no quoting; '#' lines ignored).
// Errors name `what` and the line.
std::vector<QualityPoint> parse_quality_csv(const std::string& text, const std::string& what);

// A fake but plausible profile (4 layers x 8 experts, two domains) and compression run, for tests and for
// looking at the charts: `moec` has no real data in this module. Deterministic.
RoutingProfileData demo_profile();
CompressionData demo_compression();
Page demo_page();  // both reports on one page, plus edge cases (NaN cells, log axes)

}  // namespace moec::report
