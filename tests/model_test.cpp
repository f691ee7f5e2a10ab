// The forward pass of every supported family against an independent, naive scalar implementation
// of the Hugging Face modeling code written here (double precision, loops only).
#include <gtest/gtest.h>

#include <cmath>

#include "core/error.h"
#include "model/forward.h"
#include "model/router.h"
#include "tests/support/test_util.h"

using namespace moec;
using moec::test::TinyModel;

namespace {

using Vec = std::vector<double>;
using Mat = std::vector<Vec>;  // rows

struct Naive {
  const TinyModel& m;
  const nlohmann::json& c;
  std::string fam;
  explicit Naive(const TinyModel& mm) : m(mm), c(mm.config), fam(mm.config["model_type"]) {}

  const std::vector<float>& W(const std::string& n) const { return m.tensors.at(n); }
  bool has(const std::string& n) const { return m.tensors.t.count(n) > 0; }
  // y = W x for W [out, in] stored row-major
  Vec lin(const std::string& n, const Vec& x) const {
    auto& w = W(n);
    size_t in = x.size(), out = w.size() / in;
    Vec y(out, 0.0);
    for (size_t o = 0; o < out; ++o)
      for (size_t i = 0; i < in; ++i) y[o] += double(w[o * in + i]) * x[i];
    return y;
  }
  Vec rms(const Vec& x, const std::vector<float>& w, size_t off = 0, size_t len = 0) const {
    if (!len) len = x.size();
    double eps = c["rms_norm_eps"].get<double>();
    double ss = 0;
    for (size_t i = 0; i < len; ++i) ss += x[off + i] * x[off + i];
    double r = 1.0 / std::sqrt(ss / double(len) + eps);
    Vec y(x);
    for (size_t i = 0; i < len; ++i) y[off + i] = double(w[i]) * x[off + i] * r;
    return y;
  }
  static double silu(double v) { return v / (1 + std::exp(-v)); }
  Vec mlp(const std::string& g, const std::string& u, const std::string& d, const Vec& x) const {
    Vec a = lin(g, x), b = lin(u, x);
    for (size_t i = 0; i < a.size(); ++i) a[i] = silu(a[i]) * b[i];
    return lin(d, a);
  }

  Mat forward(const std::vector<int>& toks) const {
    const int H = c["hidden_size"], L = c["num_hidden_layers"], nh = c["num_attention_heads"], nkv = c["num_key_value_heads"],
              hd = c["head_dim"], V = c["vocab_size"], k = c["num_experts_per_tok"];
    const int T = int(toks.size()), rep = nh / nkv;
    const double theta = c["rope_theta"];
    const bool mix = fam == "mixtral";
    const int E = mix ? int(c["num_local_experts"]) : int(c["num_experts"]);
    const bool renorm = mix ? true : c["norm_topk_prob"].get<bool>();
    auto& emb = W("model.embed_tokens.weight");
    Mat x(static_cast<size_t>(T), Vec(static_cast<size_t>(H)));
    for (int t = 0; t < T; ++t)
      for (int i = 0; i < H; ++i) x[t][i] = emb[size_t(toks[t]) * H + i];
    for (int l = 0; l < L; ++l) {
      std::string p = "model.layers." + std::to_string(l) + ".";
      Mat q(T), kk(T), v(T);
      for (int t = 0; t < T; ++t) {
        Vec xn = rms(x[t], W(p + "input_layernorm.weight"));
        q[t] = lin(p + "self_attn.q_proj.weight", xn);
        kk[t] = lin(p + "self_attn.k_proj.weight", xn);
        v[t] = lin(p + "self_attn.v_proj.weight", xn);
        if (has(p + "self_attn.q_proj.bias")) {
          auto &bq = W(p + "self_attn.q_proj.bias"), &bk = W(p + "self_attn.k_proj.bias"), &bv = W(p + "self_attn.v_proj.bias");
          for (size_t i = 0; i < q[t].size(); ++i) q[t][i] += bq[i];
          for (size_t i = 0; i < kk[t].size(); ++i) kk[t][i] += bk[i], v[t][i] += bv[i];
        }
        if (fam == "olmoe") {
          q[t] = rms(q[t], W(p + "self_attn.q_norm.weight"));
          kk[t] = rms(kk[t], W(p + "self_attn.k_norm.weight"));
        }
        if (fam == "qwen3_moe") {
          for (int h = 0; h < nh; ++h) q[t] = rms(q[t], W(p + "self_attn.q_norm.weight"), size_t(h * hd), size_t(hd));
          for (int h = 0; h < nkv; ++h) kk[t] = rms(kk[t], W(p + "self_attn.k_norm.weight"), size_t(h * hd), size_t(hd));
        }
        // RoPE, rotate_half: pairs (j, j + hd/2) rotate by pos * theta^(-2j/hd)
        auto rope = [&](Vec& z, int heads) {
          for (int h = 0; h < heads; ++h)
            for (int j = 0; j < hd / 2; ++j) {
              double a = double(t) * std::pow(theta, -2.0 * j / hd);
              double x1 = z[h * hd + j], x2 = z[h * hd + j + hd / 2];
              z[h * hd + j] = x1 * std::cos(a) - x2 * std::sin(a);
              z[h * hd + j + hd / 2] = x2 * std::cos(a) + x1 * std::sin(a);
            }
        };
        rope(q[t], nh);
        rope(kk[t], nkv);
      }
      for (int t = 0; t < T; ++t) {
        Vec o(size_t(nh * hd), 0.0);
        for (int h = 0; h < nh; ++h) {
          int g = h / rep;
          Vec s(static_cast<size_t>(t + 1));
          double m = -1e300;
          for (int j = 0; j <= t; ++j) {
            double d = 0;
            for (int i = 0; i < hd; ++i) d += q[t][h * hd + i] * kk[j][g * hd + i];
            s[j] = d / std::sqrt(double(hd));
            m = std::max(m, s[j]);
          }
          double z = 0;
          for (int j = 0; j <= t; ++j) z += (s[j] = std::exp(s[j] - m));
          for (int j = 0; j <= t; ++j)
            for (int i = 0; i < hd; ++i) o[h * hd + i] += s[j] / z * v[j][g * hd + i];
        }
        Vec a = lin(p + "self_attn.o_proj.weight", o);
        for (int i = 0; i < H; ++i) x[t][i] += a[i];
      }
      for (int t = 0; t < T; ++t) {
        Vec xn = rms(x[t], W(p + "post_attention_layernorm.weight"));
        Vec y(size_t(H), 0.0);
        std::string moe = mix ? p + "block_sparse_moe." : p + "mlp.";
        if (!has(moe + "gate.weight")) {  // dense layer
          y = mlp(p + "mlp.gate_proj.weight", p + "mlp.up_proj.weight", p + "mlp.down_proj.weight", xn);
        } else {
          Vec lg = lin(moe + "gate.weight", xn);
          double m = *std::max_element(lg.begin(), lg.end()), z = 0;
          Vec pr(lg.size());
          for (size_t e = 0; e < lg.size(); ++e) z += (pr[e] = std::exp(lg[e] - m));
          for (auto& v2 : pr) v2 /= z;
          std::vector<int> idx(static_cast<size_t>(E));
          for (int e = 0; e < E; ++e) idx[e] = e;
          std::stable_sort(idx.begin(), idx.end(), [&](int a, int b) { return pr[a] > pr[b]; });
          double sw = 0;
          for (int j = 0; j < k; ++j) sw += pr[idx[j]];
          for (int j = 0; j < k; ++j) {
            int e = idx[j];
            std::string ep = moe + "experts." + std::to_string(e) + ".";
            Vec out = mix ? mlp(ep + "w1.weight", ep + "w3.weight", ep + "w2.weight", xn)
                          : mlp(ep + "gate_proj.weight", ep + "up_proj.weight", ep + "down_proj.weight", xn);
            double w = renorm ? pr[e] / sw : pr[e];
            for (int i = 0; i < H; ++i) y[i] += w * out[i];
          }
          if (fam == "qwen2_moe") {
            Vec sh = mlp(p + "mlp.shared_expert.gate_proj.weight", p + "mlp.shared_expert.up_proj.weight",
                         p + "mlp.shared_expert.down_proj.weight", xn);
            double g = lin(p + "mlp.shared_expert_gate.weight", xn)[0];
            g = 1 / (1 + std::exp(-g));
            for (int i = 0; i < H; ++i) y[i] += g * sh[i];
          }
        }
        for (int i = 0; i < H; ++i) x[t][i] += y[i];
      }
    }
    Mat logits(T);
    for (int t = 0; t < T; ++t) {
      Vec xn = rms(x[t], W("model.norm.weight"));
      logits[t] = lin(c["tie_word_embeddings"].get<bool>() ? "model.embed_tokens.weight" : "lm_head.weight", xn);
      (void)V;
    }
    return logits;
  }
};

void check_family(const std::string& family, const nlohmann::json& overrides = {}) {
  SCOPED_TRACE(family + " " + overrides.dump());
  TinyModel m = test::make_tiny_model(family, 7, overrides);
  test::TempDir dir("model-" + family);
  test::write_model_dir(m, dir.path, 20000);  // small shards: exercises the sharded reader too
  auto src = model::open_model(dir.path);
  model::Forward fwd(*src);
  const int T = 9, nseq = 2, V = m.config["vocab_size"];
  std::vector<int32_t> toks(size_t(T * nseq));
  std::mt19937 rng(3);
  for (auto& t : toks) t = int32_t(rng() % uint32_t(V));
  Matrix h = fwd.embed(toks.data(), int64_t(toks.size()));
  for (int l = 0; l < src->spec().num_layers; ++l) fwd.run_layer(l, fwd.load_layer(l), h, T);
  Matrix lg = fwd.logits(h, 0, h.rows());
  Naive naive(m);
  double maxerr = 0, maxref = 0;
  for (int s = 0; s < nseq; ++s) {
    auto ref = naive.forward(std::vector<int>(toks.begin() + s * T, toks.begin() + (s + 1) * T));
    for (int t = 0; t < T; ++t)
      for (int v = 0; v < V; ++v) {
        maxerr = std::max(maxerr, std::abs(ref[t][v] - double(lg(s * T + t, v))));
        maxref = std::max(maxref, std::abs(ref[t][v]));
      }
  }
  EXPECT_GT(maxref, 0.1);
  EXPECT_LT(maxerr, 2e-4 * maxref) << "max abs error " << maxerr << " (max |logit| " << maxref << ")";
}

}  // namespace

TEST(Forward, MixtralMatchesNaiveReference) { check_family("mixtral"); }
TEST(Forward, Qwen2MoeWithSharedExpertGateMatchesNaiveReference) { check_family("qwen2_moe"); }
TEST(Forward, Qwen2MoeNormTopkAndDenseLayer) {
  check_family("qwen2_moe", {{"norm_topk_prob", true}, {"mlp_only_layers", {0}}});
}
TEST(Forward, Qwen3MoeMatchesNaiveReference) { check_family("qwen3_moe"); }
TEST(Forward, Qwen3MoeWithoutRenormalisation) { check_family("qwen3_moe", {{"norm_topk_prob", false}}); }
TEST(Forward, OlmoeMatchesNaiveReference) { check_family("olmoe"); }
TEST(Forward, MixtralTopOneAndTiedEmbeddings) {
  check_family("mixtral", {{"num_experts_per_tok", 1}, {"tie_word_embeddings", true}});
}

// --- routing edge cases, against hand-computed expectations
TEST(Routing, TiesGoToTheLowerExpertIndex) {
  model::RoutingSpec s;
  s.num_experts = 4;
  s.top_k = 2;
  Matrix logits(1, 4);
  logits << 1.0f, 2.0f, 2.0f, 2.0f;
  auto r = model::route(logits, s);
  EXPECT_EQ(r.expert[0], 1);
  EXPECT_EQ(r.expert[1], 2);
  EXPECT_FLOAT_EQ(r.weight[0], 0.5f);
}

TEST(Routing, NormTopkOnAndOff) {
  model::RoutingSpec s;
  s.num_experts = 3;
  s.top_k = 2;
  Matrix logits(1, 3);
  logits << 0.0f, std::log(2.0f), std::log(5.0f);  // probs 1/8, 2/8, 5/8
  s.norm_topk = false;
  auto r = model::route(logits, s);
  EXPECT_EQ(r.expert[0], 2);
  EXPECT_EQ(r.expert[1], 1);
  EXPECT_NEAR(r.weight[0], 5.0 / 8, 1e-6);
  EXPECT_NEAR(r.weight[1], 2.0 / 8, 1e-6);
  s.norm_topk = true;
  r = model::route(logits, s);
  EXPECT_NEAR(r.weight[0], 5.0 / 7, 1e-6);
  EXPECT_NEAR(r.weight[1], 2.0 / 7, 1e-6);
}

TEST(Routing, DeepSeekV3GroupLimitedSigmoidWithCorrectionBias) {
  // 8 experts in 4 groups of 2; keep the best 2 groups by the sum of their top-2 biased scores.
  model::RoutingSpec s;
  s.num_experts = 8;
  s.top_k = 2;
  s.scoring = model::Scoring::Sigmoid;
  s.method = model::TopkMethod::NoAuxTc;
  s.n_group = 4;
  s.topk_group = 2;
  s.norm_topk = true;
  s.routed_scaling_factor = 2.5f;
  s.correction_bias = true;
  Matrix logits(1, 8);
  logits << 3.0f, -3.0f, 1.0f, 1.0f, 0.5f, 0.4f, 2.0f, -2.0f;
  // Expert 1 has a large correction bias: its group {0,1} wins, though its own score is tiny.
  float bias[8] = {0, 2.0f, 0, 0, 0, 0, 0, 0};
  auto sig = [](float v) { return 1.0 / (1.0 + std::exp(-double(v))); };
  // group sums: g0 = s0 + s1 + 2, g1 = s2 + s3, g2 = s4 + s5, g3 = s6 + s7 -> g0 and g1 kept.
  auto r = model::route(logits, s, bias);
  // Among experts 0..3, biased choice scores: s0, s1+2, s2, s3 -> 1 then 0.
  EXPECT_EQ(r.expert[0], 1);
  EXPECT_EQ(r.expert[1], 0);
  double a = sig(-3.0f), b = sig(3.0f);
  EXPECT_NEAR(r.weight[0], 2.5 * a / (a + b), 1e-5);  // weights use the unbiased sigmoid scores
  EXPECT_NEAR(r.weight[1], 2.5 * b / (a + b), 1e-5);
}

TEST(Routing, DeepSeekV2GroupLimitedGreedy) {
  model::RoutingSpec s;
  s.num_experts = 6;
  s.top_k = 2;
  s.method = model::TopkMethod::GroupLimited;
  s.n_group = 3;
  s.topk_group = 1;
  s.norm_topk = false;
  s.routed_scaling_factor = 2.0f;
  Matrix logits(1, 6);
  logits << 0.0f, 4.0f, 3.9f, 3.8f, 0.0f, 0.0f;  // best group {0,1} by its max; {2,3} excluded
  auto r = model::route(logits, s);
  EXPECT_EQ(r.expert[0], 1);
  EXPECT_EQ(r.expert[1], 0);
  double z = 0;
  for (int e = 0; e < 6; ++e) z += std::exp(double(logits(0, e)));
  EXPECT_NEAR(r.weight[0], 2.0 * std::exp(4.0) / z, 1e-5);
  EXPECT_NEAR(r.weight[1], 2.0 * 1.0 / z, 1e-5);
}

// --- bad checkpoints
TEST(ModelErrors, UnknownModelTypeListsSupported) {
  auto m = test::make_tiny_model("mixtral", 1);
  m.config["model_type"] = "gpt_oss";
  test::TempDir dir("bad-type");
  test::write_model_dir(m, dir.path);
  try {
    model::open_model(dir.path);
    FAIL() << "accepted an unknown model_type";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("gpt_oss"), std::string::npos);
    EXPECT_NE(std::string(e.what()).find("qwen2_moe"), std::string::npos);
  }
}

TEST(ModelErrors, DeepSeekMlaIsRejectedByName) {
  auto m = test::make_tiny_model("mixtral", 1);
  m.config["model_type"] = "deepseek_v3";
  test::TempDir dir("mla");
  test::write_model_dir(m, dir.path);
  try {
    model::open_model(dir.path);
    FAIL();
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("Latent Attention"), std::string::npos);
  }
}

TEST(ModelErrors, MissingTensorIsNamed) {
  auto m = test::make_tiny_model("mixtral", 1);
  m.tensors.t.erase("model.layers.1.block_sparse_moe.experts.3.w2.weight");
  test::TempDir dir("missing");
  test::write_model_dir(m, dir.path);
  try {
    model::open_model(dir.path);
    FAIL();
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("model.layers.1.block_sparse_moe.experts.3.w2.weight"), std::string::npos) << e.what();
  }
}

TEST(ModelErrors, ShapeMismatchWithConfigIsNamed) {
  auto m = test::make_tiny_model("qwen2_moe", 1);
  m.config["moe_intermediate_size"] = 41;
  test::TempDir dir("shape");
  test::write_model_dir(m, dir.path);
  try {
    model::open_model(dir.path);
    FAIL();
  } catch (const Error& e) {
    std::string w = e.what();
    EXPECT_NE(w.find("[40, 48]"), std::string::npos) << w;
    EXPECT_NE(w.find("[41, 48]"), std::string::npos) << w;
  }
}

TEST(ModelErrors, MissingConfigFieldIsNamed) {
  auto m = test::make_tiny_model("olmoe", 1);
  m.config.erase("num_experts_per_tok");
  test::TempDir dir("field");
  test::write_model_dir(m, dir.path);
  EXPECT_THROW(
      {
        try {
          model::open_model(dir.path);
        } catch (const Error& e) {
          EXPECT_NE(std::string(e.what()).find("num_experts_per_tok"), std::string::npos);
          throw;
        }
      },
      Error);
}

TEST(ModelErrors, TokenOutsideVocabulary) {
  std::vector<int32_t> t = {1, 2, 300};
  EXPECT_THROW(model::check_tokens(t, 256, "x.npy"), Error);
}
