// moec report: one self-contained HTML page (inline SVG, no network) from profile statistics.
#include <cstdio>
#include <filesystem>

#include "cli/command.h"
#include "cli/options.h"
#include "core/error.h"
#include "core/files.h"
#include "core/progress.h"
#include "profile/profile.h"
#include "report/report.h"
#include "report/sections.h"

namespace moec::cli {

static int run_report(int argc, char** argv) {
  po::options_description opts("options");
  std::string stats_path, points_path, title = "Perplexity vs bits per weight", out;
  double reference = 0;
  opts.add_options()("stats", po::value(&stats_path), "profile statistics (.h5 from moec profile)")(
      "points", po::value(&points_path),
      "instead of stats: CSV 'series,label,bits,ppl' of compressed models (bits from `moec inspect --json`, ppl from "
      "`moec eval --json`): a perplexity-vs-bits chart and table")(
      "reference-ppl", po::value(&reference)->default_value(0), "with --points: the uncompressed model's perplexity")(
      "title", po::value(&title), "with --points: page title")(
      "output,o", po::value(&out)->required(), "HTML file to write")("force", "overwrite an existing output file");
  po::positional_options_description pos;
  pos.add("stats", 1);
  po::variables_map vm;
  if (!parse_options(argc, argv, "report stats.h5 -o report.html [--force]\n       moec report --points points.csv [--reference-ppl P] -o curve.html",
                     "Writes one self-contained HTML page (no scripts, no network, inline SVG): layer x expert usage,\n"
                     "per-domain differences, co-activation, importance, balance, entropy and output similarity;\n"
                     "or, with --points, perplexity against bits per weight for several compressed models.",
                     opts, pos, vm))
    return 0;
  if (stats_path.empty() == points_path.empty()) fail("give either stats.h5 or --points FILE.csv");
  if (std::filesystem::exists(out) && !vm.count("force")) fail(out, " exists (use --force to overwrite)");
  if (!points_path.empty()) {
    const auto points = report::parse_quality_csv(read_file(points_path), points_path);
    report::Page page(title);
    page.subtitle(std::to_string(points.size()) + " models from " + points_path);
    report::add_quality_curve(page, points, reference);
    page.write(out);
    log_info("wrote " + out);
    return 0;
  }
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
