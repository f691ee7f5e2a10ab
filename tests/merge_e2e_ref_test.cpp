// The dense checkpoint written by `moec merge` (subspace merge + calibration refit) loads in the independent
// PyTorch reference evaluator (../shared/tools/ref_eval.py), scores the same perplexity as `moec eval`, and
// beats frequency pruning at 8 -> 4 experts.
#include <gtest/gtest.h>

#include <cmath>
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

double eval_ppl(const std::string& dir, const std::string& tokens) {
  auto r = test::run_cli("eval " + dir + " --tokens " + tokens + " --max-tokens 4096 --json");
  EXPECT_EQ(r.code, 0) << r.err;
  return r.code == 0 ? nlohmann::json::parse(r.out)["ppl"].get<double>() : NAN;
}

// Issue #5's acceptance on a small budget: the subspace merge with the calibration refit of the down
// projections, 8 -> 4 experts, beats frequency pruning to 4 experts made from the same statistics; and the
// merged dense checkpoint scores the same perplexity in the reference evaluator.
TEST(MergeE2E, SubspaceRefitBeatsFrequencyPruningAndMatchesReferenceEvaluator) {
  if (std::system("/usr/bin/python3 -c 'import torch' >/dev/null 2>&1") != 0) GTEST_SKIP() << "python3-torch missing";
  test::TempDir dir("merge_e2e_ref");
  const std::string shared = test::shared_dir(), out = (dir / "merged").string(), pruned = (dir / "pruned").string();
  const std::string calib = shared + "/data/python_calib.npy", eval_tokens = shared + "/data/python_eval.npy";
  const std::string stats = (dir / "stats.h5").string();
  auto r = test::run_cli("profile " + test::tiny_mixtral() + " --calib " + calib + " --max-tokens 8192 -o " + stats);
  ASSERT_EQ(r.code, 0) << r.err;
  r = test::run_cli("prune " + test::tiny_mixtral() + " --stats " + stats + " --method frequency --keep 4 -o " + pruned);
  ASSERT_EQ(r.code, 0) << r.err;
  r = test::run_cli("merge " + test::tiny_mixtral() + " --stats " + stats + " --calib " + calib +
                    " --calib-tokens 8192 --method subspace --cluster dominant --align --energy 0.99 --weight-power 2"
                    " --keep 4 -o " + out);
  ASSERT_EQ(r.code, 0) << r.err;
  EXPECT_NE(r.err.find("refit: down"), std::string::npos) << r.err;  // the default refit ran
  const double ours = eval_ppl(out, eval_tokens), prune_ppl = eval_ppl(pruned, eval_tokens);
  EXPECT_LT(ours, prune_ppl) << "merged " << ours << " vs frequency pruning " << prune_ppl;
  const std::string ref_out = run_capture("/usr/bin/python3 " + shared + "/tools/ref_eval.py " + out + " " + eval_tokens +
                                          " --max-tokens 4096 2>/dev/null");
  const auto pos = ref_out.rfind('{');
  ASSERT_NE(pos, std::string::npos) << ref_out;
  const double ref = nlohmann::json::parse(ref_out.substr(pos))["ppl"].get<double>();
  EXPECT_NEAR(ours, ref, 1e-3 * ref) << "moec " << ours << " vs reference " << ref;
  std::printf("ppl (first 4096 eval tokens): merged %.4f (reference evaluator %.4f), frequency pruning %.4f\n", ours,
              ref, prune_ppl);
}

}  // namespace
}  // namespace moec
