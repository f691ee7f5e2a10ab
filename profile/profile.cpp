// The profiling pass: model::Forward over the calibration windows with hooks that accumulate sums.
// Everything is a sum (or a list of ratios for the median), so domains add exactly into "total".
#include "profile/profile.h"

#include <algorithm>
#include <chrono>
#include <cmath>
#include <ctime>
#include <cstdlib>

#include "core/error.h"
#include "core/files.h"
#include "core/progress.h"
#include "io/npy.h"
#include "model/forward.h"

namespace moec::profile {

Domain load_domain(const std::string& name, const std::filesystem::path& npy, int vocab) {
  if (name.empty()) fail("calibration domain for ", npy.string(), " has an empty name");
  if (name == "total") fail("calibration domain name 'total' is reserved (", npy.string(), ")");
  if (name.find('/') != std::string::npos) fail("calibration domain name '", name, "' must not contain '/'");
  Domain d;
  d.name = name;
  d.token_file = npy.string();
  auto arr = io::read_tokens_npy(npy);  // names the file on bad magic / dtype / empty
  if (arr.ids.empty()) fail(npy.string(), ": token array is empty");
  if (vocab > 0) model::check_tokens(arr.ids, vocab, npy.string());
  d.tokens = std::move(arr.ids);
  d.token_sha256 = sha256_file(npy);
  return d;
}

namespace {

// Running sums of one MoE layer for one domain.
struct Accum {
  int E = 0, H = 0;
  int64_t tokens = 0, sampled = 0;
  std::vector<int64_t> selected, top1;
  std::vector<double> gate_mass, prob_sum, logit_sum, logit_sq_sum, easyep, reap_sum, act_norm_sum;
  double entropy_sum = 0;
  MatrixD coact, cos_sum, out_sum;
  std::vector<float> ratios;  // w2 / w1 per token (top-k >= 2)

  Accum(int E_, int H_) : E(E_), H(H_) {
    selected.assign(size_t(E), 0);
    top1.assign(size_t(E), 0);
    for (auto* v : {&gate_mass, &prob_sum, &logit_sum, &logit_sq_sum, &easyep, &reap_sum, &act_norm_sum}) v->assign(size_t(E), 0.0);
    coact = MatrixD::Zero(E, E);
    cos_sum = MatrixD::Zero(E, E);
    out_sum = MatrixD::Zero(E, H);
  }
  void add(const Accum& o) {
    tokens += o.tokens;
    sampled += o.sampled;
    for (int e = 0; e < E; ++e) {
      selected[size_t(e)] += o.selected[size_t(e)];
      top1[size_t(e)] += o.top1[size_t(e)];
      gate_mass[size_t(e)] += o.gate_mass[size_t(e)];
      prob_sum[size_t(e)] += o.prob_sum[size_t(e)];
      logit_sum[size_t(e)] += o.logit_sum[size_t(e)];
      logit_sq_sum[size_t(e)] += o.logit_sq_sum[size_t(e)];
      easyep[size_t(e)] += o.easyep[size_t(e)];
      reap_sum[size_t(e)] += o.reap_sum[size_t(e)];
      act_norm_sum[size_t(e)] += o.act_norm_sum[size_t(e)];
    }
    entropy_sum += o.entropy_sum;
    coact += o.coact;
    cos_sum += o.cos_sum;
    out_sum += o.out_sum;
    ratios.insert(ratios.end(), o.ratios.begin(), o.ratios.end());
  }
  LayerStats finish(int layer, int top_k) const {
    LayerStats L;
    L.layer = layer;
    L.experts = E;
    L.top_k = top_k;
    L.tokens = tokens;
    L.selected = selected;
    L.top1 = top1;
    L.gate_mass = gate_mass;
    L.prob_sum = prob_sum;
    L.logit_sum = logit_sum;
    L.logit_sq_sum = logit_sq_sum;
    L.easyep = easyep;
    L.reap_sum = reap_sum;
    L.act_norm_sum = act_norm_sum;
    L.entropy_sum = {entropy_sum};
    L.coactivation = coact;
    L.sampled_tokens = sampled;
    L.output_similarity = sampled ? MatrixD(cos_sum / double(sampled)) : MatrixD::Zero(E, E);
    L.output_mean = sampled ? MatrixD(out_sum / double(sampled)) : MatrixD::Zero(E, H);
    // Median; the mean of the two middle values for an even count.
    if (!ratios.empty()) {
      std::vector<float> r = ratios;
      const size_t m = r.size() / 2;
      std::nth_element(r.begin(), r.begin() + long(m), r.end());
      double hi = r[m];
      if (r.size() % 2 == 0) {
        double lo = *std::max_element(r.begin(), r.begin() + long(m));
        L.ratio_median = 0.5 * (lo + hi);
      } else {
        L.ratio_median = hi;
      }
    }
    return L;
  }
};

double cosine(const float* a, const float* b, int n) {
  double ab = 0, aa = 0, bb = 0;
  for (int i = 0; i < n; ++i) ab += double(a[i]) * b[i], aa += double(a[i]) * a[i], bb += double(b[i]) * b[i];
  return (aa > 0 && bb > 0) ? ab / std::sqrt(aa * bb) : 0.0;  // a zero vector has no direction: 0
}

// Hooks for one batch of windows of one domain. `offset` is the batch's first token in the domain's
// stream, used to find the K sampled positions.
class Recorder final : public model::ForwardHooks {
 public:
  Recorder(const model::WeightSource& src, std::vector<Accum>& acc, const std::vector<int>& moe_index,
           const std::vector<int64_t>& samples)
      : src_(src), spec_(src.spec()), acc_(acc), moe_index_(moe_index), samples_(samples) {}
  int64_t offset = 0;

  void on_moe(int layer, const Matrix& x, const Matrix& logits, const model::Routing& r) override {
    Accum& A = acc_[size_t(moe_index_[size_t(layer)])];
    const int64_t n = x.rows();
    const int E = A.E, k = r.k;
    A.tokens += n;
    for (int64_t t = 0; t < n; ++t) {
      const int* ex = &r.expert[size_t(t) * k];
      const float* w = &r.weight[size_t(t) * k];
      ++A.top1[size_t(ex[0])];
      for (int j = 0; j < k; ++j) {
        ++A.selected[size_t(ex[j])];
        A.gate_mass[size_t(ex[j])] += w[j];
        for (int j2 = 0; j2 < k; ++j2) A.coact(ex[j], ex[j2]) += 1;
      }
      if (k >= 2) A.ratios.push_back(w[0] != 0 ? w[1] / w[0] : 0.0f);
      double psum = 0;
      for (int e = 0; e < E; ++e) {
        const double p = r.probs(t, e), z = logits(t, e);
        A.prob_sum[size_t(e)] += p;
        A.logit_sum[size_t(e)] += z;
        A.logit_sq_sum[size_t(e)] += z * z;
        psum += p;
      }
      // Entropy of the probabilities normalised to sum 1 (sigmoid routers do not sum to 1).
      double h = 0;
      for (int e = 0; e < E; ++e) {
        const double p = r.probs(t, e) / psum;
        if (p > 0) h -= p * std::log(p);
      }
      A.entropy_sum += h;
    }
    // Per-token routed output and per-slot expert output norms, filled by on_expert.
    routing_ = &r;
    slot_norm_.assign(size_t(n) * k, 0.0);
    routed_ = Matrix::Zero(n, x.cols());
    sample_experts(A, x);
  }

  bool want_expert_detail(int) const override { return true; }

  void on_expert(int layer, int e, const std::vector<int>& tokens, const Matrix&, const Matrix&, const Matrix& out) override {
    Accum& A = acc_[size_t(moe_index_[size_t(layer)])];
    const model::Routing& r = *routing_;
    for (size_t i = 0; i < tokens.size(); ++i) {
      const int t = tokens[i];
      int slot = -1;
      for (int j = 0; j < r.k; ++j)
        if (r.expert[size_t(t) * r.k + j] == e) slot = j;
      const double g = r.weight[size_t(t) * r.k + slot];
      const double nrm = out.row(int64_t(i)).cast<double>().norm();
      slot_norm_[size_t(t) * r.k + slot] = nrm;
      routed_.row(t) += float(g) * out.row(int64_t(i));
      A.act_norm_sum[size_t(e)] += nrm;
      A.reap_sum[size_t(e)] += g * nrm;
    }
  }

  // EASY-EP: s_t = 1 - cos(x_t, x_t + sum_i g_i e_i(x_t)), with x_t the normalised MoE input and the
  // sum over routed experts only (a shared expert is not a pruning candidate).
  void on_moe_output(int layer, const Matrix& x, const Matrix&) override {
    if (!spec_.moe_layer[size_t(layer)]) return;
    Accum& A = acc_[size_t(moe_index_[size_t(layer)])];
    const model::Routing& r = *routing_;
    const int H = int(x.cols());
    std::vector<float> sum(static_cast<size_t>(H));
    for (int64_t t = 0; t < x.rows(); ++t) {
      for (int c = 0; c < H; ++c) sum[size_t(c)] = x(t, c) + routed_(t, c);
      const double s = 1.0 - cosine(x.row(t).data(), sum.data(), H);
      for (int j = 0; j < r.k; ++j) {
        const size_t q = size_t(t) * r.k + j;
        A.easyep[size_t(r.expert[q])] += s * r.weight[q] * slot_norm_[q];
      }
    }
    routing_ = nullptr;
  }

 private:
  const model::WeightSource& src_;
  const model::ModelSpec& spec_;
  std::vector<Accum>& acc_;
  const std::vector<int>& moe_index_;
  const std::vector<int64_t>& samples_;  // sorted positions in the domain stream
  const model::Routing* routing_ = nullptr;
  std::vector<double> slot_norm_;
  Matrix routed_;

  // Runs every expert on this batch's sampled rows: output similarity and mean output.
  void sample_experts(Accum& A, const Matrix& x) {
    auto lo = std::lower_bound(samples_.begin(), samples_.end(), offset);
    auto hi = std::lower_bound(samples_.begin(), samples_.end(), offset + x.rows());
    const int64_t m = hi - lo;
    if (m == 0) return;
    const int layer = current_layer(A);
    Matrix X(m, x.cols());
    for (int64_t i = 0; i < m; ++i) X.row(i) = x.row(lo[i] - offset);
    std::vector<Matrix> outs(size_t(A.E));
    Matrix act;
    for (int e = 0; e < A.E; ++e) {
      std::string ng = spec_.expert(layer, e, model::Proj::Gate), nu = spec_.expert(layer, e, model::Proj::Up),
                  nd = spec_.expert(layer, e, model::Proj::Down);
      model::Forward::swiglu(*src_.linear(ng), *src_.linear(nu), *src_.linear(nd), X, act, outs[size_t(e)]);
      A.out_sum.row(e) += outs[size_t(e)].cast<double>().colwise().sum();
    }
    for (int64_t i = 0; i < m; ++i)
      for (int a = 0; a < A.E; ++a)
        for (int b = 0; b < A.E; ++b)
          A.cos_sum(a, b) += cosine(outs[size_t(a)].row(i).data(), outs[size_t(b)].row(i).data(), int(x.cols()));
    A.sampled += m;
  }
  int current_layer(const Accum& A) const {
    for (size_t l = 0; l < moe_index_.size(); ++l)
      if (moe_index_[l] >= 0 && &acc_[size_t(moe_index_[l])] == &A) return int(l);
    return -1;
  }
};

std::string now_iso() {
  if (const char* env = std::getenv("MOEC_PROFILE_DATE"); env && *env) return env;
  std::time_t t = std::time(nullptr);
  char buf[32];
  std::strftime(buf, sizeof buf, "%Y-%m-%dT%H:%M:%SZ", std::gmtime(&t));
  return buf;
}

}  // namespace

ProfileStats profile_model(const model::WeightSource& src, const std::vector<Domain>& domains, const ProfileOptions& opt) {
  const auto& spec = src.spec();
  if (domains.empty()) fail("profile: no calibration tokens given");
  if (opt.seq_len < 1) fail("profile: --seq-len must be at least 1");
  if (opt.sample_tokens < 0) fail("profile: --sample-tokens must be >= 0");
  if (spec.num_moe_layers() == 0) fail(src.path().string(), ": the model has no MoE layers to profile");
  for (size_t i = 0; i < domains.size(); ++i)
    for (size_t j = 0; j < i; ++j)
      if (domains[i].name == domains[j].name) fail("calibration domain '", domains[i].name, "' is given twice");

  std::vector<int> moe_index(size_t(spec.num_layers), -1);
  std::vector<int> moe_layers;
  for (int l = 0; l < spec.num_layers; ++l)
    if (spec.moe_layer[size_t(l)]) moe_index[size_t(l)] = int(moe_layers.size()), moe_layers.push_back(l);
  const int E = spec.routing.num_experts, H = spec.hidden;

  std::vector<int64_t> counts;
  int64_t all = 0;
  for (auto& d : domains) {
    if (d.tokens.empty()) fail(d.token_file, ": no tokens");
    model::check_tokens(d.tokens, spec.vocab, d.token_file.empty() ? d.name : d.token_file);
    int64_t n = int64_t(d.tokens.size());
    if (opt.max_tokens >= 0) n = std::min(n, opt.max_tokens);
    if (n == 0) fail(d.token_file, ": --max-tokens leaves no tokens to profile");
    counts.push_back(n);
    all += n;
  }

  ProfileStats out;
  out.model_path = opt.model_path.empty() ? src.path().string() : opt.model_path;
  out.model_type = spec.model_type;
  {
    std::error_code ec;
    if (std::filesystem::exists(src.path() / "config.json", ec)) out.config_sha256 = config_sha256(src.path());
  }
  out.num_layers = spec.num_layers;
  out.experts = E;
  out.top_k = spec.routing.top_k;
  out.hidden = H;
  out.seq_len = opt.seq_len;
  out.moec_version = MOEC_VERSION;
  out.created = opt.created.empty() ? now_iso() : opt.created;

  model::Forward fwd(src);
  Progress prog("profile", long(all), "tokens");
  int64_t done = 0;
  std::vector<Accum> total(moe_layers.size(), Accum(E, H));
  const int T = opt.seq_len;
  const int64_t per_chunk = std::max<int64_t>(1, opt.chunk_tokens / T);
  for (size_t di = 0; di < domains.size(); ++di) {
    const auto& d = domains[di];
    const int64_t n = counts[di];
    // K positions spread evenly over the stream: the middle of each of K equal slices.
    std::vector<int64_t> samples;
    const int64_t K = std::min<int64_t>(opt.sample_tokens, n);
    for (int64_t j = 0; j < K; ++j) samples.push_back((2 * j + 1) * n / (2 * K));
    std::vector<Accum> acc(moe_layers.size(), Accum(E, H));
    Recorder rec(src, acc, moe_index, samples);
    const int64_t full = n / T;
    // Batches: per_chunk full windows at a time, then the trailing partial window on its own.
    for (int64_t w0 = 0; w0 * T < n;) {
      const int64_t nw = w0 < full ? std::min(per_chunk, full - w0) : 1;
      const int len = w0 < full ? T : int(n - full * T);
      const int64_t rows = w0 < full ? nw * len : len;
      rec.offset = w0 * T;
      Matrix h = fwd.embed(d.tokens.data() + w0 * T, rows);
      for (int l = 0; l < spec.num_layers; ++l) {
        model::LayerWeights lw = fwd.load_layer(l);
        fwd.run_layer(l, lw, h, len, &rec);
      }
      w0 += nw;
      done += rows;
      if (opt.progress) prog.update(long(done), d.name);
    }
    DomainStats ds;
    ds.name = d.name;
    ds.token_file = d.token_file;
    ds.token_sha256 = d.token_sha256;
    ds.tokens = n;
    for (size_t i = 0; i < moe_layers.size(); ++i) {
      ds.layers.push_back(acc[i].finish(moe_layers[i], spec.routing.top_k));
      total[i].add(acc[i]);
    }
    out.domains.push_back(std::move(ds));
  }
  if (opt.progress) prog.finish();
  DomainStats tot;
  tot.name = "total";
  tot.tokens = all;
  for (size_t i = 0; i < moe_layers.size(); ++i) tot.layers.push_back(total[i].finish(moe_layers[i], spec.routing.top_k));
  out.domains.push_back(std::move(tot));
  return out;
}

std::filesystem::path summary_path(const std::filesystem::path& h5) {
  auto p = h5;
  return p.replace_extension(".json");
}

}  // namespace moec::profile
