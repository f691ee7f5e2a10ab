// moec prune end to end on tiny-mixtral (short token prefixes only): plan, apply, evaluate with moec eval
// and with the independent PyTorch reference evaluator; CLI error paths.
#include <gtest/gtest.h>

#include <cmath>
#include <cstdlib>
#include <nlohmann/json.hpp>

#include "core/files.h"
#include "io/npy.h"
#include "support/test_util.h"

using namespace moec;
namespace fs = std::filesystem;

namespace {
double ppl_of(const std::string& json_line) { return nlohmann::json::parse(json_line)["ppl"].get<double>(); }

bool have_torch() { return std::system("/usr/bin/python3 -c 'import torch, numpy' >/dev/null 2>&1") == 0; }

struct Fixture {
  test::TempDir dir{"prune_cli"};
  std::string model = test::tiny_mixtral();
  std::string calib = test::shared_dir() + "/data/python_calib.npy";
  std::string eval = test::shared_dir() + "/data/python_eval.npy";
};
}  // namespace

TEST(PruneCli, PlanApplyEvalAgreesWithReferenceEvaluator) {
  Fixture f;
  const std::string stats = (f.dir / "stats.h5").string(), plan = (f.dir / "plan.json").string(), out = (f.dir / "out").string();
  auto r = test::run_cli("profile " + f.model + " --calib " + f.calib + " --max-tokens 1024 --sample-tokens 8 -o " + stats + " -q");
  ASSERT_EQ(r.code, 0) << r.err;
  r = test::run_cli("prune " + f.model + " --stats " + stats + " --domain python_calib --method easyep --keep 6 --plan-only -o " + plan + " -q");
  ASSERT_EQ(r.code, 0) << r.err;
  auto j = nlohmann::json::parse(read_file(plan));
  ASSERT_EQ(j["layers"].size(), 4u);
  for (auto& l : j["layers"]) EXPECT_EQ(l["keep"].size(), 6u);
  EXPECT_EQ(j["method"], "easyep");

  r = test::run_cli("prune " + f.model + " --plan " + plan + " -o " + out + " -q");
  ASSERT_EQ(r.code, 0) << r.err;
  auto cfg = nlohmann::json::parse(read_file(fs::path(out) / "config.json"));
  EXPECT_EQ(cfg["num_local_experts"], 6);
  EXPECT_TRUE(fs::exists(fs::path(out) / "generation_config.json"));

  r = test::run_cli("eval " + out + " --tokens " + f.eval + " --max-tokens 1024 --json -q");
  ASSERT_EQ(r.code, 0) << r.err;
  const double ours = ppl_of(r.out);
  EXPECT_GT(ours, 1.0);
  if (!have_torch()) GTEST_SKIP() << "python3-torch is missing: reference evaluator comparison skipped";
  const std::string ref_out = (f.dir / "ref.json").string();
  const std::string cmd = "/usr/bin/python3 " + test::shared_dir() + "/tools/ref_eval.py " + out + " " + f.eval +
                          " --max-tokens 1024 > " + ref_out + " 2>/dev/null";
  ASSERT_EQ(std::system(cmd.c_str()), 0) << cmd;
  const double ref = ppl_of(read_file(ref_out));
  EXPECT_NEAR(ours, ref, 1e-3 * ref) << "moec eval " << ours << " vs reference " << ref;
}

TEST(PruneCli, ErrorsAreClear) {
  Fixture f;
  test::TempDir other("prune_cli_other");
  // A plan naming an expert the model does not have.
  nlohmann::json plan = {{"kind", "moec-prune-plan"}, {"version", 1}, {"method", "frequency"}, {"allocation", "uniform"},
                         {"model_type", "mixtral"}, {"config_sha256", sha256_file(fs::path(f.model) / "config.json")},
                         {"num_layers", 4}, {"num_experts", 8}, {"top_k", 2}, {"layers", nlohmann::json::array()}};
  for (int l = 0; l < 4; ++l) plan["layers"].push_back({{"layer", l}, {"num_experts", 8}, {"keep", {0, 1, 2, l == 2 ? 9 : 3}}});
  write_file_atomic(f.dir / "bad.json", plan.dump());
  auto r = test::run_cli("prune " + f.model + " --plan " + (f.dir / "bad.json").string() + " -o " + (f.dir / "x").string());
  EXPECT_EQ(r.code, 1);
  EXPECT_NE(r.err.find("layers[2] (layer 2): unknown expert 9"), std::string::npos) << r.err;
  EXPECT_FALSE(fs::exists(f.dir / "x"));

  r = test::run_cli("prune " + f.model + " --method reconstruct --keep 4 -o " + (f.dir / "y").string());
  EXPECT_EQ(r.code, 1);
  EXPECT_NE(r.err.find("--method reconstruct needs --calib"), std::string::npos) << r.err;

  r = test::run_cli("prune " + f.model + " --method frequency --keep 4 -o " + (f.dir / "y").string());
  EXPECT_EQ(r.code, 1);
  EXPECT_NE(r.err.find("scores experts from routing statistics"), std::string::npos) << r.err;

  r = test::run_cli("prune " + f.model + " --method easyep --keep 4 --per-layer adaptive --calib " + f.calib + " -o " + (f.dir / "y").string());
  EXPECT_EQ(r.code, 1);
  EXPECT_NE(r.err.find("cannot hold"), std::string::npos) << r.err;

  r = test::run_cli("prune " + f.model + " --method freq --keep 4 -o " + (f.dir / "y").string());
  EXPECT_EQ(r.code, 1);
  EXPECT_NE(r.err.find("unknown pruning method 'freq'"), std::string::npos) << r.err;

  // Statistics made from another model.
  // (tiny-mixtral's weights with a different config.json: same shapes, another model.)
  fs::create_directories(other / "m");
  fs::copy_file(fs::path(f.model) / "model.safetensors", other / "m" / "model.safetensors");
  auto cfg = nlohmann::json::parse(read_file(fs::path(f.model) / "config.json"));
  cfg["rope_theta"] = 5000.0;
  write_file_atomic(other / "m" / "config.json", cfg.dump(2));
  io::write_tokens_npy(other / "t.npy", std::vector<int32_t>(512, 65));
  r = test::run_cli("profile " + (other / "m").string() + " --calib " + (other / "t.npy").string() + " --sample-tokens 4 -o " +
                    (other / "s.h5").string() + " -q");
  ASSERT_EQ(r.code, 0) << r.err;
  r = test::run_cli("prune " + (other / "m").string() + " --stats " + (other / "s.h5").string() +
                    " --method frequency --keep 4 --plan-only -o " + (other / "p.json").string() + " -q");
  ASSERT_EQ(r.code, 0) << r.err;
  r = test::run_cli("prune " + f.model + " --stats " + (other / "s.h5").string() + " --method frequency --keep 4 -o " + (f.dir / "y").string());
  EXPECT_EQ(r.code, 1);
  EXPECT_NE(r.err.find("from another model"), std::string::npos) << r.err;
  // A plan for another model.
  r = test::run_cli("prune " + f.model + " --plan " + (other / "p.json").string() + " -o " + (f.dir / "y").string());
  EXPECT_EQ(r.code, 1);
  EXPECT_NE(r.err.find("plan was made for another model"), std::string::npos) << r.err;
  EXPECT_FALSE(fs::exists(f.dir / "y"));
}
