// moec profile: routing statistics of a model on calibration tokens -> stats.h5 + stats.json.
#include <cstdio>
#include <filesystem>

#include "cli/command.h"
#include "cli/options.h"
#include "core/error.h"
#include "core/files.h"
#include "core/progress.h"
#include "model/source.h"
#include "profile/profile.h"

namespace moec::cli {

static int run_profile(int argc, char** argv) {
  po::options_description opts("options");
  std::string model_dir, out;
  std::vector<std::string> calib, calib_domains;
  profile::ProfileOptions po_;
  opts.add_options()("model", po::value(&model_dir)->required(), "model directory (Hugging Face or moec checkpoint)")(
      "calib", po::value(&calib)->multitoken(), ".npy token file(s); each is a domain named after the file stem")(
      "calib-domain", po::value(&calib_domains)->multitoken(), "NAME=FILE.npy: a named calibration domain (repeatable)")(
      "seq-len", po::value(&po_.seq_len)->default_value(256), "tokens per window (each window starts at position 0)")(
      "max-tokens", po::value(&po_.max_tokens)->default_value(-1), "profile only the first N tokens of each domain")(
      "sample-tokens", po::value(&po_.sample_tokens)->default_value(256),
      "K tokens per domain on which every expert is run (output similarity, mean outputs)")(
      "chunk-tokens", po::value(&po_.chunk_tokens)->default_value(1 << 16), "tokens run through the layers together (memory)")(
      "date", po::value(&po_.created), "ISO date to record instead of now (reproducible files; or env MOEC_PROFILE_DATE)")(
      "output,o", po::value(&out)->required(), "stats file to write (.h5); a JSON summary goes beside it (.json)")(
      "force", "overwrite existing output files");
  po::positional_options_description pos;
  pos.add("model", 1);
  po::variables_map vm;
  if (!parse_options(argc, argv,
                     "profile MODEL_DIR --calib FILE.npy [--calib-domain NAME=FILE.npy ...] [--seq-len 256] [--max-tokens N] "
                     "[--sample-tokens K] -o stats.h5",
                     "Runs the streaming forward pass over calibration tokens and records, for every MoE layer and expert,\n"
                     "selection counts, gate mass, router statistics, entropy, balance, co-activation, EASY-EP and REAP\n"
                     "importance, activation norms and output similarity. Each domain is profiled separately and in total.\n"
                     "Layout of the files: docs/PROFILE.md.",
                     opts, pos, vm))
    return 0;
  const bool force = vm.count("force");
  std::filesystem::path out_path(out), json_path = profile::summary_path(out);
  if (out_path.extension() != ".h5") fail("-o ", out, ": the stats file must end in .h5");
  for (auto& p : {out_path, json_path})
    if (std::filesystem::exists(p) && !force) fail(p.string(), " exists (use --force to overwrite)");
  if (calib.empty() && calib_domains.empty()) fail("no calibration tokens: give --calib FILE.npy or --calib-domain NAME=FILE.npy");
  po_.progress = !vm.count("quiet");
  auto src = model::open_model(model_dir);
  const int vocab = src->spec().vocab;
  std::vector<profile::Domain> domains;
  for (auto& f : calib) domains.push_back(profile::load_domain(std::filesystem::path(f).stem().string(), f, vocab));
  for (auto& nf : calib_domains) {
    auto eq = nf.find('=');
    if (eq == std::string::npos || eq == 0 || eq + 1 == nf.size()) fail("--calib-domain ", nf, ": expected NAME=FILE.npy");
    domains.push_back(profile::load_domain(nf.substr(0, eq), nf.substr(eq + 1), vocab));
  }
  po_.model_path = model_dir;
  auto stats = profile::profile_model(*src, domains, po_);
  profile::write_stats_h5(stats, out_path);
  write_file_atomic(json_path, profile::summary_json(stats).dump(2) + "\n");
  log_info("wrote " + out_path.string() + " and " + json_path.string());
  std::printf("%s", profile::summary_text(stats).c_str());
  return 0;
}

MOEC_COMMAND(profile, "routing statistics of a model on calibration tokens (stats.h5)", run_profile);

}  // namespace moec::cli
