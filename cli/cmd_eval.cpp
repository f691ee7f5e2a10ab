// moec eval: perplexity of a model (Hugging Face or compressed moec checkpoint) on token files.
#include <cstdio>
#include <nlohmann/json.hpp>

#include "cli/command.h"
#include "cli/options.h"
#include "core/error.h"
#include "io/npy.h"
#include "kernels/gemv.h"
#include "model/forward.h"

namespace moec::cli {

static int run_eval(int argc, char** argv) {
  po::options_description opts("options");
  std::vector<std::string> token_files;
  std::string model_dir;
  model::EvalOptions eo;
  opts.add_options()("model", po::value(&model_dir)->required(), "model directory (Hugging Face or moec checkpoint)")(
      "tokens", po::value(&token_files)->required()->multitoken(), ".npy token file(s) (int32/int64/uint16/uint32)")(
      "window", po::value(&eo.window)->default_value(256), "tokens per window; tokens 1..W-1 of each window are scored")(
      "max-tokens", po::value(&eo.max_tokens)->default_value(-1), "use only the first N tokens of each file")(
      "chunk-tokens", po::value(&eo.chunk_tokens)->default_value(1 << 16),
      "tokens run through the layers together (memory: chunk x hidden x 4 bytes, plus one layer)")(
      "json", "print one JSON object per file on stdout")(
      "act-int8", "packed layers quantize their activations to int8 (per token and 128-column block) and use the "
                  "integer (VNNI) kernels for every batch size; see docs/CODECS.md");
  po::positional_options_description pos;
  pos.add("model", 1);
  po::variables_map vm;
  if (!parse_options(argc, argv, "eval MODEL_DIR --tokens FILE.npy [FILE.npy ...] [--window 256] [--max-tokens N] [--json]",
                     "Perplexity over non-overlapping windows: each window starts fresh at position 0 and its tokens\n"
                     "1..W-1 are predicted from their prefixes; a trailing partial window is dropped.",
                     opts, pos, vm))
    return 0;
  eo.progress = !vm.count("quiet");
  if (vm.count("act-int8")) set_default_act_quant(ActQuant::Int8);
  auto src = model::open_model(model_dir);
  const bool json = vm.count("json");
  for (auto& f : token_files) {
    auto toks = io::read_tokens_npy(f);
    model::check_tokens(toks.ids, src->spec().vocab, f);
    auto r = model::evaluate(*src, toks.ids, eo);
    if (json) {
      nlohmann::ordered_json j;
      j["model"] = model_dir;
      j["tokens_file"] = f;
      j["window"] = eo.window;
      j["tokens_scored"] = r.tokens_scored;
      j["nll"] = r.nll();
      j["ppl"] = r.ppl();
      j["seconds"] = r.seconds;
      j["tokens_per_second"] = r.tokens_per_second();
      j["act"] = act_quant_name(default_act_quant());
      std::printf("%s\n", j.dump().c_str());
    } else {
      std::printf("%s: %lld tokens scored (%lld windows of %d), mean nll %.6f, perplexity %.4f, %.0f tokens/s\n", f.c_str(),
                  (long long)r.tokens_scored, (long long)r.windows, eo.window, r.nll(), r.ppl(), r.tokens_per_second());
    }
  }
  return 0;
}

MOEC_COMMAND(eval, "perplexity of a model on .npy token files", run_eval);

}  // namespace moec::cli
