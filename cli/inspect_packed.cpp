// `moec inspect` for packed moec checkpoints: bits per weight per layer and per codec, bytes by category,
// compression ratio against BF16, and the recipe. Checksums of every packed tensor are verified.
#include <cstdio>
#include <map>

#include "cli/inspect.h"
#include "quantize/checkpoint.h"

namespace moec::cli {

static int inspect_packed(const std::string& path, bool json) {
  quantize::PackedSource src(path);
  src.verify_all();
  const auto& spec = src.spec();
  struct Acc {
    int64_t weights = 0;
    uint64_t bytes = 0;
    double bpw() const { return weights ? 8.0 * double(bytes) / double(weights) : 0.0; }
  };
  std::map<int, Acc> layer_experts;          // routed experts per layer
  std::map<std::string, Acc> by_codec, by_role;
  Acc experts, total;
  for (auto& t : model::expected_tensors(spec)) {
    if (t.role == model::ExpectedTensor::Role::LmHead && spec.tie_embeddings) continue;
    int64_t n = 1;
    for (auto d : t.shape) n *= d;
    uint64_t b;
    std::string codec;
    if (src.is_packed(t.name)) {
      const PackedView& v = src.packed(t.name);
      b = stored_bytes(v);
      codec = codec_name(v.codec);
    } else if (src.is_lowrank(t.name)) {
      b = src.lowrank_bytes(t.name);  // right factor + share of the (possibly shared) left factor
      codec = "lowrank";
    } else {
      const auto& info = src.store().get(t.name);
      b = info.nbytes;
      codec = io::dtype_name(info.dtype);
    }
    const char* role = model::role_name(t.role);
    by_role[role].weights += n, by_role[role].bytes += b;
    by_codec[codec].weights += n, by_codec[codec].bytes += b;
    total.weights += n, total.bytes += b;
    if (t.role == model::ExpectedTensor::Role::RoutedExpert) {
      experts.weights += n, experts.bytes += b;
      // layer index from the name: the n-th MoE layer's experts appear in layer order
      for (int l = 0; l < spec.num_layers; ++l)
        if (t.name.rfind("model.layers." + std::to_string(l) + ".", 0) == 0) {
          layer_experts[l].weights += n, layer_experts[l].bytes += b;
          break;
        }
    }
  }
  const double ratio = total.bytes ? 2.0 * double(total.weights) / double(total.bytes) : 0.0;
  const auto& m = src.meta();
  if (json) {
    nlohmann::ordered_json j;
    j["path"] = path;
    j["format"] = m.value("format", "");
    j["version"] = m.value("version", 0);
    j["family"] = model::family_name(spec.family);
    j["layers"] = spec.num_layers;
    j["experts"] = spec.routing.num_experts;
    j["recipe"] = m.contains("recipe") ? m["recipe"] : nlohmann::json();
    j["source"] = m.contains("source") ? m["source"] : nlohmann::json();
    j["expert_bits_per_weight"] = experts.bpw();
    j["routed_expert_weights"] = experts.weights;
    j["routed_expert_bytes"] = experts.bytes;
    nlohmann::ordered_json L = nlohmann::ordered_json::array();
    for (auto& [l, a] : layer_experts) L.push_back({{"layer", l}, {"weights", a.weights}, {"bytes", a.bytes}, {"bits_per_weight", a.bpw()}});
    j["layers_expert_bits"] = L;
    nlohmann::ordered_json C, R;
    for (auto& [k, a] : by_codec) C[k] = {{"weights", a.weights}, {"bytes", a.bytes}, {"bits_per_weight", a.bpw()}};
    for (auto& [k, a] : by_role) R[k] = {{"weights", a.weights}, {"bytes", a.bytes}, {"bits_per_weight", a.bpw()}};
    j["by_codec"] = C;
    j["bytes_by_category"] = R;
    j["tensor_bytes"] = total.bytes;
    j["bytes_on_disk"] = src.bytes_on_disk();
    j["compression_ratio_vs_bf16"] = ratio;
    j["checksums"] = "ok";
    std::printf("%s\n", j.dump(1).c_str());
    return 0;
  }
  std::printf("%s: %s v%d, %s, %d layers, %d experts; checksums ok\n", path.c_str(), m.value("format", "").c_str(),
              m.value("version", 0), model::family_name(spec.family), spec.num_layers, spec.routing.num_experts);
  if (m.contains("recipe")) std::printf("recipe: %s\n", m["recipe"].dump().c_str());
  std::printf("routed experts: %lld weights, %.4f bits/weight (codes + scales + zeros + offsets + dictionaries)\n",
              (long long)experts.weights, experts.bpw());
  std::printf("\n%-8s %14s %14s %10s\n", "layer", "expert wts", "bytes", "bits/w");
  for (auto& [l, a] : layer_experts) std::printf("%-8d %14lld %14llu %10.4f\n", l, (long long)a.weights, (unsigned long long)a.bytes, a.bpw());
  std::printf("\n%-16s %14s %14s %10s\n", "codec/dtype", "weights", "bytes", "bits/w");
  for (auto& [k, a] : by_codec) std::printf("%-16s %14lld %14llu %10.4f\n", k.c_str(), (long long)a.weights, (unsigned long long)a.bytes, a.bpw());
  std::printf("\n%-16s %14s %14s %10s\n", "category", "weights", "bytes", "bits/w");
  for (auto& [k, a] : by_role) std::printf("%-16s %14lld %14llu %10.4f\n", k.c_str(), (long long)a.weights, (unsigned long long)a.bytes, a.bpw());
  std::printf("\ntotal %lld weights in %llu bytes (%llu on disk); compression vs BF16 %.2fx\n", (long long)total.weights,
              (unsigned long long)total.bytes, (unsigned long long)src.bytes_on_disk(), ratio);
  return 0;
}

static RegisterInspector packed_inspector({[](const std::string& p) { return quantize::is_packed_checkpoint(p); }, inspect_packed});

}  // namespace moec::cli
