// moec inspect: what a checkpoint is (family, sizes, parameter counts by category, dtype, bytes).
// Other artifacts (profile statistics, GGUF files, compressed checkpoints) register inspectors here.
#include <cstdio>
#include <map>
#include <nlohmann/json.hpp>

#include "cli/command.h"
#include "cli/inspect.h"
#include "cli/options.h"
#include "core/error.h"
#include "model/source.h"

namespace moec::cli {

std::vector<Inspector>& inspectors() {
  static std::vector<Inspector> v;
  return v;
}

static std::string human_bytes(double b) {
  const char* u[] = {"B", "KiB", "MiB", "GiB", "TiB"};
  int i = 0;
  while (b >= 1024 && i < 4) b /= 1024, ++i;
  char s[32];
  std::snprintf(s, sizeof s, i ? "%.2f %s" : "%.0f %s", b, u[i]);
  return s;
}

static std::string human_count(double n) {
  char s[32];
  if (n >= 1e9) std::snprintf(s, sizeof s, "%.2fB", n / 1e9);
  else if (n >= 1e6) std::snprintf(s, sizeof s, "%.2fM", n / 1e6);
  else if (n >= 1e3) std::snprintf(s, sizeof s, "%.1fK", n / 1e3);
  else std::snprintf(s, sizeof s, "%.0f", n);
  return s;
}

nlohmann::ordered_json describe_checkpoint(const model::CheckpointSource& src) {
  const auto& s = src.spec();
  nlohmann::ordered_json j;
  j["path"] = src.path().string();
  j["family"] = model::family_name(s.family);
  j["layers"] = s.num_layers;
  j["moe_layers"] = s.num_moe_layers();
  j["hidden_size"] = s.hidden;
  j["vocab_size"] = s.vocab;
  j["heads"] = s.n_heads;
  j["kv_heads"] = s.n_kv_heads;
  j["head_dim"] = s.head_dim;
  j["experts"] = s.routing.num_experts;
  j["top_k"] = s.routing.top_k;
  j["expert_intermediate_size"] = s.moe_intermediate;
  j["shared_expert_intermediate_size"] = s.shared_intermediate;
  j["norm_topk_prob"] = s.routing.norm_topk;
  std::map<std::string, int64_t> params, bytes;
  std::map<std::string, int64_t> dtypes;
  int64_t total = 0;
  for (auto& t : model::expected_tensors(s)) {
    if (t.role == model::ExpectedTensor::Role::LmHead && s.tie_embeddings) continue;
    const auto& info = src.store().get(t.name);
    params[model::role_name(t.role)] += info.numel();
    bytes[model::role_name(t.role)] += int64_t(info.nbytes);
    dtypes[io::dtype_name(info.dtype)] += info.numel();
    total += info.numel();
  }
  nlohmann::ordered_json p;
  for (auto& [k, v] : params) p[k] = v;
  p["total"] = total;
  j["parameters"] = p;
  const int64_t per_expert = s.expert_params();
  j["active_parameters_per_token"] = total - params["routed experts"] + int64_t(s.num_moe_layers()) * s.routing.top_k * per_expert;
  nlohmann::ordered_json d;
  for (auto& [k, v] : dtypes) d[k] = v;
  j["dtypes"] = d;
  j["bytes_on_disk"] = src.bytes_on_disk();
  nlohmann::ordered_json b;
  for (auto& [k, v] : bytes) b[k] = v;
  j["bytes_by_category"] = b;
  return j;
}

static void print_checkpoint(const nlohmann::ordered_json& j) {
  std::printf("%s\n", j["path"].get<std::string>().c_str());
  std::printf("  family            %s\n", j["family"].get<std::string>().c_str());
  std::printf("  layers            %d (%d MoE)\n", j["layers"].get<int>(), j["moe_layers"].get<int>());
  std::printf("  hidden / vocab    %d / %d\n", j["hidden_size"].get<int>(), j["vocab_size"].get<int>());
  std::printf("  attention         %d heads, %d kv heads, head_dim %d\n", j["heads"].get<int>(), j["kv_heads"].get<int>(), j["head_dim"].get<int>());
  std::printf("  experts           %d routed (width %d), top-%d%s", j["experts"].get<int>(), j["expert_intermediate_size"].get<int>(),
              j["top_k"].get<int>(), j["norm_topk_prob"].get<bool>() ? ", renormalised" : "");
  if (j["shared_expert_intermediate_size"].get<int>() > 0) std::printf(", shared expert width %d", j["shared_expert_intermediate_size"].get<int>());
  std::printf("\n  dtypes           ");
  for (auto& [k, v] : j["dtypes"].items()) std::printf(" %s:%s", k.c_str(), human_count(v.get<double>()).c_str());
  std::printf("\n  bytes on disk     %s\n\n", human_bytes(j["bytes_on_disk"].get<double>()).c_str());
  const double total = j["parameters"]["total"].get<double>();
  std::printf("  %-16s %14s %8s %12s\n", "parameters", "count", "share", "bytes");
  for (auto& [k, v] : j["parameters"].items()) {
    if (k == "total") continue;
    std::printf("  %-16s %14lld %7.2f%% %12s\n", k.c_str(), (long long)v.get<int64_t>(), 100.0 * v.get<double>() / total,
                human_bytes(j["bytes_by_category"][k].get<double>()).c_str());
  }
  std::printf("  %-16s %14lld %7.2f%%\n", "total", (long long)total, 100.0);
  std::printf("  %-16s %14lld\n", "active/token", (long long)j["active_parameters_per_token"].get<int64_t>());
}

static int run_inspect(int argc, char** argv) {
  po::options_description opts("options");
  std::string path;
  opts.add_options()("path", po::value(&path)->required(), "model directory, compressed checkpoint, stats .h5 or .gguf file")(
      "json", "machine-readable output on stdout");
  po::positional_options_description pos;
  pos.add("path", 1);
  po::variables_map vm;
  if (!parse_options(argc, argv, "inspect PATH [--json]",
                     "Describes a model checkpoint (family, sizes, parameter counts by category, dtypes, bytes on disk),\n"
                     "or another moec artifact: a compressed checkpoint, profile statistics (.h5), a GGUF file.",
                     opts, pos, vm))
    return 0;
  const bool json = vm.count("json");
  for (auto& ins : inspectors())
    if (ins.accepts(path)) return ins.run(path, json);
  if (!std::filesystem::exists(path)) fail(path, ": no such file or directory");
  model::CheckpointSource src(path);
  auto j = describe_checkpoint(src);
  if (json) std::printf("%s\n", j.dump(2).c_str());
  else print_checkpoint(j);
  return 0;
}

MOEC_COMMAND(inspect, "describe a checkpoint, compressed model, profile (.h5) or GGUF file", run_inspect);

}  // namespace moec::cli
