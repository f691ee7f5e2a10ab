// moec merge: cluster each MoE layer's experts and fuse every cluster into one expert (docs/MERGING.md).
#include <cmath>
#include <cstdio>
#include <nlohmann/json.hpp>

#include "cli/command.h"
#include "cli/options.h"
#include "core/error.h"
#include "core/files.h"
#include "core/progress.h"
#include "io/npy.h"
#include "merge/apply.h"


namespace moec::cli {

static merge::MergeMethod parse_method(const std::string& s) {
  if (s == "subspace") return merge::MergeMethod::Subspace;
  if (s == "msmoe") return merge::MergeMethod::MSmoe;
  if (s == "average") return merge::MergeMethod::Average;
  if (s == "freq-average" || s == "frequency") return merge::MergeMethod::FrequencyAverage;
  fail("--method: unknown method '", s, "' (expected subspace, msmoe, average or freq-average)");
}

static merge::RouterMerge parse_router(const std::string& s) {
  if (s == "dominant") return merge::RouterMerge::Dominant;
  if (s == "freq" || s == "frequency") return merge::RouterMerge::FrequencyWeighted;
  fail("--router: unknown router row '", s, "' (expected dominant or freq)");
}

static int run_merge(int argc, char** argv) {
  po::options_description opts("options");
  std::string model_dir, stats_path, calib_path, method = "subspace", cluster = "dominant", router = "dominant", plan_in, out,
                                                   svd = "exact", refit = "auto", router_target = "max", form = "dense";
  int keep = 0, rank = 0;
  double ratio = 0, energy = 1.0;
  merge::PipelineOptions po_;
  opts.add_options()("model", po::value(&model_dir)->required(), "Hugging Face MoE checkpoint directory")(
      "stats", po::value(&stats_path), "routing statistics from `moec profile` (HDF5)")(
      "calib", po::value(&calib_path), ".npy calibration tokens (whitening, activation alignment; statistics when no --stats)")(
      "method", po::value(&method)->default_value("subspace"), "subspace | msmoe | average | freq-average")(
      "keep", po::value(&keep), "experts per layer after merging")(
      "ratio", po::value(&ratio), "fraction of experts kept per layer (instead of --keep)")(
      "cluster", po::value(&cluster)->default_value("dominant"), "kmeans (normalized mean outputs) | hc (output similarity) | dominant (M-SMoE: top-K frequent lead)")(
      "rank", po::value(&rank)->default_value(0), "subspace: rank kept per weight kind (0 = use --energy)")(
      "energy", po::value(&energy)->default_value(1.0), "subspace: fraction of σ² kept (1 = full rank = freq-average)")(
      "svd", po::value(&svd)->default_value("exact"), "subspace: exact | randomized (needs --rank)")(
      "router", po::value(&router)->default_value("dominant"), "merged router row: dominant | freq")(
      "whiten", "subspace: activation-aware whitening with per-expert input correlations (needs --calib)")(
      "align", "subspace: align neurons to the dominant member first (activations with --calib, else weights)")(
      "refit", po::value(&refit)->default_value("auto"),
      "calibration refit after merging (needs --calib): none | down | router | all | auto (= down for "
      "--method subspace when --calib is given, else none)")(
      "refit-damp", po::value(&po_.refit.damp)->default_value(1e-3), "refit: ridge damping of the down projections")(
      "router-damp", po::value(&po_.router_damp)->default_value(1e-3), "refit: ridge damping of the router rows")(
      "router-target", po::value(&router_target)->default_value("max"),
      "refit: cluster logit the router rows reproduce: max (best member) | lse (log-sum-exp of the members)")(
      "sequential", "refit on inputs of the model with earlier layers already merged")(
      "residual-target", "sequential refit: fit the original model's residual stream (corrects earlier layers)")(
      "weight-power", po::value(&po_.weight_power)->default_value(1.0),
      "merge weights = selection frequency ^ P (1 = frequency-weighted; larger leans towards the dominant member)")(
      "dominant-gate-up", "subspace: keep the dominant member's gate/up projections, merge only down")(
      "form", po::value(&form)->default_value("dense"),
      "output: dense (Hugging Face checkpoint, K dense experts) | factored (moec checkpoint: each merged projection "
      "stored as its cluster's shared U·Σ times the merged V; `moec eval` runs it) | shared-basis (moec checkpoint: "
      "all experts and the router kept, expert = shared U·Σ of its cluster times its own V); factored forms need "
      "--method subspace and are smaller than dense only at ranks below in*out/(in+out) (use --rank or --energy)")(
      "plan-only", "write the plan (JSON) to -o and stop")(
      "plan", po::value(&plan_in), "apply this plan (JSON) instead of clustering")(
      "calib-tokens", po::value(&po_.calib_tokens)->default_value(32768), "use the first N calibration tokens")(
      "window", po::value(&po_.window)->default_value(256), "calibration sequence length")(
      "seed", po::value(&po_.seed)->default_value(0), "k-means seed")(
      "output,o", po::value(&out)->required(), "output checkpoint directory (or plan file with --plan-only)")(
      "force", "replace an existing output");
  po::positional_options_description pos;
  pos.add("model", 1);
  po::variables_map vm;
  if (!parse_options(argc, argv,
                     "merge MODEL (--stats stats.h5 | --calib FILE.npy) --method subspace|msmoe|average|freq-average "
                     "--keep K [--cluster kmeans|hc] [--rank R | --energy E] [--router dominant|freq] [--whiten] "
                     "[--form dense|factored|shared-basis] [--plan-only | --plan plan.json] -o OUT",
                     "Merges each MoE layer's experts into K clusters (plan from routing statistics: output similarity\n"
                     "for clustering, selection frequency for weights and dominant members), then writes a Hugging\n"
                     "Face checkpoint with K dense experts per layer (--form dense), or keeps the subspace factors in\n"
                     "a moec checkpoint that `moec eval` runs directly (--form factored | shared-basis, MERGING.md §9).",
                     opts, pos, vm))
    return 0;

  model::CheckpointSource src(model_dir);
  const auto& spec = src.spec();
  const int E = spec.routing.num_experts;
  if (vm.count("keep") && vm.count("ratio")) fail("give --keep or --ratio, not both");
  if (vm.count("ratio")) {
    if (!(ratio > 0 && ratio <= 1)) fail("--ratio ", ratio, " not in (0, 1]");
    keep = std::max(1, int(std::lround(ratio * E)));
  }
  if (!vm.count("plan") && keep == 0) fail("give --keep K or --ratio R (or --plan)");
  if (vm.count("plan") && vm.count("plan-only")) fail("--plan and --plan-only exclude each other");
  if (!vm.count("plan") && keep < spec.routing.top_k)
    fail("--keep ", keep, " is below the router's top-k (", spec.routing.top_k, ")");
  po_.method = parse_method(method);
  po_.keep = keep;
  po_.cluster = merge::cluster_algo_from_string(cluster);
  po_.router = parse_router(router);
  po_.whiten = vm.count("whiten");
  po_.align = vm.count("align");
  po_.dominant_gate_up = vm.count("dominant-gate-up");
  if (!(po_.weight_power >= 0 && std::isfinite(po_.weight_power))) fail("--weight-power ", po_.weight_power, " must be >= 0");
  if (refit == "auto") {
    refit = po_.method == merge::MergeMethod::Subspace && vm.count("calib") && !vm.count("plan-only") ? "down" : "none";
    if (refit == "down") log_info("merge: refitting the merged down projections on the --calib tokens (--refit none to skip)");
  }
  if (refit == "down" || refit == "all") po_.refit_down = true;
  if (refit == "router" || refit == "all") po_.refit_router = true;
  if (refit != "none" && refit != "down" && refit != "router" && refit != "all")
    fail("--refit: expected none, down, router, all or auto, got '", refit, "'");
  if (router_target == "max") po_.router_target = merge::ClusterLogit::Max;
  else if (router_target == "lse") po_.router_target = merge::ClusterLogit::LogSumExp;
  else fail("--router-target: expected max or lse, got '", router_target, "'");
  po_.form = merge::output_form_from_string(form);
  if (po_.form != merge::OutputForm::Dense && po_.method != merge::MergeMethod::Subspace)
    fail("--form ", form, " needs --method subspace (it stores the subspace factors)");
  po_.sequential = vm.count("sequential");
  po_.residual_target = vm.count("residual-target");
  po_.subspace.rank = rank;
  po_.subspace.energy = energy;
  if (svd == "randomized") po_.subspace.svd = merge::SvdMethod::Randomized;
  else if (svd != "exact") fail("--svd: expected exact or randomized, got '", svd, "'");
  if (po_.method != merge::MergeMethod::Subspace &&
      (rank != 0 || energy != 1.0 || po_.whiten || po_.align || po_.dominant_gate_up))
    fail("--rank/--energy/--whiten/--align/--dominant-gate-up apply to --method subspace only");

  std::vector<merge::LayerSignals> signals;
  const std::vector<merge::LayerSignals>* sig = nullptr;
  if (vm.count("stats")) {
    auto stats = profile::read_stats_h5(stats_path);
    profile::check_stats_match(stats, spec, model_dir);
    signals = merge::signals_from_profile(stats, spec);
    sig = &signals;
  }
  std::vector<int32_t> calib;
  if (vm.count("calib")) calib = io::read_tokens_npy(calib_path).ids;

  if (vm.count("plan-only")) {
    if (fs::exists(out) && !vm.count("force")) fail("output ", out, " already exists (use --force to replace it)");
    auto plan = merge::plan_model(src, po_, sig, calib);
    write_file_atomic(out, merge::plan_to_json(plan).dump(2) + "\n");
    log_info("merge: plan written to " + out);
    return 0;
  }
  std::optional<merge::MergePlan> given;
  if (vm.count("plan")) {
    given = merge::plan_from_json(nlohmann::json::parse(read_file(plan_in)), spec.num_layers);
    keep = int(given->layers.at(0).clusters.size());
    for (size_t l = 0; l < given->layers.size(); ++l)
      if (int(given->layers[l].clusters.size()) != keep)
        fail("plan ", plan_in, ": layer ", l, " has ", given->layers[l].clusters.size(), " clusters, layer 0 has ", keep,
             " (a Hugging Face checkpoint needs the same expert count in every layer)");
    if (keep < spec.routing.top_k) fail("plan ", plan_in, ": ", keep, " clusters, below the router's top-k");
    if (vm.count("router")&& !vm["router"].defaulted()) given->router = po_.router;
  }
  if (po_.form != merge::OutputForm::Dense) {
    nlohmann::ordered_json options{{"form", form},        {"method", method},     {"cluster", cluster},
                                   {"rank", rank},        {"energy", energy},     {"align", po_.align},
                                   {"whiten", po_.whiten}, {"refit", refit},      {"weight_power", po_.weight_power},
                                   {"router", router},    {"calib_tokens", vm.count("calib") ? po_.calib_tokens : 0}};
    merge::FactoredCheckpointWriter writer(src, out, vm.count("force"));
    auto plan = merge::merge_model(src, po_, sig, given ? &*given : nullptr, calib,
                                   [&](int l, merge::MergedLayer&& m) { writer.add_layer(l, m); });
    const int experts = po_.form == merge::OutputForm::SharedBasis ? E : keep;
    writer.finish(experts, plan, options);
    log_info("merge: wrote " + out + " (" + form + " form, " + std::to_string(experts) +
             " experts per layer; `moec inspect` shows its size, `moec eval` runs it)");
    return 0;
  }
  merge::MergedCheckpointWriter writer(src, out, vm.count("force"));
  auto plan = merge::merge_model(src, po_, sig, given ? &*given : nullptr, calib,
                                 [&](int l, merge::MergedLayer&& m) { writer.add_layer(l, m); });
  writer.finish(keep, plan);
  log_info("merge: wrote " + out + " (" + std::to_string(keep) + " experts per layer, plan in moec.json)");
  return 0;
}

MOEC_COMMAND(merge, "merge experts (clustering + subspace / M-SMoE / averaging) into a smaller HF checkpoint", run_merge);

}  // namespace moec::cli
