// The merge pipeline (see merge/apply.h): statistics -> plan -> merged layers -> HF checkpoint.
#include "merge/apply.h"

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <nlohmann/json.hpp>
#include <set>

#include "core/error.h"
#include "core/files.h"
#include "core/progress.h"
#include "io/safetensors.h"
#include "model/checkpoint_writer.h"
#include "model/forward.h"

namespace moec::merge {

using model::Proj;
static constexpr std::array<Proj, 3> kProjs{Proj::Gate, Proj::Up, Proj::Down};

const char* to_string(ClusterAlgo c) {
  return c == ClusterAlgo::KMeans ? "kmeans" : c == ClusterAlgo::Hierarchical ? "hc" : "dominant";
}
ClusterAlgo cluster_algo_from_string(const std::string& s) {
  if (s == "kmeans") return ClusterAlgo::KMeans;
  if (s == "hc") return ClusterAlgo::Hierarchical;
  if (s == "dominant") return ClusterAlgo::Dominant;
  fail("unknown clustering '", s, "' (expected kmeans, hc or dominant)");
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
      char buf[128];
      std::snprintf(buf, sizeof buf, " down (relative output error %.4f -> %.4f)", r.error_before, r.error_after);
      msg += buf;
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
        ml.experts.push_back(std::move(me.weights));
      }
      Clusters cl;
      std::vector<int> dominants;
      for (auto& cp : lp.clusters) {
        cl.push_back(cp.members);
        dominants.push_back(cp.dominant);
      }
      const Matrix router = use_calib ? w.router : src.matrix(spec.router(l));
      ml.router = merge_router(router, cl, dominants, freq, plan.router);
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
                          p == Proj::Gate ? e.gate : p == Proj::Up ? e.up : e.down);
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

}  // namespace moec::merge
