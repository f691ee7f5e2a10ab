// moec eval on the bundled tiny-mixtral against the reference perplexities in ../shared/fixtures.md
// (computed by an independent PyTorch implementation), plus the CLI's behaviour on bad input.
#include <gtest/gtest.h>

#include <cmath>

#include "io/npy.h"
#include "model/forward.h"
#include "tests/support/test_util.h"

using namespace moec;

namespace {
double eval_ppl(const std::string& file, int64_t max_tokens = -1) {
  auto src = model::open_model(test::tiny_mixtral());
  auto toks = io::read_tokens_npy(test::shared_dir() + "/data/" + file);
  model::EvalOptions o;
  o.max_tokens = max_tokens;
  o.progress = false;
  auto r = model::evaluate(*src, toks.ids, o);
  EXPECT_EQ(r.tokens_scored, (std::min<int64_t>(max_tokens < 0 ? 1LL << 40 : max_tokens, int64_t(toks.ids.size())) / 256) * 255);
  return r.ppl();
}
// The full-file checks take about a minute each on a 2-core machine: on when MOEC_LONG_TESTS=1.
bool long_tests() { return std::getenv("MOEC_LONG_TESTS") != nullptr; }
#define LONG_TEST() \
  if (!long_tests()) GTEST_SKIP() << "full-file fixture check; set MOEC_LONG_TESTS=1 to run it"
void expect_within(double got, double ref, double rel) { EXPECT_LT(std::abs(got / ref - 1), rel) << "ppl " << got << " vs reference " << ref; }
}  // namespace

// fixtures.md: "data/python_eval.npy | first 32768 | 32640 | 3.0720"
TEST(EvalFixture, PythonEvalFirst32k) { expect_within(eval_ppl("python_eval.npy", 32768), 3.0720, 1e-3); }
TEST(EvalFixture, PythonEvalFull) { expect_within(eval_ppl("python_eval.npy"), 3.3166, 1e-3); }
TEST(EvalFixture, KernelEvalFull) {
  LONG_TEST();
  expect_within(eval_ppl("kernel_eval.npy"), 15.2208, 1e-3); }
TEST(EvalFixture, BibleEvalFull) {
  LONG_TEST();
  expect_within(eval_ppl("bible_eval.npy"), 10.3466, 1e-3); }
TEST(EvalFixture, PythonCalibFull) {
  LONG_TEST();
  expect_within(eval_ppl("python_calib.npy"), 3.4658, 1e-3); }

TEST(EvalFixture, ChunkingDoesNotChangeTheResult) {
  auto src = model::open_model(test::tiny_mixtral());
  auto toks = io::read_tokens_npy(test::shared_dir() + "/data/bible_eval.npy");
  model::EvalOptions a, b;
  a.max_tokens = b.max_tokens = 256 * 6;
  a.progress = b.progress = false;
  a.chunk_tokens = 256;        // one window at a time
  b.chunk_tokens = 256 * 100;  // all together
  EXPECT_NEAR(model::evaluate(*src, toks.ids, a).nll(), model::evaluate(*src, toks.ids, b).nll(), 1e-6);
}

TEST(EvalCli, JsonOutputAndInspectCounts) {
  auto r = test::run_cli("eval " + test::tiny_mixtral() + " --tokens " + test::shared_dir() +
                         "/data/python_eval.npy --max-tokens 2560 --json -q");
  ASSERT_EQ(r.code, 0) << r.err;
  auto j = nlohmann::json::parse(r.out);
  EXPECT_EQ(j["tokens_scored"], 2550);
  EXPECT_GT(j["ppl"].get<double>(), 1.0);
  EXPECT_NEAR(std::log(j["ppl"].get<double>()), j["nll"].get<double>(), 1e-9);
  auto ins = test::run_cli("inspect " + test::tiny_mixtral() + " --json");
  ASSERT_EQ(ins.code, 0) << ins.err;
  auto k = nlohmann::json::parse(ins.out);
  // The model's README: 13,510,912 parameters, 12,582,912 in routed experts, 4,073,728 active per token.
  EXPECT_EQ(k["parameters"]["total"], 13510912);
  EXPECT_EQ(k["parameters"]["routed experts"], 12582912);
  EXPECT_EQ(k["active_parameters_per_token"], 4073728);
  EXPECT_EQ(k["experts"], 8);
  EXPECT_EQ(k["top_k"], 2);
}

TEST(EvalCli, BadInputsExitNonZeroWithAMessage) {
  test::TempDir dir("evalcli");
  auto r = test::run_cli("eval " + (dir / "nomodel").string() + " --tokens x.npy");
  EXPECT_NE(r.code, 0);
  EXPECT_NE(r.err.find("nomodel"), std::string::npos) << r.err;
  r = test::run_cli("eval " + test::tiny_mixtral() + " --tokens " + (dir / "none.npy").string());
  EXPECT_NE(r.code, 0);
  EXPECT_NE(r.err.find("none.npy"), std::string::npos) << r.err;
  io::write_tokens_npy(dir / "oov.npy", std::vector<int32_t>(600, 999));
  r = test::run_cli("eval " + test::tiny_mixtral() + " --tokens " + (dir / "oov.npy").string());
  EXPECT_NE(r.code, 0);
  EXPECT_NE(r.err.find("vocabulary"), std::string::npos) << r.err;
  io::write_tokens_npy(dir / "short.npy", std::vector<int32_t>(100, 1));
  r = test::run_cli("eval " + test::tiny_mixtral() + " --tokens " + (dir / "short.npy").string());
  EXPECT_NE(r.code, 0);
  EXPECT_NE(r.err.find("no complete window"), std::string::npos) << r.err;
  r = test::run_cli("eval " + test::tiny_mixtral() + " --bogus-flag");
  EXPECT_NE(r.code, 0);
  r = test::run_cli("frobnicate");
  EXPECT_EQ(r.code, 2);
  r = test::run_cli("eval --help");
  EXPECT_EQ(r.code, 0);
  EXPECT_NE(r.out.find("--max-tokens"), std::string::npos);
}
