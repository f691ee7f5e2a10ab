// moec compress: checkpoint -> compressed checkpoint in one command, from a recipe.
#include <cstdio>

#include "cli/command.h"
#include "cli/options.h"
#include "compress/compress.h"
#include "core/error.h"
#include "core/progress.h"

namespace moec::cli {

static int run_compress(int argc, char** argv) {
  po::options_description opts("options");
  std::string model, calib, eval, recipe_text, out;
  compress::Options o;
  opts.add_options()("model", po::value(&model)->required(), "Hugging Face MoE checkpoint directory")(
      "calib", po::value(&calib)->required(), "calibration tokens (.npy)")(
      "eval", po::value(&eval), "evaluation tokens (.npy): perplexity before and after")(
      "recipe", po::value(&recipe_text)->default_value(compress::kDefaultRecipe), "recipe string or JSON file (see below)")(
      "output,o", po::value(&out)->required(), "output directory (compressed checkpoint + report.html + report.json)")(
      "max-calib-tokens", po::value(&o.max_calib_tokens)->default_value(-1), "use only the first N calibration tokens")(
      "max-eval-tokens", po::value(&o.max_eval_tokens)->default_value(-1), "use only the first N evaluation tokens")(
      "seq-len", po::value(&o.seq_len)->default_value(256), "window length for calibration and evaluation")(
      "resume", "continue an interrupted run in OUT (its .work holds the finished stages and quantized layers)")(
      "force", "replace an existing OUT")("json", "print the result as JSON on stdout");
  po::positional_options_description pos;
  pos.add("model", 1);
  po::variables_map vm;
  if (!parse_options(argc, argv,
                     "compress MODEL --calib CALIB.npy [--eval EVAL.npy] [--recipe R] -o OUT [--resume] [--force] [--json]",
                     "Runs a whole compression recipe: profile -> prune or merge -> quantize (GPTQ sequential, layer by\n"
                     "layer) -> evaluate, and writes a checkpoint that `moec eval` runs and `moec export` converts, with\n"
                     "report.html and report.json. Every finished stage and every quantized layer is committed under\n"
                     "OUT/.work: after a crash or kill, --resume continues with byte-identical output. Recipe grammar: " +
                         compress::recipe_help() + "\nExample: --recipe " + compress::kDefaultRecipe,
                     opts, pos, vm))
    return 0;
  auto recipe = compress::parse_recipe(recipe_text);  // validated before any work
  o.model = model;
  o.calib = calib;
  o.eval = eval;
  o.out = out;
  o.resume = vm.count("resume") > 0;
  o.force = vm.count("force") > 0;
  o.progress = !vm.count("quiet");
  std::string cmd = "moec";
  for (int i = 0; i < argc; ++i) cmd += std::string(" ") + argv[i];
  o.command_line = cmd;
  auto r = compress::run(recipe, o);
  if (vm.count("json")) {
    std::printf("%s\n", r.to_json().dump(2).c_str());
  } else {
    std::printf("%s: recipe %s\n", out.c_str(), recipe.str().c_str());
    if (!eval.empty()) std::printf("  perplexity %.4f -> %.4f on %s (%lld tokens scored)\n", r.ppl_before, r.ppl_after, eval.c_str(), (long long)r.eval_tokens_scored);
    std::printf("  routed experts at %.3f bits/weight; checkpoint %.2f MiB -> %.2f MiB (%.1fx); %.1f s\n", r.expert_bits_per_weight,
                double(r.bytes_before) / (1 << 20), double(r.bytes_after) / (1 << 20),
                r.bytes_after ? double(r.bytes_before) / double(r.bytes_after) : 0.0, r.seconds);
    std::printf("  report: %s/report.html\n", out.c_str());
  }
  return 0;
}

MOEC_COMMAND(compress, "run a whole compression recipe (profile, prune or merge, quantize, evaluate, report)", run_compress);

}  // namespace moec::cli
