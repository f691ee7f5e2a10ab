// moec report: one self-contained HTML page (inline SVG, no network) from profile statistics.
#include <cstdio>
#include <filesystem>

#include "cli/command.h"
#include "cli/options.h"
#include "core/error.h"
#include "core/progress.h"
#include "profile/profile.h"
#include "report/report.h"

namespace moec::cli {

static int run_report(int argc, char** argv) {
  po::options_description opts("options");
  std::string stats_path, out;
  opts.add_options()("stats", po::value(&stats_path)->required(), "profile statistics (.h5 from moec profile)")(
      "output,o", po::value(&out)->required(), "HTML file to write")("force", "overwrite an existing output file");
  po::positional_options_description pos;
  pos.add("stats", 1);
  po::variables_map vm;
  if (!parse_options(argc, argv, "report stats.h5 -o report.html [--force]",
                     "Writes one self-contained HTML page (no scripts, no network, inline SVG): layer x expert usage,\n"
                     "per-domain differences, co-activation, importance, balance, entropy and output similarity.",
                     opts, pos, vm))
    return 0;
  if (std::filesystem::exists(out) && !vm.count("force")) fail(out, " exists (use --force to overwrite)");
  auto s = profile::read_stats_h5(stats_path);
  report::Page page("Routing profile: " + std::filesystem::path(s.model_path).filename().string());
  page.subtitle(s.model_path + " (" + s.model_type + "), " + std::to_string(s.total().tokens) + " tokens, profiled " + s.created +
                " by moec " + s.moec_version);
  profile::add_profile_report(page, s);
  page.write(out);
  log_info("wrote " + out);
  return 0;
}

MOEC_COMMAND(report, "HTML report (inline SVG) of profile statistics", run_report);

}  // namespace moec::cli
