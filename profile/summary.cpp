// Human and JSON summaries of profile statistics, and the HTML report sections.
#include <algorithm>
#include <cmath>
#include <cstdio>
#include <numeric>

#include "profile/profile.h"
#include "report/report.h"
#include "report/sections.h"

namespace moec::profile {

namespace {

// Experts ordered by selection count (descending), ties to the lower index.
std::vector<int> by_usage(const LayerStats& L) {
  std::vector<int> o(size_t(L.experts));
  std::iota(o.begin(), o.end(), 0);
  std::stable_sort(o.begin(), o.end(), [&](int a, int b) { return L.selected[size_t(a)] > L.selected[size_t(b)]; });
  return o;
}

std::string fmt(const char* f, double v) {
  char b[64];
  std::snprintf(b, sizeof b, f, v);
  return b;
}

}  // namespace

nlohmann::ordered_json summary_json(const ProfileStats& s, int hot_cold) {
  nlohmann::ordered_json j;
  j["format"] = "moec-profile-summary";
  j["model_path"] = s.model_path;
  j["model_type"] = s.model_type;
  j["config_sha256"] = s.config_sha256;
  j["num_layers"] = s.num_layers;
  j["experts"] = s.experts;
  j["top_k"] = s.top_k;
  j["hidden"] = s.hidden;
  j["seq_len"] = s.seq_len;
  j["moec_version"] = s.moec_version;
  j["created"] = s.created;
  auto& doms = j["domains"] = nlohmann::ordered_json::array();
  for (auto& d : s.domains) {
    nlohmann::ordered_json dj;
    dj["name"] = d.name;
    dj["token_file"] = d.token_file;
    dj["token_sha256"] = d.token_sha256;
    dj["tokens"] = d.tokens;
    auto& layers = dj["layers"] = nlohmann::ordered_json::array();
    for (auto& L : d.layers) {
      nlohmann::ordered_json lj;
      lj["layer"] = L.layer;
      lj["tokens"] = L.tokens;
      lj["entropy"] = L.entropy();
      lj["max_entropy"] = std::log(double(L.experts));
      lj["load_cv"] = L.load_cv();
      lj["load_max_over_mean"] = L.load_max_over_mean();
      lj["ratio_median"] = L.ratio_median;
      auto o = by_usage(L);
      const int n = std::min(hot_cold, L.experts);
      auto item = [&](int e) { return nlohmann::ordered_json{{"expert", e}, {"selected", L.selected[size_t(e)]}, {"fraction", L.fraction(e)}}; };
      auto& hot = lj["hot"] = nlohmann::ordered_json::array();
      for (int i = 0; i < n; ++i) hot.push_back(item(o[size_t(i)]));
      auto& cold = lj["cold"] = nlohmann::ordered_json::array();
      for (int i = 0; i < n; ++i) cold.push_back(item(o[size_t(L.experts - 1 - i)]));
      auto& never = lj["never_selected"] = nlohmann::ordered_json::array();
      for (int e = 0; e < L.experts; ++e)
        if (L.selected[size_t(e)] == 0) never.push_back(e);
      lj["selected"] = L.selected;
      std::vector<double> frac, reap, easy;
      for (int e = 0; e < L.experts; ++e) frac.push_back(L.fraction(e)), reap.push_back(L.reap(e));
      lj["fraction"] = frac;
      lj["easyep"] = L.easyep;
      lj["reap"] = reap;
      layers.push_back(lj);
    }
    doms.push_back(dj);
  }
  return j;
}

std::string summary_text(const ProfileStats& s, int hot_cold) {
  std::string out;
  out += s.model_path + " (" + s.model_type + "): " + std::to_string(s.num_layers) + " layers, " + std::to_string(s.experts) +
         " experts, top-" + std::to_string(s.top_k) + ", seq_len " + std::to_string(s.seq_len) + "\n";
  out += "profiled " + s.created + " by moec " + s.moec_version + ", config sha256 " + s.config_sha256.substr(0, 16) + "\n";
  for (auto& d : s.domains)
    if (d.name != "total") out += "  domain " + d.name + ": " + std::to_string(d.tokens) + " tokens from " + d.token_file + "\n";
  for (auto& d : s.domains) {
    if (s.domains.size() == 2 && d.name != "total") continue;  // one domain: the total says it all
    out += "\n[" + d.name + "] " + std::to_string(d.tokens) + " tokens; shares are of the layer's top-k selections (uniform " +
           fmt("%.1f%%", 100.0 / std::max(1, s.experts)) + ")\n";
    out += "layer  entropy  cv    max/mean  w2/w1   hot experts (share)        cold experts (share)\n";
    for (auto& L : d.layers) {
      auto o = by_usage(L);
      const int n = std::min(hot_cold, L.experts);
      std::string hot, cold;
      for (int i = 0; i < n; ++i) hot += std::to_string(o[size_t(i)]) + ":" + fmt("%.1f%% ", 100 * L.fraction(o[size_t(i)]));
      for (int i = 0; i < n; ++i) {
        int e = o[size_t(L.experts - 1 - i)];
        cold += std::to_string(e) + ":" + fmt("%.1f%%", 100 * L.fraction(e)) + (L.selected[size_t(e)] == 0 ? "(never) " : " ");
      }
      char line[512];
      std::snprintf(line, sizeof line, "%5d  %6.3f  %5.3f  %6.2f   %6.3f   %-26s %s\n", L.layer, L.entropy(), L.load_cv(),
                    L.load_max_over_mean(), L.ratio_median, hot.c_str(), cold.c_str());
      out += line;
    }
  }
  return out;
}

void add_profile_report(report::Page& page, const ProfileStats& s) {
  using namespace report;
  std::vector<const DomainStats*> doms;
  for (auto& d : s.domains)
    if (d.name != "total") doms.push_back(&d);
  const DomainStats& tot = s.total();
  const size_t nl = tot.layers.size(), E = size_t(s.experts);
  std::vector<std::string> layer_labels, expert_labels;
  for (auto& L : tot.layers) layer_labels.push_back(std::to_string(L.layer));
  for (size_t e = 0; e < E; ++e) expert_labels.push_back(std::to_string(e));

  RoutingProfileData d;
  d.model = s.model_path + " (" + s.model_type + ")";
  d.top_k = s.top_k;
  for (auto* dm : doms) {
    d.domains.push_back(dm->name);
    d.domain_tokens.push_back(dm->tokens);
    std::vector<std::vector<double>> u;
    for (auto& L : dm->layers) {
      std::vector<double> row;
      for (size_t e = 0; e < E; ++e) row.push_back(L.fraction(int(e)));
      u.push_back(row);
    }
    d.usage.push_back(u);
  }
  for (auto& L : tot.layers) {
    std::vector<std::vector<double>> c(E, std::vector<double>(E));
    for (size_t i = 0; i < E; ++i)
      for (size_t j = 0; j < E; ++j) c[i][j] = L.tokens ? L.coactivation(long(i), long(j)) / double(L.tokens) : 0.0;
    d.coactivation.push_back(c);
    // EASY-EP as a share of the layer's total, so layers compare on one scale.
    double sum = std::accumulate(L.easyep.begin(), L.easyep.end(), 0.0);
    std::vector<double> imp;
    for (size_t e = 0; e < E; ++e) imp.push_back(sum > 0 ? L.easyep[e] / sum : 0.0);
    d.importance.push_back(imp);
  }
  d.importance_label = "EASY-EP share";
  add_routing_profile(page, d);

  if (doms.size() > 1) {
    page.subsection("How much the domains differ");
    page.paragraph("Per layer, the total-variation distance between a domain's expert usage and the usage over all "
                   "domains (half the sum of absolute share differences: 0 = identical routing, 1 = disjoint experts), "
                   "and the expert whose share differs most.");
    Table dt;
    dt.header = {"layer"};
    for (auto* dm : doms) dt.header.push_back(dm->name + ": TV distance"), dt.header.push_back(dm->name + ": largest change");
    for (size_t l = 0; l < nl; ++l) {
      std::vector<Cell> row = {Cell(tot.layers[l].layer)};
      for (auto* dm : doms) {
        double tv = 0, best = -1;
        size_t arg = 0;
        for (size_t e = 0; e < E; ++e) {
          const double diff = dm->layers[l].fraction(int(e)) - tot.layers[l].fraction(int(e));
          tv += 0.5 * std::abs(diff);
          if (std::abs(diff) > best) best = std::abs(diff), arg = e;
        }
        const double a = dm->layers[l].fraction(int(arg)), b = tot.layers[l].fraction(int(arg));
        row.push_back(Cell(tv, 3));
        row.push_back(Cell("expert " + std::to_string(arg) + ": " + format_number(100 * a, 3) + "% vs " + format_number(100 * b, 3) + "%"));
      }
      dt.rows.push_back(row);
    }
    page.table(dt);
  }

  page.subsection("Balance and entropy per layer");
  page.paragraph("Load coefficient of variation (0 = perfectly balanced) and mean routing entropy per token in nats "
                 "(maximum ln E = " + format_number(std::log(double(E)), 3) + "), per domain.");
  std::vector<Series> cv, ent;
  std::vector<const DomainStats*> lines = doms;
  if (doms.size() > 1) lines.push_back(&tot);
  for (auto* dm : lines) {
    Series a{dm->name, {}}, b{dm->name, {}};
    for (auto& L : dm->layers) a.points.push_back({double(L.layer), L.load_cv(), ""}), b.points.push_back({double(L.layer), L.entropy(), ""});
    cv.push_back(a);
    ent.push_back(b);
  }
  LineChartOptions lo;
  lo.width = 440;
  lo.height = 280;
  lo.x_label = "layer";
  lo.title = "Load imbalance (CV of selections)";
  lo.y_label = "CV";
  auto cv_svg = line_chart(cv, lo);
  lo.title = "Routing entropy";
  lo.y_label = "nats";
  page.figures({{cv_svg, ""}, {line_chart(ent, lo), ""}});

  page.subsection("Expert output similarity");
  page.paragraph("Mean cosine between the outputs of experts i and j on the same " + std::to_string(tot.layers.empty() ? 0 : tot.layers[0].sampled_tokens) +
                 " sampled tokens (every expert run on every sampled token). High values mark redundant experts (merge candidates). "
                 "The colour range is set by the off-diagonal pairs; the diagonal (cosine 1) is saturated.");
  std::vector<Figure> sims;
  for (auto& L : tot.layers) {
    std::vector<std::vector<double>> m(E, std::vector<double>(E));
    double off = 1e-6;
    for (size_t i = 0; i < E; ++i)
      for (size_t j = 0; j < E; ++j) {
        m[i][j] = L.output_similarity(long(i), long(j));
        if (i != j) off = std::max(off, std::abs(m[i][j]));
      }
    HeatmapOptions ho;
    ho.vmin = -off;
    ho.vmax = off;
    ho.title = "Layer " + std::to_string(L.layer);
    ho.value_label = "cosine";
    ho.row_axis = ho.col_axis = "expert";
    ho.scale = ColorScale::Diverging;
    ho.cell_text = false;
    sims.push_back({heatmap(m, expert_labels, expert_labels, ho), ""});
  }
  page.figures(std::move(sims));

  page.subsection("Per-layer figures (all domains)");
  Table t;
  t.header = {"layer", "tokens", "entropy", "load CV", "max/mean", "median w2/w1", "hottest", "coldest", "never selected"};
  for (auto& L : tot.layers) {
    auto o = by_usage(L);
    std::string never;
    for (int e = 0; e < L.experts; ++e)
      if (L.selected[size_t(e)] == 0) never += (never.empty() ? "" : ", ") + std::to_string(e);
    t.rows.push_back({Cell(L.layer), Cell((long long)L.tokens), Cell(L.entropy(), 3), Cell(L.load_cv(), 3), Cell(L.load_max_over_mean(), 3),
                      Cell(L.ratio_median, 3),
                      Cell(std::to_string(o.front()) + " (" + format_number(100 * L.fraction(o.front()), 3) + "%)"),
                      Cell(std::to_string(o.back()) + " (" + format_number(100 * L.fraction(o.back()), 3) + "%)"),
                      Cell(never.empty() ? "none" : never)});
  }
  page.table(t);
  (void)nl;
}

}  // namespace moec::profile
