// moec quantize: calibrated (GPTQ) or round-to-nearest quantization of the routed experts into a packed
// moec checkpoint (docs/FORMAT.md) that `moec eval`, `moec inspect` and `moec export` read.
#include <cstdio>
#include <sstream>

#include "cli/command.h"
#include "cli/options.h"
#include "core/error.h"
#include "core/files.h"
#include "core/progress.h"
#include "io/npy.h"
#include "model/source.h"
#include "profile/stats.h"
#include "quantize/calibrate.h"
#include "quantize/checkpoint.h"

namespace moec::cli {

static std::vector<std::string> split(const std::string& s, char sep) {
  std::vector<std::string> out;
  std::stringstream ss(s);
  std::string part;
  while (std::getline(ss, part, sep))
    if (!part.empty()) out.push_back(part);
  return out;
}

static int run_quantize(int argc, char** argv) {
  po::options_description opts("options");
  std::string model_dir, calib, stats, method, bits, tscale, out, candidates;
  float deadzone = 0.5f, rate = 0.0f;
  std::string importance;
  int group = 128, seq_len = 256;
  double budget = 0, damp = -1;
  int64_t max_tokens = -1;
  opts.add_options()("model", po::value(&model_dir)->required(), "model directory (Hugging Face checkpoint)")(
      "calib", po::value(&calib), "calibration tokens (.npy); required for gptq and --budget-bits")(
      "stats", po::value(&stats), "routing statistics (stats.h5 from `moec profile`): expert importance for --budget-bits")(
      "importance", po::value(&importance)->default_value("gate-mass"),
      "with --stats: gate-mass | frequency | easyep (per-token averages of the profile's statistic)")(
      "method", po::value(&method)->default_value("gptq"), "gptq | rtn")(
      "bits", po::value(&bits)->default_value("4"), "ternary | 2 | 3 | 4 | 8")(
      "group", po::value(&group)->default_value(128), "scale group along the input dimension (0 = per row; multiple of 32)")(
      "sym", "symmetric integer grid (default: asymmetric, fitted zero point)")(
      "ternary-scale", po::value(&tscale)->default_value("absmean"), "absmean | minmax | opt")(
      "deadzone", po::value(&deadzone)->default_value(0.5f, "0.5"),
      "ternary: |w| / scale must exceed this to become +-1 (0.5 = nearest; larger = more zeros = fewer sub-bit bits)")(
      "rate", po::value(&rate)->default_value(0.0f, "0"),
      "ternary + gptq: rate-aware deadzone, deadzone + F * (column error weight / mean): zeros where they cost least")(
      "subbit", "store ternary codes with the sub-bit (Tunstall) codec")(
      "budget-bits", po::value(&budget)->default_value(0), "mixed precision: average bits per expert weight (incl. scales)")(
      "candidates", po::value(&candidates),
      "comma-separated specs --budget-bits chooses from (docs/QUANTIZATION.md); default int4/int3/int2:g128:asym + "
      "ternary:minmax:row, with --subbit int3/int2 + ternary codes of increasing sparsity (rd0.1..rd0.8, dz1)")(
      "damp", po::value(&damp)->default_value(-1), "GPTQ relative dampening (< 0: 0.01 int, 0.1 ternary)")(
      "act-order", "GPTQ: columns by decreasing Hessian diagonal (static groups)")(
      "seq-len", po::value(&seq_len)->default_value(256), "calibration window length")(
      "max-tokens", po::value(&max_tokens)->default_value(-1), "use only the first N calibration tokens")(
      "output,o", po::value(&out)->required(), "output directory")("force", "overwrite an existing output directory");
  po::positional_options_description pos;
  pos.add("model", 1);
  po::variables_map vm;
  if (!parse_options(argc, argv,
                     "quantize MODEL --calib FILE.npy --method gptq|rtn --bits ternary|2|3|4|8 [--group 128] [--sym]\n"
                     "       [--ternary-scale absmean|minmax|opt] [--deadzone F] [--rate F] [--subbit] [--budget-bits B] [--max-tokens N] -o OUT",
                     "Quantizes the routed experts (attention, router, norms, embeddings stay as stored) into a packed\n"
                     "moec checkpoint. GPTQ runs layer by layer on the calibration windows, each layer seeing the\n"
                     "output of the already-quantized layers before it.",
                     opts, pos, vm))
    return 0;
  if (vm.count("quiet")) log_options().quiet = true;

  quantize::CalibrateOptions co;
  if (method == "gptq") co.method = quantize::Method::Gptq;
  else if (method == "rtn") co.method = quantize::Method::Rtn;
  else fail("--method '", method, "': expected gptq or rtn");
  std::string spec_text;
  if (bits == "ternary") {
    spec_text = "ternary:" + tscale;
  } else if (bits == "2" || bits == "3" || bits == "4" || bits == "8") {
    spec_text = "int" + bits + (vm.count("sym") ? ":sym" : ":asym");
  } else {
    fail("--bits '", bits, "': expected ternary, 2, 3, 4 or 8");
  }
  if (group < 0) fail("--group ", group, ": must be >= 0");
  spec_text += group > 0 ? ":g" + std::to_string(group) : ":row";
  co.spec = parse_quant_spec(spec_text);
  if (!vm["deadzone"].defaulted() || !vm["rate"].defaulted()) {
    if (co.spec.kind != CodeKind::Ternary) fail("--deadzone and --rate apply to --bits ternary");
    co.spec.deadzone = deadzone;
    co.spec.rate = rate;
    validate(co.spec);
  }
  co.subbit = vm.count("subbit") > 0;
  if (co.subbit && budget <= 0 && co.spec.kind != CodeKind::Ternary)
    fail("--subbit stores ternary codes: use it with --bits ternary (or with --budget-bits)");
  co.gptq.damp = damp;
  co.gptq.act_order = vm.count("act-order") > 0;
  co.budget_bits = budget;
  if (budget > 0) {
    if (candidates.empty()) co.candidates = quantize::default_candidates(vm.count("subbit") > 0);
    else
      for (auto& c : split(candidates, ',')) co.candidates.push_back(parse_quant_spec(c));
  } else if (!candidates.empty()) {
    fail("--candidates lists what --budget-bits chooses from: give --budget-bits B");
  }
  co.seq_len = seq_len;
  co.progress = !vm.count("quiet");
  auto src = model::open_model(model_dir);
  if (!stats.empty()) {
    // Mixed-precision importance from a routing profile (e.g. over several domains) instead of the gate mass
    // that the calibration pass itself measures.
    if (budget <= 0) fail("--stats only informs --budget-bits (mixed precision); drop it or give a budget");
    if (importance != "gate-mass" && importance != "frequency" && importance != "easyep")
      fail("--importance '", importance, "': expected gate-mass, frequency or easyep");
    const profile::ProfileStats st = profile::read_stats_h5(stats);
    profile::check_stats_match(st, src->spec(), model_dir);
    const auto& dom = st.total();
    co.importance.assign(size_t(src->spec().num_layers), {});
    for (const auto& ls : dom.layers) {
      if (ls.layer < 0 || ls.layer >= src->spec().num_layers) fail(stats, ": layer ", ls.layer, " is not a layer of ", model_dir);
      auto& imp = co.importance[size_t(ls.layer)];
      for (int e = 0; e < ls.experts; ++e) {
        const double t = double(std::max<int64_t>(ls.tokens, 1));
        imp.push_back(importance == "gate-mass"   ? ls.gate_mass[size_t(e)] / t
                      : importance == "frequency" ? double(ls.selected[size_t(e)]) / t
                                                  : ls.easyep[size_t(e)] / t);
      }
    }
  } else if (!vm["importance"].defaulted()) {
    fail("--importance picks a statistic from --stats; give --stats stats.h5");
  }
  check_output_dir(out, model_dir, vm.count("force") > 0);
  fs::remove(fs::path(out) / quantize::kPackedMetaFile);  // --force: a half-rewritten directory is no checkpoint
  std::vector<int32_t> tokens;
  const bool need_data = co.method == quantize::Method::Gptq || budget > 0;
  if (need_data) {
    if (calib.empty()) fail("--calib FILE.npy is required for --method gptq and for --budget-bits");
    tokens = io::read_tokens_npy(calib).ids;
    if (max_tokens >= 0 && int64_t(tokens.size()) > max_tokens) tokens.resize(size_t(max_tokens));
  }
  nlohmann::ordered_json recipe;
  recipe["method"] = method;
  recipe["spec"] = budget > 0 ? "" : moec::to_string(co.spec);
  recipe["subbit"] = co.subbit;
  if (budget > 0) {
    recipe["budget_bits"] = budget;
    std::vector<std::string> c;
    for (auto& sp : co.candidates) c.push_back(moec::to_string(sp));
    recipe["candidates"] = c;
  }
  if (co.method == quantize::Method::Gptq) {
    recipe["damp"] = damp;
    recipe["act_order"] = co.gptq.act_order;
  }
  if (need_data) {
    recipe["calib"] = {{"file", fs::path(calib).filename().string()},
                       {"sha256", sha256_file(calib)},
                       {"tokens", int64_t(tokens.size()) / seq_len * seq_len},
                       {"seq_len", seq_len}};
  }
  quantize::PackedCheckpointWriter writer(out, src->path(), recipe);
  auto report = quantize::quantize_experts(*src, tokens, co, [&](const std::string& name, const PackedMatrix& m,
                                                                  const nlohmann::ordered_json& info) {
    writer.add_packed(name, m, info);
  });
  writer.add_remaining(*src);
  writer.finish();
  std::printf("%s: %lld routed-expert weights at %.4f bits/weight, %d fallback matrices, %lld calibration tokens, %.1f s\n",
              out.c_str(), (long long)report.expert_weights, report.expert_bits_per_weight(), report.fallbacks,
              (long long)report.calib_tokens, report.seconds);
  return 0;
}

MOEC_COMMAND(quantize, "quantize routed experts (GPTQ / RTN, int/ternary/sub-bit) into a packed checkpoint", run_quantize);

}  // namespace moec::cli
