// moec compress: recipe grammar and validation, a full run on tiny-mixtral, kill -9 (after a stage and
// after a quantized layer) + --resume giving a byte-identical result, refusal to overwrite, the per-layer
// commit store, merge recipes, and the report rendering in headless Chromium.
#include <gtest/gtest.h>

#include <cmath>
#include <cstdlib>
#include <random>

#include "compress/compress.h"
#include "compress/internal.h"
#include "core/error.h"
#include "core/files.h"
#include "io/npy.h"
#include "quantize/quantize.h"
#include "quantize/rtn.h"
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
  // Merge stages (the issue's example), flags printed bare, JSON round trip.
  EXPECT_EQ(compress::parse_recipe("merge:subspace:keep=6,quant:mixed:budget=1.2").str(), "merge:subspace:keep=6,quant:mixed:budget=1.2");
  auto m = compress::parse_recipe("merge:subspace:whiten:rank=16:keep=6:cluster=kmeans,quant:gptq:bits=4");
  EXPECT_EQ(m.str(), "merge:subspace:cluster=kmeans:keep=6:rank=16:whiten,quant:gptq:bits=4");
  EXPECT_EQ(compress::recipe_from_json(nlohmann::json::parse(m.to_json().dump())).str(), m.str());
  EXPECT_EQ(compress::parse_recipe(R"({"stages": [{"stage": "merge", "method": "subspace", "keep": 4, "align": true}]})").str(),
            "merge:subspace:align:keep=4");
  auto mo = compress::merge_options(compress::parse_recipe("merge:subspace:ratio=0.5:rank=8:router=freq:seed=3").stages[0], 8);
  EXPECT_EQ(mo.keep, 4);
  EXPECT_EQ(mo.method, merge::MergeMethod::Subspace);
  EXPECT_EQ(mo.subspace.rank, 8);
  EXPECT_EQ(mo.router, merge::RouterMerge::FrequencyWeighted);
  EXPECT_EQ(mo.seed, 3u);
}

TEST(Recipe, RejectsBadRecipesListingWhatIsAllowed) {
  EXPECT_NE(error_of("shrink:fast").find("allowed: prune, merge, quant"), std::string::npos);
  EXPECT_NE(error_of("merge:magic:keep=4").find("subspace, msmoe, average, frequency"), std::string::npos);
  EXPECT_NE(error_of("merge:subspace").find("keep=K"), std::string::npos);
  EXPECT_NE(error_of("merge:subspace:keep=0").find("integer >= 1"), std::string::npos);
  EXPECT_NE(error_of("merge:subspace:keep=6:depth=2").find("allowed: align, align_tokens, cluster, energy, keep, rank, ratio, refit, router, seed, svd, weight_power, whiten"),
            std::string::npos) << error_of("merge:subspace:keep=6:depth=2");
  EXPECT_NE(error_of("merge:subspace:keep=6:refit=2").find("none, down, router, all"), std::string::npos);
  EXPECT_NE(error_of("merge:subspace:keep=6:weight_power=-1").find("weight_power"), std::string::npos);
  EXPECT_NE(error_of("merge:subspace:keep=6:cluster=spectral").find("kmeans"), std::string::npos);
  EXPECT_NE(error_of("merge:subspace:keep=6:energy=1.5").find("(0, 1]"), std::string::npos);
  EXPECT_NE(error_of("merge:msmoe:keep=6:rank=8").find("merge:subspace only"), std::string::npos);
  EXPECT_NE(error_of("merge:subspace:keep=6:svd=randomized").find("rank=R"), std::string::npos);
  EXPECT_NE(error_of("merge:subspace:keep=6:whiten=maybe").find("flag"), std::string::npos);
  EXPECT_NE(error_of("prune:easyep:keep=6,merge:subspace:keep=4").find("cannot be combined"), std::string::npos);
  EXPECT_NE(error_of("merge:subspace:keep=4,prune:easyep:keep=6").find("cannot be combined"), std::string::npos);
  EXPECT_NE(error_of("quant:gptq:bits=4,merge:subspace:keep=6").find("before quant"), std::string::npos);
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
std::string args(const std::string& out, bool quiet = true, const std::string& recipe = kRecipe) {
  return "compress " + test::tiny_mixtral() + " --calib " + test::source_dir() + "/examples/data/python_calib_32k.npy" +
         " --max-calib-tokens 2048 --recipe " + recipe + " -o " + out + (quiet ? " -q" : "");
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

  // Killed by SIGKILL right after the pruning plan was committed; then resumed and killed again right after
  // quantized layer 1 (of 4) was committed; then resumed to the end.
  const fs::path out = dir / "resumed", work = out / ".work";
  setenv("MOEC_TEST_KILL_AFTER_STAGE", "plan", 1);
  auto killed = test::run_cli(args(out.string()));
  unsetenv("MOEC_TEST_KILL_AFTER_STAGE");
  EXPECT_NE(killed.code, 0);
  ASSERT_TRUE(fs::exists(work / "plan.json")) << "the killed run left no work to resume";
  ASSERT_FALSE(fs::exists(out / "model.safetensors"));
  auto again = test::run_cli(args(out.string()));
  EXPECT_NE(again.code, 0) << "an existing OUT must not be reused without --resume";
  auto other = test::run_cli(args(out.string(), true, "quant:rtn:bits=4") + " --resume");
  EXPECT_NE(other.code, 0);
  EXPECT_NE(other.err.find("--resume refused"), std::string::npos) << other.err;
  setenv("MOEC_TEST_KILL_AFTER_LAYER", "1", 1);
  killed = test::run_cli(args(out.string()) + " --resume");
  unsetenv("MOEC_TEST_KILL_AFTER_LAYER");
  EXPECT_NE(killed.code, 0);
  for (const char* f : {"layer-00000.json", "layer-00000.safetensors", "layer-00001.json", "layer-00001.safetensors", "h-00001.f32"})
    EXPECT_TRUE(fs::exists(work / "quant" / f)) << f;
  EXPECT_FALSE(fs::exists(work / "quant" / "h-00000.f32")) << "only the newest activations are kept";
  EXPECT_FALSE(fs::exists(work / "quant" / "layer-00002.json"));
  EXPECT_FALSE(fs::exists(out / "model.safetensors"));
  other = test::run_cli(args(out.string(), true, "prune:easyep:keep=6,quant:gptq:bits=3") + " --resume");
  EXPECT_NE(other.code, 0);
  EXPECT_NE(other.err.find("--resume refused"), std::string::npos) << other.err;
  auto resumed = test::run_cli(args(out.string(), false) + " --resume");
  ASSERT_EQ(resumed.code, 0) << resumed.err;
  EXPECT_NE(resumed.err.find("reusing"), std::string::npos) << resumed.err;
  EXPECT_NE(resumed.err.find("restored quantized layers 0..1"), std::string::npos) << resumed.err;
  EXPECT_EQ(resumed.err.find("quantize: layer 1/4"), std::string::npos) << "layer 0 must not be quantized again";
  EXPECT_NE(resumed.err.find("quantize: layer 3/4"), std::string::npos) << resumed.err;
  auto a = files_of(dir / "full"), b = files_of(out);
  EXPECT_EQ(a, b);
  EXPECT_TRUE(a.count("model.safetensors") && a.count("moec.json") && a.count("report.json") && a.count("plan.json"));
  EXPECT_FALSE(fs::exists(work));
}

// The per-layer commit store on its own: what is committed comes back exactly (packed bytes, moec.json
// records, activations, report); partial work of an unfinished layer is dropped.
TEST(Compress, LayerStoreRestoresCommittedLayersExactly) {
  test::TempDir dir("compress-layer-store");
  std::mt19937 rng(5);
  std::normal_distribution<float> nd(0.0f, 1.0f);
  auto random = [&](int r, int c) {
    Matrix m(r, c);
    for (int64_t i = 0; i < m.size(); ++i) m.data()[i] = nd(rng);
    return m;
  };
  struct Item {
    std::string name;
    PackedMatrix m;
    nlohmann::ordered_json info;
  };
  std::vector<std::vector<Item>> items(2);
  const char* specs[] = {"int4:g128:asym", "int3:g32:sym", "int2:g64:asym", "ternary:minmax:row", "int8:row:sym"};
  int n = 0;
  for (int l = 0; l < 2; ++l)
    for (int i = 0; i < 3; ++i, ++n) {
      auto sp = parse_quant_spec(specs[n % 5]);
      bool subbit = n == 3;  // one sub-bit coded matrix (variable-length codes + row offsets)
      Item it{"model.layers." + std::to_string(l) + ".w" + std::to_string(i),
              pack(quantize_rtn(random(40, 200), sp), quantize::codec_for(sp, subbit)), {}};
      it.info["spec"] = specs[n % 5];
      it.info["loss"] = 0.1 + 1.0 / 3.0 * n;  // doubles must round-trip exactly
      items[size_t(l)].push_back(std::move(it));
    }
  const Matrix h0 = random(64, 16), h1 = random(64, 16);
  auto part = [](int l) {
    quantize::CalibrateReport r;
    r.expert_bytes = 1000 + l;
    r.expert_weights = 24000;
    r.fallbacks = l;
    quantize::ExpertRecord e;
    e.layer = l;
    e.tokens = 17;
    e.gate_mass = 0.3;
    e.spec = "int4:asym:g128";
    e.codec = "int4";
    e.path[0] = e.path[1] = e.path[2] = "gptq";
    e.bits_per_weight = 4.25;
    r.experts = {e};
    return r;
  };
  {
    compress::LayerStore st(dir / "q");
    for (int l = 0; l < 2; ++l) {
      for (auto& it : items[size_t(l)]) st.add(it.name, it.m, it.info);
      st.commit(l, l == 0 ? &h0 : &h1, part(l));
    }
    st.add("model.layers.2.w0", items[0][0].m, {});  // layer 2 in progress when the process dies
  }
  write_file_atomic(dir / "q" / "layer-00002.json.tmp", "{");  // and a torn temp file
  compress::LayerStore st(dir / "q");
  quantize::ResumePoint rp;
  ASSERT_EQ(st.restore(4, 64, 16, rp), 2);
  EXPECT_EQ(rp.first_layer, 2);
  ASSERT_EQ(rp.h.rows(), 64);
  EXPECT_EQ(std::memcmp(rp.h.data(), h1.data(), sizeof(float) * 64 * 16), 0);
  EXPECT_EQ(rp.done.expert_bytes, 2001u);
  EXPECT_EQ(rp.done.expert_weights, 48000);
  EXPECT_EQ(rp.done.fallbacks, 1);
  ASSERT_EQ(rp.done.experts.size(), 2u);
  EXPECT_EQ(rp.done.experts[1].layer, 1);
  EXPECT_EQ(rp.done.experts[1].path[2], "gptq");
  std::set<std::string> left;
  for (auto& e : fs::directory_iterator(dir / "q")) left.insert(e.path().filename().string());
  EXPECT_EQ(left, (std::set<std::string>{"h-00001.f32", "layer-00000.json", "layer-00000.safetensors", "layer-00001.json",
                                         "layer-00001.safetensors"}));
  // Assembling writes exactly what a writer fed with the original matrices writes.
  quantize::register_packed_format();
  auto cfg = test::make_tiny_model("mixtral", 1);
  test::write_model_dir(cfg, dir / "src");
  {
    quantize::PackedCheckpointWriter a(dir / "a", dir / "src", {}), b(dir / "b", dir / "src", {});
    for (auto& layer : items)
      for (auto& it : layer) a.add_packed(it.name, it.m, it.info);
    st.assemble(2, b);
    a.finish();
    b.finish();
  }
  EXPECT_EQ(sha256_file(dir / "a" / "model.safetensors"), sha256_file(dir / "b" / "model.safetensors"));
  EXPECT_EQ(read_file(dir / "a" / "moec.json"), read_file(dir / "b" / "moec.json"));
  // A corrupt committed file is not restored (with only the newest activations kept, that means layer 0).
  {
    std::string bytes = read_file(dir / "q" / "layer-00001.safetensors");
    bytes[bytes.size() - 1] ^= 1;
    write_file_atomic(dir / "q" / "layer-00001.safetensors", bytes);
  }
  EXPECT_EQ(st.restore(4, 64, 16, rp), 0);
  EXPECT_TRUE(fs::is_empty(dir / "q"));
}

namespace {
void write_random_tokens(const fs::path& f, int n, int vocab, unsigned seed) {
  std::mt19937 rng(seed);
  std::vector<int32_t> t(static_cast<size_t>(n));
  for (auto& x : t) x = int32_t(rng() % unsigned(vocab));
  io::write_tokens_npy(f, t);
}
}  // namespace

// A merge recipe: profile -> merge -> mixed-precision GPTQ of the merged model -> eval. The result has fewer
// experts, evaluates, and keeps the budget (bits per routed-expert weight of the SOURCE model). A merge-only
// recipe writes exactly what `moec merge` writes from the same statistics.
TEST(Compress, MergeRecipeGivesFewerExpertsWithinBudget) {
  test::TempDir dir("compress-merge");
  auto m = test::make_tiny_model("mixtral", 11, {{"hidden_size", 128}, {"intermediate_size", 128}, {"num_hidden_layers", 2}});
  test::write_model_dir(m, dir / "model");
  const int E = m.config["num_local_experts"].get<int>(), V = m.config["vocab_size"].get<int>();
  write_random_tokens(dir / "calib.npy", 2048, V, 1);
  write_random_tokens(dir / "eval.npy", 1024, V, 2);
  const std::string base = "compress " + (dir / "model").string() + " --calib " + (dir / "calib.npy").string() + " --eval " +
                           (dir / "eval.npy").string() + " --seq-len 128 -q --json";
  auto r = test::run_cli(base + " --recipe merge:subspace:keep=3,quant:mixed:budget=1.5 -o " + (dir / "mq").string());
  ASSERT_EQ(r.code, 0) << r.err;
  auto j = nlohmann::json::parse(r.out);
  auto cfg = nlohmann::json::parse(read_file(dir / "mq" / "config.json"));
  EXPECT_EQ(cfg["num_local_experts"].get<int>(), 3);
  ASSERT_LT(3, E);
  const double ppl = j["ppl_after"].get<double>();
  EXPECT_TRUE(std::isfinite(ppl) && ppl > 1.0) << ppl;
  // The budget counts the source's 6 experts: 3 kept experts may use twice as many bits each.
  EXPECT_LE(j["expert_bits_per_source_weight"].get<double>(), 1.5 + 1e-9);
  EXPECT_NEAR(j["expert_bits_per_weight"].get<double>(), j["expert_bits_per_source_weight"].get<double>() * E / 3, 1e-9);
  EXPECT_GT(j["expert_bits_per_weight"].get<double>(), 1.5);
  auto meta = nlohmann::json::parse(read_file(dir / "mq" / "moec.json"));
  EXPECT_EQ(meta["recipe"]["merge_plan"]["layers"].size(), 2u);
  EXPECT_TRUE(fs::exists(dir / "mq" / "merge_plan.json"));
  auto ev = test::run_cli("eval " + (dir / "mq").string() + " --tokens " + (dir / "eval.npy").string() + " --window 128 --json");
  ASSERT_EQ(ev.code, 0) << ev.err;
  EXPECT_NEAR(nlohmann::json::parse(ev.out)["ppl"].get<double>(), ppl, 1e-9 * ppl);
  // Killed after the first quantized layer of the merged model, resumed: the same files (the merged model
  // in .work is reused, layer 0 restored).
  setenv("MOEC_TEST_KILL_AFTER_LAYER", "0", 1);
  auto killed = test::run_cli(base + " --recipe merge:subspace:keep=3,quant:mixed:budget=1.5 -o " + (dir / "mq2").string());
  unsetenv("MOEC_TEST_KILL_AFTER_LAYER");
  EXPECT_NE(killed.code, 0);
  EXPECT_TRUE(fs::exists(dir / "mq2" / ".work" / "merged" / "moec.json"));
  r = test::run_cli(base + " --recipe merge:subspace:keep=3,quant:mixed:budget=1.5 -o " + (dir / "mq2").string() + " --resume");
  ASSERT_EQ(r.code, 0) << r.err;
  EXPECT_EQ(files_of(dir / "mq"), files_of(dir / "mq2"));

  // Merge only: the same bytes as `moec merge` with the run's statistics.
  r = test::run_cli(base + " --recipe merge:frequency:keep=4 -o " + (dir / "m").string());
  ASSERT_EQ(r.code, 0) << r.err;
  auto cli = test::run_cli("merge " + (dir / "model").string() + " --stats " + (dir / "m" / "stats.h5").string() +
                           " --method frequency --keep 4 -o " + (dir / "cli").string());
  ASSERT_EQ(cli.code, 0) << cli.err;
  EXPECT_EQ(sha256_file(dir / "m" / "model.safetensors"), sha256_file(dir / "cli" / "model.safetensors"));
  EXPECT_EQ(read_file(dir / "m" / "config.json"), read_file(dir / "cli" / "config.json"));
  EXPECT_EQ(nlohmann::json::parse(read_file(dir / "m" / "config.json"))["num_local_experts"].get<int>(), 4);
}
