// The routing-profile and compression report sections.
#include "report/sections.h"

#include <algorithm>
#include <cmath>
#include <sstream>

#include "core/error.h"

namespace moec::report {

namespace {

std::vector<std::string> numbered(const std::string& prefix, size_t count) {
  std::vector<std::string> out;
  for (size_t i = 0; i < count; ++i) out.push_back(prefix + std::to_string(i));
  return out;
}

std::string percent_change(double before, double after) {
  if (!(before > 0) || !std::isfinite(after)) return "n/a";
  double p = 100.0 * (after / before - 1);
  std::string s = p >= 0 ? "+" : "";
  s += format_number(p, 3);
  return s + "%";
}

std::string mib(double bytes) { return format_number(bytes / (1024.0 * 1024.0), 4) + " MiB"; }

}  // namespace

void add_routing_profile(Page& page, const RoutingProfileData& d) {
  if (d.usage.size() != d.domains.size())
    fail("routing profile report: ", d.usage.size(), " usage tables for ", d.domains.size(), " domains");
  page.section("Routing profile");
  std::vector<std::pair<std::string, std::string>> kv = {{"model", d.model}, {"top-k", std::to_string(d.top_k)}};
  for (size_t i = 0; i < d.domains.size(); ++i)
    kv.push_back({"domain " + d.domains[i],
                  i < d.domain_tokens.size() ? format_number(double(d.domain_tokens[i])) + " tokens" : "?"});
  page.key_values(kv);
  if (d.usage.empty()) return;

  const size_t layers = d.usage[0].size(), experts = layers ? d.usage[0][0].size() : 0;
  const auto layer_labels = numbered("", layers), expert_labels = numbered("", experts);
  // Pooled usage: mean over domains.
  std::vector<std::vector<double>> pooled(layers, std::vector<double>(experts, 0.0));
  for (const auto& u : d.usage) {
    if (u.size() != layers) fail("routing profile report: usage tables have different layer counts");
    for (size_t l = 0; l < layers; ++l)
      for (size_t e = 0; e < experts && e < u[l].size(); ++e) pooled[l][e] += u[l][e] / double(d.usage.size());
  }
  page.subsection("Expert usage");
  page.paragraph("Share of each layer's top-" + std::to_string(d.top_k) +
                 " selections that went to each expert (each row sums to 1; uniform routing would give " +
                 format_number(1.0 / double(std::max<size_t>(experts, 1)), 3) +
                 "). Dark cells are experts the router almost never picks: the first candidates for pruning.");
  HeatmapOptions ho;
  ho.title = "Expert usage, all domains";
  ho.value_label = "share";
  ho.row_axis = "layer";
  ho.col_axis = "expert";
  ho.vmin = 0;
  page.figure({heatmap(pooled, layer_labels, expert_labels, ho), "Layer x expert selection share, mean over domains."});

  if (d.usage.size() > 1) {
    page.subsection("Per-domain differences");
    page.paragraph("Each domain's usage minus the mean over domains: red = the domain uses the expert more than "
                   "average, blue = less. Experts that are red for one domain only are domain specialists; pruning "
                   "them hurts that domain even when pooled usage looks low.");
    // One colour scale shared by all domains so that their maps compare directly.
    std::vector<std::vector<std::vector<double>>> diffs;
    double span = 0;
    for (size_t i = 0; i < d.usage.size(); ++i) {
      std::vector<std::vector<double>> diff = pooled;
      for (size_t l = 0; l < layers; ++l)
        for (size_t e = 0; e < experts; ++e) {
          diff[l][e] = (e < d.usage[i][l].size() ? d.usage[i][l][e] : NAN) - pooled[l][e];
          if (std::isfinite(diff[l][e])) span = std::max(span, std::fabs(diff[l][e]));
        }
      diffs.push_back(std::move(diff));
    }
    std::vector<Figure> figs;
    for (size_t i = 0; i < d.usage.size(); ++i) {
      const auto& diff = diffs[i];
      HeatmapOptions dh = ho;
      dh.title = d.domains[i] + " minus mean";
      dh.value_label = "share diff";
      dh.scale = ColorScale::Diverging;
      dh.vmin = -span;
      dh.vmax = span;
      figs.push_back({heatmap(diff, layer_labels, expert_labels, dh), ""});
    }
    page.figures(std::move(figs));
  }

  if (!d.coactivation.empty()) {
    page.subsection("Co-activation");
    page.paragraph("Per layer, the share of tokens routed to both expert i and expert j (diagonal: share of tokens "
                   "routed to i). Bright off-diagonal pairs fire together and are natural merge partners.");
    std::vector<Figure> figs;
    for (size_t l = 0; l < d.coactivation.size(); ++l) {
      HeatmapOptions ch;
      ch.title = "Layer " + std::to_string(l);
      ch.value_label = "share";
      ch.row_axis = "expert";
      ch.col_axis = "expert";
      ch.vmin = 0;
      ch.cell_text = false;
      figs.push_back({heatmap(d.coactivation[l], expert_labels, expert_labels, ch), ""});
    }
    page.figures(std::move(figs));
  }

  if (!d.importance.empty()) {
    page.subsection("Expert importance");
    page.paragraph("Per-layer " + d.importance_label + " of each expert (higher = more costly to remove).");
    std::vector<Figure> figs;
    for (size_t l = 0; l < d.importance.size(); ++l) {
      BarChartOptions bo;
      bo.title = "Layer " + std::to_string(l);
      bo.x_label = "expert";
      bo.y_label = d.importance_label;
      bo.width = 360;
      bo.height = 220;
      figs.push_back({bar_chart(numbered("", d.importance[l].size()), {{d.importance_label, d.importance[l]}}, bo), ""});
    }
    page.figures(std::move(figs));
  }

  Table t;
  t.caption = "Least used experts (pooled share of selections)";
  t.header = {"layer", "expert", "share", "vs uniform"};
  for (size_t l = 0; l < layers; ++l) {
    std::vector<size_t> order(experts);
    for (size_t e = 0; e < experts; ++e) order[e] = e;
    std::stable_sort(order.begin(), order.end(), [&](size_t a, size_t b) { return pooled[l][a] < pooled[l][b]; });
    for (size_t k = 0; k < std::min<size_t>(2, experts); ++k) {
      size_t e = order[k];
      t.rows.push_back({Cell(int(l)), Cell(int(e)), Cell(pooled[l][e], 3),
                        Cell::number_text(format_number(pooled[l][e] * double(experts), 3) + "x")});
    }
  }
  page.table(t);
}

void add_compression(Page& page, const CompressionData& d) {
  page.section("Compression");
  page.key_values({{"model", d.model}});
  if (!d.command.empty()) {
    page.subsection("Command");
    page.pre(d.command);
  }
  if (!d.recipe.empty()) {
    page.subsection("Recipe");
    page.pre(d.recipe);
  }

  if (!d.sizes.empty()) {
    page.subsection("Sizes");
    Table t;
    t.header = {"category", "before", "after", "change"};
    std::vector<std::string> cats;
    BarSeries before{"before", {}}, after{"after", {}};
    double tb = 0, ta = 0;
    for (const auto& r : d.sizes) {
      t.rows.push_back({Cell(r.category), Cell::number_text(mib(r.before_bytes)), Cell::number_text(mib(r.after_bytes)),
                        Cell::number_text(percent_change(r.before_bytes, r.after_bytes))});
      cats.push_back(r.category);
      before.values.push_back(r.before_bytes / (1024.0 * 1024.0));
      after.values.push_back(r.after_bytes / (1024.0 * 1024.0));
      tb += r.before_bytes;
      ta += r.after_bytes;
    }
    t.rows.push_back({Cell("total"), Cell::number_text(mib(tb)), Cell::number_text(mib(ta)),
                      Cell::number_text(percent_change(tb, ta))});
    BarChartOptions bo;
    bo.title = "Size by category";
    bo.y_label = "MiB";
    page.figure({bar_chart(cats, {before, after}, bo), "Stored bytes per tensor category before and after."});
    page.table(t);
  }

  if (!d.layer_names.empty()) {
    page.subsection("Per layer");
    std::vector<Figure> figs;
    if (d.bits_per_weight.size() == d.layer_names.size()) {
      BarChartOptions bo;
      bo.title = "Bits per weight (routed experts)";
      bo.x_label = "layer";
      bo.y_label = "bits/weight";
      bo.width = 520;
      bo.height = 280;
      figs.push_back({bar_chart(d.layer_names, {{"bits/weight", d.bits_per_weight}}, bo),
                      "Includes scales and codebooks."});
    }
    if (d.recon_error.size() == d.layer_names.size()) {
      BarChartOptions bo;
      bo.title = "Relative reconstruction error";
      bo.x_label = "layer";
      bo.y_label = "||W - W'|| / ||W||";
      bo.width = 520;
      bo.height = 280;
      figs.push_back({bar_chart(d.layer_names, {{"error", d.recon_error}}, bo), "Frobenius norm over the layer's experts."});
    }
    page.figures(std::move(figs));
  }

  if (!d.perplexity.empty()) {
    page.subsection("Perplexity");
    Table t;
    t.header = {"eval file", "before", "after", "change"};
    for (const auto& r : d.perplexity)
      t.rows.push_back({Cell(r.eval_file), Cell(r.before, 5), Cell(r.after, 5),
                        Cell::number_text(percent_change(r.before, r.after))});
    page.table(t);
  }
  if (!d.tradeoff.empty()) {
    LineChartOptions lo;
    lo.title = "Perplexity vs bits per weight";
    lo.x_label = "bits per weight (log scale)";
    lo.y_label = "perplexity";
    lo.log_x = true;
    page.figure({line_chart(d.tradeoff, lo), "Lower left is better. Peers are quantized with their own tools on the "
                                             "same routed-expert weights and evaluated with the same protocol."});
  }
  if (!d.stage_seconds.empty()) {
    page.subsection("Time per stage");
    std::vector<std::string> cats;
    BarSeries secs{"seconds", {}};
    Table t;
    t.header = {"stage", "seconds"};
    double total = 0;
    for (const auto& [name, s] : d.stage_seconds) {
      cats.push_back(name);
      secs.values.push_back(s);
      t.rows.push_back({Cell(name), Cell(s, 3)});
      total += s;
    }
    t.rows.push_back({Cell("total"), Cell(total, 3)});
    BarChartOptions bo;
    bo.title = "Wall time per stage";
    bo.y_label = "seconds";
    bo.width = 520;
    bo.height = 260;
    page.figure({bar_chart(cats, {secs}, bo), ""});
    page.table(t);
  }
}

void add_quality_curve(Page& page, const std::vector<QualityPoint>& points, double reference_ppl) {
  if (points.empty()) fail("quality curve: no points");
  std::vector<Series> series;
  for (const auto& p : points) {
    auto it = std::find_if(series.begin(), series.end(), [&](const Series& s) { return s.name == p.series; });
    if (it == series.end()) {
      series.push_back(Series{p.series, {}, true, true, Series::Marker(series.size() % 3)});
      it = series.end() - 1;
    }
    it->points.push_back({p.bits, p.ppl, p.label});
  }
  for (auto& s : series) {
    std::stable_sort(s.points.begin(), s.points.end(), [](const Point& a, const Point& b) { return a.x < b.x; });
    s.line = s.points.size() > 1;
  }
  page.section("Perplexity vs bits per weight");
  LineChartOptions lo;
  lo.title = "Perplexity vs bits per weight";
  lo.x_label = "bits per weight (log scale)";
  lo.y_label = "perplexity";
  lo.log_x = true;
  lo.width = 860;
  lo.height = 480;
  page.figure({line_chart(series, lo), "Lower left is better."});
  Table t;
  t.header = {"series", "model", "bits/weight", "perplexity"};
  if (reference_ppl > 0) t.header.push_back("vs reference");
  std::vector<const QualityPoint*> sorted;
  for (const auto& p : points) sorted.push_back(&p);
  std::stable_sort(sorted.begin(), sorted.end(), [](auto* a, auto* b) { return a->bits < b->bits; });
  for (const auto* p : sorted) {
    std::vector<Cell> row{Cell(p->series), Cell(p->label), Cell(p->bits, 4), Cell(p->ppl, 5)};
    if (reference_ppl > 0) row.push_back(Cell::number_text(percent_change(reference_ppl, p->ppl)));
    t.rows.push_back(std::move(row));
  }
  page.table(t);
}

std::vector<QualityPoint> parse_quality_csv(const std::string& text, const std::string& what) {
  std::vector<QualityPoint> out;
  std::istringstream in(text);
  std::string line;
  int n = 0;
  bool header = false;
  while (std::getline(in, line)) {
    ++n;
    if (!line.empty() && line.back() == '\r') line.pop_back();
    if (line.empty() || line[0] == '#') continue;
    std::vector<std::string> f;
    std::string cell;
    std::istringstream ls(line);
    while (std::getline(ls, cell, ',')) f.push_back(cell);
    if (!header) {
      if (f != std::vector<std::string>{"series", "label", "bits", "ppl"})
        fail(what, ": line ", n, ": the header must be 'series,label,bits,ppl'");
      header = true;
      continue;
    }
    if (f.size() != 4) fail(what, ": line ", n, ": expected 4 fields (series,label,bits,ppl), got ", f.size());
    QualityPoint p{f[0], f[1], 0, 0};
    try {
      size_t a = 0, b = 0;
      p.bits = std::stod(f[2], &a);
      p.ppl = std::stod(f[3], &b);
      if (a != f[2].size() || b != f[3].size()) throw std::invalid_argument("trailing");
    } catch (const std::exception&) {
      fail(what, ": line ", n, ": bits and ppl must be numbers, got '", f[2], "' and '", f[3], "'");
    }
    if (!(p.bits > 0) || !(p.ppl > 0) || !std::isfinite(p.bits) || !std::isfinite(p.ppl))
      fail(what, ": line ", n, ": bits and ppl must be positive and finite");
    out.push_back(std::move(p));
  }
  if (!header) fail(what, ": empty (expected the header 'series,label,bits,ppl')");
  if (out.empty()) fail(what, ": no points after the header");
  return out;
}

}  // namespace moec::report
