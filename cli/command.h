// Each moec subcommand lives in its own cli/cmd_*.cpp and registers itself here.
#pragma once
#include <functional>
#include <string>
#include <vector>

namespace moec::cli {

struct Command {
  std::string name;
  std::string summary;  // one line, shown by `moec --help`
  // argv[0] is the command name; returns the process exit code.
  std::function<int(int argc, char** argv)> run;
};

std::vector<Command>& registry();

struct Register {
  Register(Command c) { registry().push_back(std::move(c)); }
};

}  // namespace moec::cli

// Usage: MOEC_COMMAND(eval, "perplexity of a model on token files", run_eval);
#define MOEC_COMMAND(ident, summary, fn) \
  static ::moec::cli::Register moec_register_##ident({#ident, summary, fn})
