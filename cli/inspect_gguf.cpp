// `moec inspect FILE.gguf`: the validated header of a GGUF file (metadata and tensor table).
#include <cstdio>
#include <map>
#include <nlohmann/json.hpp>

#include "cli/inspect.h"
#include "io/gguf.h"

namespace moec::cli {

static int inspect_gguf(const std::string& path, bool json) {
  io::GgufFile f(path);  // validates; errors name the file and the key/tensor
  std::map<std::string, uint64_t> bytes_by_type;
  for (const auto& t : f.tensors()) bytes_by_type[io::ggml_type_name(t.type)] += t.nbytes;
  if (json) {
    nlohmann::ordered_json j;
    j["path"] = path;
    j["format"] = "gguf";
    j["version"] = f.version();
    j["alignment"] = f.alignment();
    j["file_bytes"] = f.file_size();
    nlohmann::ordered_json md = nlohmann::ordered_json::object();
    for (const auto& [k, v] : f.metadata()) md[k] = v.to_string(16);
    j["metadata"] = md;
    nlohmann::ordered_json ts = nlohmann::ordered_json::array();
    for (const auto& t : f.tensors())
      ts.push_back({{"name", t.name}, {"type", io::ggml_type_name(t.type)}, {"ne", t.ne}, {"offset", t.offset}, {"bytes", t.nbytes}});
    j["tensors"] = ts;
    j["bytes_by_type"] = bytes_by_type;
    std::printf("%s\n", j.dump(2).c_str());
    return 0;
  }
  std::printf("%s: GGUF v%u, alignment %u, %zu metadata keys, %zu tensors, %llu bytes\n", path.c_str(), f.version(),
              f.alignment(), f.metadata().size(), f.tensors().size(), (unsigned long long)f.file_size());
  for (const auto& [k, v] : f.metadata()) std::printf("  %-48s %s\n", k.c_str(), v.to_string().c_str());
  std::printf("tensors (ne innermost first):\n");
  for (const auto& t : f.tensors())
    std::printf("  %-36s %-6s %-20s %12llu bytes\n", t.name.c_str(), io::ggml_type_name(t.type), t.shape_str().c_str(),
                (unsigned long long)t.nbytes);
  for (const auto& [ty, b] : bytes_by_type) std::printf("  total %-6s %llu bytes\n", ty.c_str(), (unsigned long long)b);
  return 0;
}

static RegisterInspector register_gguf({
    [](const std::string& path) { return path.size() > 5 && path.compare(path.size() - 5, 5, ".gguf") == 0; },
    inspect_gguf,
});

}  // namespace moec::cli
