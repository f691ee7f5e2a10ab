// `moec inspect` dispatch: each kind of artifact registers an inspector (see cmd_inspect.cpp).
#pragma once
#include <functional>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "model/source.h"

namespace moec::cli {

struct Inspector {
  std::function<bool(const std::string& path)> accepts;
  std::function<int(const std::string& path, bool json)> run;
};
std::vector<Inspector>& inspectors();

struct RegisterInspector {
  RegisterInspector(Inspector i) { inspectors().push_back(std::move(i)); }
};

// The description `moec inspect MODEL --json` prints for a Hugging Face checkpoint.
nlohmann::ordered_json describe_checkpoint(const model::CheckpointSource& src);

}  // namespace moec::cli
