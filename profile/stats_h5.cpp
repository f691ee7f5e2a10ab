// HDF5 storage of ProfileStats (layout: docs/PROFILE.md). Written with object time tracking off,
// so the same statistics give a byte-identical file (only the `created` attribute differs).
#include <hdf5.h>

#include <algorithm>
#include <cmath>
#include <functional>
#include <map>

#include "core/error.h"
#include "core/files.h"
#include "profile/stats.h"

namespace moec::profile {

namespace {

constexpr int kFormatVersion = 1;

// Closes an HDF5 handle on scope exit.
struct Handle {
  hid_t id = -1;
  herr_t (*close)(hid_t) = nullptr;
  Handle(hid_t i, herr_t (*c)(hid_t)) : id(i), close(c) {}
  Handle(const Handle&) = delete;
  ~Handle() {
    if (id >= 0 && close) close(id);
  }
  operator hid_t() const { return id; }
};

void quiet_hdf5() {
  static bool done = [] {
    H5Eset_auto2(H5E_DEFAULT, nullptr, nullptr);
    return true;
  }();
  (void)done;
}

struct Writer {
  std::string file;
  hid_t check(hid_t r, const std::string& what) const {
    if (r < 0) fail(file, ": HDF5 failed to write ", what);
    return r;
  }
  hid_t group(hid_t loc, const std::string& name) const {
    Handle gcpl(H5Pcreate(H5P_GROUP_CREATE), H5Pclose);
    H5Pset_obj_track_times(gcpl, 0);  // no timestamps: reproducible files
    return check(H5Gcreate2(loc, name.c_str(), H5P_DEFAULT, gcpl, H5P_DEFAULT), "group " + name);
  }
  void attr_str(hid_t loc, const std::string& name, const std::string& v) const {
    Handle t(H5Tcopy(H5T_C_S1), H5Tclose);
    H5Tset_size(t, std::max<size_t>(1, v.size()));
    H5Tset_strpad(t, H5T_STR_NULLPAD);
    H5Tset_cset(t, H5T_CSET_UTF8);
    Handle sp(H5Screate(H5S_SCALAR), H5Sclose);
    Handle a(check(H5Acreate2(loc, name.c_str(), t, sp, H5P_DEFAULT, H5P_DEFAULT), "attribute " + name), H5Aclose);
    std::string buf = v.empty() ? std::string(1, '\0') : v;
    check(H5Awrite(a, t, buf.data()), "attribute " + name);
  }
  void attr_i64(hid_t loc, const std::string& name, int64_t v) const {
    Handle sp(H5Screate(H5S_SCALAR), H5Sclose);
    Handle a(check(H5Acreate2(loc, name.c_str(), H5T_STD_I64LE, sp, H5P_DEFAULT, H5P_DEFAULT), "attribute " + name), H5Aclose);
    check(H5Awrite(a, H5T_NATIVE_INT64, &v), "attribute " + name);
  }
  template <class T>
  void dataset(hid_t loc, const std::string& name, const std::vector<hsize_t>& dims, const std::vector<T>& v,
               hid_t file_type, hid_t mem_type, const std::string& doc) const {
    Handle sp(H5Screate_simple(int(dims.size()), dims.data(), nullptr), H5Sclose);
    Handle dcpl(H5Pcreate(H5P_DATASET_CREATE), H5Pclose);
    H5Pset_obj_track_times(dcpl, 0);
    Handle d(check(H5Dcreate2(loc, name.c_str(), file_type, sp, H5P_DEFAULT, dcpl, H5P_DEFAULT), "dataset " + name), H5Dclose);
    if (!v.empty()) check(H5Dwrite(d, mem_type, H5S_ALL, H5S_ALL, H5P_DEFAULT, v.data()), "dataset " + name);
    if (!doc.empty()) attr_str(d, "description", doc);
  }
  void f64(hid_t loc, const std::string& name, const std::vector<hsize_t>& dims, const std::vector<double>& v, const std::string& doc) const {
    dataset(loc, name, dims, v, H5T_IEEE_F64LE, H5T_NATIVE_DOUBLE, doc);
  }
  void f32(hid_t loc, const std::string& name, const std::vector<hsize_t>& dims, const std::vector<float>& v, const std::string& doc) const {
    dataset(loc, name, dims, v, H5T_IEEE_F32LE, H5T_NATIVE_FLOAT, doc);
  }
  void i64(hid_t loc, const std::string& name, const std::vector<hsize_t>& dims, const std::vector<int64_t>& v, const std::string& doc) const {
    dataset(loc, name, dims, v, H5T_STD_I64LE, H5T_NATIVE_INT64, doc);
  }
};

// Stacks one per-layer quantity over layers.
template <class T, class F>
std::vector<T> stack(const std::vector<LayerStats>& layers, F f) {
  std::vector<T> out;
  for (auto& L : layers) {
    auto v = f(L);
    out.insert(out.end(), v.begin(), v.end());
  }
  return out;
}
std::vector<double> flat(const MatrixD& m) { return std::vector<double>(m.data(), m.data() + m.size()); }

void write_domain(const Writer& w, hid_t g, const DomainStats& d, int index, int E, int H) {
  w.attr_i64(g, "index", index);
  w.attr_str(g, "name", d.name);
  w.attr_str(g, "token_file", d.token_file);
  w.attr_str(g, "token_sha256", d.token_sha256);
  w.attr_i64(g, "tokens", d.tokens);
  const auto& Ls = d.layers;
  const hsize_t L = Ls.size(), e = hsize_t(E), h = hsize_t(H);
  auto per = [&](auto f) { return stack<double>(Ls, [&](const LayerStats& x) { return std::vector<double>{f(x)}; }); };
  auto perE = [&](auto f) {
    return stack<double>(Ls, [&](const LayerStats& x) {
      std::vector<double> v(static_cast<size_t>(E));
      for (int i = 0; i < E; ++i) v[size_t(i)] = f(x, i);
      return v;
    });
  };
  w.i64(g, "layer_index", {L}, stack<int64_t>(Ls, [](auto& x) { return std::vector<int64_t>{x.layer}; }), "decoder layer index of each MoE layer (row)");
  w.i64(g, "tokens", {L}, stack<int64_t>(Ls, [](auto& x) { return std::vector<int64_t>{x.tokens}; }), "tokens that reached the layer");
  w.i64(g, "selected", {L, e}, stack<int64_t>(Ls, [](auto& x) { return x.selected; }), "times each expert was in the top-k (= tokens it saw)");
  w.i64(g, "top1", {L, e}, stack<int64_t>(Ls, [](auto& x) { return x.top1; }), "times each expert ranked first");
  w.f64(g, "gate_mass", {L, e}, stack<double>(Ls, [](auto& x) { return x.gate_mass; }), "sum of the applied gate weights");
  w.f64(g, "prob_sum", {L, e}, stack<double>(Ls, [](auto& x) { return x.prob_sum; }), "sum over tokens of the router probability");
  w.f64(g, "logit_sum", {L, e}, stack<double>(Ls, [](auto& x) { return x.logit_sum; }), "sum over tokens of the router logit");
  w.f64(g, "logit_sq_sum", {L, e}, stack<double>(Ls, [](auto& x) { return x.logit_sq_sum; }), "sum over tokens of the squared router logit");
  w.f64(g, "easyep", {L, e}, stack<double>(Ls, [](auto& x) { return x.easyep; }), "EASY-EP: sum_t s_t g ||e(x_t)||, s_t = 1 - cos(x_t, x_t + y_t)");
  w.f64(g, "reap_sum", {L, e}, stack<double>(Ls, [](auto& x) { return x.reap_sum; }), "sum over routed tokens of g ||e(x)||");
  w.f64(g, "act_norm_sum", {L, e}, stack<double>(Ls, [](auto& x) { return x.act_norm_sum; }), "sum over routed tokens of ||e(x)||");
  w.f64(g, "entropy_sum", {L}, per([](auto& x) { return x.entropy_sum.empty() ? 0.0 : x.entropy_sum[0]; }), "sum over tokens of the routing entropy (nats)");
  w.f64(g, "coactivation", {L, e, e}, stack<double>(Ls, [](auto& x) { return flat(x.coactivation); }), "tokens routed to both i and j (diagonal = selected)");
  w.i64(g, "sampled_tokens", {L}, stack<int64_t>(Ls, [](auto& x) { return std::vector<int64_t>{x.sampled_tokens}; }), "K: tokens every expert was run on");
  w.f64(g, "output_similarity", {L, e, e}, stack<double>(Ls, [](auto& x) { return flat(x.output_similarity); }), "mean cosine of expert outputs on the K sampled tokens");
  w.f32(g, "output_mean", {L, e, h}, stack<float>(Ls, [](auto& x) {
          std::vector<float> v(size_t(x.output_mean.size()));
          for (int64_t i = 0; i < x.output_mean.size(); ++i) v[size_t(i)] = float(x.output_mean.data()[i]);
          return v;
        }), "mean output of each expert on the K sampled tokens (fp32)");
  w.f64(g, "ratio_median", {L}, per([](auto& x) { return x.ratio_median; }), "median over tokens of w2/w1 (top-k >= 2)");
  // Derived figures for readers that do not want to divide (not read back).
  Handle dg(w.group(g, "derived"), H5Gclose);
  w.f64(dg, "fraction", {L, e}, perE([](auto& x, int i) { return x.fraction(i); }), "selected / (tokens * top_k)");
  w.f64(dg, "mean_prob", {L, e}, perE([](auto& x, int i) { return x.mean_prob(i); }), "prob_sum / tokens");
  w.f64(dg, "logit_mean", {L, e}, perE([](auto& x, int i) { return x.logit_mean(i); }), "logit_sum / tokens");
  w.f64(dg, "logit_std", {L, e}, perE([](auto& x, int i) { return x.logit_std(i); }), "population std of the router logit");
  w.f64(dg, "reap", {L, e}, perE([](auto& x, int i) { return x.reap(i); }), "reap_sum / selected (0 if never selected)");
  w.f64(dg, "ean", {L, e}, perE([](auto& x, int i) { return x.ean(i); }), "act_norm_sum / selected (0 if never selected)");
  w.f64(dg, "entropy", {L}, per([](auto& x) { return x.entropy(); }), "mean routing entropy per token (nats)");
  w.f64(dg, "load_cv", {L}, per([](auto& x) { return x.load_cv(); }), "coefficient of variation of selected over experts");
  w.f64(dg, "load_max_over_mean", {L}, per([](auto& x) { return x.load_max_over_mean(); }), "max / mean of selected");
}

// ---------------------------------------------------------------- reading
struct Reader {
  std::string file;
  std::string attr_str(hid_t loc, const std::string& name, const std::string& where) const {
    if (H5Aexists(loc, name.c_str()) <= 0) fail(file, ": ", where, " has no attribute '", name, "' (not a moec profile?)");
    Handle a(H5Aopen(loc, name.c_str(), H5P_DEFAULT), H5Aclose);
    Handle t(H5Aget_type(a), H5Tclose);
    if (H5Tget_class(t) != H5T_STRING || H5Tis_variable_str(t) > 0) fail(file, ": attribute '", name, "' of ", where, " is not a fixed-length string");
    std::string buf(H5Tget_size(t), '\0');
    Handle mt(H5Tcopy(t), H5Tclose);
    if (H5Aread(a, mt, buf.data()) < 0) fail(file, ": cannot read attribute '", name, "'");
    return buf.substr(0, buf.find('\0'));
  }
  int64_t attr_i64(hid_t loc, const std::string& name, const std::string& where) const {
    if (H5Aexists(loc, name.c_str()) <= 0) fail(file, ": ", where, " has no attribute '", name, "' (not a moec profile?)");
    Handle a(H5Aopen(loc, name.c_str(), H5P_DEFAULT), H5Aclose);
    int64_t v = 0;
    if (H5Aread(a, H5T_NATIVE_INT64, &v) < 0) fail(file, ": cannot read attribute '", name, "' as an integer");
    return v;
  }
  template <class T>
  std::vector<T> read(hid_t loc, const std::string& where, const std::string& name, const std::vector<hsize_t>& dims, hid_t mem_type) const {
    if (H5Lexists(loc, name.c_str(), H5P_DEFAULT) <= 0) fail(file, ": ", where, " has no dataset '", name, "'");
    Handle d(H5Dopen2(loc, name.c_str(), H5P_DEFAULT), H5Dclose);
    Handle sp(H5Dget_space(d), H5Sclose);
    const int nd = H5Sget_simple_extent_ndims(sp);
    std::vector<hsize_t> got(size_t(std::max(nd, 0)));
    H5Sget_simple_extent_dims(sp, got.data(), nullptr);
    if (got != dims) {
      std::string g, e;
      for (auto x : got) g += (g.empty() ? "" : " x ") + std::to_string(x);
      for (auto x : dims) e += (e.empty() ? "" : " x ") + std::to_string(x);
      fail(file, ": dataset ", where, "/", name, " has shape [", g, "], expected [", e, "]");
    }
    size_t n = 1;
    for (auto x : dims) n *= size_t(x);
    std::vector<T> v(n);
    if (n && H5Dread(d, mem_type, H5S_ALL, H5S_ALL, H5P_DEFAULT, v.data()) < 0) fail(file, ": cannot read dataset ", where, "/", name);
    return v;
  }
};

DomainStats read_domain(const Reader& r, hid_t g, const std::string& gname, const ProfileStats& s) {
  const std::string where = "/domains/" + gname;
  DomainStats d;
  d.name = r.attr_str(g, "name", where);
  d.token_file = r.attr_str(g, "token_file", where);
  d.token_sha256 = r.attr_str(g, "token_sha256", where);
  d.tokens = r.attr_i64(g, "tokens", where);
  if (H5Lexists(g, "layer_index", H5P_DEFAULT) <= 0) fail(r.file, ": ", where, " has no dataset 'layer_index'");
  Handle li(H5Dopen2(g, "layer_index", H5P_DEFAULT), H5Dclose);
  Handle sp(H5Dget_space(li), H5Sclose);
  hsize_t L = 0;
  if (H5Sget_simple_extent_ndims(sp) != 1) fail(r.file, ": ", where, "/layer_index must be 1-D");
  H5Sget_simple_extent_dims(sp, &L, nullptr);
  const hsize_t E = hsize_t(s.experts), H = hsize_t(s.hidden);
  auto I = [&](const std::string& n, std::vector<hsize_t> dims) { return r.read<int64_t>(g, where, n, dims, H5T_NATIVE_INT64); };
  auto D = [&](const std::string& n, std::vector<hsize_t> dims) { return r.read<double>(g, where, n, dims, H5T_NATIVE_DOUBLE); };
  auto layer = I("layer_index", {L}), tokens = I("tokens", {L}), selected = I("selected", {L, E}), top1 = I("top1", {L, E}),
       sampled = I("sampled_tokens", {L});
  auto gate = D("gate_mass", {L, E}), prob = D("prob_sum", {L, E}), ls = D("logit_sum", {L, E}), lsq = D("logit_sq_sum", {L, E}),
       easy = D("easyep", {L, E}), reap = D("reap_sum", {L, E}), ean = D("act_norm_sum", {L, E}), ent = D("entropy_sum", {L}),
       co = D("coactivation", {L, E, E}), sim = D("output_similarity", {L, E, E}), med = D("ratio_median", {L});
  auto om = r.read<float>(g, where, "output_mean", {L, E, H}, H5T_NATIVE_FLOAT);
  auto slice = [&](const auto& v, size_t i, size_t n) { return std::vector<typename std::decay_t<decltype(v)>::value_type>(v.begin() + long(i * n), v.begin() + long((i + 1) * n)); };
  for (size_t i = 0; i < L; ++i) {
    LayerStats x;
    x.layer = int(layer[i]);
    x.experts = s.experts;
    x.top_k = s.top_k;
    x.tokens = tokens[i];
    x.selected = slice(selected, i, E);
    x.top1 = slice(top1, i, E);
    x.gate_mass = slice(gate, i, E);
    x.prob_sum = slice(prob, i, E);
    x.logit_sum = slice(ls, i, E);
    x.logit_sq_sum = slice(lsq, i, E);
    x.easyep = slice(easy, i, E);
    x.reap_sum = slice(reap, i, E);
    x.act_norm_sum = slice(ean, i, E);
    x.entropy_sum = {ent[i]};
    x.coactivation = Eigen::Map<const MatrixD>(co.data() + i * E * E, long(E), long(E));
    x.output_similarity = Eigen::Map<const MatrixD>(sim.data() + i * E * E, long(E), long(E));
    x.output_mean = Eigen::Map<const Matrix>(om.data() + i * E * H, long(E), long(H)).cast<double>();
    x.sampled_tokens = sampled[i];
    x.ratio_median = med[i];
    d.layers.push_back(std::move(x));
  }
  return d;
}

}  // namespace

void write_stats_h5(const ProfileStats& s, const std::filesystem::path& path) {
  quiet_hdf5();
  if (s.domains.empty()) fail("profile statistics for ", path.string(), " have no domains");
  const auto tmp = temp_path_for(path);
  Writer w{path.string()};
  try {
    Handle fapl(H5Pcreate(H5P_FILE_ACCESS), H5Pclose);
    Handle f(H5Fcreate(tmp.c_str(), H5F_ACC_TRUNC, H5P_DEFAULT, fapl), H5Fclose);
    if (f < 0) fail("cannot create ", tmp.string(), " (HDF5)");
    w.attr_str(f, "format", "moec-profile");
    w.attr_i64(f, "format_version", kFormatVersion);
    w.attr_str(f, "model_path", s.model_path);
    w.attr_str(f, "model_type", s.model_type);
    w.attr_str(f, "config_sha256", s.config_sha256);
    w.attr_i64(f, "num_layers", s.num_layers);
    w.attr_i64(f, "experts", s.experts);
    w.attr_i64(f, "top_k", s.top_k);
    w.attr_i64(f, "hidden", s.hidden);
    w.attr_i64(f, "seq_len", s.seq_len);
    w.attr_str(f, "moec_version", s.moec_version);
    w.attr_str(f, "created", s.created);
    std::string names;
    for (auto& d : s.domains) names += (names.empty() ? "" : ",") + d.name;
    w.attr_str(f, "domain_names", names);
    Handle root(w.group(f, "domains"), H5Gclose);
    for (size_t i = 0; i < s.domains.size(); ++i) {
      Handle g(w.group(root, s.domains[i].name), H5Gclose);
      write_domain(w, g, s.domains[i], int(i), s.experts, s.hidden);
    }
    if (H5Fflush(f, H5F_SCOPE_GLOBAL) < 0) fail(path.string(), ": HDF5 flush failed");
  } catch (...) {
    std::filesystem::remove(tmp);
    throw;
  }
  std::error_code ec;
  std::filesystem::rename(tmp, path, ec);
  if (ec) {
    std::filesystem::remove(tmp);
    fail("cannot rename ", tmp.string(), " to ", path.string(), ": ", ec.message());
  }
}

ProfileStats read_stats_h5(const std::filesystem::path& path) {
  quiet_hdf5();
  if (!std::filesystem::exists(path)) fail(path.string(), ": no such stats file");
  if (H5Fis_hdf5(path.c_str()) <= 0) fail(path.string(), ": not an HDF5 file (expected moec profile statistics)");
  Handle f(H5Fopen(path.c_str(), H5F_ACC_RDONLY, H5P_DEFAULT), H5Fclose);
  if (f < 0) fail(path.string(), ": cannot open as HDF5");
  Reader r{path.string()};
  if (H5Aexists(f, "format") <= 0 || r.attr_str(f, "format", "/") != "moec-profile")
    fail(path.string(), ": not a moec profile statistics file (no format=\"moec-profile\" attribute)");
  const int64_t ver = r.attr_i64(f, "format_version", "/");
  if (ver != kFormatVersion) fail(path.string(), ": profile format version ", ver, " is not supported (this moec reads ", kFormatVersion, ")");
  ProfileStats s;
  s.model_path = r.attr_str(f, "model_path", "/");
  s.model_type = r.attr_str(f, "model_type", "/");
  s.config_sha256 = r.attr_str(f, "config_sha256", "/");
  s.num_layers = int(r.attr_i64(f, "num_layers", "/"));
  s.experts = int(r.attr_i64(f, "experts", "/"));
  s.top_k = int(r.attr_i64(f, "top_k", "/"));
  s.hidden = int(r.attr_i64(f, "hidden", "/"));
  s.seq_len = int(r.attr_i64(f, "seq_len", "/"));
  s.moec_version = r.attr_str(f, "moec_version", "/");
  s.created = r.attr_str(f, "created", "/");
  if (s.experts <= 0 || s.hidden <= 0 || s.top_k <= 0) fail(path.string(), ": bad experts/hidden/top_k attributes");
  std::string names = r.attr_str(f, "domain_names", "/");
  if (H5Lexists(f, "domains", H5P_DEFAULT) <= 0) fail(path.string(), ": no /domains group");
  Handle root(H5Gopen2(f, "domains", H5P_DEFAULT), H5Gclose);
  size_t p = 0;
  while (p <= names.size()) {
    size_t q = names.find(',', p);
    if (q == std::string::npos) q = names.size();
    std::string n = names.substr(p, q - p);
    if (!n.empty()) {
      if (H5Lexists(root, n.c_str(), H5P_DEFAULT) <= 0) fail(path.string(), ": domain '", n, "' listed in domain_names has no group /domains/", n);
      Handle g(H5Gopen2(root, n.c_str(), H5P_DEFAULT), H5Gclose);
      s.domains.push_back(read_domain(r, g, n, s));
    }
    p = q + 1;
  }
  if (s.domains.empty()) fail(path.string(), ": no domains");
  return s;
}

}  // namespace moec::profile
