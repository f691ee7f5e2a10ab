// The merge pipeline (see merge/apply.h): statistics -> plan -> merged layers -> HF checkpoint.
#include "merge/apply.h"

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <nlohmann/json.hpp>
#include <memory>
#include <set>

#include "core/error.h"
#include "core/files.h"
#include "core/progress.h"
#include "io/safetensors.h"
#include "model/checkpoint_writer.h"
#include "model/forward.h"
#include "quantize/checkpoint.h"

namespace moec::merge {

using model::Proj;
static constexpr std::array<Proj, 3> kProjs{Proj::Gate, Proj::Up, Proj::Down};
static Matrix& proj_matrix(Expert& e, Proj p) { return p == Proj::Gate ? e.gate : p == Proj::Up ? e.up : e.down; }
static const Matrix& proj_matrix(const Expert& e, Proj p) { return proj_matrix(const_cast<Expert&>(e), p); }

const char* to_string(ClusterAlgo c) {
  return c == ClusterAlgo::KMeans ? "kmeans" : c == ClusterAlgo::Hierarchical ? "hc" : "dominant";
}
ClusterAlgo cluster_algo_from_string(const std::string& s) {
  if (s == "kmeans") return ClusterAlgo::KMeans;
  if (s == "hc") return ClusterAlgo::Hierarchical;
  if (s == "dominant") return ClusterAlgo::Dominant;
  fail("unknown clustering '", s, "' (expected kmeans, hc or dominant)");
}

const char* to_string(OutputForm f) {
  return f == OutputForm::Dense ? "dense" : f == OutputForm::Factored ? "factored" : "shared-basis";
}
OutputForm output_form_from_string(const std::string& s) {
  if (s == "dense") return OutputForm::Dense;
  if (s == "factored") return OutputForm::Factored;
  if (s == "shared-basis") return OutputForm::SharedBasis;
  fail("unknown output form '", s, "' (expected dense, factored or shared-basis)");
}

std::vector<LayerSignals> signals_from_profile(const profile::ProfileStats& stats, const model::ModelSpec& spec) {
  if (stats.domains.empty()) fail("stats file has no domains");
  const auto& total = stats.domains.back();  // "total" is stored last
  std::vector<LayerSignals> out(size_t(spec.num_layers));
  for (const auto& ls : total.layers) {
    if (ls.layer < 0 || ls.layer >= spec.num_layers) fail("stats: layer ", ls.layer, " out of range");
    auto& s = out[size_t(ls.layer)];
    s.frequency.assign(ls.selected.begin(), ls.selected.end());
    s.output_mean = ls.output_mean.cast<float>();
    s.output_similarity = ls.output_similarity;
  }
  for (int l = 0; l < spec.num_layers; ++l)
    if (out[size_t(l)].frequency.empty()) fail("stats: no statistics for MoE layer ", l);
  return out;
}

LayerPlan plan_layer(const LayerSignals& sig, const PipelineOptions& opt) {
  const int E = int(sig.frequency.size());
  if (opt.keep < 1 || opt.keep > E) fail("merge: --keep ", opt.keep, " not in [1, ", E, "]");
  Clusters clusters;
  if (opt.cluster == ClusterAlgo::KMeans) {
    if (sig.output_mean.rows() != E) fail("merge: k-means needs output_mean [", E, " x H] in the statistics");
    Matrix pts = sig.output_mean;  // unit rows: squared Euclidean k-means = cosine k-means
    for (int e = 0; e < E; ++e)
      if (float n = pts.row(e).norm(); n > 0) pts.row(e) /= n;
    clusters = kmeans(pts, opt.keep, opt.seed);
  } else if (opt.cluster == ClusterAlgo::Dominant) {
    if (sig.output_similarity.rows() != E || sig.output_similarity.cols() != E)
      fail("merge: dominant grouping needs output_similarity [", E, " x ", E, "] in the statistics");
    // Leaders: the keep most frequently selected experts (ties: lower id).
    std::vector<int> order(static_cast<size_t>(E));
    for (int e = 0; e < E; ++e) order[size_t(e)] = e;
    std::stable_sort(order.begin(), order.end(),
                     [&](int a, int b) { return sig.frequency[size_t(a)] > sig.frequency[size_t(b)]; });
    std::vector<int> leaders(order.begin(), order.begin() + opt.keep);
    std::sort(leaders.begin(), leaders.end());
    clusters.assign(leaders.size(), {});
    for (int e = 0; e < E; ++e) {
      size_t best = 0;
      for (size_t c = 0; c < leaders.size(); ++c) {
        if (leaders[c] == e) { best = c; break; }
        if (sig.output_similarity(e, leaders[c]) > sig.output_similarity(e, leaders[best])) best = c;
      }
      clusters[best].push_back(e);
    }
  } else {
    if (sig.output_similarity.rows() != E || sig.output_similarity.cols() != E)
      fail("merge: hc clustering needs output_similarity [", E, " x ", E, "] in the statistics");
    clusters = agglomerative(sig.output_similarity.cast<float>(), opt.keep, Linkage::Average);
  }
  return make_layer_plan(clusters, sig.frequency, E, opt.method);
}

namespace {

// Collects, for one layer of the calibration pass, routing counts and (for whitening) the per-expert
// input correlations XᵀX and AᵀA of the routed tokens.
struct CalibHooks final : model::ForwardHooks {
  int E = 0;
  bool corr = false;
  std::vector<double> selected;
  std::vector<int64_t> rows;
  std::vector<Matrix> hidden, inter;  // unnormalized sums
  CalibHooks(int e, bool want_corr) : E(e), corr(want_corr), selected(size_t(e), 0.0), rows(size_t(e), 0),
                                      hidden(size_t(e)), inter(size_t(e)) {}
  void on_moe(int, const Matrix&, const Matrix&, const model::Routing& r) override {
    for (int64_t i = 0; i < r.n * r.k; ++i) selected[size_t(r.expert[size_t(i)])] += 1;
  }
  bool want_expert_detail(int) const override { return corr; }
  void on_expert(int, int e, const std::vector<int>&, const Matrix& x, const Matrix& act, const Matrix&) override {
    auto acc = [](Matrix& c, const Matrix& a) {
      if (c.size() == 0) c = Matrix::Zero(a.cols(), a.cols());
      c.noalias() += a.transpose() * a;
    };
    acc(hidden[size_t(e)], x);
    acc(inter[size_t(e)], act);
    rows[size_t(e)] += x.rows();
  }
};

Matrix swiglu_act(const Expert& e, const Matrix& x) {
  Matrix a, u;
  model::gemm_nt(x, e.gate, a);
  model::gemm_nt(x, e.up, u);
  for (int64_t i = 0; i < a.size(); ++i) {
    const float g = a.data()[i];
    a.data()[i] = g / (1.0f + std::exp(-g)) * u.data()[i];
  }
  return a;
}

// Rows of x at evenly spaced positions (all rows when count >= n).
Matrix sample_rows(const Matrix& x, int64_t count) {
  const int64_t n = x.rows();
  if (count >= n) return x;
  Matrix s(count, x.cols());
  for (int64_t i = 0; i < count; ++i) s.row(i) = x.row(i * n / count);
  return s;
}

// TEMPORARY stand-in for the profile stage's statistics (profile::read_stats_h5), computed from the
// calibration pass: selection counts, and mean outputs / mean pairwise output cosine on sampled tokens.
LayerSignals signals_from_calibration(const std::vector<Expert>& ex, const Matrix& x, const std::vector<double>& selected,
                                      int64_t sample) {
  const int E = int(ex.size());
  Matrix xs = sample_rows(x, sample);
  std::vector<Matrix> out(static_cast<size_t>(E));
  LayerSignals s;
  s.frequency = selected;
  s.output_mean.resize(E, x.cols());
  for (int e = 0; e < E; ++e) {
    model::gemm_nt(swiglu_act(ex[size_t(e)], xs), ex[size_t(e)].down, out[size_t(e)]);
    s.output_mean.row(e) = out[size_t(e)].colwise().mean();
    out[size_t(e)].rowwise().normalize();
  }
  s.output_similarity.resize(E, E);
  for (int i = 0; i < E; ++i)
    for (int j = 0; j < E; ++j) {
      double c = 0;
      for (int64_t t = 0; t < xs.rows(); ++t) c += double(out[size_t(i)].row(t).dot(out[size_t(j)].row(t)));
      s.output_similarity(i, j) = xs.rows() ? c / double(xs.rows()) : 0.0;
    }
  return s;
}

MergePlan run(const model::WeightSource& src, const PipelineOptions& opt, const std::vector<LayerSignals>* signals,
              const MergePlan* given, const std::vector<int32_t>& calib, bool plan_only,
              const std::function<void(int, MergedLayer&&)>& sink) {
  const auto& spec = src.spec();
  const int L = spec.num_layers, E = spec.routing.num_experts;
  for (int l = 0; l < L; ++l)
    if (!spec.moe_layer[size_t(l)]) fail("merge: layer ", l, " is a dense MLP layer; models with dense layers are not supported yet");
  if (spec.routing.correction_bias) fail("merge: routers with a correction bias are not supported yet");
  if (given) validate_plan(*given, L);
  if (signals && int(signals->size()) != L) fail("merge: statistics have ", signals->size(), " layers, the model ", L);

  const bool acts_for_align = opt.method == MergeMethod::MSmoe || (opt.method == MergeMethod::Subspace && opt.align);
  const bool need_freq = !(given && opt.method == MergeMethod::Average && given->router == RouterMerge::Dominant);
  const bool compute_signals = !signals && (!given || need_freq);
  const bool want_whiten = opt.whiten && !plan_only;
  if (want_whiten && opt.method != MergeMethod::Subspace) fail("merge: --whiten applies to the subspace method only");
  if ((compute_signals || want_whiten) && calib.empty())
    fail(compute_signals ? "merge: no statistics: give --stats (or --calib to compute them)" : "merge: --whiten needs --calib tokens");
  const bool want_refit = (opt.refit_router || opt.refit_down) && !plan_only;
  if (want_refit && calib.empty()) fail("merge: the calibration refit needs --calib tokens");
  if (want_refit && spec.routing.scoring != model::Scoring::Softmax)
    fail("merge: the calibration refit supports softmax routers only (", spec.model_type, " uses sigmoid scores)");
  if (opt.residual_target && !opt.sequential) fail("merge: the residual-stream target needs the sequential refit");
  const bool seq = want_refit && opt.sequential;
  const bool factored = opt.form != OutputForm::Dense;
  if (factored && !plan_only) {
    if (opt.method != MergeMethod::Subspace || (given && std::any_of(given->layers.begin(), given->layers.end(), [](auto& lp) {
                                                  return lp.method != MergeMethod::Subspace;
                                                })))
      fail("merge: the ", to_string(opt.form), " output form needs --method subspace (it stores the subspace factors)");
    if (opt.form == OutputForm::SharedBasis && opt.dominant_gate_up)
      fail("merge: --dominant-gate-up does not apply to the shared-basis form (every expert keeps its own factors)");
    if (opt.form == OutputForm::SharedBasis && opt.refit_router)
      fail("merge: the shared-basis form keeps the original router; a router refit does not apply");
  }
  const bool use_calib =
      !calib.empty() && (compute_signals || want_whiten || want_refit || (acts_for_align && !plan_only));

  std::unique_ptr<model::Forward> fwd;
  Matrix h;
  int64_t n = 0;
  if (use_calib) {
    n = std::min<int64_t>(int64_t(calib.size()), opt.calib_tokens > 0 ? opt.calib_tokens : int64_t(calib.size()));
    n -= n % opt.window;
    if (n <= 0) fail("merge: fewer calibration tokens than one window of ", opt.window);
    model::check_tokens(calib, spec.vocab, "calibration tokens");
    fwd = std::make_unique<model::Forward>(src);
    h = fwd->embed(calib.data(), n);
  }
  Matrix hm;  // sequential refit: the residual stream of the model with layers < l merged
  if (seq) hm = h;

  // Calibration refit of one merged layer on MoE inputs xr (docs/MERGING.md §8). With the sequential
  // refit, `hm` (post-attention residual of the merged model) is advanced by the merged MoE output.
  // h_mid + y_orig is the original model's output of this layer (residual-stream target).
  auto refit_layer = [&](int l, const std::vector<Expert>& ex, const Clusters& cl, const model::LayerWeights& w,
                         const Matrix& xr, MergedLayer& ml, Matrix* hm, const Matrix& h_mid, const Matrix& y_orig) {
    Matrix logits;
    model::gemm_nt(xr, w.router, logits);
    const model::Routing ro = model::route(logits, spec.routing);
    Matrix target = routed_output(ex, ro, xr);
    Matrix shared;  // the (unmerged) shared expert's contribution on xr
    if (hm && spec.shared_intermediate > 0) shared = fwd->moe(l, w, xr) - target;
    if (hm && opt.residual_target) {
      target = h_mid + y_orig - *hm;
      if (shared.size()) target -= shared;
    }
    std::string msg = "merge: layer " + std::to_string(l) + " refit:";
    if (opt.refit_router) {
      ml.router = refit_router(ml.router, xr, cluster_logits(logits, cl, opt.router_target), opt.router_damp);
      msg += " router";
    }
    model::RoutingSpec rk = spec.routing;
    rk.num_experts = int(cl.size());
    if (rk.method != model::TopkMethod::Greedy && rk.num_experts % rk.n_group != 0)
      fail("merge: refit: ", rk.num_experts, " merged experts do not split into ", rk.n_group, " routing groups");
    Matrix lm;
    model::gemm_nt(xr, ml.router, lm);
    const model::Routing rm = model::route(lm, rk);
    if (opt.refit_down) {
      const RefitReport r = refit_down(ml.experts, rm, xr, target, opt.refit);
      char buf[160];
      std::snprintf(buf, sizeof buf, " down (relative output error %.4f -> %.4f)", r.error_before, r.error_after);
      msg += buf;
      if (!ml.factors.empty()) {
        // Factored forms: the refit down D* of each expert is brought back into its cluster's subspace,
        // V = argmin_V ||U·V - D*||_F (least squares; per expert, this is the exact minimizer of its own
        // calibration error term given U, see docs/MERGING.md §9).
        // One factorization per shared left factor (shared-basis: a cluster's members share it).
        std::vector<std::unique_ptr<Eigen::ColPivHouseholderQR<MatrixD>>> qr(ml.lefts.size());
        for (size_t k = 0; k < ml.experts.size(); ++k) {
          FactoredProj& fp = ml.factors[k][2];
          if (fp.left < 0) continue;
          const Matrix& U = ml.lefts[size_t(fp.left)];
          auto& f = qr[size_t(fp.left)];
          if (!f) f = std::make_unique<Eigen::ColPivHouseholderQR<MatrixD>>(U.cast<double>());
          fp.right = f->solve(ml.experts[k].down.cast<double>()).cast<float>();
          ml.experts[k].down = U * fp.right;
        }
        const Matrix y = routed_output(ml.experts, rm, xr);
        const double e = (target - y).cast<double>().squaredNorm() / std::max(1e-300, target.cast<double>().squaredNorm());
        std::snprintf(buf, sizeof buf, ", %.4f in the factored form", e);
        msg += buf;
      }
    }
    if (opt.progress) log_info(msg);
    if (hm) {
      *hm += routed_output(ml.experts, rm, xr);
      if (shared.size()) *hm += shared;
    }
  };

  MergePlan plan;
  plan.router = given ? given->router : opt.router;
  for (int l = 0; l < L; ++l) {
    if (opt.progress) log_info("merge: layer " + std::to_string(l + 1) + "/" + std::to_string(L));
    std::vector<Expert> ex(static_cast<size_t>(E));
    for (int e = 0; e < E; ++e)
      ex[size_t(e)] = {src.matrix(spec.expert(l, e, Proj::Gate)), src.matrix(spec.expert(l, e, Proj::Up)),
                       src.matrix(spec.expert(l, e, Proj::Down))};
    Matrix x, y;
    CalibHooks hk(E, want_whiten);
    model::LayerWeights w;
    if (use_calib) {
      w = fwd->load_layer(l);
      fwd->attention(l, w, h, opt.window);
      x = fwd->moe_input(w, h);
      y = fwd->moe(l, w, x, &hk);
    }
    Matrix xm;
    if (seq) {
      fwd->attention(l, w, hm, opt.window);
      xm = fwd->moe_input(w, hm);
    }
    LayerSignals computed;
    const LayerSignals* sig = signals ? &(*signals)[size_t(l)] : nullptr;
    if (!sig && compute_signals) {
      computed = signals_from_calibration(ex, x, hk.selected, opt.sample_tokens);
      sig = &computed;
    }
    LayerPlan lp = given ? given->layers[size_t(l)] : plan_layer(*sig, opt);
    if (lp.num_experts != E) fail("merge plan: layer ", l, " has ", lp.num_experts, " experts, the model ", E);
    if (!given) lp.method = opt.method;
    std::vector<double> freq = sig ? sig->frequency : std::vector<double>(size_t(E), 1.0);

    if (!plan_only) {
      // Per-expert calibration statistics.
      const size_t nE = static_cast<size_t>(E);
      std::vector<Matrix> hidden_corr(nE), inter_corr(nE), acts(nE);
      std::vector<ExpertStats> stats;
      if (want_whiten || (acts_for_align && use_calib)) {
        stats.resize(size_t(E));
        Matrix xa = sample_rows(x, opt.align_tokens);
        for (int e = 0; e < E; ++e) {
          if (acts_for_align && use_calib) {
            acts[size_t(e)] = swiglu_act(ex[size_t(e)], xa);
            stats[size_t(e)].activations = &acts[size_t(e)];
          }
          if (want_whiten) {
            if (hk.rows[size_t(e)] > 0) {
              hidden_corr[size_t(e)] = hk.hidden[size_t(e)] / float(hk.rows[size_t(e)]);
              inter_corr[size_t(e)] = hk.inter[size_t(e)] / float(hk.rows[size_t(e)]);
            } else {  // never routed: fall back to the layer's tokens
              Matrix a = swiglu_act(ex[size_t(e)], xa);
              hidden_corr[size_t(e)] = (xa.transpose() * xa) / float(xa.rows());
              inter_corr[size_t(e)] = (a.transpose() * a) / float(xa.rows());
            }
            stats[size_t(e)].hidden_corr = &hidden_corr[size_t(e)];
            stats[size_t(e)].inter_corr = &inter_corr[size_t(e)];
          }
        }
      }
      MergeOptions mo;
      mo.method = lp.method;
      mo.subspace = opt.subspace;
      mo.align_for_subspace = opt.align;
      mo.dominant_gate_up = opt.dominant_gate_up;
      MergedLayer ml;
      if (opt.form == OutputForm::SharedBasis) {
        ml.experts.resize(size_t(E));
        ml.factors.resize(size_t(E));
      }
      for (auto& cp : lp.clusters) {
        std::vector<const Expert*> mem;
        std::vector<double> f;
        std::vector<ExpertStats> st;
        int dom = -1;
        for (int e : cp.members) {
          if (e == cp.dominant) dom = int(mem.size());
          mem.push_back(&ex[size_t(e)]);
          f.push_back(std::pow(freq[size_t(e)], opt.weight_power));
          if (!stats.empty()) st.push_back(stats[size_t(e)]);
        }
        MergedExpert me = merge_cluster(mem, f, dom, mo, st);
        cp.rank = me.rank;
        cp.energy = me.energy;
        if (opt.form == OutputForm::Dense) {
          ml.experts.push_back(std::move(me.weights));
          continue;
        }
        std::array<int, 3> left{-1, -1, -1};
        for (int t = 0; t < 3; ++t)
          if (me.rank[size_t(t)] > 0) {
            left[size_t(t)] = int(ml.lefts.size());
            ml.lefts.push_back(std::move(me.factors[size_t(t)].us));
          }
        if (opt.form == OutputForm::Factored) {
          std::array<FactoredProj, 3> fp;
          for (int t = 0; t < 3; ++t)
            if (left[size_t(t)] >= 0) fp[size_t(t)] = {left[size_t(t)], std::move(me.factors[size_t(t)].v_merged)};
          ml.factors.push_back(std::move(fp));
          ml.experts.push_back(std::move(me.weights));
        } else {
          // Shared basis: member i keeps its own V_i; its weights are U·Σ · V_i (neurons in the aligned order
          // when --align permuted them, which computes the same function).
          for (size_t i = 0; i < cp.members.size(); ++i) {
            const int e = cp.members[i];
            Expert& out = ml.experts[size_t(e)];
            for (int t = 0; t < 3; ++t) {
              FactoredProj& fp = ml.factors[size_t(e)][size_t(t)];
              fp = {left[size_t(t)], me.factors[size_t(t)].v_members[i]};
              proj_matrix(out, kProjs[size_t(t)]) = ml.lefts[size_t(fp.left)] * fp.right;
            }
          }
        }
      }
      Clusters cl;
      std::vector<int> dominants;
      for (auto& cp : lp.clusters) {
        cl.push_back(cp.members);
        dominants.push_back(cp.dominant);
      }
      const Matrix router = use_calib ? w.router : src.matrix(spec.router(l));
      if (opt.form == OutputForm::SharedBasis) {
        ml.router = router;  // every expert is kept: routing unchanged
        cl.clear();
        for (int e = 0; e < E; ++e) cl.push_back({e});
      } else {
        ml.router = merge_router(router, cl, dominants, freq, plan.router);
      }
      if (want_refit) refit_layer(l, ex, cl, w, seq ? xm : x, ml, seq ? &hm : nullptr, h, y);
      sink(l, std::move(ml));
    }
    plan.layers.push_back(std::move(lp));
    if (use_calib) h += y;  // the original model's layer output: calibration sees unmerged earlier layers
    for (int e = 0; e < E; ++e)
      for (Proj p : kProjs) src.release(spec.expert(l, e, p));
  }
  validate_plan(plan, L);
  return plan;
}

}  // namespace

MergePlan merge_model(const model::WeightSource& src, const PipelineOptions& opt, const std::vector<LayerSignals>* signals,
                      const MergePlan* plan, const std::vector<int32_t>& calib,
                      const std::function<void(int, MergedLayer&&)>& sink) {
  return run(src, opt, signals, plan, calib, false, sink);
}

MergePlan plan_model(const model::WeightSource& src, const PipelineOptions& opt, const std::vector<LayerSignals>* signals,
                     const std::vector<int32_t>& calib) {
  return run(src, opt, signals, nullptr, calib, true, [](int, MergedLayer&&) {});
}

// ------------------------------------------------------------------------------------------- writer

struct MergedCheckpointWriter::Impl {
  model::CheckpointWriter w;
  Impl(const fs::path& in, const fs::path& out, bool force) : w(in, out, {.force = force}) {}
};

MergedCheckpointWriter::MergedCheckpointWriter(const model::CheckpointSource& src, fs::path out_dir, bool force)
    : src_(src), impl_(std::make_unique<Impl>(src.path(), out_dir, force)) {}

MergedCheckpointWriter::~MergedCheckpointWriter() = default;

static io::DType float_dtype(io::DType t) {
  return (t == io::DType::F32 || t == io::DType::F16 || t == io::DType::BF16) ? t : io::DType::BF16;
}

void MergedCheckpointWriter::add_layer(int l, const MergedLayer& m) {
  const auto& spec = src_.spec();
  const auto& store = src_.store();
  for (size_t k = 0; k < m.experts.size(); ++k) {
    const Expert& e = m.experts[k];
    for (Proj p : kProjs)
      impl_->w.add_matrix(spec.expert(l, int(k), p), float_dtype(store.get(spec.expert(l, 0, p)).dtype),
                          proj_matrix(e, p));
  }
  impl_->w.add_matrix(spec.router(l), float_dtype(store.get(spec.router(l)).dtype), m.router);
}

void MergedCheckpointWriter::finish(int keep, const MergePlan& plan) {
  const auto& spec = src_.spec();
  std::set<std::string> replaced;  // the source's routed experts and routers
  for (int l = 0; l < spec.num_layers; ++l) {
    if (!spec.moe_layer[size_t(l)]) continue;
    replaced.insert(spec.router(l));
    for (int e = 0; e < spec.routing.num_experts; ++e)
      for (Proj p : kProjs) replaced.insert(spec.expert(l, e, p));
  }
  for (const auto& name : src_.store().names())
    if (!replaced.count(name)) impl_->w.copy(name);
  impl_->w.config()[spec.experts_key()] = keep;
  nlohmann::ordered_json prov;
  prov["method"] = "merge";
  prov["plan"] = plan_to_json(plan);
  impl_->w.set_provenance(prov);
  impl_->w.finish();
}

// ------------------------------------------------------------------------------------ factored writer

struct FactoredCheckpointWriter::Impl {
  quantize::PackedCheckpointWriter w;
  Impl(const fs::path& out, const fs::path& in) : w(out, in, nlohmann::ordered_json::object()) {}
};

static fs::path prepared_output(const fs::path& out, const fs::path& in, bool force) {
  check_output_dir(out, in, force);
  fs::remove(out / quantize::kPackedMetaFile);  // --force: a half-rewritten directory is no checkpoint
  return out;
}

FactoredCheckpointWriter::FactoredCheckpointWriter(const model::CheckpointSource& src, fs::path out_dir, bool force)
    : src_(src), impl_(std::make_unique<Impl>(prepared_output(out_dir, src.path(), force), src.path())) {}

FactoredCheckpointWriter::~FactoredCheckpointWriter() = default;

void FactoredCheckpointWriter::add_layer(int l, const MergedLayer& m) {
  const auto& spec = src_.spec();
  const auto& store = src_.store();
  if (!m.factors.empty() && m.factors.size() != m.experts.size())
    fail("factored writer: layer ", l, " has ", m.factors.size(), " factor sets for ", m.experts.size(), " experts");
  // A shared left factor is stored once, under the name of the first projection that uses it + ".left".
  std::vector<std::string> left_name(m.lefts.size());
  for (size_t k = 0; k < m.experts.size(); ++k) {
    const Expert& e = m.experts[k];
    for (int t = 0; t < 3; ++t) {
      const Proj p = kProjs[size_t(t)];
      const std::string name = spec.expert(l, int(k), p);
      const io::DType dt = float_dtype(store.get(spec.expert(l, 0, p)).dtype);
      const FactoredProj* fp = m.factors.empty() ? nullptr : &m.factors[k][size_t(t)];
      if (!fp || fp->left < 0) {
        impl_->w.add_matrix(name, dt, proj_matrix(e, p));
        continue;
      }
      if (fp->left >= int(m.lefts.size())) fail("factored writer: layer ", l, " expert ", k, ": left factor ", fp->left, " out of range");
      std::string& ln = left_name[size_t(fp->left)];
      if (ln.empty()) {
        ln = name + ".left";
        impl_->w.add_factor(ln, dt, m.lefts[size_t(fp->left)]);
      }
      impl_->w.add_factor(name + ".right", dt, fp->right);
      impl_->w.add_lowrank(name, ln, name + ".right");
    }
  }
  impl_->w.add_matrix(spec.router(l), float_dtype(store.get(spec.router(l)).dtype), m.router);
}

void FactoredCheckpointWriter::finish(int experts_per_layer, const MergePlan& plan, const nlohmann::ordered_json& options) {
  const auto& spec = src_.spec();
  for (auto& t : model::expected_tensors(spec)) {
    using Role = model::ExpectedTensor::Role;
    if (t.role == Role::RoutedExpert || t.role == Role::Router) continue;
    if (t.role == Role::LmHead && spec.tie_embeddings) continue;
    const auto& info = src_.store().get(t.name);
    impl_->w.add_dense(t.name, info.dtype, info.shape, info.data, info.nbytes);
    src_.release(t.name);
  }
  auto config = nlohmann::ordered_json::parse(read_file(src_.path() / "config.json"));
  config[spec.experts_key()] = experts_per_layer;
  impl_->w.replace_config(config.dump(2) + "\n");
  nlohmann::ordered_json recipe;
  recipe["method"] = "merge";
  recipe["options"] = options;
  recipe["plan"] = plan_to_json(plan);
  impl_->w.set_recipe(recipe);
  impl_->w.finish();
}

}  // namespace moec::merge
