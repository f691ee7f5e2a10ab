// moec merge end to end on random tiny checkpoints: merging identical experts keeps the model's
// outputs (checked against a forward of the original), a real merge changes them, re-runs are
// byte-identical, and bad plans / options are rejected with clear messages.
#include <gtest/gtest.h>

#include <nlohmann/json.hpp>

#include "core/files.h"
#include "io/npy.h"
#include "merge/merge.h"
#include "model/forward.h"
#include "model/source.h"
#include "model/spec.h"
#include "support/test_util.h"

namespace moec {
namespace {

using test::all_logits;
using test::random_tokens;

using model::Proj;

// A random tiny Mixtral (top-1, 4 experts) whose experts 0 and 1 are identical in every layer, with
// identical router rows. Top-1 with renormalized weights: a token routed to 0 (ties go to the lower
// index) gets weight 1 both before and after merging {0, 1}, so the function is unchanged.
test::TinyModel twin_model() {
  auto m = test::make_tiny_model("mixtral", 7, {{"num_local_experts", 4}, {"num_experts_per_tok", 1}});
  auto spec = model::parse_spec(m.config);
  for (int l = 0; l < spec.num_layers; ++l) {
    for (Proj p : {Proj::Gate, Proj::Up, Proj::Down})
      m.tensors.t[spec.expert(l, 1, p)] = m.tensors.t.at(spec.expert(l, 0, p));
    auto& r = m.tensors.t.at(spec.router(l));
    const size_t H = size_t(r.first[1]);
    std::copy(r.second.begin(), r.second.begin() + long(H), r.second.begin() + long(H));
  }
  return m;
}

// A plan for every layer: clusters given explicitly, dominant = first member.
std::string plan_json(int layers, int E, const merge::Clusters& cl, const char* method) {
  merge::MergePlan p;
  for (int l = 0; l < layers; ++l) {
    std::vector<double> f(size_t(E), 1.0);
    p.layers.push_back(merge::make_layer_plan(cl, f, E, merge::merge_method_from_string(method)));
  }
  return merge::plan_to_json(p).dump();
}

struct Fixture {
  test::TempDir dir{"merge_cli"};
  test::TinyModel m = twin_model();
  model::ModelSpec spec = model::parse_spec(m.config);
  std::vector<int32_t> calib = random_tokens(128, spec.vocab, 1), probe = random_tokens(64, spec.vocab, 2);
  Fixture() {
    test::write_model_dir(m, dir / "model");
    io::write_tokens_npy(dir / "calib.npy", calib);
  }
  std::string base(const std::string& extra) const {
    return "merge " + (dir / "model").string() + " --calib " + (dir / "calib.npy").string() + " --window 32 " + extra;
  }
};

double max_abs_diff(const Matrix& a, const Matrix& b) { return double((a - b).cwiseAbs().maxCoeff()); }

TEST(MergeCli, IdenticalExpertsKeepTheModelsOutputs) {
  Fixture fx;
  model::CheckpointSource orig(fx.dir / "model");
  const Matrix ref = all_logits(orig, fx.probe, 32);
  for (const char* method : {"average", "frequency", "msmoe", "subspace"}) {
    SCOPED_TRACE(method);
    write_file_atomic(fx.dir / "plan.json", plan_json(fx.spec.num_layers, 4, {{0, 1}, {2}, {3}}, method));
    const std::string out = (fx.dir / (std::string("m_") + method)).string();
    const std::string m = std::string(method) == "frequency" ? "freq-average" : method;
    auto r = test::run_cli(fx.base("--method " + m + " --plan " + (fx.dir / "plan.json").string() + " -o " + out));
    ASSERT_EQ(r.code, 0) << r.err;
    model::CheckpointSource merged(out);
    EXPECT_EQ(merged.spec().routing.num_experts, 3);
    const Matrix got = all_logits(merged, fx.probe, 32);
    // Identical bf16 experts average to themselves (subspace: full-rank SVD round trip, then bf16).
    EXPECT_LT(max_abs_diff(got, ref), std::string(method) == "subspace" ? 2e-2 : 1e-4);
  }
  // The calibration refit keeps them too: the merged layer already reproduces the original one exactly
  // (the max-logit router target is the shared row's logit; the down targets are met by the merged downs),
  // so the ridge solves, regularized towards the merged weights, return them.
  write_file_atomic(fx.dir / "plan.json", plan_json(fx.spec.num_layers, 4, {{0, 1}, {2}, {3}}, "subspace"));
  for (const char* extra : {"--refit all", "--refit all --sequential --residual-target"}) {
    SCOPED_TRACE(extra);
    const std::string out = (fx.dir / "m_refit").string();
    auto r = test::run_cli(fx.base(std::string("--method subspace --force ") + extra + " --plan " +
                                   (fx.dir / "plan.json").string() + " -o " + out));
    ASSERT_EQ(r.code, 0) << r.err;
    model::CheckpointSource merged(out);
    EXPECT_LT(max_abs_diff(all_logits(merged, fx.probe, 32), ref), 2e-2);
  }
  // Control: merging two different experts does change the outputs.
  write_file_atomic(fx.dir / "plan2.json", plan_json(fx.spec.num_layers, 4, {{0, 1}, {2, 3}}, "average"));
  auto r = test::run_cli(fx.base("--method average --plan " + (fx.dir / "plan2.json").string() + " -o " +
                                 (fx.dir / "m_ctrl").string()));
  ASSERT_EQ(r.code, 0) << r.err;
  model::CheckpointSource ctrl(fx.dir / "m_ctrl");
  EXPECT_GT(max_abs_diff(all_logits(ctrl, fx.probe, 32), ref), 1e-2);
}

TEST(MergeCli, ReRunsAreByteIdenticalAndPlansRoundTrip) {
  Fixture fx;
  const std::string args = "--method subspace --keep 2 --cluster kmeans --energy 0.9 --whiten --router freq";
  for (const char* o : {"a", "b"}) {
    auto r = test::run_cli(fx.base(args + " -o " + (fx.dir / o).string()));
    ASSERT_EQ(r.code, 0) << r.err;
  }
  EXPECT_EQ(sha256_file(fx.dir / "a" / "model.safetensors"), sha256_file(fx.dir / "b" / "model.safetensors"));
  EXPECT_EQ(read_file(fx.dir / "a" / "config.json"), read_file(fx.dir / "b" / "config.json"));
  auto cfg = nlohmann::json::parse(read_file(fx.dir / "a" / "config.json"));
  EXPECT_EQ(cfg["num_local_experts"], 2);
  // --plan-only writes the clusters that the full run applied; applying it reproduces the checkpoint.
  auto r = test::run_cli(fx.base(args + " --plan-only -o " + (fx.dir / "plan.json").string()));
  ASSERT_EQ(r.code, 0) << r.err;
  auto planned = merge::plan_from_json(nlohmann::json::parse(read_file(fx.dir / "plan.json")));
  auto applied = merge::plan_from_json(nlohmann::json::parse(read_file(fx.dir / "a" / "moec.json"))["plan"]);
  ASSERT_EQ(planned.layers.size(), applied.layers.size());
  for (size_t l = 0; l < planned.layers.size(); ++l)
    for (size_t c = 0; c < planned.layers[l].clusters.size(); ++c) {
      EXPECT_EQ(planned.layers[l].clusters[c].members, applied.layers[l].clusters[c].members);
      EXPECT_GT(applied.layers[l].clusters[c].rank[0], 0);  // subspace ranks recorded
    }
  r = test::run_cli(fx.base(args + " --plan " + (fx.dir / "plan.json").string() + " -o " + (fx.dir / "c").string()));
  ASSERT_EQ(r.code, 0) << r.err;
  EXPECT_EQ(sha256_file(fx.dir / "a" / "model.safetensors"), sha256_file(fx.dir / "c" / "model.safetensors"));
}

TEST(MergeCli, RefitReRunsAreByteIdenticalAndLowerTheOutputError) {
  Fixture fx;
  const std::string args = "--method subspace --keep 2 --cluster dominant --align --energy 0.9 --refit all --sequential";
  for (const char* o : {"a", "b"}) {
    auto r = test::run_cli(fx.base(args + " -o " + (fx.dir / o).string()));
    ASSERT_EQ(r.code, 0) << r.err;
    EXPECT_NE(r.err.find("refit: router down (relative output error"), std::string::npos) << r.err;
  }
  EXPECT_EQ(sha256_file(fx.dir / "a" / "model.safetensors"), sha256_file(fx.dir / "b" / "model.safetensors"));
  // The refit model is closer to the original on the calibration tokens than the plain merge.
  auto r = test::run_cli(fx.base("--method subspace --keep 2 --cluster dominant --align --energy 0.9 --refit none -o " +
                                 (fx.dir / "plain").string()));
  ASSERT_EQ(r.code, 0) << r.err;
  model::CheckpointSource orig(fx.dir / "model"), refit(fx.dir / "a"), plain(fx.dir / "plain");
  const std::vector<int32_t> calib(fx.calib.begin(), fx.calib.begin() + 64);
  const Matrix ref = all_logits(orig, calib, 32);
  EXPECT_LT((all_logits(refit, calib, 32) - ref).norm(), (all_logits(plain, calib, 32) - ref).norm());
}

TEST(MergeCli, BadPlansAndOptionsAreRejected) {
  Fixture fx;
  const int L = fx.spec.num_layers;
  auto expect_fail = [&](const std::string& plan_text, const std::string& extra, const std::string& msg) {
    write_file_atomic(fx.dir / "bad.json", plan_text);
    auto r = test::run_cli(fx.base("--method average " + extra + " --plan " + (fx.dir / "bad.json").string() + " -o " +
                                   (fx.dir / "never").string()));
    EXPECT_NE(r.code, 0);
    EXPECT_NE(r.err.find(msg), std::string::npos) << r.err;
    EXPECT_FALSE(fs::exists(fx.dir / "never"));
  };
  // Expert 3 in no cluster.
  auto j = nlohmann::json::parse(plan_json(L, 4, {{0, 1}, {2, 3}}, "average"));
  j["layers"][1]["clusters"][1]["members"] = {2};
  expect_fail(j.dump(), "", "expert 3 is in no cluster");
  // Unknown expert.
  j = nlohmann::json::parse(plan_json(L, 4, {{0, 1}, {2, 3}}, "average"));
  j["layers"][0]["clusters"][1]["members"] = {2, 3, 7};
  expect_fail(j.dump(), "", "unknown expert 7");
  // Plan for another model (layer count, expert count).
  expect_fail(plan_json(L + 1, 4, {{0, 1}, {2, 3}}, "average"), "", "layers");
  expect_fail(plan_json(L, 5, {{0, 1}, {2, 3}, {4}}, "average"), "", "experts");
  // Uneven cluster counts cannot form one Hugging Face config.
  j = nlohmann::json::parse(plan_json(L, 4, {{0, 1}, {2, 3}}, "average"));
  j["layers"][1] = nlohmann::json::parse(plan_json(L, 4, {{0, 1}, {2}, {3}}, "average"))["layers"][1];
  expect_fail(j.dump(), "", "clusters");
  // Options.
  auto r = test::run_cli(fx.base("--method average --keep 0 -o " + (fx.dir / "never").string()));
  EXPECT_NE(r.code, 0);
  r = test::run_cli(fx.base("--method nope --keep 2 -o " + (fx.dir / "never").string()));
  EXPECT_NE(r.err.find("unknown method"), std::string::npos) << r.err;
  r = test::run_cli(fx.base("--method average --keep 2 --whiten -o " + (fx.dir / "never").string()));
  EXPECT_NE(r.code, 0);
  r = test::run_cli(fx.base("--method subspace --keep 2 --refit sideways -o " + (fx.dir / "never").string()));
  EXPECT_NE(r.err.find("--refit"), std::string::npos) << r.err;
  r = test::run_cli(fx.base("--method subspace --keep 2 --refit down --residual-target -o " + (fx.dir / "never").string()));
  EXPECT_NE(r.err.find("sequential"), std::string::npos) << r.err;
  write_file_atomic(fx.dir / "ok.json", plan_json(L, 4, {{0, 1}, {2, 3}}, "subspace"));
  r = test::run_cli("merge " + (fx.dir / "model").string() + " --method subspace --refit down --plan " +
                    (fx.dir / "ok.json").string() + " -o " + (fx.dir / "never").string());
  EXPECT_NE(r.err.find("--calib"), std::string::npos) << r.err;
  EXPECT_FALSE(fs::exists(fx.dir / "never"));
}

}  // namespace
}  // namespace moec
