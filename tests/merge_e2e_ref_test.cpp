// The dense checkpoint written by `moec merge` loads in the independent PyTorch reference evaluator
// (../shared/tools/ref_eval.py) and scores the same perplexity as `moec eval`.
#include <gtest/gtest.h>

#include <cstdio>
#include <cstdlib>
#include <nlohmann/json.hpp>

#include "support/test_util.h"

namespace moec {
namespace {

std::string run_capture(const std::string& cmd) {
  std::string out;
  FILE* p = popen(cmd.c_str(), "r");
  if (!p) return out;
  char buf[4096];
  while (size_t n = fread(buf, 1, sizeof buf, p)) out.append(buf, n);
  pclose(p);
  return out;
}

TEST(MergeE2E, MergedCheckpointMatchesReferenceEvaluator) {
  if (std::system("/usr/bin/python3 -c 'import torch' >/dev/null 2>&1") != 0) GTEST_SKIP() << "python3-torch missing";
  test::TempDir dir("merge_e2e_ref");
  const std::string shared = test::shared_dir(), out = (dir / "merged").string();
  const std::string eval_tokens = shared + "/data/python_eval.npy";
  auto r = test::run_cli("merge " + test::tiny_mixtral() + " --calib " + shared +
                         "/data/python_calib.npy --calib-tokens 4096 --method msmoe --cluster dominant --keep 6 -o " + out);
  ASSERT_EQ(r.code, 0) << r.err;
  r = test::run_cli("eval " + out + " --tokens " + eval_tokens + " --max-tokens 4096 --json");
  ASSERT_EQ(r.code, 0) << r.err;
  const double ours = nlohmann::json::parse(r.out)["ppl"].get<double>();
  const std::string ref_out = run_capture("/usr/bin/python3 " + shared + "/tools/ref_eval.py " + out + " " + eval_tokens +
                                          " --max-tokens 4096 2>/dev/null");
  const auto pos = ref_out.rfind('{');
  ASSERT_NE(pos, std::string::npos) << ref_out;
  const double ref = nlohmann::json::parse(ref_out.substr(pos))["ppl"].get<double>();
  EXPECT_NEAR(ours, ref, 1e-3 * ref) << "moec " << ours << " vs reference " << ref;
  // 6 merged experts of 8 cost some quality, but the model is not broken.
  EXPECT_GT(ours, 2.5);
  EXPECT_LT(ours, 6.0);
}

}  // namespace
}  // namespace moec
