#include "cli/options.h"

#include "core/error.h"
#include "core/progress.h"

namespace moec::cli {

bool parse_options(int argc, char** argv, const std::string& usage_line, const std::string& description,
                   po::options_description& opts, po::positional_options_description& pos, po::variables_map& vm) {
  opts.add_options()("help,h", "show this help")("quiet,q", "no progress output on stderr");
  try {
    po::store(po::command_line_parser(argc, argv).options(opts).positional(pos).run(), vm);
    if (vm.count("help")) {
      std::cout << "usage: moec " << usage_line << "\n\n" << description << "\n\n" << opts << "\n";
      return false;
    }
    po::notify(vm);
  } catch (const po::error& e) {
    fail(e.what(), "\nusage: moec ", usage_line, "   (moec ", argv[0], " --help for details)");
  }
  log_options().quiet = vm.count("quiet") > 0;
  return true;
}

}  // namespace moec::cli
