// Tests for quantize/: spec parsing, RTN against naive formulas, ternary scale rules, GPTQ against closed
// forms, a naive unblocked GPTQ and RTN, and the few-token fallbacks.
#include <gtest/gtest.h>

#include <cmath>
#include <random>

#include "core/error.h"
#include "core/half.h"
#include "quantize/grid.h"
#include "quantize/quantize.h"

using namespace moec;

namespace {

Matrix random_matrix(int rows, int cols, uint32_t seed, float sd = 1.0f) {
  std::mt19937 rng(seed);
  std::normal_distribution<float> nd(0.0f, sd);
  Matrix m(rows, cols);
  for (int r = 0; r < rows; ++r)
    for (int c = 0; c < cols; ++c) m(r, c) = nd(rng);
  return m;
}

// Activations with correlated features and uneven scales, as real hidden states have.
Matrix correlated_x(int n, int cols, uint32_t seed) {
  Matrix Z = random_matrix(n, cols, seed);
  Matrix A = Matrix::Identity(cols, cols) + 0.4f * random_matrix(cols, cols, seed + 1) / std::sqrt(float(cols));
  Matrix X = Z * A;
  std::mt19937 rng(seed + 2);
  std::uniform_real_distribution<float> ud(0.2f, 2.0f);
  for (int c = 0; c < cols; ++c) X.col(c) *= ud(rng);
  return X;
}

MatrixD naive_hessian(const Matrix& X) {
  MatrixD Xd = X.cast<double>();
  return (2.0 / double(X.rows())) * Xd.transpose() * Xd;
}

// --- naive formulas, written from docs/QUANTIZATION.md independently of quantize/grid.cpp.
float naive_int_dequant(float w, const float* g, int n, int bits, bool sym) {
  float lo = 0, hi = 0;
  for (int i = 0; i < n; ++i) lo = std::min(lo, g[i]), hi = std::max(hi, g[i]);
  float maxq = float((1 << bits) - 1);
  float scale, zero;
  if (sym) {
    float a = std::max(-lo, hi);
    if (a == 0) a = 1;
    scale = round_f16(2 * a / maxq);
    zero = float(1 << (bits - 1));
  } else {
    if (lo == 0 && hi == 0) lo = -1, hi = 1;
    scale = round_f16((hi - lo) / maxq);
    zero = std::clamp(std::nearbyint(-lo / scale), 0.0f, maxq);
  }
  float q = std::clamp(std::nearbyint(w / scale) + zero, 0.0f, maxq);
  return scale * (q - zero);
}

float naive_ternary_dequant(float w, const float* g, int n, TernaryScale ts) {
  if (ts == TernaryScale::MinMax) {
    float lo = 0, hi = 0;
    for (int i = 0; i < n; ++i) lo = std::min(lo, g[i]), hi = std::max(hi, g[i]);
    float pos = round_f16(hi), neg = round_f16(-lo);
    // nearest of {-neg, 0, pos}; exact halves go to 0
    if (w > 0) return (w > pos / 2) ? pos : 0.0f;
    if (w < 0) return (-w > neg / 2) ? -neg : 0.0f;
    return 0.0f;
  }
  double s = 0;
  if (ts == TernaryScale::AbsMean) {
    for (int i = 0; i < n; ++i) s += std::fabs(g[i]);
    s /= n;
  } else {  // Opt: brute force over thresholds: best scale = mean|w| of the k largest
    std::vector<double> a;
    for (int i = 0; i < n; ++i) a.push_back(std::fabs(g[i]));
    double best = 1e300;
    for (double t : a) {  // support = {|w| >= t}
      double sum = 0, cnt = 0, sq = 0;
      for (double v : a) {
        sq += v * v;
        if (v >= t) sum += v, cnt += 1;
      }
      double err = sq - sum * sum / cnt;
      if (err < best - 1e-12) best = err, s = sum / cnt;
    }
  }
  float sc = round_f16(float(s));
  if (sc == 0) return 0.0f;
  float q = std::clamp(std::nearbyint(w / sc), -1.0f, 1.0f);
  return q * sc;
}

Matrix naive_rtn(const Matrix& W, const QuantSpec& s) {
  int gs = s.group > 0 ? s.group : int(W.cols());
  Matrix out(W.rows(), W.cols());
  for (int r = 0; r < W.rows(); ++r)
    for (int c = 0; c < W.cols(); ++c) {
      int c0 = c / gs * gs, n = std::min<int>(gs, int(W.cols()) - c0);
      const float* g = W.row(r).data() + c0;
      out(r, c) = s.kind == CodeKind::Int ? naive_int_dequant(W(r, c), g, n, s.bits, s.symmetric)
                                          : naive_ternary_dequant(W(r, c), g, n, s.ternary_scale);
    }
  return out;
}

const char* kSpecs[] = {"int8",          "int4:g32",       "int4:g32:asym",    "int3:g32",
                        "int3:asym",     "int2:g32",       "int2:g32:asym",    "ternary:absmean",
                        "ternary:g32",   "ternary:minmax", "ternary:minmax:g32", "ternary:opt:g32"};

void expect_f16_exact(const QuantizedMatrix& q) {
  for (float v : q.scale) ASSERT_EQ(v, round_f16(v));
  for (float v : q.zero) {
    ASSERT_EQ(v, round_f16(v));
    ASSERT_EQ(v, std::nearbyint(v));
  }
  for (float v : q.neg_scale) ASSERT_EQ(v, round_f16(v));
}

}  // namespace

// ---------------------------------------------------------------- spec
TEST(QuantSpec, ParsesAndRoundTrips) {
  QuantSpec s = parse_quant_spec("int4:g128");
  EXPECT_EQ(s.kind, CodeKind::Int);
  EXPECT_EQ(s.bits, 4);
  EXPECT_EQ(s.group, 128);
  EXPECT_TRUE(s.symmetric);
  s = parse_quant_spec("int2:g128:asym");
  EXPECT_EQ(s.bits, 2);
  EXPECT_FALSE(s.symmetric);
  s = parse_quant_spec("ternary:minmax");
  EXPECT_EQ(s.kind, CodeKind::Ternary);
  EXPECT_EQ(s.ternary_scale, TernaryScale::MinMax);
  EXPECT_EQ(s.group, 0);
  EXPECT_EQ(parse_quant_spec("ternary").ternary_scale, TernaryScale::AbsMean);
  for (const char* t : kSpecs) EXPECT_EQ(parse_quant_spec(to_string(parse_quant_spec(t))), parse_quant_spec(t));
}

TEST(QuantSpec, ErrorsListAllowedValues) {
  auto msg = [](const char* t) {
    try {
      parse_quant_spec(t);
    } catch (const Error& e) {
      return std::string(e.what());
    }
    return std::string("no error");
  };
  EXPECT_NE(msg("int5:g128").find("int8, int4, int3, int2, ternary"), std::string::npos);
  EXPECT_NE(msg("int4:g0").find("gN"), std::string::npos);
  EXPECT_NE(msg("int4:minmax").find("ternary codes only"), std::string::npos);
  EXPECT_NE(msg("ternary:asym").find("absmean, minmax, opt"), std::string::npos);
  EXPECT_NE(msg("int4:g32:g64").find("twice"), std::string::npos);
  EXPECT_NE(msg("int4:foo").find("sym, asym"), std::string::npos);
}

TEST(QuantSpec, TernaryDeadzone) {
  QuantSpec s = parse_quant_spec("ternary:minmax:dz0.7");
  EXPECT_FLOAT_EQ(s.deadzone, 0.7f);
  EXPECT_EQ(to_string(s), "ternary:minmax:row:dz0.7");
  EXPECT_EQ(parse_quant_spec(to_string(s)), s);
  EXPECT_EQ(to_string(parse_quant_spec("ternary:minmax:dz0.5")), "ternary:minmax:row");  // the default is implicit
  EXPECT_THROW(parse_quant_spec("ternary:dz0"), Error);
  EXPECT_THROW(parse_quant_spec("ternary:dz2.5"), Error);
  EXPECT_THROW(parse_quant_spec("ternary:dzx"), Error);
  EXPECT_THROW(parse_quant_spec("ternary:dz0.6:dz0.7"), Error);
  EXPECT_THROW(parse_quant_spec("int4:dz0.6"), Error);
  // Default deadzone = round to nearest, ties to zero, as clamp(nearbyint(w / s), -1, 1) (BitNet's rule).
  for (const char* t : {"ternary:absmean", "ternary:minmax"}) {
    QuantSpec d = parse_quant_spec(t);
    GridParams p{0.25f, 0.0f, 0.5f};
    for (float w : {0.0f, 0.1249f, 0.125f, 0.1251f, 0.3f, 0.375f, 0.9f, -0.124f, -0.125f, -0.126f, -0.25f, -0.2501f, -0.9f}) {
      const float neg = d.ternary_scale == TernaryScale::MinMax ? p.neg_scale : p.scale;
      const float ref = w >= 0 ? std::min(std::nearbyint(w / p.scale), 1.0f) : -std::min(std::nearbyint(-w / neg), 1.0f);
      EXPECT_EQ(grid_code(d, p, w), int8_t(ref)) << t << " w=" << w;
    }
  }
  // A larger deadzone zeroes exactly the weights with |w| / scale <= deadzone.
  QuantSpec z = parse_quant_spec("ternary:minmax:dz0.7");
  GridParams p{1.0f, 0.0f, 2.0f};
  EXPECT_EQ(grid_code(z, p, 0.69f), 0);
  EXPECT_EQ(grid_code(z, p, 0.71f), 1);
  EXPECT_EQ(grid_code(z, p, -1.39f), 0);
  EXPECT_EQ(grid_code(z, p, -1.41f), -1);
  // RTN: zeros only grow with the deadzone, and non-zero codes never change sign.
  Matrix W = random_matrix(6, 200, 5);
  int prev_zeros = -1;
  QuantizedMatrix base = quantize_rtn(W, parse_quant_spec("ternary:minmax"));
  for (const char* t : {"ternary:minmax", "ternary:minmax:dz0.6", "ternary:minmax:dz0.8", "ternary:minmax:dz1"}) {
    QuantizedMatrix q = quantize_rtn(W, parse_quant_spec(t));
    int zeros = 0;
    for (size_t i = 0; i < q.q.size(); ++i) {
      zeros += q.q[i] == 0;
      if (q.q[i] != 0) EXPECT_EQ(q.q[i], base.q[i]) << t;
    }
    EXPECT_GT(zeros, prev_zeros) << t;
    prev_zeros = zeros;
  }
}

TEST(QuantSpec, BitsPerWeight) {
  EXPECT_DOUBLE_EQ(bits_per_weight(parse_quant_spec("int4:g128"), 4096), 4.125);
  EXPECT_DOUBLE_EQ(bits_per_weight(parse_quant_spec("int4:g128:asym"), 4096), 4.25);
  EXPECT_DOUBLE_EQ(bits_per_weight(parse_quant_spec("int4:g32"), 100), 4 + 4 * 16 / 100.0);  // 4 groups
  EXPECT_DOUBLE_EQ(bits_per_weight(parse_quant_spec("ternary:minmax"), 256), 2 + 32 / 256.0);
}

// ---------------------------------------------------------------- RTN
TEST(Rtn, MatchesNaiveFormulaAllSpecs) {
  Matrix W = random_matrix(5, 100, 7);  // 100 columns: groups of 32 leave a partial group of 4
  W(1, 3) = 6.0f;                        // an outlier
  W.row(3).array() = W.row(3).array().abs();  // an all-positive row
  for (const char* t : kSpecs) {
    SCOPED_TRACE(t);
    QuantSpec s = parse_quant_spec(t);
    QuantizedMatrix q = quantize_rtn(W, s);
    ASSERT_EQ(q.groups(), s.group ? (100 + s.group - 1) / s.group : 1);
    expect_f16_exact(q);
    Matrix ref = naive_rtn(W, s);
    Matrix got = dequantize(q);
    for (int r = 0; r < W.rows(); ++r)
      for (int c = 0; c < W.cols(); ++c) ASSERT_EQ(got(r, c), ref(r, c)) << "r=" << r << " c=" << c;
  }
}

TEST(Rtn, OddShapesSingleRowAndZeros) {
  for (const char* t : kSpecs) {
    SCOPED_TRACE(t);
    QuantSpec s = parse_quant_spec(t);
    for (int cols : {1, 7, 33, 100}) {
      Matrix W = random_matrix(1, cols, 11 + cols);
      Matrix got = dequantize(quantize_rtn(W, s));
      Matrix ref = naive_rtn(W, s);
      ASSERT_TRUE(got == ref) << "cols=" << cols;
    }
    Matrix Z = Matrix::Zero(3, 50);
    QuantizedMatrix qz = quantize_rtn(Z, s);
    expect_f16_exact(qz);
    EXPECT_TRUE(dequantize(qz).isZero(0.0f));
  }
}

TEST(Rtn, TernaryOptIsOptimalOnSmallGroups) {
  // Compare with the best of all 3^n code vectors (each with its optimal scale), n = 7.
  QuantSpec s = parse_quant_spec("ternary:opt");
  for (uint32_t seed = 0; seed < 20; ++seed) {
    Matrix W = random_matrix(1, 7, 100 + seed);
    double best = 1e300;
    for (int m = 0; m < 2187; ++m) {
      int code[7], x = m;
      for (int i = 0; i < 7; ++i) code[i] = x % 3 - 1, x /= 3;
      double wq = 0, qq = 0, ww = 0;
      for (int i = 0; i < 7; ++i) wq += W(0, i) * code[i], qq += code[i] * code[i], ww += W(0, i) * W(0, i);
      best = std::min(best, qq > 0 ? ww - wq * wq / qq : ww);
    }
    double got = (W - dequantize(quantize_rtn(W, s))).squaredNorm();
    EXPECT_LE(got, best * (1 + 2e-3) + 1e-9) << "seed " << seed;  // fp16 rounding of the scale only
  }
}

TEST(Rtn, RejectsUnrepresentableScaleAndNonFinite) {
  Matrix W = Matrix::Constant(2, 4, 1e7f);
  EXPECT_THROW(quantize_rtn(W, parse_quant_spec("int4")), Error);
  W.setOnes();
  W(1, 2) = NAN;
  try {
    quantize_rtn(W, parse_quant_spec("int4"));
    FAIL() << "no error";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("(1, 2)"), std::string::npos) << e.what();
  }
  EXPECT_THROW(gptq(W, MatrixD::Identity(4, 4), parse_quant_spec("int4")), Error);
}

// ---------------------------------------------------------------- Hessian
TEST(Hessian, AccumulatesTwoOverNXXt) {
  Matrix X = correlated_x(37, 20, 3);
  HessianAccumulator acc(20);
  acc.add(X.topRows(10));
  acc.add(X.bottomRows(27));
  HessianAccumulator big(20);  // more tokens than one internal chunk
  Matrix X2 = correlated_x(2500, 20, 4);
  big.add(X2);
  EXPECT_LT((big.hessian() - naive_hessian(X2)).cwiseAbs().maxCoeff(), 1e-9);
  EXPECT_EQ(acc.count(), 37);
  EXPECT_LT((acc.hessian() - naive_hessian(X)).cwiseAbs().maxCoeff(), 1e-9);
  EXPECT_TRUE(HessianAccumulator(5).hessian().isZero(0.0));
  EXPECT_THROW(acc.add(Matrix::Zero(3, 19)), Error);
}

// ---------------------------------------------------------------- GPTQ
TEST(Gptq, IdentityHessianEqualsRtn) {
  Matrix W = random_matrix(6, 100, 21);
  MatrixD H = MatrixD::Identity(100, 100);
  std::vector<const char*> specs(std::begin(kSpecs), std::end(kSpecs));
  specs.push_back("ternary:minmax:dz0.7");
  specs.push_back("ternary:minmax:rd0.25");  // equal error weights: every column at dz + rd, as RTN
  for (const char* t : specs) {
    SCOPED_TRACE(t);
    QuantSpec s = parse_quant_spec(t);
    for (bool act : {false, true}) {
      GptqOptions o;
      o.block = 24;  // several blocks, not aligned with groups of 32
      o.act_order = act;
      GptqResult g = gptq(W, H, s, o);
      QuantizedMatrix r = quantize_rtn(W, s);
      EXPECT_EQ(g.path, GptqPath::Gptq);
      EXPECT_EQ(g.q.q, r.q);
      EXPECT_EQ(g.q.scale, r.scale);
      EXPECT_EQ(g.q.zero, r.zero);
      EXPECT_EQ(g.q.neg_scale, r.neg_scale);
    }
  }
}

TEST(Gptq, TwoColumnsClosedForm) {
  // Column 0 is rounded; the optimal compensation of its error e0 = w0 - q0 on column 1 for
  // H = [[a, b], [b, c]] is w1' = w1 + e0 * b / c, and the loss splits as e0^2 * det/c + (w1' - q1)^2 * c.
  const double a = 2.0, b = 1.2, c = 1.0;
  MatrixD H(2, 2);
  H << a, b, b, c;
  Matrix W(1, 2);
  W << 0.9f, -0.37f;
  GptqOptions o;
  o.damp = 0.0;
  GptqResult g = gptq(W, H, parse_quant_spec("int4"), o);
  float s = round_f16(2 * 0.9f / 15);
  auto deq = [&](float w) { return s * (std::clamp(std::nearbyint(w / s) + 8, 0.0f, 15.0f) - 8); };
  float q0 = deq(W(0, 0));
  double w1p = W(0, 1) + (W(0, 0) - q0) * b / c;
  float q1 = deq(float(w1p));
  Matrix Q = dequantize(g.q);
  EXPECT_EQ(Q(0, 0), q0);
  EXPECT_EQ(Q(0, 1), q1);
  EXPECT_NE(q1, deq(W(0, 1)));  // the feedback changed the rounding of column 1
  double det = a * c - b * b;
  double e0 = W(0, 0) - q0, e1 = w1p - q1;
  double expect = e0 * e0 * det / c + e1 * e1 * c;
  EXPECT_NEAR(g.loss, expect, 1e-5 * expect);
  EXPECT_NEAR(proxy_loss(W, Q, H), expect, 1e-5 * expect);
}

TEST(Gptq, BeatsRtnOnProxyLossAndLossIsExact) {
  const int rows = 24, cols = 96;
  Matrix W = random_matrix(rows, cols, 5, 0.05f);
  Matrix X = correlated_x(4 * cols, cols, 9);
  MatrixD H = naive_hessian(X);
  HessianAccumulator acc(cols);
  acc.add(X);
  for (const char* t : {"int4:g32", "int4", "int3:g32:asym", "int3", "int2:g32", "int2:g32:asym", "ternary:absmean",
                        "ternary:g32", "ternary:minmax", "ternary:opt:g32", "int8"}) {
    for (bool act : {false, true}) {
      SCOPED_TRACE(std::string(t) + (act ? " act-order" : ""));
      QuantSpec s = parse_quant_spec(t);
      GptqOptions o;
      o.act_order = act;
      o.block = 40;
      GptqResult g = gptq(W, acc, s, o);
      ASSERT_EQ(g.path, GptqPath::Gptq) << g.note;
      expect_f16_exact(g.q);
      double lg = proxy_loss(W, g.q, H), lr = proxy_loss(W, quantize_rtn(W, s), H);
      EXPECT_LT(lg, lr);
      // The accumulated err^2 equals the proxy loss under the dampened Hessian.
      MatrixD Hd = H;
      Hd.diagonal().array() += g.damp * H.diagonal().mean();
      double ld = proxy_loss(W, g.q, Hd);
      EXPECT_NEAR(g.loss, ld, 1e-3 * ld);
    }
  }
}

TEST(Gptq, MatchesNaiveUnblockedReference) {
  // Column-at-a-time GPTQ in double with groups fitted at group start from the updated weights.
  const int rows = 16, cols = 75;
  Matrix W = random_matrix(rows, cols, 31);
  MatrixD H = naive_hessian(correlated_x(300, cols, 33));
  for (const char* t : {"int4:g16", "int3:g20:asym", "ternary:minmax:g30", "int2:g50", "ternary:minmax:g30:dz0.6:rd0.4"}) {
    SCOPED_TRACE(t);
    QuantSpec s = parse_quant_spec(t);
    GptqOptions o;
    o.block = 32;  // groups of 16 -> blocks of 32; 20 -> 20; 30 -> 30; 50 -> cuts at 32, 50, 82...
    GptqResult g = gptq(W, H, s, o);
    MatrixD Hd = H;
    Hd.diagonal().array() += 0.01 * (s.kind == CodeKind::Ternary ? 10 : 1) * H.diagonal().mean();
    MatrixD Hinv = Hd.inverse();
    MatrixD U = Hinv.llt().matrixU();  // Hinv = U^T U
    // Rate-aware deadzone (docs/QUANTIZATION.md): column j uses dz + rd * U(j,j)^2 / mean_k U(k,k)^2.
    const double mean_u2 = U.diagonal().array().square().mean();
    int zeros = 0, zeros_plain = 0;
    const QuantizedMatrix plain = gptq(W, H, parse_quant_spec("ternary:minmax:g30"), o).q;
    for (size_t i = 0; i < plain.q.size(); ++i) zeros += g.q.q[i] == 0, zeros_plain += plain.q[i] == 0;
    if (s.rate > 0) EXPECT_GT(zeros, zeros_plain + rows * cols / 20);  // clearly sparser than nearest rounding
    int same = 0;
    Eigen::MatrixXd Wd = W.cast<double>();
    for (int r = 0; r < rows; ++r) {
      GridParams p;
      for (int j = 0; j < cols; ++j) {
        if (j % s.group == 0) {
          std::vector<float> grp;
          for (int k = j; k < std::min(cols, j + s.group); ++k) grp.push_back(float(Wd(r, k)));
          p = fit_grid(s, grp.data(), int(grp.size()));
        }
        const float dz = float(s.deadzone + s.rate * U(j, j) * U(j, j) / mean_u2);
        const float w = float(Wd(r, j));
        int8_t q = grid_code(s, p, w);
        if (s.kind == CodeKind::Ternary)  // written out: +1 / -1 beyond the column's deadzone, else 0
          q = w > 0 && p.scale > 0 && w / p.scale > dz ? 1 : w < 0 && p.neg_scale > 0 && -w / p.neg_scale > dz ? -1 : 0;
        double err = (Wd(r, j) - grid_value(s, p, q)) / U(j, j);
        for (int k = j + 1; k < cols; ++k) Wd(r, k) -= err * U(j, k);
        same += q == g.q.q[size_t(r) * cols + j];
      }
    }
    EXPECT_GE(same, int(0.98 * rows * cols));
  }
}

TEST(Gptq, SingleRowZerosAndDeterminism) {
  Matrix X = correlated_x(200, 40, 41);
  MatrixD H = naive_hessian(X);
  for (const char* t : kSpecs) {
    SCOPED_TRACE(t);
    QuantSpec s = parse_quant_spec(t);
    GptqResult z = gptq(Matrix::Zero(3, 40), H, s);
    EXPECT_TRUE(dequantize(z.q).isZero(0.0f));
    Matrix W = random_matrix(1, 40, 43);
    GptqResult a = gptq(W, H, s), b = gptq(W, H, s);
    EXPECT_EQ(a.q.q, b.q.q);
    EXPECT_EQ(a.q.scale, b.q.scale);
    EXPECT_EQ(a.loss, b.loss);
    MatrixD Hd = H;  // one row: the accumulated loss is still the dampened proxy loss
    Hd.diagonal().array() += a.damp * H.diagonal().mean();
    EXPECT_NEAR(a.loss, proxy_loss(W, a.q, Hd), 1e-3 * a.loss);
  }
}

TEST(Gptq, DeadColumnsAreZeroed) {
  Matrix X = correlated_x(200, 30, 51);
  X.col(4).setZero();
  X.col(17).setZero();
  Matrix W = random_matrix(5, 30, 53);
  GptqResult g = gptq(W, naive_hessian(X), parse_quant_spec("int4:g8:asym"));
  EXPECT_EQ(g.dead_columns, 2);
  Matrix Q = dequantize(g.q);
  EXPECT_TRUE(Q.col(4).isZero(0.0f));
  EXPECT_TRUE(Q.col(17).isZero(0.0f));
}

TEST(Gptq, FewTokenFallbacks) {
  const int cols = 32;
  Matrix W = random_matrix(4, cols, 61);
  QuantSpec s = parse_quant_spec("int4:g16");
  HessianAccumulator none(cols);
  GptqResult r0 = gptq(W, none, s);
  EXPECT_EQ(r0.path, GptqPath::Rtn);
  EXPECT_EQ(r0.q.q, quantize_rtn(W, s).q);
  EXPECT_FALSE(r0.note.empty());

  HessianAccumulator few(cols);
  few.add(correlated_x(8, cols, 63));  // 8 tokens < 32 columns: H is rank 8
  GptqResult r1 = gptq(W, few, s);
  EXPECT_EQ(r1.path, GptqPath::LowTokens);
  EXPECT_DOUBLE_EQ(r1.damp, 0.1);
  EXPECT_EQ(r1.tokens, 8);

  HessianAccumulator many(cols);
  many.add(correlated_x(64, cols, 65));
  GptqResult r2 = gptq(W, many, s);
  EXPECT_EQ(r2.path, GptqPath::Gptq);
  EXPECT_DOUBLE_EQ(r2.damp, 0.01);

  // Indefinite "Hessian" (not from data): no damping fixes it within the retries -> RTN.
  MatrixD bad = MatrixD::Identity(cols, cols);
  bad(0, 0) = -1e6;
  GptqResult r3 = gptq(W, bad, s);
  EXPECT_EQ(r3.path, GptqPath::Rtn);
  EXPECT_THROW(gptq(W, MatrixD::Identity(cols + 1, cols + 1), s), Error);
}
