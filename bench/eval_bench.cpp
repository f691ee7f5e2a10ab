// moec eval throughput and streaming memory.
//  1. tokens/s of the forward pass on the bundled tiny-mixtral, and its arithmetic rate as a fraction of
//     OpenBLAS sgemm measured in the same run on the expert GEMM shape (the baseline).
//  2. Peak RSS of evaluating synthetic checkpoints with 2, 8 and 32 layers (each in a fresh child
//     process): with layer-by-layer streaming it stays flat while the file grows.
// Usage: eval_bench [--tokens N] [--layers 2,8,32] [--json]
#include <cblas.h>
#include <sys/resource.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <cstdio>
#include <cstring>
#include <nlohmann/json.hpp>
#include <random>
#include <sstream>

#include "compress/compress.h"
#include "core/files.h"
#include "core/progress.h"
#include "io/npy.h"
#include "io/safetensors.h"
#include "model/forward.h"

using namespace moec;
namespace fs = std::filesystem;

static double now() { return std::chrono::duration<double>(std::chrono::steady_clock::now().time_since_epoch()).count(); }

static double sgemm_gflops(int m, int n, int k) {
  std::vector<float> a(size_t(m) * k, 0.5f), b(size_t(n) * k, 0.25f), c(size_t(m) * n);
  double best = 0;
  for (int rep = 0; rep < 5; ++rep) {
    double t = now();
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, m, n, k, 1.0f, a.data(), k, b.data(), k, 0.0f, c.data(), n);
    best = std::max(best, 2.0 * m * n * k / (now() - t) / 1e9);
  }
  return best;
}

// A synthetic Mixtral-style checkpoint: hidden 512, 8 experts of width 1024 (25 MiB of experts a layer).
// Every layer holds the same random values (one generator seeded alike per layer), so every layer needs
// about the same working memory: a peak that grows with the layer count is memory kept across layers,
// not a larger layer met by chance.
static void write_synthetic(const fs::path& dir, int layers) {
  fs::create_directories(dir);
  const int H = 512, I = 1024, E = 8, V = 256, nh = 8, nkv = 4, hd = 64;
  nlohmann::json c = {{"model_type", "mixtral"}, {"hidden_size", H}, {"intermediate_size", I}, {"num_local_experts", E},
                      {"num_experts_per_tok", 2}, {"num_hidden_layers", layers}, {"num_attention_heads", nh},
                      {"num_key_value_heads", nkv}, {"head_dim", hd}, {"vocab_size", V}, {"rms_norm_eps", 1e-5},
                      {"rope_theta", 10000.0}};
  write_file_atomic(dir / "config.json", c.dump(2));
  io::SafetensorsWriter w(dir, uint64_t(200) << 20);
  std::mt19937 rng(1);
  std::normal_distribution<float> nd(0, 0.02f);
  auto add = [&](const std::string& n, std::vector<int64_t> shape, float fill = -1) {
    int64_t k = 1;
    for (auto d : shape) k *= d;
    std::vector<float> v(static_cast<size_t>(k));
    for (auto& x : v) x = fill >= 0 ? fill : nd(rng);
    w.add_f32(n, io::DType::BF16, shape, v.data());
  };
  add("model.embed_tokens.weight", {V, H});
  add("model.norm.weight", {H}, 1);
  add("lm_head.weight", {V, H});
  for (int l = 0; l < layers; ++l) {
    rng.seed(2);
    std::string p = "model.layers." + std::to_string(l) + ".";
    add(p + "input_layernorm.weight", {H}, 1);
    add(p + "post_attention_layernorm.weight", {H}, 1);
    add(p + "self_attn.q_proj.weight", {nh * hd, H});
    add(p + "self_attn.k_proj.weight", {nkv * hd, H});
    add(p + "self_attn.v_proj.weight", {nkv * hd, H});
    add(p + "self_attn.o_proj.weight", {H, nh * hd});
    add(p + "block_sparse_moe.gate.weight", {E, H});
    for (int e = 0; e < E; ++e) {
      std::string q = p + "block_sparse_moe.experts." + std::to_string(e) + ".";
      add(q + "w1.weight", {I, H});
      add(q + "w3.weight", {I, H});
      add(q + "w2.weight", {H, I});
    }
  }
  w.finish();
}

// Evaluates in a fresh child process (this program re-executed: fork alone would inherit OpenMP and
// OpenBLAS thread state, which is not fork-safe); returns the child's peak RSS in MiB.
static double child_peak_rss_mib(const fs::path& dir, int tokens, const char* mode = "--child") {
  pid_t pid = fork();
  if (pid == 0) {
    std::string t = std::to_string(tokens);
    execl("/proc/self/exe", "eval_bench", mode, dir.c_str(), t.c_str(), (char*)nullptr);
    _exit(127);
  }
  int st = 0;
  struct rusage ru {};
  wait4(pid, &st, 0, &ru);
  if (!WIFEXITED(st) || WEXITSTATUS(st) != 0) std::fprintf(stderr, "child evaluation of %s failed\n", dir.c_str());
  return ru.ru_maxrss / 1024.0;
}

// Compresses a checkpoint (prune + GPTQ int4, calibration = `tokens` synthetic tokens) in this process.
static int child_compress(const char* dir, int tokens) {
  log_options().quiet = true;
  fs::path d(dir);
  std::vector<int32_t> t(static_cast<size_t>(tokens));
  for (int i = 0; i < tokens; ++i) t[size_t(i)] = (i * 37) % 256;
  io::write_tokens_npy(d / "calib.npy", t);
  compress::Options o;
  o.model = d;
  o.calib = d / "calib.npy";
  o.out = d.string() + "-out";
  o.progress = false;
  o.force = true;
  compress::run(compress::parse_recipe("prune:frequency:keep=6,quant:gptq:bits=4"), o);
  fs::remove_all(o.out);
  return 0;
}

static int child_main(const char* dir, int tokens) {
  auto src = model::open_model(dir);
  std::vector<int32_t> t(static_cast<size_t>(tokens));
  for (int i = 0; i < tokens; ++i) t[size_t(i)] = (i * 37) % 256;
  model::EvalOptions o;
  o.progress = false;
  model::evaluate(*src, t, o);
  return 0;
}

int main(int argc, char** argv) {
  int tokens = 16384;
  std::vector<int> layer_counts = {2, 8, 32};
  bool json = false;
  if (argc == 4 && !std::strcmp(argv[1], "--child")) return child_main(argv[2], std::atoi(argv[3]));
  if (argc == 4 && !std::strcmp(argv[1], "--child-compress")) return child_compress(argv[2], std::atoi(argv[3]));
  for (int i = 1; i < argc; ++i) {
    if (!std::strcmp(argv[i], "--tokens") && i + 1 < argc) tokens = std::atoi(argv[++i]);
    else if (!std::strcmp(argv[i], "--json")) json = true;
    else if (!std::strcmp(argv[i], "--layers") && i + 1 < argc) {
      layer_counts.clear();
      std::stringstream ss(argv[++i]);
      std::string x;
      while (std::getline(ss, x, ',')) layer_counts.push_back(std::stoi(x));
    } else {
      std::fprintf(stderr, "usage: eval_bench [--tokens N] [--layers 2,8,32] [--json]\n");
      return 2;
    }
  }
  nlohmann::ordered_json out;
  // 1. throughput on tiny-mixtral
  fs::path model = fs::path(MOEC_SOURCE_DIR_BENCH) / "examples/tiny-mixtral";
  auto toks = io::read_tokens_npy(fs::path(MOEC_SOURCE_DIR_BENCH) / "../shared/data/python_eval.npy");
  auto src = model::open_model(model);
  model::EvalOptions o;
  o.max_tokens = tokens;
  o.progress = false;
  auto r = model::evaluate(*src, toks.ids, o);
  const auto& s = src->spec();
  // FLOPs per token: experts (top-k x 3 matrices), attention projections, scores (full T x T), lm_head.
  double per_tok = 2.0 * s.num_layers * (s.routing.top_k * 3.0 * s.hidden * s.moe_intermediate +
                                         s.hidden * double(2 * s.n_heads + 2 * s.n_kv_heads) * s.head_dim +
                                         2.0 * 256 * s.n_heads * s.head_dim + s.hidden * s.routing.num_experts) +
                   2.0 * s.hidden * s.vocab;
  double gflops = per_tok * double(r.tokens_processed) / r.seconds / 1e9;
  int avg_rows = int(tokens * s.routing.top_k / s.routing.num_experts);
  double base = sgemm_gflops(avg_rows, s.moe_intermediate, s.hidden);
  out["tiny_mixtral"] = {{"tokens", r.tokens_processed}, {"seconds", r.seconds}, {"tokens_per_second", r.tokens_per_second()},
                         {"ppl", r.ppl()}, {"gflops", gflops}, {"sgemm_gflops_baseline", base}, {"fraction_of_sgemm", gflops / base}};
  if (!json)
    std::printf("tiny-mixtral eval: %lld tokens in %.2f s = %.0f tokens/s (ppl %.4f)\n"
                "  arithmetic rate %.1f GFLOP/s = %.2f x OpenBLAS sgemm on the expert shape (%d x %d x %d: %.1f GFLOP/s)\n\n",
                (long long)r.tokens_processed, r.seconds, r.tokens_per_second(), r.ppl(), gflops, gflops / base, avg_rows,
                s.moe_intermediate, s.hidden, base);
  // 2. streaming memory
  fs::path tmp = fs::temp_directory_path() / ("moec-eval-bench-" + std::to_string(getpid()));
  if (!json)
    std::printf("%8s %14s %18s %22s %12s\n", "layers", "checkpoint MiB", "eval peak RSS MiB", "compress peak RSS MiB", "compress s");
  nlohmann::ordered_json mem = nlohmann::ordered_json::array();
  for (int L : layer_counts) {
    fs::path d = tmp / ("L" + std::to_string(L));
    write_synthetic(d, L);
    double file_mib = 0;
    for (auto& e : fs::directory_iterator(d)) file_mib += double(fs::file_size(e.path())) / (1 << 20);
    double rss = child_peak_rss_mib(d, 2048);
    const double tc = now();
    double crss = child_peak_rss_mib(d, 2048, "--child-compress");
    const double csec = now() - tc;
    mem.push_back({{"layers", L}, {"checkpoint_mib", file_mib}, {"eval_peak_rss_mib", rss}, {"compress_peak_rss_mib", crss},
                   {"compress_seconds", csec}});
    if (!json) std::printf("%8d %14.1f %18.1f %22.1f %12.1f\n", L, file_mib, rss, crss, csec);
    fs::remove_all(d);
  }
  fs::remove_all(tmp);
  out["streaming_memory"] = mem;
  if (json) std::printf("%s\n", out.dump(2).c_str());
  return 0;
}
