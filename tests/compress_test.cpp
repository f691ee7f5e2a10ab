// moec compress: recipe grammar and validation, a full run on tiny-mixtral, kill -9 + --resume giving a
// byte-identical result, refusal to overwrite, and the report rendering in headless Chromium.
#include <gtest/gtest.h>

#include <cstdlib>

#include "compress/compress.h"
#include "core/error.h"
#include "core/files.h"
#include "tests/support/test_util.h"

using namespace moec;

namespace {
std::string error_of(const std::string& r) {
  try {
    compress::parse_recipe(r);
  } catch (const Error& e) {
    return e.what();
  }
  return "";
}
}  // namespace

TEST(Recipe, ParsesPrintsCanonicallyAndRoundTripsThroughJson) {
  auto r = compress::parse_recipe("prune:easyep:keep=6,quant:gptq:bits=ternary:scale=minmax:subbit");
  ASSERT_EQ(r.stages.size(), 2u);
  EXPECT_EQ(r.stages[0].method, "easyep");
  EXPECT_EQ(r.stages[0].params.at("keep"), "6");
  EXPECT_EQ(r.stages[1].params.at("subbit"), "1");
  EXPECT_EQ(r.str(), "prune:easyep:keep=6,quant:gptq:bits=ternary:scale=minmax:subbit");
  auto back = compress::recipe_from_json(nlohmann::json::parse(r.to_json().dump()));
  EXPECT_EQ(back.str(), r.str());
  EXPECT_EQ(compress::parse_recipe(r.to_json().dump()).str(), r.str());
  EXPECT_EQ(compress::parse_recipe("quant:mixed:budget=2.5").str(), "quant:mixed:budget=2.5");
  EXPECT_EQ(compress::parse_recipe("prune:frequency:ratio=0.25").str(), "prune:frequency:ratio=0.25");
}

TEST(Recipe, RejectsBadRecipesListingWhatIsAllowed) {
  EXPECT_NE(error_of("shrink:fast").find("allowed: prune, quant"), std::string::npos);
  EXPECT_NE(error_of("prune:magic:keep=4").find("easyep"), std::string::npos);
  EXPECT_NE(error_of("prune:easyep").find("keep=K"), std::string::npos);
  EXPECT_NE(error_of("prune:easyep:keep=4:ratio=0.5").find("exactly one"), std::string::npos);
  EXPECT_NE(error_of("prune:easyep:keep=x").find("positive integer"), std::string::npos);
  EXPECT_NE(error_of("prune:easyep:depth=3").find("allowed: keep, ratio"), std::string::npos);
  EXPECT_NE(error_of("quant:gptq:bits=5").find("2, 3, 4, 8 or ternary"), std::string::npos);
  EXPECT_NE(error_of("quant:gptq").find("bits="), std::string::npos);
  EXPECT_NE(error_of("quant:gptq:bits=4:subbit").find("bits=ternary"), std::string::npos);
  EXPECT_NE(error_of("quant:mixed").find("budget"), std::string::npos);
  EXPECT_NE(error_of("quant:mixed:budget=1:bits=4").find("picks specs itself"), std::string::npos);
  EXPECT_NE(error_of("quant:gptq:bits=4:deadzone=0.6").find("bits=ternary"), std::string::npos);
  EXPECT_NE(error_of("quant:gptq:bits=ternary:deadzone=0").find("(0, 2]"), std::string::npos);
  EXPECT_NE(error_of("quant:gptq:bits=ternary:rate=x").find("[0, 2]"), std::string::npos);
  EXPECT_EQ(compress::parse_recipe("quant:gptq:bits=ternary:rate=0.2:subbit").str(), "quant:gptq:bits=ternary:rate=0.2:subbit");
  EXPECT_EQ(compress::parse_recipe("quant:mixed:budget=1:subbit").str(), "quant:mixed:budget=1:subbit");
  EXPECT_NE(error_of("quant:awq:bits=4").find("gptq, rtn, mixed"), std::string::npos);
  EXPECT_NE(error_of("quant:gptq:bits=4,prune:easyep:keep=6").find("before quant"), std::string::npos);
  EXPECT_NE(error_of("quant:gptq:bits=4,quant:rtn:bits=2").find("twice"), std::string::npos);
  EXPECT_NE(error_of("").find("no stage"), std::string::npos);
  EXPECT_NE(error_of("prune").find("STAGE:METHOD"), std::string::npos);
}

namespace {
const std::string kRecipe = "prune:easyep:keep=6,quant:gptq:bits=4:group=128";
std::string args(const std::string& out, bool quiet = true) {
  return "compress " + test::tiny_mixtral() + " --calib " + test::source_dir() + "/examples/data/python_calib_32k.npy" +
         " --max-calib-tokens 2048 --recipe " + kRecipe + " -o " + out + (quiet ? " -q" : "");
}
// Every output file except report.html (which records timings).
std::map<std::string, std::string> files_of(const fs::path& dir) {
  std::map<std::string, std::string> m;
  for (auto& e : fs::directory_iterator(dir))
    if (e.path().filename() != "report.html") m[e.path().filename().string()] = sha256_file(e.path());
  return m;
}
}  // namespace

TEST(Compress, KilledRunResumesToByteIdenticalOutput) {
  test::TempDir dir("compress-resume");
  auto full = test::run_cli(args((dir / "full").string()) + " --json");
  ASSERT_EQ(full.code, 0) << full.err;
  auto j = nlohmann::json::parse(full.out);
  for (const char* k : {"ppl_before", "ppl_after", "expert_bits_per_weight", "bytes_before", "bytes_after", "seconds"})
    EXPECT_TRUE(j.contains(k)) << k;
  EXPECT_NEAR(j["expert_bits_per_weight"].get<double>(), 4.25, 1e-6);  // int4 codes + fp16 scale and zero per 128
  EXPECT_LT(j["bytes_after"].get<double>(), j["bytes_before"].get<double>());
  EXPECT_FALSE(fs::exists(dir / "full" / ".work"));

  // The report renders in headless Chromium (when installed) with its charts.
  if (std::system("command -v chromium >/dev/null 2>&1") == 0) {
    const std::string flags = " --headless --no-sandbox --disable-gpu --disable-quic --no-first-run "
                              "--disable-background-networking --disable-component-update --disable-sync --user-data-dir=" +
                              (dir / "chrome").string() + " ";
    const std::string page = "file://" + (dir / "full" / "report.html").string();
    std::string cmd = "chromium" + flags + "--dump-dom " + page + " > " + (dir / "dom.html").string() + " 2>/dev/null";
    ASSERT_EQ(std::system(cmd.c_str()), 0);
    std::string dom = read_file(dir / "dom.html");
    EXPECT_NE(dom.find("<svg"), std::string::npos);
    EXPECT_NE(dom.find(kRecipe), std::string::npos);  // the recipe is shown
    cmd = "chromium" + flags + "--window-size=1200,2400 --screenshot=" + (dir / "report.png").string() + " " + page + " >/dev/null 2>&1";
    ASSERT_EQ(std::system(cmd.c_str()), 0);
    EXPECT_GT(fs::file_size(dir / "report.png"), 20000u);
  } else {
    std::printf("chromium not installed: report rendering not checked\n");
  }

  // Killed by SIGKILL right after the pruning plan was committed; then resumed.
  setenv("MOEC_TEST_KILL_AFTER_STAGE", "plan", 1);
  auto killed = test::run_cli(args((dir / "resumed").string()));
  unsetenv("MOEC_TEST_KILL_AFTER_STAGE");
  EXPECT_NE(killed.code, 0);
  (void)killed;
  ASSERT_TRUE(fs::exists(dir / "resumed" / ".work" / "plan.json")) << "the killed run left no work to resume";
  ASSERT_FALSE(fs::exists(dir / "resumed" / "model.safetensors"));
  auto again = test::run_cli(args((dir / "resumed").string()));
  EXPECT_NE(again.code, 0) << "an existing OUT must not be reused without --resume";
  auto other = test::run_cli(args((dir / "resumed").string()) + " --resume --max-eval-tokens 10 --recipe quant:rtn:bits=4");
  EXPECT_NE(other.code, 0);
  auto resumed = test::run_cli(args((dir / "resumed").string(), false) + " --resume");
  ASSERT_EQ(resumed.code, 0) << resumed.err;
  EXPECT_NE(resumed.err.find("reusing"), std::string::npos) << resumed.err;
  auto a = files_of(dir / "full"), b = files_of(dir / "resumed");
  EXPECT_EQ(a, b);
  EXPECT_TRUE(a.count("model.safetensors") && a.count("moec.json") && a.count("report.json") && a.count("plan.json"));
}
