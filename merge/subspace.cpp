// Sub-MoE subspace merging: joint SVD of a cluster's concatenated weights, shared U·Σ, merged V.
#include <algorithm>
#include <cmath>
#include <lapacke.h>

#include "core/error.h"
#include "merge/merge.h"
#include "merge/rng.h"

namespace moec::merge {
namespace {

template <class T>
using RowMat = Eigen::Matrix<T, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>;

lapack_int gesdd(int m, int n, float* a, float* s, float* u, float* vt) {
  return LAPACKE_sgesdd(LAPACK_COL_MAJOR, 'S', m, n, a, m, s, u, m, vt, std::min(m, n));
}
lapack_int gesdd(int m, int n, double* a, double* s, double* u, double* vt) {
  return LAPACKE_dgesdd(LAPACK_COL_MAJOR, 'S', m, n, a, m, s, u, m, vt, std::min(m, n));
}

// All min(m, n) triplets of a row-major A [m x n]. LAPACK is column-major: the row-major buffer of A is
// the column-major Aᵀ [n x m] = V Σ Uᵀ, so LAPACK's "U" (n x p column-major) is our Vᵀ (p x n row-major)
// and its "Vᵀ" (p x m column-major) is our U (m x p row-major). No transposed copies needed.
template <class T>
Svd exact_svd(RowMat<T> a) {
  const int m = int(a.rows()), n = int(a.cols()), p = std::min(m, n);
  RowMat<T> vt(p, n), u(m, p);
  std::vector<T> s(static_cast<size_t>(p));
  lapack_int info = gesdd(n, m, a.data(), s.data(), vt.data(), u.data());
  if (info != 0) fail("subspace merge: LAPACK gesdd failed (info ", info, ") on a ", m, "x", n, " matrix");
  Svd r;
  r.u = u.template cast<double>();
  r.vt = vt.template cast<double>();
  r.s.assign(s.begin(), s.end());
  return r;
}

// Randomized range finder (Halko, Martinsson, Tropp 2011, alg. 4.4 + 5.1): Q spans A·Ω refined by power
// iterations, then the small SVD of Qᵀ A. Cost O(m n l) with l = rank + oversample instead of O(m n p).
Svd randomized_svd(const MatrixD& a, int rank, const SubspaceOptions& opt) {
  const int m = int(a.rows()), n = int(a.cols()), p = std::min(m, n);
  const int l = std::min(p, rank + std::max(0, opt.oversample));
  Rng rng{opt.seed};
  MatrixD omega(n, l);
  for (Eigen::Index i = 0; i < omega.size(); ++i) omega.data()[i] = rng.normal();
  auto orth = [](const MatrixD& y) {
    Eigen::HouseholderQR<MatrixD> qr(y);
    return MatrixD(qr.householderQ() * MatrixD::Identity(y.rows(), y.cols()));
  };
  MatrixD q = orth(a * omega);
  for (int it = 0; it < opt.power_iters; ++it) q = orth(a * orth(a.transpose() * q));
  Svd small = exact_svd<double>(q.transpose() * a);  // [l x n]
  Svd r;
  r.u = q * small.u;
  r.s = small.s;
  r.vt = small.vt;
  return r;
}

}  // namespace

Svd svd_thin(const Matrix& a, int rank, const SubspaceOptions& opt) {
  const int p = int(std::min(a.rows(), a.cols()));
  if (p == 0) fail("svd: empty ", a.rows(), "x", a.cols(), " matrix");
  if (!a.allFinite()) fail("svd: matrix contains non-finite values");
  const int r = rank <= 0 ? p : std::min(rank, p);
  Svd s;
  if (opt.svd == SvdMethod::Randomized) {
    if (rank <= 0) fail("svd: randomized SVD needs a fixed rank (SubspaceOptions::rank > 0)");
    s = randomized_svd(a.cast<double>(), r, opt);
    s.total_energy = a.cast<double>().squaredNorm();  // the sketch does not see the tail
  } else {
    s = opt.double_precision ? exact_svd<double>(a.cast<double>()) : exact_svd<float>(a);
    s.total_energy = 0;  // Σσ² (= ||A||_F² up to rounding), so that full rank keeps exactly 1
    for (double v : s.s) s.total_energy += v * v;
  }
  const int keep = std::min<int>(r, int(s.s.size()));
  s.u.conservativeResize(Eigen::NoChange, keep);
  s.vt.conservativeResize(keep, Eigen::NoChange);
  s.s.resize(static_cast<size_t>(keep));
  return s;
}

SubspaceResult subspace_merge(const std::vector<const Matrix*>& members, std::span<const double> weights,
                              const SubspaceOptions& opt, const std::vector<const Matrix*>& input_corr) {
  const int k = int(members.size());
  if (k == 0) fail("subspace merge: no members");
  const int out = int(members[0]->rows()), in = int(members[0]->cols());
  for (int i = 0; i < k; ++i)
    if (members[size_t(i)]->rows() != out || members[size_t(i)]->cols() != in)
      fail("subspace merge: member ", i, " is ", members[size_t(i)]->rows(), "x", members[size_t(i)]->cols(),
           ", member 0 is ", out, "x", in);
  if (!(opt.energy > 0 && opt.energy <= 1)) fail("subspace merge: energy ", opt.energy, " not in (0, 1]");
  const std::vector<double> w = normalize_weights(weights, size_t(k), "subspace merge");
  if (!input_corr.empty() && input_corr.size() != 1 && int(input_corr.size()) != k)
    fail("subspace merge: ", input_corr.size(), " input correlations for ", k, " members (need 0, 1 or ", k, ")");

  // Whitening factors S_i = chol(C_i + damp·mean(diag C_i)·I), lower triangular, [in x in].
  std::vector<MatrixD> S;
  for (size_t c = 0; c < input_corr.size(); ++c) {
    const Matrix& C = *input_corr[c];
    if (C.rows() != in || C.cols() != in)
      fail("subspace merge: input correlation ", c, " is ", C.rows(), "x", C.cols(), ", need ", in, "x", in);
    MatrixD cd = C.cast<double>();
    cd.diagonal().array() += opt.whiten_damp * std::max(cd.diagonal().mean(), 1e-12);
    Eigen::LLT<MatrixD> llt(cd);
    if (llt.info() != Eigen::Success)
      fail("subspace merge: input correlation ", c, " is not positive definite (raise whiten_damp)");
    S.push_back(llt.matrixL());
  }
  auto whitener = [&](int i) -> const MatrixD* {
    return S.empty() ? nullptr : &S[S.size() == 1 ? 0 : size_t(i)];
  };

  // A = [W_1 S_1 | ... | W_k S_k]  [out x k·in]
  Matrix a(out, size_t(k) * in);
  for (int i = 0; i < k; ++i) {
    if (const MatrixD* s = whitener(i))
      a.middleCols(Eigen::Index(i) * in, in) = (members[size_t(i)]->cast<double>() * *s).cast<float>();
    else
      a.middleCols(Eigen::Index(i) * in, in) = *members[size_t(i)];
  }
  Svd svd = svd_thin(a, opt.rank, opt);
  a.resize(0, 0);

  // Rank: fixed, or the smallest reaching the energy fraction (energy 1 keeps everything).
  const double total = svd.total_energy;
  int r = int(svd.s.size());
  if (opt.rank <= 0 && opt.energy < 1) {
    double cum = 0;
    for (r = 0; r < int(svd.s.size());) {
      cum += svd.s[size_t(r)] * svd.s[size_t(r)];
      ++r;
      if (cum >= opt.energy * total) break;
    }
  }
  r = std::max(r, 1);
  double kept = 0;
  for (int j = 0; j < r; ++j) kept += svd.s[size_t(j)] * svd.s[size_t(j)];

  SubspaceResult res;
  res.rank = r;
  res.energy_kept = total > 0 ? kept / total : 1.0;
  MatrixD us = svd.u.leftCols(r);
  for (int j = 0; j < r; ++j) us.col(j) *= svd.s[size_t(j)];
  MatrixD vm = MatrixD::Zero(r, in);
  for (int i = 0; i < k; ++i) {
    MatrixD vi = svd.vt.block(0, Eigen::Index(i) * in, r, in);  // V_iᵀ, whitened
    if (const MatrixD* s = whitener(i)) s->triangularView<Eigen::Lower>().solveInPlace<Eigen::OnTheRight>(vi);
    vm += w[size_t(i)] * vi;
    res.v_members.push_back(vi.cast<float>());
  }
  res.merged = (us * vm).cast<float>();
  res.us = us.cast<float>();
  res.v_merged = vm.cast<float>();
  return res;
}

}  // namespace moec::merge
