// moec: compress Mixture-of-Experts checkpoints. Dispatches to the registered subcommands.
#include <algorithm>
#include <cstdio>
#include <cstring>
#include <exception>

#include "cli/command.h"
#include "core/error.h"
#include "quantize/checkpoint.h"

namespace moec::cli {
std::vector<Command>& registry() {
  static std::vector<Command> r;
  return r;
}
}  // namespace moec::cli

static void usage(FILE* f) {
  auto cmds = moec::cli::registry();
  std::sort(cmds.begin(), cmds.end(), [](auto& a, auto& b) { return a.name < b.name; });
  std::fprintf(f,
               "moec %s: compress Mixture-of-Experts language models\n\n"
               "usage: moec COMMAND [ARGS...]      (moec COMMAND --help for a command's options)\n\ncommands:\n",
               MOEC_VERSION);
  for (auto& c : cmds) std::fprintf(f, "  %-14s %s\n", c.name.c_str(), c.summary.c_str());
}

int main(int argc, char** argv) {
  moec::quantize::register_packed_format();  // model::open_model reads packed moec checkpoints
  if (argc < 2 || !std::strcmp(argv[1], "--help") || !std::strcmp(argv[1], "-h") || !std::strcmp(argv[1], "help")) {
    usage(argc < 2 ? stderr : stdout);
    return argc < 2 ? 2 : 0;
  }
  if (!std::strcmp(argv[1], "--version")) {
    std::printf("moec %s\n", MOEC_VERSION);
    return 0;
  }
  for (auto& c : moec::cli::registry()) {
    if (c.name != argv[1]) continue;
    try {
      return c.run(argc - 1, argv + 1);
    } catch (const moec::Error& e) {
      std::fprintf(stderr, "moec %s: error: %s\n", argv[1], e.what());
      return 1;
    } catch (const std::exception& e) {
      std::fprintf(stderr, "moec %s: error: %s\n", argv[1], e.what());
      return 1;
    }
  }
  std::fprintf(stderr, "moec: unknown command '%s'\n\n", argv[1]);
  usage(stderr);
  return 2;
}
