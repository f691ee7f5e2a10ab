#include "quantize/gptq.h"

#include <lapacke.h>

#include <algorithm>
#include <chrono>
#include <numeric>

#include "core/error.h"
#include "quantize/grid.h"
#include "quantize/parallel.h"
#include "quantize/rtn.h"

namespace moec {
namespace {

using Clock = std::chrono::steady_clock;
double since(Clock::time_point t0) { return std::chrono::duration<double>(Clock::now() - t0).count(); }

// Upper Cholesky factor U of (H + lambda I)^-1 (so Hinv = U^T U), as the reference computes it:
// chol(H) -> inverse from the factor -> chol of the inverse. Returns false if H + lambda I is not
// positive definite (numerically).
bool inverse_cholesky_upper(const Eigen::MatrixXd& H, double lambda, Matrix& U) {
  const int n = int(H.rows());
  Eigen::MatrixXd A = H;  // column-major; LAPACK reads/writes the lower triangle
  A.diagonal().array() += lambda;
  if (LAPACKE_dpotrf(LAPACK_COL_MAJOR, 'L', n, A.data(), n) != 0) return false;
  if (LAPACKE_dpotri(LAPACK_COL_MAJOR, 'L', n, A.data(), n) != 0) return false;
  // Hinv = L' L'^T with L' lower  <=>  Hinv = U^T U with U = L'^T upper.
  if (LAPACKE_dpotrf(LAPACK_COL_MAJOR, 'L', n, A.data(), n) != 0) return false;
  U = Matrix::Zero(n, n);
  for (int i = 0; i < n; ++i)
    for (int k = i; k < n; ++k) U(i, k) = float(A(k, i));
  return U.allFinite();
}

}  // namespace

const char* to_string(GptqPath p) {
  switch (p) {
    case GptqPath::Gptq: return "gptq";
    case GptqPath::LowTokens: return "gptq-low-tokens";
    case GptqPath::RaisedDamp: return "gptq-raised-damp";
    case GptqPath::Rtn: return "rtn";
  }
  return "?";
}

HessianAccumulator::HessianAccumulator(int cols) : cols_(cols), sum_(Eigen::MatrixXd::Zero(cols, cols)) {
  if (cols < 1) fail("HessianAccumulator: cols must be >= 1, got ", cols);
}

void HessianAccumulator::add(const float* X, int64_t n) {
  if (n <= 0) return;
  auto t0 = Clock::now();
  const int64_t chunk = 1024;  // bounds the double copy for long token batches
  for (int64_t i = 0; i < n; i += chunk) {
    const int64_t m = std::min(chunk, n - i);
    Eigen::MatrixXd Xt = ConstMatrixMap(X + i * cols_, m, cols_).cast<double>().transpose();  // [cols, m]
    sum_.selfadjointView<Eigen::Lower>().rankUpdate(Xt);
  }
  n_ += n;
  seconds_ += since(t0);
}

void HessianAccumulator::add(const Matrix& X) {
  if (X.cols() != cols_) fail("HessianAccumulator: activations have ", X.cols(), " columns, expected ", cols_);
  add(X.data(), X.rows());
}

MatrixD HessianAccumulator::hessian() const {
  MatrixD H = MatrixD::Zero(cols_, cols_);
  if (n_ == 0) return H;
  H = sum_.selfadjointView<Eigen::Lower>();
  H *= 2.0 / double(n_);
  return H;
}

GptqResult gptq(const Matrix& W, const HessianAccumulator& acc, const QuantSpec& spec, GptqOptions opt) {
  opt.tokens = acc.count();
  GptqResult res = gptq(W, acc.hessian(), spec, opt);
  res.time.hessian_s = acc.seconds();
  return res;
}

GptqResult gptq(const Matrix& W0, const MatrixD& H0, const QuantSpec& spec, const GptqOptions& opt) {
  auto t_start = Clock::now();
  validate(spec);
  const int rows = int(W0.rows()), cols = int(W0.cols());
  if (rows < 1 || cols < 1) fail("gptq: empty weight matrix ", rows, "x", cols);
  if (H0.rows() != cols || H0.cols() != cols)
    fail("gptq: Hessian is ", H0.rows(), "x", H0.cols(), " but the weight has ", cols, " input columns");
  if (opt.block < 1) fail("gptq: block must be >= 1, got ", opt.block);
  check_finite(W0.data(), rows, cols, "gptq: weight");
  if (!H0.allFinite()) fail("gptq: Hessian has non-finite entries");

  GptqResult res;
  res.tokens = opt.tokens;
  auto rtn = [&](std::string why) {
    res.q = quantize_rtn(W0, spec);
    res.path = GptqPath::Rtn;
    res.note = std::move(why);
    res.damp = 0.0;
    res.time.total_s = since(t_start);
    return res;
  };
  if (opt.tokens >= 0 && opt.tokens < opt.rtn_below)
    return rtn("rtn: " + std::to_string(opt.tokens) + " calibration tokens (< " + std::to_string(opt.rtn_below) +
               ")");

  // --- Hessian preparation (timed as "cholesky"): dead columns, act-order permutation, dampening.
  auto t_chol = Clock::now();
  const int gs = spec.group > 0 ? spec.group : cols;
  const int groups = (cols + gs - 1) / gs;
  const bool static_groups = spec.group > 0 && (opt.static_groups || opt.act_order);
  std::vector<GridParams> params(size_t(rows) * groups);
  if (spec.group == 0)  // one grid per row, fitted from the original W before anything else (reference)
    detail::parallel_rows(rows, "gptq", [&](int r) { params[r] = fit_grid(spec, W0.row(r).data(), cols); });

  Matrix W = W0;
  Eigen::MatrixXd H = H0;  // column-major copy for LAPACK
  for (int c = 0; c < cols; ++c)
    if (H(c, c) == 0.0) {  // input never active: any weight is free; the reference zeroes it
      H(c, c) = 1.0;
      W.col(c).setZero();
      ++res.dead_columns;
    }
  if (static_groups)
    detail::parallel_rows(rows, "gptq", [&](int r) {
      for (int g = 0; g < groups; ++g)
        params[size_t(r) * groups + g] = fit_grid(spec, W.row(r).data() + g * gs, std::min(gs, cols - g * gs));
    });

  std::vector<int> perm(cols);
  std::iota(perm.begin(), perm.end(), 0);
  if (opt.act_order) {
    Eigen::VectorXd d = H.diagonal();
    std::stable_sort(perm.begin(), perm.end(), [&](int a, int b) { return d[a] > d[b]; });
    Matrix Wp(rows, cols);
    Eigen::MatrixXd Hp(cols, cols);
    for (int j = 0; j < cols; ++j) {
      Wp.col(j) = W.col(perm[j]);
      for (int i = 0; i < cols; ++i) Hp(i, j) = H(perm[i], perm[j]);
    }
    W.swap(Wp);
    H.swap(Hp);
  }

  double damp = opt.damp >= 0.0 ? opt.damp : (spec.kind == CodeKind::Ternary ? 0.1 : 0.01);
  const int64_t low_tokens = opt.low_tokens >= 0 ? opt.low_tokens : cols;
  if (opt.tokens >= 0 && opt.tokens < low_tokens) {
    damp *= opt.low_token_factor;
    res.path = GptqPath::LowTokens;
    res.note = "damp raised to " + std::to_string(damp) + ": " + std::to_string(opt.tokens) + " tokens (< " +
               std::to_string(low_tokens) + ")";
  }
  const double mean_diag = H.diagonal().mean();
  Matrix U;  // upper Cholesky factor of the dampened inverse Hessian, fp32 (as the reference)
  bool ok = inverse_cholesky_upper(H, damp * mean_diag, U);
  for (int t = 0; !ok && t < opt.cholesky_retries; ++t) {
    damp *= 10.0;
    ok = inverse_cholesky_upper(H, damp * mean_diag, U);
    if (ok) {
      res.path = GptqPath::RaisedDamp;
      res.note += std::string(res.note.empty() ? "" : "; ") + "Cholesky failed, damp raised to " +
                  std::to_string(damp);
    }
  }
  if (!ok) return rtn("rtn: H + damp*I not positive definite after " + std::to_string(opt.cholesky_retries) +
                      " dampening retries");
  res.damp = damp;
  res.time.cholesky_s = since(t_chol);

  // --- The column loop. Rows are independent given U, so each block is swept row by row (cache friendly,
  // parallel); the block's errors then update all later columns at once: W[:, i2:] -= Err * U[i1:i2, i2:].
  // Dynamic group grids are fitted when a group starts, from the error-updated weights; block boundaries are
  // placed so that a group never starts mid-way through another block's pending update.
  auto t_upd = Clock::now();
  auto block_end = [&](int i1) {
    int i2 = std::min(i1 + opt.block, cols);
    if (!static_groups && spec.group > 0) {
      if (gs <= opt.block) i2 = std::min(i1 + (opt.block / gs) * gs, cols);  // whole groups per block
      else i2 = std::min(i2, (i1 / gs + 1) * gs);                           // cut at the next group start
    }
    return i2;
  };
  std::vector<int8_t> codes(size_t(rows) * cols);
  std::vector<double> row_loss(rows, 0.0);
  // Per-column deadzones (QuantSpec::rate): the error weight of column j is 1 / U(j,j)^2.
  std::vector<float> deadzone(size_t(cols), spec.deadzone);
  if (spec.kind == CodeKind::Ternary && spec.rate > 0.0f) {
    double mean = 0.0;
    for (int j = 0; j < cols; ++j) mean += double(U(j, j)) * U(j, j);
    mean /= cols;
    for (int j = 0; j < cols; ++j) deadzone[size_t(j)] = float(spec.deadzone + spec.rate * double(U(j, j)) * U(j, j) / mean);
  }
  Matrix Err(rows, std::min(opt.block, cols));
  for (int i1 = 0; i1 < cols;) {
    const int i2 = block_end(i1), count = i2 - i1;
    detail::parallel_rows(rows, "gptq", [&](int r) {
      float* w = W.row(r).data();
      double loss = 0.0;
      for (int j = i1; j < i2; ++j) {
        const int c = perm[j];  // original column
        const int g = c / gs;
        GridParams& p = params[size_t(r) * groups + g];
        if (spec.group > 0 && !static_groups && j % gs == 0) p = fit_grid(spec, w + j, std::min(gs, cols - j));
        const int8_t q = grid_code(spec, p, w[j], deadzone[size_t(j)]);
        codes[size_t(r) * cols + c] = q;
        const float err = (w[j] - grid_value(spec, p, q)) / U(j, j);
        const float* u = U.row(j).data();
        for (int k = j + 1; k < i2; ++k) w[k] -= err * u[k];
        Err(r, j - i1) = err;
        loss += double(err) * err;
      }
      row_loss[r] += loss;
    });
    if (i2 < cols)
      W.rightCols(cols - i2).noalias() -= Err.leftCols(count) * U.block(i1, i2, count, cols - i2);
    i1 = i2;
  }
  for (double l : row_loss) res.loss += l;
  res.q = assemble_qmatrix(spec, rows, cols, std::move(codes), params);
  res.time.updates_s = since(t_upd);
  res.time.total_s = since(t_start);
  return res;
}

}  // namespace moec
