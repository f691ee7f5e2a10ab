// moec quantize / packed checkpoints / export: end to end on tiny random models (seconds), plus one check
// against the PyTorch reference evaluator on tiny-mixtral (skipped without python3-torch).
#include <gtest/gtest.h>

#include <cmath>
#include <cstdlib>
#include <fstream>
#include <random>
#include <set>

#include "core/files.h"
#include "io/npy.h"
#include "io/safetensors.h"
#include "kernels/codec.h"
#include "model/forward.h"
#include "quantize/calibrate.h"
#include "quantize/checkpoint.h"
#include "profile/stats.h"
#include "quantize/rtn.h"
#include "support/test_util.h"

using namespace moec;
namespace fs = std::filesystem;

namespace {

// A random Mixtral-shaped checkpoint whose expert widths (64 in, 96 out) take groups of 32, and 8 windows
// of 32 random tokens.
struct Fixture {
  test::TempDir dir{"quantcli"};
  fs::path model, calib;
  Fixture() {
    model = dir / "model";
    calib = dir / "calib.npy";
    auto m = test::make_tiny_model("mixtral", 7, {{"hidden_size", 64}, {"intermediate_size", 96}});
    test::write_model_dir(m, model);
    std::mt19937 rng(3);
    std::vector<int32_t> ids(256);
    for (auto& t : ids) t = int32_t(rng() % 40);
    io::write_tokens_npy(calib, ids);
  }
  std::string quantize(const std::string& out, const std::string& args) {
    auto r = test::run_cli("quantize " + model.string() + " --calib " + calib.string() + " --seq-len 32 --quiet " + args +
                           " -o " + (dir / out).string());
    EXPECT_EQ(r.code, 0) << r.err;
    return (dir / out).string();
  }
  double eval(const std::string& m, int* code = nullptr, std::string* err = nullptr) {
    auto r = test::run_cli("eval " + m + " --tokens " + calib.string() + " --window 32 --json");
    if (code) *code = r.code;
    if (err) *err = r.err;
    if (r.code != 0) return NAN;
    return nlohmann::json::parse(r.out)["ppl"].get<double>();
  }
};

std::string slurp(const fs::path& p) { return read_file(p); }

// Offset of a tensor's data inside its safetensors file.
size_t data_offset(const fs::path& file, const std::string& name) {
  io::SafetensorsFile f(file);
  const auto* t = f.find(name);
  EXPECT_NE(t, nullptr) << name;
  return size_t(t->data - f.mapped().data());
}

void flip_byte(const fs::path& file, size_t off) {
  std::fstream f(file, std::ios::in | std::ios::out | std::ios::binary);
  f.seekg(std::streamoff(off));
  char c;
  f.read(&c, 1);
  c = char(c ^ 0x5a);
  f.seekp(std::streamoff(off));
  f.write(&c, 1);
}

void copy_dir(const fs::path& a, const fs::path& b) { fs::copy(a, b, fs::copy_options::recursive); }

}  // namespace

TEST(QuantizeCli, GptqIsDeterministicAndPackedEvalEqualsDenseExport) {
  Fixture fx;
  auto a = fx.quantize("a", "--method gptq --bits 4 --group 32");
  auto b = fx.quantize("b", "--method gptq --bits 4 --group 32");
  // Same input, same bytes (GPTQ's parallel row loop and BLAS updates must not reorder sums between runs).
  EXPECT_EQ(slurp(fs::path(a) / "model.safetensors"), slurp(fs::path(b) / "model.safetensors"));
  EXPECT_EQ(slurp(fs::path(a) / "moec.json"), slurp(fs::path(b) / "moec.json"));

  auto r = test::run_cli("export " + a + " --format hf-dense --dtype f32 -o " + (fx.dir / "dense").string());
  ASSERT_EQ(r.code, 0) << r.err;
  const double p_packed = fx.eval(a), p_dense = fx.eval((fx.dir / "dense").string()), p_orig = fx.eval(fx.model.string());
  EXPECT_NEAR(p_packed, p_dense, 1e-4 * p_dense);
  EXPECT_NE(p_packed, p_orig);  // the experts really changed
  // The export is a plain HF checkpoint: no moec.json, every expert dense.
  EXPECT_FALSE(fs::exists(fx.dir / "dense" / "moec.json"));
}

TEST(QuantizeCli, PackedLinearMatchesDenseAndRtnMatchesIndependentQuantizer) {
  Fixture fx;
  auto out = fx.quantize("rtn", "--method rtn --bits 3 --group 32");
  quantize::register_packed_format();
  auto src = model::open_model(out);
  auto* ps = dynamic_cast<quantize::PackedSource*>(src.get());
  ASSERT_NE(ps, nullptr);
  model::CheckpointSource orig(fx.model);
  const auto& s = src->spec();
  const std::string name = s.expert(1, 2, model::Proj::Down);
  ASSERT_TRUE(ps->is_packed(name));
  // RTN output must equal quantize_rtn on the source weights (asymmetric int3, groups of 32).
  Matrix want = dequantize(quantize_rtn(orig.matrix(name), parse_quant_spec("int3:asym:g32")));
  Matrix got = src->matrix(name);
  ASSERT_EQ(got.rows(), want.rows());
  EXPECT_EQ((got - want).cwiseAbs().maxCoeff(), 0.0f);
  // PackedLinear forward for small (fused kernel) and large (dequantize + GEMM) batches vs X W^T.
  auto lin = src->linear(name);
  std::mt19937 rng(1);
  std::normal_distribution<float> nd;
  for (int n : {1, 5, 16, 17, 300}) {
    Matrix X(n, lin->in_features());
    for (int64_t i = 0; i < X.size(); ++i) X.data()[i] = nd(rng);
    Matrix Y;
    lin->forward(X, Y);
    Matrix ref = X * want.transpose();
    EXPECT_LT((Y - ref).cwiseAbs().maxCoeff(), 1e-4f * (1.0f + ref.cwiseAbs().maxCoeff())) << "n=" << n;
  }
  // Dense tensors are carried over bit for bit.
  EXPECT_EQ((src->matrix(s.attn(0, 'q')) - orig.matrix(s.attn(0, 'q'))).cwiseAbs().maxCoeff(), 0.0f);
}

TEST(QuantizeCli, CorruptedCheckpointsAreRejected) {
  Fixture fx;
  auto good = fx.quantize("good", "--method rtn --bits 4 --group 32");
  ASSERT_FALSE(std::isnan(fx.eval(good)));
  const std::string victim = "model.layers.0.block_sparse_moe.experts.1.w2.weight";

  {  // a flipped byte in packed codes -> checksum error naming the tensor
    fs::path d = fx.dir / "flip";
    copy_dir(good, d);
    flip_byte(d / "model.safetensors", data_offset(d / "model.safetensors", victim + ".codes") + 3);
    int code;
    std::string err;
    fx.eval(d.string(), &code, &err);
    EXPECT_NE(code, 0);
    EXPECT_NE(err.find("checksum"), std::string::npos) << err;
    EXPECT_NE(err.find(victim + ".codes"), std::string::npos) << err;
  }
  {  // unknown format version
    fs::path d = fx.dir / "version";
    copy_dir(good, d);
    auto j = nlohmann::json::parse(slurp(d / "moec.json"));
    j["version"] = 99;
    write_file_atomic(d / "moec.json", j.dump());
    int code;
    std::string err;
    fx.eval(d.string(), &code, &err);
    EXPECT_NE(code, 0);
    EXPECT_NE(err.find("version 99"), std::string::npos) << err;
  }
  {  // shape inconsistent with config.json
    fs::path d = fx.dir / "shape";
    copy_dir(good, d);
    auto j = nlohmann::json::parse(slurp(d / "moec.json"));
    j["tensors"][victim]["shape"] = {64, 64};
    write_file_atomic(d / "moec.json", j.dump());
    int code;
    std::string err;
    fx.eval(d.string(), &code, &err);
    EXPECT_NE(code, 0);
    EXPECT_NE(err.find(victim), std::string::npos) << err;
    EXPECT_NE(err.find("shape"), std::string::npos) << err;
  }
  {  // codec meta disagreeing with the stored tensors
    fs::path d = fx.dir / "meta";
    copy_dir(good, d);
    auto j = nlohmann::json::parse(slurp(d / "moec.json"));
    j["tensors"][victim]["codec"]["group"] = 64;
    write_file_atomic(d / "moec.json", j.dump());
    int code;
    std::string err;
    fx.eval(d.string(), &code, &err);
    EXPECT_NE(code, 0);
    EXPECT_NE(err.find(victim), std::string::npos) << err;
  }
}

TEST(QuantizeCli, SubbitIsLosslessOverTernaryCodes) {
  Fixture fx;
  auto t = fx.quantize("tern", "--method gptq --bits ternary --ternary-scale minmax --group 0");
  auto sb = fx.quantize("sub", "--method gptq --bits ternary --ternary-scale minmax --group 0 --subbit");
  quantize::PackedSource a(t), b(sb);
  int checked = 0;
  for (auto& e : model::expected_tensors(a.spec())) {
    if (!a.is_packed(e.name)) continue;
    ASSERT_TRUE(b.is_packed(e.name));
    EXPECT_EQ(a.packed(e.name).codec, Codec::Tern2);
    EXPECT_EQ(b.packed(e.name).codec, Codec::Subbit);
    QuantizedMatrix qa = unpack(a.packed(e.name)), qb = unpack(b.packed(e.name));
    EXPECT_EQ(qa.q, qb.q) << e.name;
    EXPECT_EQ(qa.scale, qb.scale) << e.name;
    ++checked;
  }
  EXPECT_EQ(checked, 2 * 6 * 3);
  EXPECT_NEAR(fx.eval(t), fx.eval(sb), 1e-4 * fx.eval(t));
}

TEST(QuantizeCli, MixedPrecisionStaysWithinBudgetAndInspectReportsIt) {
  Fixture fx;
  auto out = fx.quantize("mixed", "--method gptq --budget-bits 3.0 --candidates int4:g32:asym,int2:g32:asym,ternary:row");
  auto r = test::run_cli("inspect " + out + " --json");
  ASSERT_EQ(r.code, 0) << r.err;
  auto j = nlohmann::json::parse(r.out);
  const double bpw = j["expert_bits_per_weight"].get<double>();
  EXPECT_LE(bpw, 3.0 + 1e-9);
  EXPECT_GT(bpw, 2.0);  // the budget is used, not just the cheapest option
  // Independent recount of expert bits from the stored tensors.
  quantize::PackedSource ps(out);
  uint64_t bytes = 0;
  int64_t weights = 0;
  for (auto& e : model::expected_tensors(ps.spec()))
    if (e.role == model::ExpectedTensor::Role::RoutedExpert) {
      ASSERT_TRUE(ps.is_packed(e.name));
      for (auto& suffix : {"codes", "scales", "zeros", "neg_scales", "row_lengths"})
        if (ps.store().has(e.name + "." + suffix)) bytes += ps.store().get(e.name + "." + suffix).nbytes;
      weights += e.shape[0] * e.shape[1];
    }
  EXPECT_NEAR(bpw, 8.0 * double(bytes) / double(weights), 1e-9);
}

TEST(QuantizeCli, SubbitBudgetChargesEntropyCodedSizes) {
  // With --subbit the default candidates include ternary codes of increasing sparsity, each charged its actual
  // entropy-coded size; a budget between the sparsest and the densest must be met with a mix of them.
  Fixture fx;
  auto out = fx.quantize("sb", "--method rtn --subbit --budget-bits 1.5");
  auto r = test::run_cli("inspect " + out + " --json");
  ASSERT_EQ(r.code, 0) << r.err;
  const double bpw = nlohmann::json::parse(r.out)["expert_bits_per_weight"].get<double>();
  EXPECT_LE(bpw, 1.5 + 1e-9);
  EXPECT_GT(bpw, 1.2);
  const auto meta = nlohmann::json::parse(read_file(fs::path(out) / quantize::kPackedMetaFile));
  std::set<std::string> specs;
  for (auto& [name, t] : meta["tensors"].items())
    if (t.contains("spec")) {
      specs.insert(t["spec"].get<std::string>());
      EXPECT_EQ(t["codec"]["codec"].get<std::string>().rfind("int", 0) == 0, t["spec"].get<std::string>().rfind("int", 0) == 0);
    }
  EXPECT_GE(specs.size(), 2u);
  EXPECT_TRUE(std::isfinite(fx.eval(out)));
}

TEST(QuantizeCli, StatsGiveMixedPrecisionImportance) {
  Fixture fx;
  const std::string stats = (fx.dir / "stats.h5").string();
  auto r = test::run_cli("profile " + fx.model.string() + " --calib " + fx.calib.string() + " --seq-len 32 --sample-tokens 8 -q -o " + stats);
  ASSERT_EQ(r.code, 0) << r.err;
  auto out = fx.quantize("imp", "--method rtn --budget-bits 3.0 --candidates int4:g32:asym,int2:g32:asym --stats " + stats +
                                    " --importance frequency");
  const auto st = profile::read_stats_h5(stats);
  const auto meta = nlohmann::json::parse(read_file(fs::path(out) / quantize::kPackedMetaFile));
  int checked = 0;
  for (const auto& ls : st.total().layers)
    for (int e = 0; e < ls.experts; ++e) {
      const std::string name = "model.layers." + std::to_string(ls.layer) + ".block_sparse_moe.experts." + std::to_string(e) + ".w2.weight";
      ASSERT_TRUE(meta["tensors"].contains(name)) << name;
      EXPECT_DOUBLE_EQ(meta["tensors"][name]["importance"].get<double>(), double(ls.selected[size_t(e)]) / double(ls.tokens)) << name;
      ++checked;
    }
  EXPECT_GT(checked, 0);
  // --stats informs the budget only; a wrong statistic name is refused.
  r = test::run_cli("quantize " + fx.model.string() + " --calib " + fx.calib.string() + " --seq-len 32 -q --method rtn --bits 4 --stats " +
                    stats + " -o " + (fx.dir / "x1").string());
  EXPECT_NE(r.code, 0);
  EXPECT_NE(r.err.find("--budget-bits"), std::string::npos) << r.err;
  r = test::run_cli("quantize " + fx.model.string() + " --calib " + fx.calib.string() + " --seq-len 32 -q --method rtn --budget-bits 3 --stats " +
                    stats + " --importance foo -o " + (fx.dir / "x2").string());
  EXPECT_NE(r.code, 0);
  EXPECT_NE(r.err.find("gate-mass"), std::string::npos) << r.err;
  EXPECT_FALSE(fs::exists(fx.dir / "x2"));
}

TEST(QuantizeCli, ErrorsAreClear) {
  Fixture fx;
  auto r = test::run_cli("quantize " + fx.model.string() + " --method gptq --bits 4 -o " + (fx.dir / "x").string());
  EXPECT_NE(r.code, 0);
  EXPECT_NE(r.err.find("--calib"), std::string::npos) << r.err;
  r = test::run_cli("quantize " + fx.model.string() + " --method rtn --bits 4 --group 100 -o " + (fx.dir / "y").string());
  EXPECT_NE(r.code, 0);
  EXPECT_NE(r.err.find("multiple of 32"), std::string::npos) << r.err;
  r = test::run_cli("quantize " + fx.model.string() + " --method rtn --bits 5 -o " + (fx.dir / "z").string());
  EXPECT_NE(r.code, 0);
  EXPECT_NE(r.err.find("--bits"), std::string::npos) << r.err;
  // A run that fails after the output was started leaves nothing behind, so a re-run needs no --force.
  const std::string w = (fx.dir / "w").string();
  r = test::run_cli("quantize " + fx.model.string() + " --calib " + fx.calib.string() +
                    " --seq-len 32 -q --method rtn --subbit --budget-bits 0.2 -o " + w);
  EXPECT_NE(r.code, 0);
  EXPECT_NE(r.err.find("cheapest allocation"), std::string::npos) << r.err;
  EXPECT_FALSE(fs::exists(w));
  fx.quantize("w", "--method rtn --bits 4 --group 32");
  EXPECT_TRUE(fs::exists(fs::path(w) / quantize::kPackedMetaFile));
}

// moec eval on a packed tiny-mixtral == the PyTorch reference evaluator on its hf-dense (BF16) export.
TEST(QuantizeCli, PackedEvalMatchesReferenceEvaluatorOnExport) {
  if (std::system("/usr/bin/python3 -c 'import torch, numpy' >/dev/null 2>&1") != 0) GTEST_SKIP() << "python3-torch missing";
  test::TempDir dir("quantcli-ref");
  const std::string tokens = test::shared_dir() + "/data/python_eval.npy";
  auto r = test::run_cli("quantize " + test::tiny_mixtral() + " --method rtn --bits 4 --group 128 --quiet -o " + (dir / "q").string());
  ASSERT_EQ(r.code, 0) << r.err;
  r = test::run_cli("export " + (dir / "q").string() + " --format hf-dense --quiet -o " + (dir / "hf").string());
  ASSERT_EQ(r.code, 0) << r.err;
  r = test::run_cli("eval " + (dir / "q").string() + " --tokens " + tokens + " --max-tokens 2048 --json");
  ASSERT_EQ(r.code, 0) << r.err;
  const double ours = nlohmann::json::parse(r.out)["ppl"].get<double>();
  const std::string out = (dir / "ref.json").string();
  const std::string cmd = "/usr/bin/python3 " + test::shared_dir() + "/tools/ref_eval.py " + (dir / "hf").string() + " " + tokens +
                          " --max-tokens 2048 > " + out + " 2>/dev/null";
  ASSERT_EQ(std::system(cmd.c_str()), 0);
  const double ref = nlohmann::json::parse(read_file(out))["ppl"].get<double>();
  EXPECT_NEAR(ours, ref, 1e-3 * ref) << "moec " << ours << " reference " << ref;
}
