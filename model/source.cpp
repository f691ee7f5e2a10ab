#include "model/source.h"

#include "core/error.h"

namespace moec::model {

Vector WeightSource::vector(const std::string& name) const {
  Matrix m = matrix(name);
  return Eigen::Map<Vector>(m.data(), m.size());
}

std::vector<ExpectedTensor> expected_tensors(const ModelSpec& s) {
  using R = ExpectedTensor::Role;
  std::vector<ExpectedTensor> v;
  const int64_t H = s.hidden, q = int64_t(s.n_heads) * s.head_dim, kv = int64_t(s.n_kv_heads) * s.head_dim;
  v.push_back({s.embed(), {s.vocab, H}, R::Embedding});
  for (int l = 0; l < s.num_layers; ++l) {
    v.push_back({s.input_norm(l), {H}, R::Norm});
    v.push_back({s.post_attn_norm(l), {H}, R::Norm});
    v.push_back({s.attn(l, 'q'), {q, H}, R::Attention});
    v.push_back({s.attn(l, 'k'), {kv, H}, R::Attention});
    v.push_back({s.attn(l, 'v'), {kv, H}, R::Attention});
    v.push_back({s.attn(l, 'o'), {H, q}, R::Attention});
    if (s.qkv_bias) {
      v.push_back({s.attn_bias(l, 'q'), {q}, R::Attention});
      v.push_back({s.attn_bias(l, 'k'), {kv}, R::Attention});
      v.push_back({s.attn_bias(l, 'v'), {kv}, R::Attention});
    }
    if (s.o_bias) v.push_back({s.attn_bias(l, 'o'), {H}, R::Attention});
    if (s.qk_norm == ModelSpec::QkNorm::PerHead) {
      v.push_back({s.qk_norm_weight(l, 'q'), {s.head_dim}, R::Norm});
      v.push_back({s.qk_norm_weight(l, 'k'), {s.head_dim}, R::Norm});
    } else if (s.qk_norm == ModelSpec::QkNorm::Full) {
      v.push_back({s.qk_norm_weight(l, 'q'), {q}, R::Norm});
      v.push_back({s.qk_norm_weight(l, 'k'), {kv}, R::Norm});
    }
    if (!s.moe_layer[size_t(l)]) {
      const int64_t I = s.dense_intermediate;
      v.push_back({s.dense_mlp(l, Proj::Gate), {I, H}, R::DenseMlp});
      v.push_back({s.dense_mlp(l, Proj::Up), {I, H}, R::DenseMlp});
      v.push_back({s.dense_mlp(l, Proj::Down), {H, I}, R::DenseMlp});
      continue;
    }
    const int64_t E = s.routing.num_experts, I = s.moe_intermediate;
    v.push_back({s.router(l), {E, H}, R::Router});
    if (s.routing.correction_bias) v.push_back({s.router_bias(l), {E}, R::Router});
    for (int e = 0; e < E; ++e) {
      v.push_back({s.expert(l, e, Proj::Gate), {I, H}, R::RoutedExpert});
      v.push_back({s.expert(l, e, Proj::Up), {I, H}, R::RoutedExpert});
      v.push_back({s.expert(l, e, Proj::Down), {H, I}, R::RoutedExpert});
    }
    if (s.shared_intermediate > 0) {
      const int64_t S = s.shared_intermediate;
      v.push_back({s.shared_expert(l, Proj::Gate), {S, H}, R::SharedExpert});
      v.push_back({s.shared_expert(l, Proj::Up), {S, H}, R::SharedExpert});
      v.push_back({s.shared_expert(l, Proj::Down), {H, S}, R::SharedExpert});
      if (s.shared_expert_gate) v.push_back({s.shared_gate(l), {1, H}, R::SharedExpert});
    }
  }
  v.push_back({s.final_norm(), {H}, R::Norm});
  if (!s.tie_embeddings) v.push_back({s.lm_head(), {s.vocab, H}, R::LmHead});
  return v;
}

const char* role_name(ExpectedTensor::Role r) {
  switch (r) {
    case ExpectedTensor::Role::Embedding: return "embeddings";
    case ExpectedTensor::Role::Attention: return "attention";
    case ExpectedTensor::Role::Norm: return "norms";
    case ExpectedTensor::Role::Router: return "routers";
    case ExpectedTensor::Role::RoutedExpert: return "routed experts";
    case ExpectedTensor::Role::SharedExpert: return "shared experts";
    case ExpectedTensor::Role::DenseMlp: return "dense mlp";
    case ExpectedTensor::Role::LmHead: return "lm_head";
  }
  return "?";
}

CheckpointSource::CheckpointSource(const std::filesystem::path& dir)
    : dir_(dir), spec_(load_spec(dir)), store_(io::TensorStore::open(dir)) {
  for (auto& t : expected_tensors(spec_)) {
    if (!store_.has(t.name)) fail(dir.string(), ": tensor '", t.name, "' (", role_name(t.role), ") required by config.json is missing");
    const auto& info = store_.get(t.name);
    io::expect_shape(info, t.shape);
    if (!io::dtype_is_float(info.dtype)) fail(info.file, ": tensor '", t.name, "' has dtype ", io::dtype_name(info.dtype), ", expected a float type");
  }
}

Matrix CheckpointSource::matrix(const std::string& name) const {
  Matrix m = io::to_matrix(store_.get(name));
  store_.release(name);  // the fp32 copy is made: the mmap'd pages can go (memory stays ~ one layer)
  return m;
}

bool OverlaySource::has(const std::string& name) const {
  return linears_.count(name) || matrices_.count(name) || base_.has(name);
}
Matrix OverlaySource::matrix(const std::string& name) const {
  if (auto it = matrices_.find(name); it != matrices_.end()) return it->second;
  if (auto it = linears_.find(name); it != linears_.end()) return it->second->dense();
  return base_.matrix(name);
}
std::shared_ptr<const Linear> OverlaySource::linear(const std::string& name) const {
  if (auto it = linears_.find(name); it != linears_.end()) return it->second;
  if (auto it = matrices_.find(name); it != matrices_.end()) return std::make_shared<DenseLinear>(it->second);
  return base_.linear(name);
}

static std::vector<ModelOpener>& openers() {
  static std::vector<ModelOpener> o;
  return o;
}
void register_model_opener(ModelOpener opener) { openers().push_back(std::move(opener)); }

std::unique_ptr<WeightSource> open_model(const std::filesystem::path& dir) {
  if (!std::filesystem::exists(dir)) fail(dir.string(), ": no such model directory");
  for (auto& o : openers())
    if (auto s = o(dir)) return s;
  return std::make_unique<CheckpointSource>(dir);
}

}  // namespace moec::model
