// Profile statistics against an independent recomputation: the MoE inputs come from the (separately
// tested) forward pass; routing, experts and every statistic are recomputed here with plain loops in
// double precision from the test model's own tensors.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <fstream>
#include <numeric>

#include "core/error.h"
#include "core/files.h"
#include "io/npy.h"
#include "model/forward.h"
#include "profile/profile.h"
#include "tests/support/test_util.h"

using namespace moec;
using profile::LayerStats;

namespace {

// Naive per-domain, per-MoE-layer sums (the same quantities LayerStats holds).
struct Ref {
  int64_t tokens = 0, sampled = 0;
  std::vector<int64_t> selected, top1;
  std::vector<double> gate, prob, lsum, lsq, easy, reap, ean;
  double entropy = 0;
  std::vector<std::vector<double>> coact, cos, outsum;
  std::vector<double> ratios;
  Ref(int E, int H)
      : selected(E), top1(E), gate(E), prob(E), lsum(E), lsq(E), easy(E), reap(E), ean(E),
        coact(E, std::vector<double>(E)), cos(E, std::vector<double>(E)), outsum(E, std::vector<double>(H)) {}
};

double dot(const std::vector<double>& a, const std::vector<double>& b) {
  double s = 0;
  for (size_t i = 0; i < a.size(); ++i) s += a[i] * b[i];
  return s;
}
double cosv(const std::vector<double>& a, const std::vector<double>& b) {
  double na = std::sqrt(dot(a, a)), nb = std::sqrt(dot(b, b));
  return na > 0 && nb > 0 ? dot(a, b) / (na * nb) : 0.0;
}

struct Naive {
  const test::TinyModel& m;
  const model::ModelSpec& spec;
  int H, E, I, K;
  // y = W x for a row-major [out, in] tensor of the test model.
  std::vector<double> mv(const std::string& name, int out, int in, const std::vector<double>& x) const {
    const auto& W = m.tensors.at(name);
    std::vector<double> y(size_t(out), 0.0);
    for (int o = 0; o < out; ++o)
      for (int i = 0; i < in; ++i) y[size_t(o)] += double(W[size_t(o) * in + i]) * x[size_t(i)];
    return y;
  }
  std::vector<double> expert(int l, int e, const std::vector<double>& x) const {
    auto g = mv(spec.expert(l, e, model::Proj::Gate), I, H, x), u = mv(spec.expert(l, e, model::Proj::Up), I, H, x);
    for (int i = 0; i < I; ++i) g[size_t(i)] = g[size_t(i)] / (1 + std::exp(-g[size_t(i)])) * u[size_t(i)];
    return mv(spec.expert(l, e, model::Proj::Down), H, I, g);
  }
  // One token's MoE input x at layer l: every statistic of that token.
  void token(int l, const std::vector<double>& x, bool sampled, Ref& r) const {
    auto z = mv(spec.router(l), E, H, x);
    double mx = *std::max_element(z.begin(), z.end()), zs = 0;
    std::vector<double> p(static_cast<size_t>(E));
    for (int e = 0; e < E; ++e) zs += p[size_t(e)] = std::exp(z[size_t(e)] - mx);
    for (auto& v : p) v /= zs;
    const int k = spec.routing.top_k;
    std::vector<int> order(static_cast<size_t>(E));
    std::iota(order.begin(), order.end(), 0);
    std::stable_sort(order.begin(), order.end(), [&](int a, int b) { return p[size_t(a)] > p[size_t(b)]; });
    double ps = 0;
    for (int j = 0; j < k; ++j) ps += p[size_t(order[size_t(j)])];
    std::vector<double> y(size_t(H), 0.0), norms(static_cast<size_t>(k)), w(static_cast<size_t>(k));
    r.tokens++;
    r.top1[size_t(order[0])]++;
    for (int j = 0; j < k; ++j) {
      const int e = order[size_t(j)];
      w[size_t(j)] = p[size_t(e)] / (spec.routing.norm_topk ? ps : 1.0);  // renormalised top-k, or raw (Qwen2-MoE)
      auto o = expert(l, e, x);
      norms[size_t(j)] = std::sqrt(dot(o, o));
      for (int c = 0; c < H; ++c) y[size_t(c)] += w[size_t(j)] * o[size_t(c)];
      r.selected[size_t(e)]++;
      r.gate[size_t(e)] += w[size_t(j)];
      r.reap[size_t(e)] += w[size_t(j)] * norms[size_t(j)];
      r.ean[size_t(e)] += norms[size_t(j)];
      for (int j2 = 0; j2 < k; ++j2) r.coact[size_t(e)][size_t(order[size_t(j2)])] += 1;
    }
    std::vector<double> xy(x);
    for (int c = 0; c < H; ++c) xy[size_t(c)] += y[size_t(c)];
    const double s = 1 - cosv(x, xy);
    for (int j = 0; j < k; ++j) r.easy[size_t(order[size_t(j)])] += s * w[size_t(j)] * norms[size_t(j)];
    for (int e = 0; e < E; ++e) {
      r.prob[size_t(e)] += p[size_t(e)];
      r.lsum[size_t(e)] += z[size_t(e)];
      r.lsq[size_t(e)] += z[size_t(e)] * z[size_t(e)];
      if (p[size_t(e)] > 0) r.entropy -= p[size_t(e)] * std::log(p[size_t(e)]);
    }
    r.ratios.push_back(w[1] / w[0]);
    if (sampled) {
      std::vector<std::vector<double>> outs;
      for (int e = 0; e < E; ++e) outs.push_back(expert(l, e, x));
      for (int a = 0; a < E; ++a) {
        for (int c = 0; c < H; ++c) r.outsum[size_t(a)][size_t(c)] += outs[size_t(a)][size_t(c)];
        for (int b = 0; b < E; ++b) r.cos[size_t(a)][size_t(b)] += cosv(outs[size_t(a)], outs[size_t(b)]);
      }
      r.sampled++;
    }
  }
};

double median(std::vector<double> v) {
  std::sort(v.begin(), v.end());
  const size_t n = v.size();
  return n % 2 ? v[n / 2] : 0.5 * (v[n / 2 - 1] + v[n / 2]);
}

void expect_near_rel(double got, double want, double rel, const std::string& what) {
  EXPECT_NEAR(got, want, rel * std::max(1.0, std::abs(want))) << what;
}

void compare(const LayerStats& L, const Ref& r, int E, int H, const std::string& tag) {
  EXPECT_EQ(L.tokens, r.tokens) << tag;
  EXPECT_EQ(L.sampled_tokens, r.sampled) << tag;
  EXPECT_EQ(L.selected, r.selected) << tag;
  EXPECT_EQ(L.top1, r.top1) << tag;
  const double tol = 2e-4;
  for (int e = 0; e < E; ++e) {
    const std::string w = tag + " expert " + std::to_string(e);
    expect_near_rel(L.gate_mass[size_t(e)], r.gate[size_t(e)], tol, w + " gate_mass");
    expect_near_rel(L.prob_sum[size_t(e)], r.prob[size_t(e)], tol, w + " prob_sum");
    expect_near_rel(L.logit_sum[size_t(e)], r.lsum[size_t(e)], tol, w + " logit_sum");
    expect_near_rel(L.logit_sq_sum[size_t(e)], r.lsq[size_t(e)], tol, w + " logit_sq_sum");
    expect_near_rel(L.easyep[size_t(e)], r.easy[size_t(e)], 1e-3, w + " easyep");
    expect_near_rel(L.reap_sum[size_t(e)], r.reap[size_t(e)], tol, w + " reap_sum");
    expect_near_rel(L.act_norm_sum[size_t(e)], r.ean[size_t(e)], tol, w + " act_norm_sum");
    const double n = double(r.tokens);
    expect_near_rel(L.fraction(e), double(r.selected[size_t(e)]) / (n * 2), 1e-12, w + " fraction");
    expect_near_rel(L.mean_prob(e), r.prob[size_t(e)] / n, tol, w + " mean_prob");
    const double lm = r.lsum[size_t(e)] / n;
    expect_near_rel(L.logit_std(e), std::sqrt(r.lsq[size_t(e)] / n - lm * lm), 1e-3, w + " logit_std");
    if (r.selected[size_t(e)]) expect_near_rel(L.reap(e), r.reap[size_t(e)] / double(r.selected[size_t(e)]), tol, w + " reap");
    for (int b = 0; b < E; ++b) {
      EXPECT_EQ(L.coactivation(e, b), r.coact[size_t(e)][size_t(b)]) << w;
      EXPECT_NEAR(L.output_similarity(e, b), r.cos[size_t(e)][size_t(b)] / double(r.sampled), 1e-4) << w << " similarity " << b;
    }
    for (int c = 0; c < H; ++c)
      EXPECT_NEAR(L.output_mean(e, c), r.outsum[size_t(e)][size_t(c)] / double(r.sampled), 1e-4) << w << " output_mean " << c;
  }
  expect_near_rel(L.entropy(), r.entropy / double(r.tokens), tol, tag + " entropy");
  EXPECT_NEAR(L.ratio_median, median(r.ratios), 1e-5) << tag;
  // Balance from the counts.
  double mean = 0, mx = 0, var = 0;
  for (auto c : r.selected) mean += double(c) / E, mx = std::max(mx, double(c));
  for (auto c : r.selected) var += (double(c) - mean) * (double(c) - mean) / E;
  EXPECT_NEAR(L.load_cv(), std::sqrt(var) / mean, 1e-12) << tag;
  EXPECT_NEAR(L.load_max_over_mean(), mx / mean, 1e-12) << tag;
  int64_t sum = 0;
  for (auto c : L.selected) sum += c;
  EXPECT_EQ(sum, L.tokens * L.top_k) << tag;
}

using test::random_tokens;

struct Fixture {
  test::TempDir dir{"profile"};
  test::TinyModel m;
  std::unique_ptr<model::CheckpointSource> src;
  std::vector<profile::Domain> domains;
  explicit Fixture(const std::string& family = "mixtral") : m(test::make_tiny_model(family, 11, {{"num_hidden_layers", 2}})) {
    test::write_model_dir(m, dir / "model");
    src = std::make_unique<model::CheckpointSource>(dir / "model");
    domains.push_back({"a", "a.npy", "", random_tokens(300, src->spec().vocab, 1)});
    domains.push_back({"b", "b.npy", "", random_tokens(150, src->spec().vocab, 2)});
  }
  profile::ProfileOptions opts() const {
    profile::ProfileOptions o;
    o.seq_len = 64;          // 300 tokens: 4 full windows + a partial one of 44
    o.chunk_tokens = 128;    // 2 windows per batch: samples cross batch boundaries
    o.sample_tokens = 7;
    o.progress = false;
    o.created = "2000-01-01T00:00:00Z";
    return o;
  }
};

}  // namespace

void check_against_naive(const std::string& family) {
  Fixture f(family);
  auto opt = f.opts();
  auto stats = profile::profile_model(*f.src, f.domains, opt);
  const auto& spec = f.src->spec();
  const int E = spec.routing.num_experts, H = spec.hidden;
  Naive nv{f.m, spec, H, E, spec.moe_intermediate, opt.sample_tokens};
  ASSERT_EQ(stats.domains.size(), 3u);
  EXPECT_EQ(stats.domains.back().name, "total");
  model::Forward fwd(*f.src);
  std::vector<Ref> total(size_t(spec.num_layers), Ref(E, H));
  for (size_t di = 0; di < f.domains.size(); ++di) {
    const auto& toks = f.domains[di].tokens;
    const int64_t n = int64_t(toks.size());
    std::vector<bool> is_sample(size_t(n), false);
    for (int64_t j = 0; j < opt.sample_tokens; ++j) is_sample[size_t((2 * j + 1) * n / (2 * opt.sample_tokens))] = true;
    std::vector<Ref> refs(size_t(spec.num_layers), Ref(E, H));
    // Window by window (each starts at position 0), the trailing partial window included.
    for (int64_t s = 0; s < n; s += opt.seq_len) {
      const int len = int(std::min<int64_t>(opt.seq_len, n - s));
      Matrix h = fwd.embed(toks.data() + s, len);
      for (int l = 0; l < spec.num_layers; ++l) {
        auto lw = fwd.load_layer(l);
        fwd.attention(l, lw, h, len);
        Matrix x = fwd.moe_input(lw, h);
        for (int t = 0; t < len; ++t) {
          std::vector<double> xv(static_cast<size_t>(H));
          for (int c = 0; c < H; ++c) xv[size_t(c)] = x(t, c);
          nv.token(l, xv, is_sample[size_t(s + t)], refs[size_t(l)]);
          nv.token(l, xv, is_sample[size_t(s + t)], total[size_t(l)]);
        }
        h += fwd.moe(l, lw, x);
      }
    }
    const auto& ds = stats.domain(f.domains[di].name);
    EXPECT_EQ(ds.tokens, n);
    ASSERT_EQ(ds.layers.size(), size_t(spec.num_layers));
    for (int l = 0; l < spec.num_layers; ++l) {
      EXPECT_EQ(ds.layers[size_t(l)].layer, l);
      compare(ds.layers[size_t(l)], refs[size_t(l)], E, H, ds.name + " layer " + std::to_string(l));
    }
  }
  for (int l = 0; l < spec.num_layers; ++l) compare(stats.total().layers[size_t(l)], total[size_t(l)], E, H, "total layer " + std::to_string(l));
}

TEST(Profile, EveryStatisticMatchesNaiveRecomputation) { check_against_naive("mixtral"); }
// Qwen2-MoE: raw (not renormalised) top-k weights and a shared expert, which EASY-EP's y_t leaves out.
TEST(Profile, QwenSharedExpertMatchesNaiveRecomputation) { check_against_naive("qwen2_moe"); }

TEST(Profile, FileRoundTripAndReproducible) {
  Fixture f;
  auto stats = profile::profile_model(*f.src, f.domains, f.opts());
  profile::write_stats_h5(stats, f.dir / "s1.h5");
  auto back = profile::read_stats_h5(f.dir / "s1.h5");
  EXPECT_EQ(back.model_type, stats.model_type);
  EXPECT_EQ(back.config_sha256, profile::config_sha256(f.dir / "model"));
  EXPECT_EQ(back.created, "2000-01-01T00:00:00Z");
  EXPECT_EQ(back.moec_version, MOEC_VERSION);
  ASSERT_EQ(back.domains.size(), stats.domains.size());
  for (size_t d = 0; d < stats.domains.size(); ++d) {
    const auto &A = stats.domains[d], &B = back.domains[d];
    EXPECT_EQ(A.name, B.name);
    EXPECT_EQ(A.token_file, B.token_file);
    EXPECT_EQ(A.tokens, B.tokens);
    for (size_t l = 0; l < A.layers.size(); ++l) {
      const auto &x = A.layers[l], &y = B.layers[l];
      EXPECT_EQ(x.layer, y.layer);
      EXPECT_EQ(x.selected, y.selected);
      EXPECT_EQ(x.top1, y.top1);
      EXPECT_EQ(x.gate_mass, y.gate_mass);
      EXPECT_EQ(x.easyep, y.easyep);
      EXPECT_EQ(x.reap_sum, y.reap_sum);
      EXPECT_EQ(x.logit_sq_sum, y.logit_sq_sum);
      EXPECT_EQ(x.entropy_sum, y.entropy_sum);
      EXPECT_EQ(x.coactivation, y.coactivation);
      EXPECT_EQ(x.output_similarity, y.output_similarity);
      EXPECT_LT((x.output_mean - y.output_mean).cwiseAbs().maxCoeff(), 1e-6);  // stored as fp32
      EXPECT_EQ(x.ratio_median, y.ratio_median);
      EXPECT_EQ(x.sampled_tokens, y.sampled_tokens);
    }
  }
  // Profiling the same tokens again gives a byte-identical file (same date given).
  auto again = profile::profile_model(*f.src, f.domains, f.opts());
  profile::write_stats_h5(again, f.dir / "s2.h5");
  EXPECT_EQ(read_file(f.dir / "s1.h5"), read_file(f.dir / "s2.h5"));
}

TEST(Profile, StatsFromAnotherModelAreRejected) {
  Fixture f;
  auto stats = profile::profile_model(*f.src, f.domains, f.opts());
  EXPECT_NO_THROW(profile::check_stats_match(stats, f.src->spec(), f.dir / "model"));
  // Same shapes, different config (hash differs).
  auto other = test::make_tiny_model("mixtral", 11, {{"num_hidden_layers", 2}, {"rope_theta", 5000.0}});
  test::write_model_dir(other, f.dir / "other");
  auto spec2 = model::load_spec(f.dir / "other");
  try {
    profile::check_stats_match(stats, spec2, f.dir / "other");
    ADD_FAILURE() << "no error";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("another model"), std::string::npos) << e.what();
  }
  // Different expert count.
  auto wide = test::make_tiny_model("mixtral", 11, {{"num_hidden_layers", 2}, {"num_local_experts", 4}});
  test::write_model_dir(wide, f.dir / "wide");
  try {
    profile::check_stats_match(stats, model::load_spec(f.dir / "wide"), f.dir / "wide");
    ADD_FAILURE() << "no error";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("4 experts"), std::string::npos) << e.what();
  }
}

TEST(Profile, BadInputsAreClearErrors) {
  Fixture f;
  const int V = f.src->spec().vocab;
  auto expect_error = [](auto fn, const std::string& needle) {
    try {
      fn();
      ADD_FAILURE() << "no error, expected: " << needle;
    } catch (const Error& e) {
      EXPECT_NE(std::string(e.what()).find(needle), std::string::npos) << e.what();
    }
  };
  auto bad = random_tokens(50, V, 3);
  bad[17] = V + 5;
  io::write_tokens_npy(f.dir / "oov.npy", bad);
  expect_error([&] { profile::load_domain("x", f.dir / "oov.npy", V); }, "position 17");
  // Empty array.
  {
    std::string hdr = "{'descr': '<i4', 'fortran_order': False, 'shape': (0,), }";
    hdr.resize(118, ' ');
    hdr += '\n';
    std::ofstream o(f.dir / "empty.npy", std::ios::binary);
    o << std::string("\x93NUMPY\x01\x00", 8) << char(hdr.size() & 0xff) << char(hdr.size() >> 8) << hdr;
  }
  expect_error([&] { profile::load_domain("x", f.dir / "empty.npy", V); }, "empty");
  // float32 tokens.
  {
    std::string hdr = "{'descr': '<f4', 'fortran_order': False, 'shape': (2,), }";
    hdr.resize(118, ' ');
    hdr += '\n';
    std::ofstream o(f.dir / "float.npy", std::ios::binary);
    o << std::string("\x93NUMPY\x01\x00", 8) << char(hdr.size() & 0xff) << char(hdr.size() >> 8) << hdr << std::string(8, '\0');
  }
  expect_error([&] { profile::load_domain("x", f.dir / "float.npy", V); }, "float.npy");
  expect_error([&] { profile::load_domain("total", f.dir / "oov.npy", V); }, "reserved");
  // Tokens given directly to the library are checked too.
  std::vector<profile::Domain> d = {{"x", "mem", "", bad}};
  expect_error([&] { profile::profile_model(*f.src, d, f.opts()); }, "outside");
  auto two = f.domains;
  two[1].name = "a";
  expect_error([&] { profile::profile_model(*f.src, two, f.opts()); }, "twice");
  // Not a stats file.
  io::write_tokens_npy(f.dir / "x.h5", bad);
  expect_error([&] { profile::read_stats_h5(f.dir / "x.h5"); }, "not an HDF5 file");
}

// The CLI end to end on tiny-mixtral (small max-tokens to stay fast).
TEST(ProfileCli, TinyMixtral) {
  test::TempDir dir("profile-cli");
  const std::string model = test::tiny_mixtral(), py = test::shared_dir() + "/data/python_calib.npy",
                    bible = test::shared_dir() + "/data/bible_eval.npy";
  const std::string out = (dir / "s.h5").string();
  const std::string base = "profile " + model + " --calib " + py + " --calib-domain bible=" + bible +
                           " --max-tokens 384 --seq-len 128 --sample-tokens 16 --date 2000-01-01 -q -o ";
  auto r = test::run_cli(base + out);
  ASSERT_EQ(r.code, 0) << r.err;
  EXPECT_TRUE(std::filesystem::exists(dir / "s.json"));
  auto s = profile::read_stats_h5(out);
  ASSERT_EQ(s.domains.size(), 3u);
  EXPECT_EQ(s.domains[0].name, "python_calib");
  EXPECT_EQ(s.domains[1].name, "bible");
  EXPECT_EQ(s.total().tokens, 768);
  for (auto& d : s.domains)
    for (auto& L : d.layers) {
      int64_t sum = 0;
      for (auto c : L.selected) sum += c;
      EXPECT_EQ(sum, d.tokens * s.top_k);
    }
  EXPECT_EQ(s.domains[0].token_sha256, sha256_file(py));
  // No overwrite without --force; with it, an identical file.
  r = test::run_cli(base + out);
  EXPECT_NE(r.code, 0);
  EXPECT_NE(r.err.find("--force"), std::string::npos) << r.err;
  const std::string before = read_file(out);
  r = test::run_cli(base + out + " --force");
  ASSERT_EQ(r.code, 0) << r.err;
  EXPECT_EQ(before, read_file(out));
  // inspect: text and JSON.
  r = test::run_cli("inspect " + out);
  ASSERT_EQ(r.code, 0) << r.err;
  EXPECT_NE(r.out.find("[bible]"), std::string::npos) << r.out;
  r = test::run_cli("inspect " + out + " --json");
  ASSERT_EQ(r.code, 0) << r.err;
  auto j = nlohmann::json::parse(r.out);
  EXPECT_EQ(j["domains"].size(), 3u);
  EXPECT_EQ(j["domains"][2]["layers"][0]["selected"].size(), 8u);
  // report: one self-contained page.
  r = test::run_cli("report " + out + " -o " + (dir / "r.html").string());
  ASSERT_EQ(r.code, 0) << r.err;
  auto html = read_file(dir / "r.html");
  EXPECT_NE(html.find("<svg"), std::string::npos);
  EXPECT_EQ(html.find("<script"), std::string::npos);
  EXPECT_EQ(html.find("https://"), std::string::npos);  // nothing fetched from the network
  EXPECT_EQ(html.find("<link"), std::string::npos);
  // Errors: out-of-vocabulary tokens, a stats file that is not one.
  std::vector<int32_t> bad(300, 1);
  bad[5] = 100000;
  io::write_tokens_npy(dir / "bad.npy", bad);
  r = test::run_cli("profile " + model + " --calib " + (dir / "bad.npy").string() + " -q -o " + (dir / "b.h5").string());
  EXPECT_NE(r.code, 0);
  EXPECT_NE(r.err.find("bad.npy"), std::string::npos) << r.err;
  EXPECT_NE(r.err.find("position 5"), std::string::npos) << r.err;
  EXPECT_FALSE(std::filesystem::exists(dir / "b.h5"));
}
