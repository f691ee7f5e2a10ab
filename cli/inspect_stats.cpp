// `moec inspect stats.h5`: per-layer tables of profile statistics (or the JSON summary with --json).
#include <cstdio>
#include <filesystem>
#include <fstream>

#include "cli/inspect.h"
#include "profile/profile.h"

namespace moec::cli {

static bool is_hdf5(const std::string& path) {
  // HDF5 superblock signature at offset 0 (files written by moec have no user block).
  std::ifstream in(path, std::ios::binary);
  char sig[8] = {};
  return in && in.read(sig, 8) && std::string(sig, 8) == std::string("\x89HDF\r\n\x1a\n", 8);
}

static RegisterInspector stats_inspector({
    [](const std::string& path) { return std::filesystem::is_regular_file(path) && is_hdf5(path); },
    [](const std::string& path, bool json) {
      auto s = profile::read_stats_h5(path);
      if (json) std::printf("%s\n", profile::summary_json(s).dump(2).c_str());
      else std::printf("%s", profile::summary_text(s).c_str());
      return 0;
    },
});

}  // namespace moec::cli
