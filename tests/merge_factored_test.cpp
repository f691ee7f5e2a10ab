// Factored merge outputs (moec merge --form factored | shared-basis): low-rank tensors in the packed moec
// format, checked against independent references: the original model's forward (full-rank shared basis),
// the dense form of the same merge, the dense export, and the bytes actually stored.
#include <gtest/gtest.h>

#include <nlohmann/json.hpp>
#include <random>

#include "core/error.h"
#include "core/files.h"
#include "io/npy.h"
#include "io/safetensors.h"
#include "model/forward.h"
#include "model/linear.h"
#include "model/source.h"
#include "model/spec.h"
#include "quantize/checkpoint.h"
#include "support/test_util.h"

namespace moec {
namespace {

using test::all_logits;
using test::random_tokens;

double max_abs_diff(const Matrix& a, const Matrix& b) { return double((a - b).cwiseAbs().maxCoeff()); }

struct Fixture {
  test::TempDir dir{"merge_factored"};
  test::TinyModel m = test::make_tiny_model("mixtral", 11, {{"num_local_experts", 4}, {"num_experts_per_tok", 2}});
  model::ModelSpec spec = model::parse_spec(m.config);
  std::vector<int32_t> calib = random_tokens(128, spec.vocab, 1), probe = random_tokens(64, spec.vocab, 2);
  Fixture() {
    quantize::register_packed_format();
    test::write_model_dir(m, dir / "model");
    io::write_tokens_npy(dir / "calib.npy", calib);
  }
  test::CliResult merge(const std::string& extra, const std::string& out) const {
    return test::run_cli("merge " + (dir / "model").string() + " --calib " + (dir / "calib.npy").string() +
                         " --window 32 --method subspace " + extra + " -o " + (dir / out).string());
  }
};

TEST(LowRankLinear, ForwardEqualsTheDenseProduct) {
  std::mt19937 g(1);
  Matrix left = test::randn(37, 5, g), right = test::randn(5, 29, g), x = test::randn(7, 29, g);
  model::LowRankLinear lin(left, right);
  EXPECT_EQ(lin.out_features(), 37);
  EXPECT_EQ(lin.in_features(), 29);
  Matrix y;
  lin.forward(x, y);
  // Naive reference in double.
  MatrixD w = left.cast<double>() * right.cast<double>();
  MatrixD ref = x.cast<double>() * w.transpose();
  EXPECT_LT((y.cast<double>() - ref).cwiseAbs().maxCoeff(), 1e-4);
  EXPECT_LT((lin.dense().cast<double>() - w).cwiseAbs().maxCoeff(), 1e-5);
  EXPECT_THROW(model::LowRankLinear(test::randn(3, 4, g), test::randn(5, 2, g)), Error);
  EXPECT_THROW(lin.forward(test::randn(2, 30, g), y), Error);
}

TEST(MergeFactored, FullRankSharedBasisReproducesTheOriginalModel) {
  Fixture fx;
  // --rank beyond the full rank keeps every singular triplet: each expert = U·Σ·V_e exactly (up to bf16).
  auto r = fx.merge("--keep 2 --rank 100000 --refit none --form shared-basis", "sb");
  ASSERT_EQ(r.code, 0) << r.err;
  auto src = model::open_model(fx.dir / "sb");
  auto* packed = dynamic_cast<const quantize::PackedSource*>(src.get());
  ASSERT_NE(packed, nullptr);
  EXPECT_EQ(src->spec().routing.num_experts, 4);  // every expert and the router kept
  for (int l = 0; l < fx.spec.num_layers; ++l)
    for (int e = 0; e < 4; ++e)
      for (auto p : {model::Proj::Gate, model::Proj::Up, model::Proj::Down})
        EXPECT_TRUE(packed->is_lowrank(fx.spec.expert(l, e, p))) << fx.spec.expert(l, e, p);
  model::CheckpointSource orig(fx.dir / "model");
  const Matrix ref = all_logits(orig, fx.probe, 32);
  EXPECT_LT(max_abs_diff(all_logits(*src, fx.probe, 32), ref), 2e-2);
  // Control: a low rank does change the model.
  r = fx.merge("--keep 2 --rank 4 --refit none --form shared-basis", "sb4");
  ASSERT_EQ(r.code, 0) << r.err;
  auto low = model::open_model(fx.dir / "sb4");
  EXPECT_GT(max_abs_diff(all_logits(*low, fx.probe, 32), ref), 5e-2);
}

TEST(MergeFactored, FactoredFormComputesTheDenseMergeAndExportsToIt) {
  Fixture fx;
  const std::string args = "--keep 2 --cluster dominant --align --rank 8 --refit none";
  ASSERT_EQ(fx.merge(args + " --form factored", "f").code, 0);
  ASSERT_EQ(fx.merge(args, "d").code, 0);
  auto fact = model::open_model(fx.dir / "f");
  model::CheckpointSource dense(fx.dir / "d");
  EXPECT_EQ(fact->spec().routing.num_experts, 2);
  const Matrix lf = all_logits(*fact, fx.probe, 32), ld = all_logits(dense, fx.probe, 32);
  // Same merge; only where bf16 rounding happens differs (factors vs their product).
  EXPECT_LT(max_abs_diff(lf, ld), 2e-2);
  model::CheckpointSource orig(fx.dir / "model");
  EXPECT_GT(max_abs_diff(lf, all_logits(orig, fx.probe, 32)), 5e-2);  // control: a rank-8 merge is not the original
  // The f32 dense export of the factored checkpoint computes the same function (the product in fp32).
  auto r = test::run_cli("export " + (fx.dir / "f").string() + " --format hf-dense --dtype f32 -o " + (fx.dir / "fx").string());
  ASSERT_EQ(r.code, 0) << r.err;
  model::CheckpointSource exported(fx.dir / "fx");
  EXPECT_LT(max_abs_diff(all_logits(exported, fx.probe, 32), lf), 1e-3);
  // With the calibration refit the factored form stays in the subspace and still runs.
  r = fx.merge("--keep 2 --cluster dominant --align --rank 8 --form factored", "fr");
  ASSERT_EQ(r.code, 0) << r.err;
  EXPECT_NE(r.err.find("in the factored form"), std::string::npos) << r.err;
  EXPECT_TRUE(model::open_model(fx.dir / "fr")->spec().routing.num_experts == 2);
}

TEST(MergeFactored, StoredBytesCountSharedFactorsOnceAndRunsAreByteIdentical) {
  Fixture fx;
  for (const char* o : {"a", "b"}) ASSERT_EQ(fx.merge("--keep 2 --rank 6 --form shared-basis", o).code, 0);
  EXPECT_EQ(sha256_file(fx.dir / "a" / "model.safetensors"), sha256_file(fx.dir / "b" / "model.safetensors"));
  EXPECT_EQ(read_file(fx.dir / "a" / "moec.json"), read_file(fx.dir / "b" / "moec.json"));
  // Independent count from the safetensors file: every .left/.right factor tensor once.
  auto store = io::TensorStore::open(fx.dir / "a");
  uint64_t factor_bytes = 0;
  int lefts = 0;
  for (auto& n : store.names()) {
    if (n.ends_with(".left")) ++lefts, factor_bytes += store.get(n).nbytes;
    if (n.ends_with(".right")) factor_bytes += store.get(n).nbytes;
  }
  EXPECT_EQ(lefts, fx.spec.num_layers * 2 * 3);  // one shared U per cluster and projection
  auto r = test::run_cli("inspect " + (fx.dir / "a").string() + " --json");
  ASSERT_EQ(r.code, 0) << r.err;
  auto j = nlohmann::json::parse(r.out);
  EXPECT_EQ(j["routed_expert_bytes"].get<uint64_t>(), factor_bytes);
  EXPECT_EQ(j["by_codec"]["lowrank"]["bytes"].get<uint64_t>(), factor_bytes);
}

TEST(MergeFactored, CorruptOrInconsistentFactorsAreRejected) {
  Fixture fx;
  ASSERT_EQ(fx.merge("--keep 2 --rank 6 --refit none --form factored", "f").code, 0);
  const std::string meta = read_file(fx.dir / "f" / "moec.json");
  const std::string name = fx.spec.expert(0, 1, model::Proj::Down);
  auto rewrite = [&](const std::function<void(nlohmann::json&)>& edit) {
    auto j = nlohmann::json::parse(meta);
    edit(j["tensors"][name]);
    write_file_atomic(fx.dir / "f" / "moec.json", j.dump(1));
  };
  auto eval_err = [&] {
    auto r = test::run_cli("inspect " + (fx.dir / "f").string());
    EXPECT_NE(r.code, 0);
    return r.err;
  };
  rewrite([](nlohmann::json& t) { t["sha256"]["right"] = std::string(64, '0'); });
  std::string err = eval_err();
  EXPECT_NE(err.find("checksum mismatch in the right factor '" + name + ".right'"), std::string::npos) << err;
  rewrite([](nlohmann::json& t) { t["lowrank"]["rank"] = t["lowrank"]["rank"].get<int>() + 1; });
  err = eval_err();
  EXPECT_NE(err.find(name), std::string::npos) << err;
  EXPECT_NE(err.find("expected"), std::string::npos) << err;
  rewrite([](nlohmann::json& t) { t["lowrank"]["left"] = "no.such.factor"; });
  err = eval_err();
  EXPECT_NE(err.find("'no.such.factor' is missing"), std::string::npos) << err;
  rewrite([](nlohmann::json& t) { t["lowrank"].erase("right"); });
  err = eval_err();
  EXPECT_NE(err.find("tensor '" + name + "': lowrank: missing field 'right'"), std::string::npos) << err;
  // Restored: fine again.
  write_file_atomic(fx.dir / "f" / "moec.json", meta);
  EXPECT_EQ(test::run_cli("inspect " + (fx.dir / "f").string()).code, 0);
}

TEST(MergeFactored, BadOptionsAreRejected) {
  Fixture fx;
  auto r = test::run_cli("merge " + (fx.dir / "model").string() + " --calib " + (fx.dir / "calib.npy").string() +
                         " --window 32 --method average --keep 2 --form factored -o " + (fx.dir / "never").string());
  EXPECT_NE(r.code, 0);
  EXPECT_NE(r.err.find("needs --method subspace"), std::string::npos) << r.err;
  r = fx.merge("--keep 2 --form shared-basis --dominant-gate-up", "never");
  EXPECT_NE(r.err.find("--dominant-gate-up"), std::string::npos) << r.err;
  r = fx.merge("--keep 2 --form shared-basis --refit router", "never");
  EXPECT_NE(r.err.find("router"), std::string::npos) << r.err;
  r = fx.merge("--keep 2 --form sideways", "never");
  EXPECT_NE(r.err.find("unknown output form 'sideways'"), std::string::npos) << r.err;
  EXPECT_FALSE(fs::exists(fx.dir / "never"));
}

}  // namespace
}  // namespace moec
