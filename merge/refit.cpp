// Calibration refit of merged layers: ridge least squares for the down projections (joint over the
// layer's clusters, or block coordinate descent) and for the router rows. Formulas in docs/MERGING.md §8.
#include <cblas.h>

#include <algorithm>
#include <cmath>

#include "core/error.h"
#include "merge/merge.h"
#include "model/linear.h"

namespace moec::merge {

namespace {

// acc += aᵀ b (a [n x p], b [n x q], acc [p x q]) in double.
void add_atb(MatrixD& acc, const MatrixD& a, const MatrixD& b) {
  if (a.rows() == 0) return;
  cblas_dgemm(CblasRowMajor, CblasTrans, CblasNoTrans, int(a.cols()), int(b.cols()), int(a.rows()), 1.0, a.data(),
              int(a.cols()), b.data(), int(b.cols()), 1.0, acc.data(), int(acc.cols()));
}

// acc += aᵀ a, full symmetric result.
void add_ata(MatrixD& acc, const MatrixD& a) {
  if (a.rows() == 0) return;
  cblas_dsyrk(CblasRowMajor, CblasLower, CblasTrans, int(a.cols()), int(a.rows()), 1.0, a.data(), int(a.cols()), 1.0,
              acc.data(), int(acc.cols()));
}

void symmetrize_from_lower(MatrixD& m) {
  for (Eigen::Index i = 0; i < m.rows(); ++i)
    for (Eigen::Index j = i + 1; j < m.cols(); ++j) m(i, j) = m(j, i);
}

MatrixD ridge_solve_abs(const MatrixD& zz, const MatrixD& yz, double lambda, const MatrixD& prior) {
  Eigen::MatrixXd a = zz;
  a.diagonal().array() += lambda;
  Eigen::MatrixXd rhs = yz.transpose();  // B a = yz + λ B0  <=>  a Bᵀ = (yz + λ B0)ᵀ  (a symmetric)
  if (prior.size()) rhs += lambda * prior.transpose();
  Eigen::LLT<Eigen::MatrixXd> llt(a);
  if (llt.info() != Eigen::Success)
    fail("ridge solve: the ", zz.rows(), "x", zz.rows(), " Gram matrix plus ", lambda,
         "·I is not positive definite (raise the damping)");
  return llt.solve(rhs).transpose();
}

void check_expert_shapes(const std::vector<Expert>& experts, const char* what) {
  if (experts.empty()) fail(what, ": no experts");
  const auto I = experts[0].gate.rows(), H = experts[0].gate.cols();
  for (size_t c = 0; c < experts.size(); ++c) {
    const Expert& e = experts[c];
    if (e.gate.rows() != I || e.gate.cols() != H || e.up.rows() != I || e.up.cols() != H || e.down.rows() != H ||
        e.down.cols() != I)
      fail(what, ": expert ", c, " has shapes gate ", e.gate.rows(), "x", e.gate.cols(), ", up ", e.up.rows(), "x",
           e.up.cols(), ", down ", e.down.rows(), "x", e.down.cols(), " (expert 0: gate ", I, "x", H, ")");
  }
}

void check_routing(const model::Routing& r, const Matrix& x, int num_experts, const char* what) {
  if (r.n != x.rows()) fail(what, ": routing covers ", r.n, " tokens, the input has ", x.rows(), " rows");
  if (r.expert.size() != size_t(r.n) * size_t(r.k) || r.weight.size() != r.expert.size())
    fail(what, ": routing arrays have ", r.expert.size(), " / ", r.weight.size(), " entries for ", r.n, " x ", r.k);
  for (size_t i = 0; i < r.expert.size(); ++i)
    if (r.expert[i] < 0 || r.expert[i] >= num_experts)
      fail(what, ": token ", i / size_t(std::max(r.k, 1)), " is routed to expert ", r.expert[i], " of ", num_experts);
}

// Token slots per expert: the tokens routed to it and their gate weights.
struct Slots {
  std::vector<std::vector<int>> tok;
  std::vector<std::vector<float>> w;
};
Slots slots_by_expert(const model::Routing& r, int num_experts) {
  Slots s;
  s.tok.resize(size_t(num_experts));
  s.w.resize(size_t(num_experts));
  for (int t = 0; t < r.n; ++t)
    for (int j = 0; j < r.k; ++j) {
      const int e = r.expert[size_t(t) * size_t(r.k) + size_t(j)];
      s.tok[size_t(e)].push_back(t);
      s.w[size_t(e)].push_back(r.weight[size_t(t) * size_t(r.k) + size_t(j)]);
    }
  return s;
}

Matrix gather_rows(const Matrix& x, const int* rows, size_t count) {
  Matrix g(Eigen::Index(count), x.cols());
  for (size_t i = 0; i < count; ++i) g.row(Eigen::Index(i)) = x.row(rows[i]);
  return g;
}

// Σ over all entries of a ∘ b.
double dot_all(const MatrixD& a, const MatrixD& b) { return (a.array() * b.array()).sum(); }

}  // namespace

MatrixD ridge_solve(const MatrixD& zz, const MatrixD& yz, double damp, const MatrixD& prior) {
  const auto d = zz.rows();
  if (zz.cols() != d) fail("ridge solve: Gram matrix is ", zz.rows(), "x", zz.cols(), ", not square");
  if (yz.cols() != d) fail("ridge solve: right-hand side is ", yz.rows(), "x", yz.cols(), ", need ", d, " columns");
  if (prior.size() && (prior.rows() != yz.rows() || prior.cols() != d))
    fail("ridge solve: prior is ", prior.rows(), "x", prior.cols(), ", need ", yz.rows(), "x", d);
  if (!std::isfinite(damp) || damp < 0) fail("ridge solve: damping ", damp, " must be finite and >= 0");
  if (!zz.allFinite() || !yz.allFinite() || (prior.size() && !prior.allFinite()))
    fail("ridge solve: non-finite values in the statistics");
  const double mean = d ? zz.diagonal().mean() : 0.0;
  return ridge_solve_abs(zz, yz, damp * (mean > 0 ? mean : 1.0), prior);
}

Matrix expert_activations(const Expert& e, const Matrix& x) {
  if (x.cols() != e.gate.cols())
    fail("expert activations: input has ", x.cols(), " columns, the expert's hidden size is ", e.gate.cols());
  Matrix a, u;
  model::gemm_nt(x, e.gate, a);
  model::gemm_nt(x, e.up, u);
  for (Eigen::Index i = 0; i < a.size(); ++i) {
    const float g = a.data()[i];
    a.data()[i] = g / (1.0f + std::exp(-g)) * u.data()[i];
  }
  return a;
}

Matrix routed_output(const std::vector<Expert>& experts, const model::Routing& r, const Matrix& x) {
  check_expert_shapes(experts, "routed output");
  check_routing(r, x, int(experts.size()), "routed output");
  const Slots s = slots_by_expert(r, int(experts.size()));
  Matrix y = Matrix::Zero(x.rows(), experts[0].down.rows());
  Matrix out;
  for (size_t e = 0; e < experts.size(); ++e) {
    const auto& rows = s.tok[e];
    if (rows.empty()) continue;
    model::gemm_nt(expert_activations(experts[e], gather_rows(x, rows.data(), rows.size())), experts[e].down, out);
    for (size_t i = 0; i < rows.size(); ++i) y.row(rows[i]) += s.w[e][i] * out.row(Eigen::Index(i));
  }
  return y;
}

Matrix cluster_logits(const Matrix& logits, const Clusters& clusters, ClusterLogit how) {
  const auto E = logits.cols();
  std::vector<int> seen(size_t(E), 0);
  for (size_t c = 0; c < clusters.size(); ++c) {
    if (clusters[c].empty()) fail("cluster logits: cluster ", c, " is empty");
    for (int e : clusters[c]) {
      if (e < 0 || e >= E) fail("cluster logits: cluster ", c, " has expert ", e, ", the router has ", E);
      if (seen[size_t(e)]++) fail("cluster logits: expert ", e, " is in two clusters");
    }
  }
  Matrix out(logits.rows(), Eigen::Index(clusters.size()));
  for (Eigen::Index t = 0; t < logits.rows(); ++t)
    for (size_t c = 0; c < clusters.size(); ++c) {
      double m = -INFINITY;
      for (int e : clusters[c]) m = std::max(m, double(logits(t, e)));
      if (how == ClusterLogit::Max) {
        out(t, Eigen::Index(c)) = float(m);
        continue;
      }
      double z = 0;
      for (int e : clusters[c]) z += std::exp(double(logits(t, e)) - m);
      out(t, Eigen::Index(c)) = float(m + std::log(z));
    }
  return out;
}

Matrix refit_router(const Matrix& router, const Matrix& x, const Matrix& target, double damp) {
  if (x.cols() != router.cols()) fail("refit router: inputs have ", x.cols(), " columns, the router ", router.cols());
  if (target.rows() != x.rows() || target.cols() != router.rows())
    fail("refit router: target logits are ", target.rows(), "x", target.cols(), ", need ", x.rows(), "x", router.rows());
  const auto H = x.cols(), K = router.rows();
  MatrixD xx = MatrixD::Zero(H, H), tx = MatrixD::Zero(K, H);
  const Eigen::Index chunk = 4096;
  for (Eigen::Index t0 = 0; t0 < x.rows(); t0 += chunk) {
    const Eigen::Index m = std::min(chunk, x.rows() - t0);
    const MatrixD xd = x.middleRows(t0, m).cast<double>(), td = target.middleRows(t0, m).cast<double>();
    add_ata(xx, xd);
    add_atb(tx, td, xd);
  }
  symmetrize_from_lower(xx);
  return ridge_solve(xx, tx, damp, router.cast<double>()).cast<float>();
}

RefitReport refit_down(std::vector<Expert>& experts, const model::Routing& r, const Matrix& x, const Matrix& target,
                       const RefitOptions& opt) {
  check_expert_shapes(experts, "refit down");
  const int K = int(experts.size());
  check_routing(r, x, K, "refit down");
  const Eigen::Index I = experts[0].gate.rows(), H = experts[0].gate.cols(), d = Eigen::Index(K) * I;
  if (x.cols() != H) fail("refit down: inputs have ", x.cols(), " columns, the experts' hidden size is ", H);
  if (target.rows() != x.rows() || target.cols() != H)
    fail("refit down: target is ", target.rows(), "x", target.cols(), ", need ", x.rows(), "x", H);
  if (!target.allFinite()) fail("refit down: target contains non-finite values");
  if (!std::isfinite(opt.damp) || opt.damp < 0) fail("refit down: damping ", opt.damp, " must be finite and >= 0");
  if (opt.chunk < 1) fail("refit down: chunk ", opt.chunk, " must be >= 1");
  const Eigen::Index n = x.rows();
  const double yy = target.cast<double>().squaredNorm();
  RefitReport rep;
  auto rel = [&](double e) { return yy > 0 ? std::max(e, 0.0) / yy : 0.0; };

  if (d <= opt.max_joint) {
    // Joint solve. Row t of Z [n x K·I] holds w_tj · h_c(x_t) in block c for each of its slots (c, w):
    // only the blocks of the clusters a token is routed to are non-zero, so ZᵀZ is accumulated block by
    // block, block (a, b) over the tokens routed to both a and b.
    std::vector<MatrixD> gblk(size_t(K) * size_t(K));  // lower blocks (a >= b), index a·K + b
    std::vector<MatrixD> yblk(static_cast<size_t>(K), MatrixD::Zero(H, I));
    for (int a = 0; a < K; ++a)
      for (int b = 0; b <= a; ++b) gblk[size_t(a) * size_t(K) + size_t(b)] = MatrixD::Zero(I, I);
    std::vector<std::vector<int>> rows(static_cast<size_t>(K));  // tokens of the chunk routed to c, ascending
    std::vector<std::vector<float>> wts(static_cast<size_t>(K));
    std::vector<MatrixD> z(static_cast<size_t>(K));
    std::vector<int> ia, ib;
    for (Eigen::Index t0 = 0; t0 < n; t0 += opt.chunk) {
      const Eigen::Index m = std::min<Eigen::Index>(opt.chunk, n - t0);
      for (int c = 0; c < K; ++c) rows[size_t(c)].clear(), wts[size_t(c)].clear();
      for (Eigen::Index t = t0; t < t0 + m; ++t)
        for (int j = 0; j < r.k; ++j) {
          const size_t s = size_t(t) * size_t(r.k) + size_t(j);
          rows[size_t(r.expert[s])].push_back(int(t));
          wts[size_t(r.expert[s])].push_back(r.weight[s]);
        }
      for (int c = 0; c < K; ++c) {
        const auto& rc = rows[size_t(c)];
        z[size_t(c)] = expert_activations(experts[size_t(c)], gather_rows(x, rc.data(), rc.size())).cast<double>();
        for (size_t i = 0; i < rc.size(); ++i) z[size_t(c)].row(Eigen::Index(i)) *= double(wts[size_t(c)][i]);
        add_ata(gblk[size_t(c) * size_t(K) + size_t(c)], z[size_t(c)]);
        MatrixD yc(Eigen::Index(rc.size()), H);
        for (size_t i = 0; i < rc.size(); ++i) yc.row(Eigen::Index(i)) = target.row(rc[i]).cast<double>();
        add_atb(yblk[size_t(c)], yc, z[size_t(c)]);
      }
      for (int a = 0; a < K; ++a)
        for (int b = 0; b < a; ++b) {
          // Tokens routed to both (two sorted lists).
          const auto &ra = rows[size_t(a)], &rb = rows[size_t(b)];
          ia.clear(), ib.clear();
          for (size_t i = 0, j = 0; i < ra.size() && j < rb.size();) {
            if (ra[i] < rb[j]) ++i;
            else if (rb[j] < ra[i]) ++j;
            else ia.push_back(int(i++)), ib.push_back(int(j++));
          }
          if (ia.empty()) continue;
          MatrixD za(Eigen::Index(ia.size()), I), zb(Eigen::Index(ib.size()), I);
          for (size_t i = 0; i < ia.size(); ++i) {
            za.row(Eigen::Index(i)) = z[size_t(a)].row(ia[i]);
            zb.row(Eigen::Index(i)) = z[size_t(b)].row(ib[i]);
          }
          add_atb(gblk[size_t(a) * size_t(K) + size_t(b)], za, zb);
        }
    }
    MatrixD zz = MatrixD::Zero(d, d), yz(H, d);
    for (int a = 0; a < K; ++a) {
      yz.middleCols(Eigen::Index(a) * I, I) = yblk[size_t(a)];
      for (int b = 0; b <= a; ++b) {
        MatrixD& g = gblk[size_t(a) * size_t(K) + size_t(b)];
        if (a == b) symmetrize_from_lower(g);
        zz.block(Eigen::Index(a) * I, Eigen::Index(b) * I, I, I) = g;
      }
    }
    symmetrize_from_lower(zz);
    MatrixD b0(H, d);
    for (int c = 0; c < K; ++c) b0.middleCols(Eigen::Index(c) * I, I) = experts[size_t(c)].down.cast<double>();
    // ||Y − B Zᵀ||² = yy − 2 <B, yz> + <B zz, B>
    auto err = [&](const MatrixD& b) { return yy - 2 * dot_all(b, yz) + dot_all(b * zz, b); };
    rep.error_before = rel(err(b0));
    const MatrixD b = ridge_solve(zz, yz, opt.damp, b0);
    rep.error_after = rel(err(b));
    for (int c = 0; c < K; ++c) experts[size_t(c)].down = b.middleCols(Eigen::Index(c) * I, I).cast<float>();
    return rep;
  }

  // Block coordinate descent (Gauss-Seidel on the joint normal equations, one cluster block at a time).
  if (opt.sweeps < 1) fail("refit down: sweeps ", opt.sweeps, " must be >= 1");
  const Slots s = slots_by_expert(r, K);
  // Per-cluster Gram blocks G_c = Σ_{t→c} w² h hᵀ and the current output O = Σ_c w D_c h_c.
  std::vector<MatrixD> gram(static_cast<size_t>(K), MatrixD::Zero(I, I));
  std::vector<MatrixD> d0(static_cast<size_t>(K)), dcur(static_cast<size_t>(K));
  MatrixD out = MatrixD::Zero(n, H);
  // Weighted activations of cluster c's tokens [t0, t0+m) of its slot list.
  auto zblock = [&](int c, size_t t0, size_t m) {
    const auto& rc = s.tok[size_t(c)];
    MatrixD z = expert_activations(experts[size_t(c)], gather_rows(x, rc.data() + t0, m)).cast<double>();
    for (size_t i = 0; i < m; ++i) z.row(Eigen::Index(i)) *= double(s.w[size_t(c)][t0 + i]);
    return z;
  };
  double trace = 0;
  for (int c = 0; c < K; ++c) {
    d0[size_t(c)] = experts[size_t(c)].down.cast<double>();
    dcur[size_t(c)] = d0[size_t(c)];
    const auto& rc = s.tok[size_t(c)];
    for (size_t t0 = 0; t0 < rc.size(); t0 += size_t(opt.chunk)) {
      const size_t m = std::min(size_t(opt.chunk), rc.size() - t0);
      const MatrixD z = zblock(c, t0, m);
      add_ata(gram[size_t(c)], z);
      const MatrixD o = z * d0[size_t(c)].transpose();
      for (size_t i = 0; i < m; ++i) out.row(rc[t0 + i]) += o.row(Eigen::Index(i));
    }
    symmetrize_from_lower(gram[size_t(c)]);
    trace += gram[size_t(c)].trace();
  }
  const MatrixD yd = target.cast<double>();
  rep.error_before = rel((yd - out).squaredNorm());
  const double lambda = opt.damp * (trace > 0 ? trace / double(d) : 1.0);  // the joint solve's λ
  for (int sweep = 0; sweep < opt.sweeps; ++sweep)
    for (int c = 0; c < K; ++c) {
      const auto& rc = s.tok[size_t(c)];
      // Right-hand side Σ_{t→c} (y_t − O_t + own_t) z_tᵀ = Σ (y_t − O_t) z_tᵀ + D_c G_c.
      MatrixD yz = dcur[size_t(c)] * gram[size_t(c)];
      for (size_t t0 = 0; t0 < rc.size(); t0 += size_t(opt.chunk)) {
        const size_t m = std::min(size_t(opt.chunk), rc.size() - t0);
        MatrixD res(Eigen::Index(m), H);
        for (size_t i = 0; i < m; ++i) res.row(Eigen::Index(i)) = yd.row(rc[t0 + i]) - out.row(rc[t0 + i]);
        add_atb(yz, res, zblock(c, t0, m));
      }
      MatrixD dn = ridge_solve_abs(gram[size_t(c)], yz, lambda, d0[size_t(c)]);
      const MatrixD delta = dn - dcur[size_t(c)];
      for (size_t t0 = 0; t0 < rc.size(); t0 += size_t(opt.chunk)) {
        const size_t m = std::min(size_t(opt.chunk), rc.size() - t0);
        const MatrixD o = zblock(c, t0, m) * delta.transpose();
        for (size_t i = 0; i < m; ++i) out.row(rc[t0 + i]) += o.row(Eigen::Index(i));
      }
      dcur[size_t(c)] = std::move(dn);
    }
  rep.error_after = rel((yd - out).squaredNorm());
  for (int c = 0; c < K; ++c) experts[size_t(c)].down = dcur[size_t(c)].cast<float>();
  return rep;
}

}  // namespace moec::merge
