// Expert pruning: scores against their formulas, selection against brute force, the pruned checkpoint
// against a masked-router forward of the original, reconstruction against exhaustive search done here,
// and plan / stats rejection.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <numeric>
#include <random>

#include "core/error.h"
#include "core/files.h"
#include "io/safetensors.h"
#include "model/checkpoint_writer.h"
#include "model/forward.h"
#include "model/linear.h"
#include "prune/prune.h"
#include "support/test_util.h"

using namespace moec;
namespace fs = std::filesystem;

namespace {

template <class F>
std::string error_of(F&& f) {
  try {
    f();
  } catch (const Error& e) {
    return e.what();
  }
  return "(no error)";
}

profile::LayerStats layer_stats(int layer, std::vector<int64_t> sel, std::vector<double> mass, std::vector<double> easy,
                                std::vector<double> reap, std::vector<double> norm) {
  profile::LayerStats L;
  L.layer = layer;
  L.experts = int(sel.size());
  L.top_k = 2;
  L.selected = sel;
  L.gate_mass = mass;
  L.easyep = easy;
  L.reap_sum = reap;
  L.act_norm_sum = norm;
  return L;
}

// The final-position logits of every token of the original model with the router logits of dropped
// experts set to -inf before routing (the definition of pruning), written here from the pieces.
Matrix masked_forward(const model::WeightSource& src, const std::vector<int32_t>& tokens, int T,
                      const std::vector<std::vector<int>>& keep) {
  const auto& s = src.spec();
  model::Forward fwd(src);
  Matrix h = fwd.embed(tokens.data(), int64_t(tokens.size()));
  size_t mi = 0;
  for (int l = 0; l < s.num_layers; ++l) {
    auto w = fwd.load_layer(l);
    fwd.attention(l, w, h, T);
    Matrix x = fwd.moe_input(w, h);
    if (!s.moe_layer[size_t(l)]) {
      h += fwd.moe(l, w, x);
      continue;
    }
    const auto& kp = keep[mi++];
    Matrix logits = x * w.router.transpose();
    for (int e = 0; e < s.routing.num_experts; ++e)
      if (!std::count(kp.begin(), kp.end(), e)) logits.col(e).setConstant(-INFINITY);
    auto r = model::route(logits, s.routing);
    Matrix y = Matrix::Zero(x.rows(), s.hidden);
    for (int64_t t = 0; t < x.rows(); ++t)
      for (int j = 0; j < r.k; ++j) {
        const int e = r.expert[size_t(t) * r.k + j];
        const float g = r.weight[size_t(t) * r.k + j];
        if (g == 0.0f) continue;  // a masked expert picked only because top-k exceeds the kept count
        Matrix act, out;
        model::Forward::swiglu(*src.linear(s.expert(l, e, model::Proj::Gate)), *src.linear(s.expert(l, e, model::Proj::Up)),
                               *src.linear(s.expert(l, e, model::Proj::Down)), x.row(t), act, out);
        y.row(t) += g * out.row(0);
      }
    if (s.shared_intermediate > 0) {
      Matrix act, out;
      model::Forward::swiglu(*src.linear(s.shared_expert(l, model::Proj::Gate)), *src.linear(s.shared_expert(l, model::Proj::Up)),
                             *src.linear(s.shared_expert(l, model::Proj::Down)), x, act, out);
      if (s.shared_expert_gate) {
        Matrix sg = src.matrix(s.shared_gate(l));
        for (int64_t t = 0; t < x.rows(); ++t) out.row(t) *= 1.0f / (1.0f + std::exp(-x.row(t).dot(sg.row(0))));
      }
      y += out;
    }
    h += y;
  }
  return fwd.logits(h, 0, h.rows());
}

Matrix plain_forward(const model::WeightSource& src, const std::vector<int32_t>& tokens, int T) {
  model::Forward fwd(src);
  Matrix h = fwd.embed(tokens.data(), int64_t(tokens.size()));
  for (int l = 0; l < src.spec().num_layers; ++l) fwd.run_layer(l, fwd.load_layer(l), h, T);
  return fwd.logits(h, 0, h.rows());
}

using test::random_tokens;

prune::PrunePlan make_plan(const fs::path& dir, const std::vector<std::vector<int>>& keep) {
  auto spec = model::load_spec(dir);
  prune::PrunePlan p;
  p.method = "frequency";
  p.model_type = spec.model_type;
  p.config_sha256 = sha256_file(dir / "config.json");
  p.num_layers = spec.num_layers;
  p.num_experts = spec.routing.num_experts;
  p.top_k = spec.routing.top_k;
  size_t i = 0;
  for (int l = 0; l < spec.num_layers; ++l)
    if (spec.moe_layer[size_t(l)]) {
      prune::LayerPlan lp;
      lp.layer = l;
      lp.num_experts = spec.routing.num_experts;
      lp.keep = keep[i++];
      p.layers.push_back(lp);
    }
  return p;
}

std::string dir_digest(const fs::path& d) {
  std::vector<std::string> parts;
  for (auto& e : fs::recursive_directory_iterator(d)) parts.push_back(e.path().string() + ":" + (e.is_regular_file() ? sha256_file(e.path()) : "dir"));
  std::sort(parts.begin(), parts.end());
  std::string all;
  for (auto& p : parts) all += p + "\n";
  return all;
}

}  // namespace

// ----------------------------------------------------------------------------------------- criteria

TEST(PruneCriteria, ScoresFollowTheirFormulas) {
  auto L = layer_stats(0, {10, 0, 4, 6}, {5.0, 0.0, 3.0, 1.0}, {2.0, 0.0, 7.0, 1.0}, {20.0, 0.0, 8.0, 3.0}, {30.0, 0.0, 40.0, 6.0});
  using C = prune::Criterion;
  EXPECT_EQ(prune::expert_scores(L, C::Frequency), (std::vector<double>{10, 0, 4, 6}));
  EXPECT_EQ(prune::expert_scores(L, C::GateMass), (std::vector<double>{5, 0, 3, 1}));
  EXPECT_EQ(prune::expert_scores(L, C::EasyEp), (std::vector<double>{2, 0, 7, 1}));
  EXPECT_EQ(prune::expert_scores(L, C::Reap), (std::vector<double>{2.0, 0.0, 2.0, 0.5}));  // mean over routed tokens
  EXPECT_EQ(prune::expert_scores(L, C::Ean), (std::vector<double>{3.0, 0.0, 10.0, 1.0}));
  EXPECT_EQ(prune::expert_scores(L, C::EanSum), (std::vector<double>{30.0, 0.0, 40.0, 6.0}));
  EXPECT_NE(error_of([&] { prune::expert_scores(L, C::Reconstruct); }).find("no per-expert score"), std::string::npos);
  L.easyep.pop_back();
  EXPECT_NE(error_of([&] { prune::expert_scores(L, C::EasyEp); }).find("'easyep' has 3 values for 4 experts"), std::string::npos);
  EXPECT_EQ(prune::parse_criterion("gate-mass"), C::GateMass);
  EXPECT_NE(error_of([] { prune::parse_criterion("random"); }).find("frequency, gate-mass, reap, easyep, ean, ean-sum, reconstruct"), std::string::npos);
}

TEST(PruneCriteria, DomainsAreNormalisedThenAveraged) {
  profile::ProfileStats st;
  profile::DomainStats a, b;
  a.name = "code";
  b.name = "prose";
  a.layers = {layer_stats(0, {300, 100, 0, 0}, {}, {}, {}, {})};  // large domain
  b.layers = {layer_stats(0, {0, 1, 2, 1}, {}, {}, {}, {})};      // small domain
  st.domains = {a, b};
  auto s = prune::layer_scores(st, prune::Criterion::Frequency, {"code", "prose"});
  ASSERT_EQ(s.size(), 1u);
  const std::vector<double> want = {(0.75 + 0.0) / 2, (0.25 + 0.25) / 2, (0.0 + 0.5) / 2, (0.0 + 0.25) / 2};
  for (int e = 0; e < 4; ++e) EXPECT_DOUBLE_EQ(s[0][size_t(e)], want[size_t(e)]);
  EXPECT_NE(error_of([&] { prune::layer_scores(st, prune::Criterion::Frequency, {"math"}); }).find("no domain 'math' (domains: code, prose)"),
            std::string::npos);
}

TEST(PruneSelect, UniformKeepsTopScoresWithLowerIndexOnTies) {
  auto k = prune::select_uniform({{1, 5, 5, 0, 5}, {3, 2, 1, 0, 9}}, 2);
  EXPECT_EQ(k[0], (std::vector<int>{1, 2}));
  EXPECT_EQ(k[1], (std::vector<int>{0, 4}));
  EXPECT_EQ(prune::keep_count(8, 0, 0.25), 6);
  EXPECT_EQ(prune::keep_count(8, 4, 0), 4);
  EXPECT_NE(error_of([] { prune::keep_count(8, 9, 0); }).find("cannot keep 9 of 8"), std::string::npos);
  EXPECT_NE(error_of([] { prune::keep_count(8, 0, 1.0); }).find("--ratio"), std::string::npos);
}

TEST(PruneSelect, AdaptiveMatchesBruteForceOverAllocations) {
  std::mt19937 rng(7);
  std::uniform_real_distribution<double> u(0, 1);
  const int L = 3, E = 5, keep = 3, min_keep = 2;
  std::vector<std::vector<double>> s(L, std::vector<double>(E));
  for (auto& r : s)
    for (auto& v : r) v = u(rng) * u(rng);
  auto got = prune::select_adaptive(s, keep, min_keep);
  // Brute force: every choice of kept sets with each layer's best min_keep forced in and a total of
  // keep * L; the best total normalised score must equal ours.
  auto norm = s;
  for (auto& r : norm) {
    double sum = std::accumulate(r.begin(), r.end(), 0.0);
    for (auto& v : r) v /= sum;
  }
  auto forced = prune::select_uniform(s, min_keep);
  double best = -1;
  for (int mask = 0; mask < (1 << (L * E)); ++mask) {
    if (__builtin_popcount(unsigned(mask)) != keep * L) continue;
    bool ok = true;
    double tot = 0;
    for (int l = 0; l < L && ok; ++l)
      for (int e = 0; e < E; ++e) {
        bool on = mask >> (l * E + e) & 1;
        if (!on && std::count(forced[size_t(l)].begin(), forced[size_t(l)].end(), e)) ok = false;
        if (on) tot += norm[size_t(l)][size_t(e)];
      }
    if (ok) best = std::max(best, tot);
  }
  double ours = 0;
  int count = 0;
  for (int l = 0; l < L; ++l) {
    EXPECT_GE(int(got[size_t(l)].size()), min_keep);
    EXPECT_TRUE(std::is_sorted(got[size_t(l)].begin(), got[size_t(l)].end()));
    for (int e : got[size_t(l)]) ours += norm[size_t(l)][size_t(e)], ++count;
  }
  EXPECT_EQ(count, keep * L);
  EXPECT_NEAR(ours, best, 1e-12);
}

TEST(PruneRouting, SubsetRoutingEqualsMaskedLogits) {
  std::mt19937 rng(3);
  std::normal_distribution<float> nd;
  Matrix logits(50, 7);
  for (int64_t i = 0; i < logits.size(); ++i) logits.data()[i] = nd(rng);
  for (bool norm : {true, false}) {
    model::RoutingSpec rs;
    rs.num_experts = 7;
    rs.top_k = 3;
    rs.norm_topk = norm;
    const std::vector<int> keep = {0, 2, 3, 6};
    Matrix masked = logits;
    for (int e : {1, 4, 5}) masked.col(e).setConstant(-INFINITY);
    auto want = model::route(masked, rs);
    auto got = prune::route_subset(logits, keep, rs);
    ASSERT_EQ(got.k, 3);
    EXPECT_EQ(got.expert, want.expert);
    for (size_t i = 0; i < got.weight.size(); ++i) EXPECT_NEAR(got.weight[i], want.weight[i], 1e-6);
  }
}

// -------------------------------------------------------------------------------- pruned checkpoints

class PruneModel : public ::testing::TestWithParam<std::string> {};

TEST_P(PruneModel, PrunedCheckpointEqualsMaskedRouterForward) {
  test::TempDir dir("prune_model");
  auto m = test::make_tiny_model(GetParam(), 11);
  test::write_model_dir(m, dir / "in");
  write_file_atomic(dir / "in" / "tokenizer.json", "{\"tok\": 1}");
  const std::string before = dir_digest(dir / "in");
  const std::vector<std::vector<int>> keep = {{1, 3, 4}, {0, 2, 5}};
  auto plan = make_plan(dir / "in", keep);
  prune::apply_plan(plan, dir / "in", dir / "out", {});
  EXPECT_EQ(dir_digest(dir / "in"), before) << "the input directory was modified";

  model::CheckpointSource orig(dir / "in"), pruned(dir / "out");
  const auto& ps = pruned.spec();
  EXPECT_EQ(ps.routing.num_experts, 3);
  EXPECT_EQ(ps.routing.top_k, 2);
  EXPECT_EQ(ps.config[ps.experts_key()], 3);
  // Kept experts are the original bytes, renumbered.
  for (size_t i = 0; i < keep.size(); ++i)
    for (int j = 0; j < 3; ++j)
      for (auto p : {model::Proj::Gate, model::Proj::Up, model::Proj::Down}) {
        const auto& a = orig.store().get(orig.spec().expert(int(i), keep[i][size_t(j)], p));
        const auto& b = pruned.store().get(ps.expert(int(i), j, p));
        ASSERT_EQ(a.nbytes, b.nbytes);
        EXPECT_EQ(0, std::memcmp(a.data, b.data, a.nbytes)) << ps.expert(int(i), j, p);
        EXPECT_EQ(a.dtype, b.dtype);
      }
  EXPECT_TRUE(fs::exists(dir / "out" / "tokenizer.json"));
  auto meta = nlohmann::json::parse(read_file(dir / "out" / "moec.json"));
  EXPECT_EQ(meta["format"], "moec-hf");
  EXPECT_EQ(meta["source"]["config_sha256"], sha256_file(dir / "in" / "config.json"));
  EXPECT_EQ(meta["plan"]["layers"][1]["keep"], nlohmann::json({0, 2, 5}));

  const int T = 8;
  auto tokens = random_tokens(2 * T, int(ps.vocab), 5);
  Matrix want = masked_forward(orig, tokens, T, keep);
  Matrix got = plain_forward(pruned, tokens, T);
  Matrix view = plain_forward(*prune::pruned_view(orig, plan), tokens, T);
  const float scale = want.cwiseAbs().maxCoeff();
  EXPECT_LT((got - want).cwiseAbs().maxCoeff(), 1e-4f * scale);
  EXPECT_LT((view - want).cwiseAbs().maxCoeff(), 1e-4f * scale);
  // Sanity: pruning changed the function (the test can fail).
  EXPECT_GT((plain_forward(orig, tokens, T) - want).cwiseAbs().maxCoeff(), 1e-3f * scale);
}

INSTANTIATE_TEST_SUITE_P(Families, PruneModel, ::testing::Values("mixtral", "qwen2_moe", "qwen3_moe", "olmoe"));

TEST(PruneApply, TopKIsLoweredOnlyWhenItExceedsTheKeptCount) {
  test::TempDir dir("prune_topk");
  auto m = test::make_tiny_model("mixtral", 12);
  test::write_model_dir(m, dir / "in");
  const std::vector<std::vector<int>> keep = {{4}, {2}};
  prune::apply_plan(make_plan(dir / "in", keep), dir / "in", dir / "out", {});
  model::CheckpointSource orig(dir / "in"), pruned(dir / "out");
  EXPECT_EQ(pruned.spec().routing.top_k, 1);
  EXPECT_EQ(pruned.spec().config["num_experts_per_tok"], 1);
  auto tokens = random_tokens(16, pruned.spec().vocab, 2);
  Matrix want = masked_forward(orig, tokens, 8, keep), got = plain_forward(pruned, tokens, 8);
  EXPECT_LT((got - want).cwiseAbs().maxCoeff(), 1e-4f * want.cwiseAbs().maxCoeff());
}

TEST(PruneApply, ShardedDeterministicAndRefusesToOverwrite) {
  test::TempDir dir("prune_shard");
  auto m = test::make_tiny_model("qwen2_moe", 13);
  test::write_model_dir(m, dir / "in", 20000);  // sharded input
  auto plan = make_plan(dir / "in", {{0, 1, 2, 3}, {2, 3, 4, 5}});
  prune::apply_plan(plan, dir / "in", dir / "a", {30000, false});
  prune::apply_plan(plan, dir / "in", dir / "b", {30000, false});
  EXPECT_TRUE(fs::exists(dir / "a" / "model.safetensors.index.json"));
  int shards = 0;
  for (auto& e : fs::directory_iterator(dir / "a"))
    if (e.path().extension() == ".safetensors") {
      ++shards;
      EXPECT_EQ(sha256_file(e.path()), sha256_file(dir / "b" / e.path().filename()));
    }
  EXPECT_GT(shards, 1);
  EXPECT_EQ(read_file(dir / "a" / "moec.json"), read_file(dir / "b" / "moec.json"));
  EXPECT_EQ(read_file(dir / "a" / "config.json"), read_file(dir / "b" / "config.json"));
  model::CheckpointSource check(dir / "a");  // validates every tensor against the pruned config
  EXPECT_EQ(check.spec().routing.num_experts, 4);
  EXPECT_NE(error_of([&] { prune::apply_plan(plan, dir / "in", dir / "a", {}); }).find("already exists (use --force"), std::string::npos);
  EXPECT_NE(error_of([&] { prune::apply_plan(plan, dir / "in", dir / "in" / "sub", {}); }).find("inside the input"), std::string::npos);
  prune::apply_plan(plan, dir / "in", dir / "a", {uint64_t(1) << 30, true});
  EXPECT_TRUE(fs::exists(dir / "a" / "model.safetensors"));
  EXPECT_FALSE(fs::exists(dir / "a" / "model.safetensors.index.json"));
  // No temp directories left beside the output.
  for (auto& e : fs::directory_iterator(dir.path)) EXPECT_EQ(e.path().filename().string().rfind(".", 0), std::string::npos) << e.path();
}

TEST(PruneApply, WriterLeavesNothingWhenNotFinished) {
  test::TempDir dir("prune_abort");
  test::write_model_dir(test::make_tiny_model("mixtral", 14), dir / "in");
  {
    model::CheckpointWriter w(dir / "in", dir / "out");
    w.copy("model.norm.weight");
  }
  EXPECT_FALSE(fs::exists(dir / "out"));
  for (auto& e : fs::directory_iterator(dir.path)) EXPECT_EQ(e.path().filename(), "in");
}

// -------------------------------------------------------------------------------------- bad plans

TEST(PrunePlanErrors, RejectedWithClearMessages) {
  test::TempDir dir("prune_bad");
  test::write_model_dir(test::make_tiny_model("mixtral", 15), dir / "in");
  auto spec = model::load_spec(dir / "in");
  const std::string sha = sha256_file(dir / "in" / "config.json");
  auto check = [&](const prune::PrunePlan& p) { return error_of([&] { prune::validate_plan(p, spec, sha, "plan.json", true); }); };
  auto good = make_plan(dir / "in", {{0, 1, 2}, {3, 4, 5}});
  EXPECT_EQ(check(good), "(no error)");
  auto p = good;
  p.layers[1].keep = {0, 1, 6};
  EXPECT_NE(check(p).find("layers[1] (layer 1): unknown expert 6 (the layer has experts 0..5)"), std::string::npos) << check(p);
  p = good;
  p.layers[0].keep = {1, 1, 2};
  EXPECT_NE(check(p).find("expert 1 listed twice"), std::string::npos) << check(p);
  p = good;
  p.layers.pop_back();
  EXPECT_NE(check(p).find("plan has 1 layer entries, the model has 2 MoE layers"), std::string::npos) << check(p);
  p = good;
  p.config_sha256 = std::string(64, 'a');
  EXPECT_NE(check(p).find("plan was made for another model"), std::string::npos) << check(p);
  p = good;
  p.layers[0].keep = {0, 1};
  EXPECT_NE(check(p).find("different number of experts per layer"), std::string::npos) << check(p);
  p = good;
  p.layers[0].keep = {2, 1, 0};
  EXPECT_NE(check(p).find("ascending"), std::string::npos) << check(p);
  p = good;
  p.layers[0].keep = {};
  EXPECT_NE(check(p).find("keeps no expert"), std::string::npos) << check(p);

  // JSON structure errors name the field.
  auto j = nlohmann::json(prune::plan_to_json(good));
  j["layers"][0]["keep"] = {0, "x"};
  EXPECT_NE(error_of([&] { prune::plan_from_json(j, "plan.json"); }).find("plan.json: layers[0]: field 'keep' must hold integer expert ids"),
            std::string::npos);
  j = nlohmann::json(prune::plan_to_json(good));
  j.erase("kind");
  EXPECT_NE(error_of([&] { prune::plan_from_json(j, "plan.json"); }).find("not a moec prune plan"), std::string::npos);
  // Round trip.
  auto back = prune::plan_from_json(nlohmann::json(prune::plan_to_json(good)), "x");
  EXPECT_EQ(back.layers[1].keep, good.layers[1].keep);
  EXPECT_EQ(back.config_sha256, good.config_sha256);

  // Statistics from another model.
  profile::ProfileStats st;
  st.config_sha256 = std::string(64, 'b');
  st.num_layers = 2, st.experts = 6, st.top_k = 2;
  EXPECT_NE(error_of([&] { prune::check_stats_for_model(st, spec, sha, "stats.h5"); }).find("stats.h5: statistics were made from another model"),
            std::string::npos);
  st.config_sha256 = sha;
  st.experts = 8;
  EXPECT_NE(error_of([&] { prune::check_stats_for_model(st, spec, sha, "stats.h5"); }).find("describe 2 layers of 8 experts"), std::string::npos);
}

// ---------------------------------------------------------------------------------- reconstruction

TEST(PruneReconstruct, FirstLayerChoiceIsTheExhaustiveOptimumAndGreedyIsNoBetter) {
  test::TempDir dir("prune_rec");
  test::write_model_dir(test::make_tiny_model("mixtral", 16), dir / "in");
  model::CheckpointSource src(dir / "in");
  const auto& s = src.spec();
  const int T = 16, K = 3, E = s.routing.num_experts;
  auto tokens = random_tokens(4 * T, s.vocab, 9);
  prune::CalibOptions opt;
  opt.keep = K;
  opt.window = T;
  opt.progress = false;
  auto rec = prune::reconstruct(src, tokens, opt);
  ASSERT_EQ(rec.keep.size(), 2u);
  EXPECT_EQ(rec.search[0], "exhaustive over 20 subsets");
  // Independent: layer 0's MoE output under every 3-subset via the masked router, written here.
  model::Forward fwd(src);
  Matrix h = fwd.embed(tokens.data(), int64_t(tokens.size()));
  auto w = fwd.load_layer(0);
  fwd.attention(0, w, h, T);
  Matrix x = fwd.moe_input(w, h);
  Matrix full = fwd.moe(0, w, x);
  double best = INFINITY;
  std::vector<int> best_set;
  for (int mask = 0; mask < (1 << E); ++mask) {
    if (__builtin_popcount(unsigned(mask)) != K) continue;
    Matrix logits = x * w.router.transpose();
    std::vector<int> set;
    for (int e = 0; e < E; ++e)
      if (mask >> e & 1) set.push_back(e); else logits.col(e).setConstant(-INFINITY);
    auto r = model::route(logits, s.routing);
    Matrix y = Matrix::Zero(x.rows(), s.hidden);
    for (int64_t t = 0; t < x.rows(); ++t)
      for (int j = 0; j < r.k; ++j) {
        Matrix act, out;
        const int e = r.expert[size_t(t) * r.k + j];
        model::Forward::swiglu(*src.linear(s.expert(0, e, model::Proj::Gate)), *src.linear(s.expert(0, e, model::Proj::Up)),
                               *src.linear(s.expert(0, e, model::Proj::Down)), x.row(t), act, out);
        y.row(t) += r.weight[size_t(t) * r.k + j] * out.row(0);
      }
    const double err = double((y - full).squaredNorm()) / double(full.squaredNorm());
    if (err < best - 1e-9) best = err, best_set = set;
  }
  EXPECT_EQ(rec.keep[0], best_set);
  EXPECT_NEAR(rec.error[0], best, 1e-4 * best + 1e-7);
  // Greedy elimination searches fewer sets: never better than exhaustive on the first layer.
  opt.exhaustive_limit = 0;
  auto greedy = prune::reconstruct(src, tokens, opt);
  EXPECT_EQ(greedy.search[0], "greedy backward elimination");
  EXPECT_GE(greedy.error[0], rec.error[0] - 1e-9);
  // measure_error of the chosen sets reproduces the errors.
  auto again = prune::measure_error(src, tokens, rec.keep, opt);
  for (size_t i = 0; i < 2; ++i) EXPECT_NEAR(again.error[i], rec.error[i], 1e-9);
}
