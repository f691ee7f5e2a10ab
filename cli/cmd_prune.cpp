// moec prune: plan which routed experts each MoE layer keeps, and/or write the pruned checkpoint.
#include <cstdio>
#include <filesystem>
#include <nlohmann/json.hpp>

#include "cli/command.h"
#include "cli/options.h"
#include "core/error.h"
#include "core/files.h"
#include "core/progress.h"
#include "io/npy.h"
#include "profile/stats.h"
#include "model/source.h"
#include "prune/prune.h"

namespace moec::cli {
namespace fs = std::filesystem;

namespace {
uint64_t parse_size(const std::string& s) {
  size_t pos = 0;
  double v = 0;
  try {
    v = std::stod(s, &pos);
  } catch (...) {
    fail("--max-shard-size: '", s, "' is not a size (e.g. 4G, 500M, 1048576)");
  }
  std::string unit = s.substr(pos);
  double mult = unit.empty() || unit == "B" ? 1 : unit == "K" ? 1e3 : unit == "M" ? 1e6 : unit == "G" ? 1e9 : unit == "KiB" ? 1024.0
              : unit == "MiB" ? 1048576.0 : unit == "GiB" ? 1073741824.0 : -1;
  if (mult < 0 || v <= 0) fail("--max-shard-size: '", s, "' is not a size (e.g. 4G, 500M, 1048576)");
  return uint64_t(v * mult);
}

// Fraction of the calibration gate mass that lands on dropped experts, averaged over the domains.
double dropped_mass(const profile::ProfileStats& st, const std::vector<std::string>& domains, size_t moe_index,
                    const std::vector<int>& keep) {
  double acc = 0;
  for (const auto& dn : domains) {
    const auto& L = st.domain(dn).layers[moe_index];
    double tot = 0, kept = 0;
    for (size_t e = 0; e < L.gate_mass.size(); ++e) {
      tot += L.gate_mass[e];
      if (std::binary_search(keep.begin(), keep.end(), int(e))) kept += L.gate_mass[e];
    }
    acc += tot > 0 ? (tot - kept) / tot : 0.0;
  }
  return acc / double(domains.size());
}

void print_plan(const prune::PrunePlan& p) {
  std::printf("method %s, %s allocation, %d -> %s experts per MoE layer\n", p.method.c_str(), p.allocation.c_str(), p.num_experts,
              p.uniform() ? std::to_string(p.kept_per_layer()).c_str() : "varying");
  std::printf("%-6s %-28s %-18s %s\n", "layer", "kept experts", "dropped gate mass", "output error (calib)");
  for (const auto& l : p.layers) {
    std::string k;
    for (int e : l.keep) {
      if (!k.empty()) k += ',';
      k += std::to_string(e);
    }
    char m[32] = "-", o[32] = "-";
    if (std::isfinite(l.dropped_gate_mass)) std::snprintf(m, sizeof m, "%.4f", l.dropped_gate_mass);
    if (std::isfinite(l.output_error)) std::snprintf(o, sizeof o, "%.5f", l.output_error);
    std::printf("%-6d %-28s %-18s %s\n", l.layer, k.c_str(), m, o);
  }
}
}  // namespace

static int run_prune(int argc, char** argv) {
  po::options_description opts("options");
  std::string model_dir, method = "frequency", per_layer = "uniform", output, plan_in, save_plan, calib, stats, shard = "4GiB";
  std::vector<std::string> domains;
  int keep = 0;
  double ratio = 0;
  int64_t calib_tokens = 16384;
  opts.add_options()("model", po::value(&model_dir)->required(), "Hugging Face model directory")(
      "stats", po::value(&stats), "routing statistics (stats.h5 from `moec profile`)")(
      "method", po::value(&method)->default_value("frequency"),
      ("selection: " + prune::criterion_names()).c_str())("keep", po::value(&keep), "experts kept per MoE layer")(
      "ratio", po::value(&ratio), "fraction of experts pruned per layer (0.25: 8 -> 6)")(
      "per-layer", po::value(&per_layer)->default_value("uniform"),
      "uniform (same count per layer; what checkpoints and engines need) or adaptive (global budget by score; plan only)")(
      "domain", po::value(&domains)->multitoken(), "stats domain(s) to score on (default: total); several are averaged after normalisation")(
      "calib", po::value(&calib), ".npy calibration tokens: required by reconstruct; otherwise used to report each layer's output error")(
      "calib-tokens", po::value(&calib_tokens)->default_value(16384), "use the first N calibration tokens")(
      "original-activations", "reconstruct: every layer sees the original model's activations (default: earlier layers pruned)")(
      "plan", po::value(&plan_in), "apply this plan (JSON) instead of making one")(
      "plan-only", "write the plan to -o instead of a checkpoint")(
      "save-plan", po::value(&save_plan), "also write the plan here")(
      "output,o", po::value(&output)->required(), "output checkpoint directory (or plan JSON with --plan-only)")(
      "force", "replace an existing output")("max-shard-size", po::value(&shard)->default_value("4GiB"), "safetensors shard size limit");
  po::positional_options_description pos;
  pos.add("model", 1);
  po::variables_map vm;
  if (!parse_options(argc, argv,
                     "prune MODEL (--stats stats.h5 | --calib calib.npy) --method M (--keep N | --ratio R) [--plan-only] -o OUT\n"
                     "       moec prune MODEL --plan plan.json -o OUT",
                     "Removes routed experts: plans the kept experts of every MoE layer from routing statistics\n"
                     "(frequency, gate-mass, reap, easyep, ean) or by output reconstruction on calibration tokens\n"
                     "(reconstruct), then writes a complete Hugging Face checkpoint with router rows sliced, experts\n"
                     "renumbered 0..E'-1 and the expert count updated. The input directory is never modified.\n"
                     "Formulas and sources: docs/PRUNING.md.",
                     opts, pos, vm))
    return 0;
  const bool plan_only = vm.count("plan-only") > 0, force = vm.count("force") > 0;
  prune::ApplyOptions ao{parse_size(shard), force};

  if (!plan_in.empty()) {
    if (plan_only) fail("--plan applies an existing plan; --plan-only makes no sense with it");
    auto plan = prune::read_plan(plan_in);
    prune::apply_plan(plan, model_dir, output, ao);
    print_plan(plan);
    return 0;
  }

  model::CheckpointSource src(model_dir);
  const auto& spec = src.spec();
  const std::string sha = sha256_file(fs::path(model_dir) / "config.json");
  const prune::Criterion crit = prune::parse_criterion(method);
  if (per_layer != "uniform" && per_layer != "adaptive") fail("--per-layer must be uniform or adaptive, got '", per_layer, "'");
  if (vm.count("keep") && vm.count("ratio")) fail("give --keep or --ratio, not both");
  if (!vm.count("keep") && !vm.count("ratio")) fail("give --keep N (experts kept per layer) or --ratio R (fraction pruned)");
  const int K = prune::keep_count(spec.routing.num_experts, keep, ratio);
  if (!plan_only && per_layer == "adaptive")
    fail("--per-layer adaptive gives a different expert count per layer, which a Hugging Face checkpoint cannot hold "
         "(transformers, vLLM and llama.cpp need one count); use it with --plan-only, or use --per-layer uniform");
  profile::ProfileStats st;
  const bool have_stats = !stats.empty();
  if (have_stats) {
    st = profile::read_stats_h5(stats);
    profile::check_stats_match(st, spec, model_dir);
    prune::check_stats_for_model(st, spec, sha, stats);
  }
  if (domains.empty()) domains = {"total"};

  prune::PrunePlan plan;
  plan.method = prune::criterion_name(crit);
  plan.allocation = per_layer;
  plan.domains = have_stats ? domains : std::vector<std::string>{};
  plan.model_type = spec.model_type;
  plan.config_sha256 = sha;
  plan.num_layers = spec.num_layers;
  plan.num_experts = spec.routing.num_experts;
  plan.top_k = spec.routing.top_k;
  plan.stats_file = stats;
  plan.calib_file = calib;
  plan.sequential = !vm.count("original-activations");

  prune::CalibOptions co;
  co.keep = K;
  co.max_tokens = calib_tokens;
  co.sequential = plan.sequential;
  std::vector<int32_t> calib_ids;
  if (!calib.empty()) {
    calib_ids = io::read_tokens_npy(calib).ids;
    plan.calib_tokens = std::min<int64_t>(int64_t(calib_ids.size()), calib_tokens) / co.window * co.window;
  }

  std::vector<std::vector<double>> scores;
  std::vector<std::vector<int>> kept;
  prune::CalibResult cr;
  if (crit == prune::Criterion::Reconstruct) {
    if (calib.empty()) fail("--method reconstruct needs --calib FILE.npy (calibration tokens)");
    if (per_layer != "uniform") fail("--method reconstruct searches a fixed count per layer: use --per-layer uniform");
    cr = prune::reconstruct(src, calib_ids, co);
    kept = cr.keep;
  } else {
    if (!have_stats) fail("--method ", method, " scores experts from routing statistics: give --stats stats.h5 (from `moec profile`)");
    scores = prune::layer_scores(st, crit, domains);
    kept = per_layer == "uniform" ? prune::select_uniform(scores, K)
                                  : prune::select_adaptive(scores, K, std::min(spec.routing.top_k, spec.routing.num_experts));
    if (!calib.empty()) cr = prune::measure_error(src, calib_ids, kept, co);
  }
  plan.layers = prune::layer_plans(spec, kept, scores, cr.error);
  if (have_stats)
    for (size_t i = 0; i < plan.layers.size(); ++i) plan.layers[i].dropped_gate_mass = dropped_mass(st, domains, i, plan.layers[i].keep);
  prune::validate_plan(plan, spec, sha, "prune plan", false);
  if (!save_plan.empty()) prune::write_plan(plan, save_plan);
  if (plan_only) {
    if (fs::exists(output) && !force) fail("output ", output, " already exists (use --force to replace it)");
    prune::write_plan(plan, output);
  } else {
    prune::apply_plan(plan, model_dir, output, ao);
  }
  print_plan(plan);
  return 0;
}

MOEC_COMMAND(prune, "remove routed experts (plan from routing statistics or output reconstruction, then apply)", run_prune);

}  // namespace moec::cli
