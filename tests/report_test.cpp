// Tests for report/: escaping, number formatting, nice ticks, palettes, chart geometry, page
// well-formedness (a small XML checker below), determinism, and an optional headless-chromium render.
#include <gtest/gtest.h>

#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <map>
#include <regex>
#include <set>
#include <string>

#include "core/error.h"
#include "core/files.h"
#include "report/report.h"
#include "report/sections.h"

using namespace moec::report;
namespace fs = std::filesystem;

namespace {

// ---- a tiny checker for the XHTML/SVG subset we emit --------------------------------------------
// Checks: tags balance and nest, attributes are name="value" with no raw '<' in values, every '&'
// starts one of the entities we emit, text has no raw '<' or '>'. <style> content is skipped.
// Returns element counts by name; on error sets *error.
std::map<std::string, int> check_xml(const std::string& s, std::string* error) {
  std::map<std::string, int> counts;
  std::vector<std::string> stack;
  auto bad = [&](size_t at, const std::string& what) {
    if (error->empty()) *error = what + " at offset " + std::to_string(at) + ": '" + s.substr(at, 60) + "'";
  };
  auto check_entities = [&](size_t b, size_t e) {
    for (size_t i = b; i < e; ++i) {
      if (s[i] == '<' || s[i] == '>') bad(i, "raw < or > in text/attribute");
      if (s[i] != '&') continue;
      static const char* ents[] = {"&amp;", "&lt;", "&gt;", "&quot;", "&#39;"};
      bool ok = false;
      for (const char* ent : ents) ok = ok || s.compare(i, std::strlen(ent), ent) == 0;
      if (!ok) bad(i, "bad entity");
    }
  };
  size_t i = 0;
  if (s.rfind("<!DOCTYPE html>", 0) == 0) i = s.find('>') + 1;
  while (i < s.size() && error->empty()) {
    size_t lt = s.find('<', i);
    if (lt == std::string::npos) lt = s.size();
    check_entities(i, lt);
    if (lt == s.size()) break;
    size_t gt = lt + 1;
    char quote = 0;
    for (; gt < s.size(); ++gt) {  // find the tag end outside quotes
      if (quote) {
        if (s[gt] == quote) quote = 0;
      } else if (s[gt] == '"') {
        quote = '"';
      } else if (s[gt] == '>') {
        break;
      }
    }
    if (gt >= s.size()) {
      bad(lt, "unterminated tag");
      break;
    }
    std::string tag = s.substr(lt + 1, gt - lt - 1);
    if (!tag.empty() && tag[0] == '/') {
      std::string name = tag.substr(1);
      if (stack.empty() || stack.back() != name) bad(lt, "mismatched </" + name + ">");
      else stack.pop_back();
      i = gt + 1;
      continue;
    }
    bool self_close = !tag.empty() && tag.back() == '/';
    if (self_close) tag.pop_back();
    static const std::regex name_re("^([a-zA-Z][a-zA-Z0-9-]*)");
    std::smatch m;
    if (!std::regex_search(tag, m, name_re)) {
      bad(lt, "bad tag name");
      break;
    }
    std::string name = m[1];
    // attributes: ( name="value")*
    std::string rest = tag.substr(name.size());
    static const std::regex attr_re(R"(^\s+[a-zA-Z][a-zA-Z0-9:_-]*="[^"<]*")");
    while (!rest.empty() && rest.find_first_not_of(" \n\t") != std::string::npos) {
      std::smatch a;
      if (!std::regex_search(rest, a, attr_re)) {
        bad(lt, "bad attribute syntax in <" + name + ">");
        break;
      }
      size_t q = a[0].str().find('"');
      size_t vb = lt + 1 + name.size() + (tag.size() - name.size() - rest.size()) + q + 1;
      check_entities(vb, vb + a[0].str().size() - q - 2);
      rest = a.suffix();
    }
    counts[name]++;
    i = gt + 1;
    if (self_close) continue;
    if (name == "style") {  // raw text element
      size_t end = s.find("</style>", i);
      if (end == std::string::npos) bad(lt, "unterminated <style>");
      i = end + 8;
      continue;
    }
    stack.push_back(name);
  }
  if (error->empty() && !stack.empty()) *error = "unclosed <" + stack.back() + ">";
  return counts;
}

void expect_well_formed(const std::string& doc, const std::string& what) {
  std::string err;
  check_xml(doc, &err);
  EXPECT_EQ(err, "") << what;
}

size_t count_of(const std::string& s, const std::string& needle) {
  size_t c = 0;
  for (size_t p = s.find(needle); p != std::string::npos; p = s.find(needle, p + 1)) ++c;
  return c;
}

// The fill of the <rect> whose tooltip is exactly `tip` (escaped as in the output).
std::string fill_of_cell(const std::string& svg, const std::string& tip) {
  size_t t = svg.find("<title>" + escape(tip) + "</title>");
  if (t == std::string::npos) return "missing";
  size_t r = svg.rfind("<rect", t);
  size_t f = svg.find("fill=\"", r);
  return svg.substr(f + 6, 7);
}

// Numeric value of attribute `name` in the element starting at `from`.
double attr(const std::string& s, size_t from, const std::string& name) {
  size_t p = s.find(" " + name + "=\"", from);
  return std::stod(s.substr(p + name.size() + 3));
}

// All bars (rects with a tooltip) in document order: {y, height}.
std::vector<std::pair<double, double>> bars(const std::string& svg) {
  std::vector<std::pair<double, double>> out;
  for (size_t p = svg.find("<rect"); p != std::string::npos; p = svg.find("<rect", p + 1)) {
    size_t end = svg.find('>', p);
    if (svg.compare(end + 1, 7, "<title>") != 0) continue;
    out.push_back({attr(svg, p, "y"), attr(svg, p, "height")});
  }
  return out;
}

}  // namespace

// ---------------------------------------------------------------- text

TEST(Report, EscapesMarkupCharacters) {
  EXPECT_EQ(escape("<a href=\"x\">&'</a>"), "&lt;a href=&quot;x&quot;&gt;&amp;&#39;&lt;/a&gt;");
  EXPECT_EQ(escape("plain text"), "plain text");
  EXPECT_EQ(escape("a\x01" "b\x7f" "c\td\n"), "abc\td\n");  // controls dropped, tab/newline kept
}

TEST(Report, EscapeKeepsValidUtf8AndReplacesInvalid) {
  const std::string ok = "caf\xc3\xa9 \xe2\x9c\x93 \xf0\x9f\x98\x80";  // é ✓ 😀
  EXPECT_EQ(escape(ok), ok);
  const std::string fffd = "\xef\xbf\xbd";
  EXPECT_EQ(escape("a\xff" "b"), "a" + fffd + "b");
  EXPECT_EQ(escape("\xc3"), fffd);                        // truncated sequence
  EXPECT_EQ(escape("\xc0\xaf"), fffd + fffd);             // overlong '/'
  EXPECT_EQ(escape("\xed\xa0\x80"), fffd + fffd + fffd);  // UTF-16 surrogate
}

TEST(Report, FormatsNumbersWithSignificantDigits) {
  EXPECT_EQ(format_number(3.07204, 4), "3.072");
  EXPECT_EQ(format_number(3.07204, 5), "3.072");  // trailing zero trimmed
  EXPECT_EQ(format_number(0.5), "0.5");
  EXPECT_EQ(format_number(1234.5678, 4), "1235");
  EXPECT_EQ(format_number(-0.0012345, 3), "-0.00123");
  EXPECT_EQ(format_number(9.99996, 4), "10");
  EXPECT_EQ(format_number(12582912), "12,582,912");
  EXPECT_EQ(format_number(12582912, 4, false), "12582912");
  EXPECT_EQ(format_number(1234), "1234");
  EXPECT_EQ(format_number(0), "0");
  EXPECT_EQ(format_number(1.5e-5), "1.5e-5");
  EXPECT_EQ(format_number(1.23456e20, 4), "1.235e20");
  EXPECT_EQ(format_number(2345678.9, 3), "2.35e6");
  EXPECT_EQ(format_number(NAN), "n/a");
  EXPECT_EQ(format_number(-INFINITY), "-inf");
}

// ---------------------------------------------------------------- ticks

// Independent checks of the nice-tick contract for one range.
void check_ticks(double lo, double hi) {
  SCOPED_TRACE("range [" + std::to_string(lo) + ", " + std::to_string(hi) + "]");
  Ticks t = nice_ticks(lo, hi);
  double a = std::min(lo, hi), b = std::max(lo, hi);
  ASSERT_GE(t.values.size(), 2u);
  EXPECT_LE(t.values.size(), 12u);
  EXPECT_EQ(t.values.size(), t.labels.size());
  EXPECT_LE(t.lo, a);
  EXPECT_GE(t.hi, b);
  if (b - a > 1e-12 * std::max(std::fabs(a), std::fabs(b))) {
    EXPECT_LE(t.hi - t.lo, 5 * (b - a)) << "domain far wider than data";
  }
  // step = {1,2,5} x 10^k
  double e = std::floor(std::log10(t.step));
  double m = t.step / std::pow(10.0, e);
  EXPECT_TRUE(std::fabs(m - 1) < 1e-9 || std::fabs(m - 2) < 1e-9 || std::fabs(m - 5) < 1e-9) << t.step;
  for (size_t i = 1; i < t.values.size(); ++i) EXPECT_NEAR(t.values[i] - t.values[i - 1], t.step, t.step * 1e-6);
  std::set<std::string> distinct(t.labels.begin(), t.labels.end());
  EXPECT_EQ(distinct.size(), t.labels.size()) << "tick labels must be distinguishable";
  for (size_t i = 0; i < t.values.size(); ++i) {
    if (t.values[i] == 0) {
      EXPECT_EQ(t.labels[i], "0");
    }
    EXPECT_NE(t.labels[i].find_first_not_of("-0123456789.e"), 0u);
    EXPECT_NEAR(std::stod(t.labels[i]), t.values[i], t.step * 1e-6) << t.labels[i];
  }
}

TEST(Report, NiceTicksEdgeCases) {
  check_ticks(0, 1);
  check_ticks(0, 0);       // constant zero
  check_ticks(5, 5);       // constant
  check_ticks(-3, -3);     // constant negative
  check_ticks(-7, -2);     // negative
  check_ticks(-3, 8);      // crossing zero
  check_ticks(8, -3);      // reversed
  check_ticks(1, 1 + 1e-9);  // tiny range at large offset
  check_ticks(1, 1 + 1e-14);  // below double resolution: treated as constant
  check_ticks(1e-9, 3e-9);    // tiny magnitudes
  check_ticks(0, 3.2e9);      // huge
  EXPECT_EQ(nice_ticks(0, 3.2e9).labels[1], "5e8");
  check_ticks(-2.5e7, 1.25e7);
  check_ticks(3.0720, 8.7898);
  check_ticks(0.0007, 0.0013);
  uint64_t s = 7;  // a few hundred pseudo-random ranges
  for (int i = 0; i < 300; ++i) {
    s = s * 6364136223846793005ull + 1442695040888963407ull;
    double u = double(s >> 11) * 0x1.0p-53;
    s = s * 6364136223846793005ull + 1442695040888963407ull;
    double w = double(s >> 11) * 0x1.0p-53;
    double scale = std::pow(10.0, std::floor(u * 12) - 6);
    check_ticks((u - 0.5) * scale * 10, (u - 0.5) * scale * 10 + w * scale);
  }
  // Crossing zero includes zero as a tick.
  Ticks t = nice_ticks(-3, 8);
  EXPECT_NE(std::find(t.values.begin(), t.values.end(), 0.0), t.values.end());
  EXPECT_THROW(nice_ticks(NAN, 1), moec::Error);
  EXPECT_THROW(nice_ticks(0, INFINITY), moec::Error);
}

TEST(Report, LogTicks) {
  Ticks t = log_ticks(1.562, 16);
  EXPECT_DOUBLE_EQ(t.lo, 1);
  EXPECT_DOUBLE_EQ(t.hi, 20);
  EXPECT_EQ(t.labels, (std::vector<std::string>{"1", "2", "5", "10", "20"}));
  Ticks w = log_ticks(3e-4, 2e5);  // many decades: powers of ten only
  EXPECT_EQ(w.labels, (std::vector<std::string>{"1e-4", "0.001", "0.01", "0.1", "1", "10", "100", "1000", "1e4", "1e5",
                                                "1e6"}));
  Ticks c = log_ticks(7, 7);  // constant
  EXPECT_LT(c.lo, 7);
  EXPECT_GT(c.hi, 7);
  EXPECT_THROW(log_ticks(0, 10), moec::Error);
  EXPECT_THROW(log_ticks(-1, 10), moec::Error);
}

// ---------------------------------------------------------------- colours and charts

TEST(Report, PaletteEndpoints) {
  // Published viridis endpoints and ColorBrewer RdBu ends/middle.
  EXPECT_EQ(viridis(0).hex(), "#440154");
  EXPECT_EQ(viridis(1).hex(), "#fde725");
  EXPECT_EQ(viridis(-3).hex(), "#440154");  // clamped
  EXPECT_EQ(viridis(NAN).hex(), "#440154");
  EXPECT_EQ(diverging(0).hex(), "#2166ac");
  EXPECT_EQ(diverging(0.5).hex(), "#f7f7f7");
  EXPECT_EQ(diverging(1).hex(), "#b2182b");
  // Sequential palette gets lighter monotonically (cold cells distinct from hot).
  double prev = -1;
  for (int i = 0; i <= 20; ++i) {
    Rgb c = viridis(i / 20.0);
    double lum = 0.2126 * c.r + 0.7152 * c.g + 0.0722 * c.b;
    EXPECT_GT(lum, prev);
    prev = lum;
  }
}

TEST(Report, HeatmapColoursMinAndMaxCells) {
  std::vector<std::vector<double>> m = {{0.3, 0.05, 0.2}, {0.1, 0.9, 0.4}};
  HeatmapOptions o;
  o.title = "usage";
  o.value_label = "share";
  o.row_axis = "layer";
  o.col_axis = "expert";
  std::string svg = heatmap(m, {"0", "1"}, {"a", "b", "c"}, o);
  expect_well_formed(svg, "heatmap");
  EXPECT_EQ(fill_of_cell(svg, "layer 0, expert b: share 0.05"), "#440154");  // min -> darkest
  EXPECT_EQ(fill_of_cell(svg, "layer 1, expert b: share 0.9"), "#fde725");   // max -> brightest
  EXPECT_EQ(count_of(svg, "</title></rect>"), 6u);

  // Diverging: symmetric around 0, so the extreme of larger magnitude saturates, 0 is neutral.
  o.scale = ColorScale::Diverging;
  std::string d = heatmap({{-0.5, 0, 1.0}}, {"r"}, {"x", "y", "z"}, o);
  EXPECT_EQ(fill_of_cell(d, "layer r, expert z: share 1"), "#b2182b");
  EXPECT_EQ(fill_of_cell(d, "layer r, expert y: share 0"), "#f7f7f7");
  EXPECT_NE(fill_of_cell(d, "layer r, expert x: share -0.5"), "#2166ac");  // only half-way to blue

  // Non-finite cells: grey, counted in a note, excluded from the colour range.
  std::string n = heatmap({{1, NAN}, {INFINITY, 3}}, {"p", "q"}, {"u", "v"}, HeatmapOptions{});
  expect_well_formed(n, "heatmap with NaN");
  EXPECT_NE(n.find("2 non-finite cells are shown grey."), std::string::npos);
  EXPECT_EQ(fill_of_cell(n, "p, v: value n/a"), "#c8c8c8");
  EXPECT_EQ(fill_of_cell(n, "q, v: value 3"), "#fde725");

  EXPECT_THROW(heatmap({{1, 2}}, {"r"}, {"only one"}, o), moec::Error);
  EXPECT_THROW(heatmap({{1}}, {"r", "s"}, {"c"}, o), moec::Error);
}

TEST(Report, BarHeightsFollowTheScale) {
  BarChartOptions o;
  o.title = "bars";
  std::string lin = bar_chart({"a", "b", "c"}, {{"s", {1, 2, 4}}}, o);
  expect_well_formed(lin, "bar chart");
  auto b = bars(lin);
  ASSERT_EQ(b.size(), 3u);
  EXPECT_NEAR(b[1].second / b[0].second, 2, 0.02);
  EXPECT_NEAR(b[2].second / b[0].second, 4, 0.04);
  EXPECT_NEAR(b[0].first + b[0].second, b[2].first + b[2].second, 0.01);  // common baseline

  // Log scale: values 10, 100, 1000 -> tops equally spaced.
  o.log_y = true;
  std::string lg = bar_chart({"a", "b", "c", "d"}, {{"s", {10, 100, 1000, -1}}}, o);
  expect_well_formed(lg, "log bar chart");
  auto l = bars(lg);
  ASSERT_EQ(l.size(), 3u);
  EXPECT_NEAR(l[0].first - l[1].first, l[1].first - l[2].first, 0.02);
  EXPECT_NE(lg.find("1 value &lt;= 0 not shown on the log axis."), std::string::npos);

  // Grouped with a NaN: the NaN bar is left out and noted; negative bars go below the baseline.
  o.log_y = false;
  std::string g = bar_chart({"a", "b"}, {{"x", {1, NAN}}, {"y", {-2, 3}}}, o);
  expect_well_formed(g, "grouped bar chart");
  EXPECT_EQ(bars(g).size(), 3u);
  EXPECT_NE(g.find("1 non-finite value not shown."), std::string::npos);
  EXPECT_THROW(bar_chart({"a"}, {{"x", {1, 2}}}, o), moec::Error);
}

TEST(Report, LineChartLogXPlacesDecadesEvenly) {
  LineChartOptions o;
  o.title = "ppl vs bits";
  o.x_label = "bits";
  o.y_label = "ppl";
  o.log_x = true;
  Series s{"s", {{1, 1, ""}, {10, 2, ""}, {100, 3, ""}}, true, false, Series::Marker::Circle};
  Series peers{"peers <&>", {{2, 2.5, "IQ1_S"}, {5, NAN, "bad"}}, false, true, Series::Marker::Diamond};
  std::string svg = line_chart({s, peers}, o);
  expect_well_formed(svg, "line chart");
  std::vector<double> xs;
  for (size_t p = svg.find("<circle"); p != std::string::npos; p = svg.find("<circle", p + 1))
    if (svg.compare(svg.find('>', p) + 1, 7, "<title>") == 0) xs.push_back(attr(svg, p, "cx"));
  ASSERT_EQ(xs.size(), 3u);
  EXPECT_NEAR(xs[1] - xs[0], xs[2] - xs[1], 0.02);
  EXPECT_EQ(count_of(svg, "<polyline"), 1u);
  EXPECT_NE(svg.find(">IQ1_S</text>"), std::string::npos);
  EXPECT_EQ(svg.find(">bad</text>"), std::string::npos);
  EXPECT_NE(svg.find("peers &lt;&amp;&gt;"), std::string::npos);
  EXPECT_NE(svg.find("1 non-finite point not shown."), std::string::npos);
}

TEST(Report, QualityCurveFromCsv) {
  const std::string csv =
      "# comment\nseries,label,bits,ppl\nmoec GPTQ,int4,4.25,3.07\nmoec GPTQ,int2,2.25,3.17\nllama.cpp,IQ1_S,1.5625,3.2167\n"
      "moec GPTQ,ternary,1.15,3.29\r\n";
  auto pts = parse_quality_csv(csv, "p.csv");
  ASSERT_EQ(pts.size(), 4u);
  EXPECT_EQ(pts[2].series, "llama.cpp");
  EXPECT_EQ(pts[2].label, "IQ1_S");
  EXPECT_DOUBLE_EQ(pts[3].bits, 1.15);
  EXPECT_DOUBLE_EQ(pts[3].ppl, 3.29);
  Page page("curve");
  add_quality_curve(page, pts, 3.072);
  const std::string html = page.html();
  expect_well_formed(html, "quality page");
  EXPECT_EQ(count_of(html, "<polyline"), 1u);  // the 3-point series; the single peer point is a marker only
  // The table lists points by bits: ternary first, int4 last, with the change vs the reference.
  const size_t table = html.find("<table");
  ASSERT_NE(table, std::string::npos);
  EXPECT_LT(html.find(">ternary<", table), html.find(">IQ1_S<", table));
  EXPECT_LT(html.find(">IQ1_S<", table), html.find(">int4<", table));
  EXPECT_NE(html.find(">int4<", table), std::string::npos);
  EXPECT_NE(html.find("+7.1%"), std::string::npos);  // 3.29 vs 3.072
  auto error_of = [](const std::string& text) {
    try {
      parse_quality_csv(text, "p.csv");
    } catch (const moec::Error& e) {
      return std::string(e.what());
    }
    return std::string("no error");
  };
  EXPECT_NE(error_of("a,b\n").find("header"), std::string::npos);
  EXPECT_NE(error_of("series,label,bits,ppl\nx,y,1\n").find("line 2"), std::string::npos);
  EXPECT_NE(error_of("series,label,bits,ppl\nx,y,one,2\n").find("numbers"), std::string::npos);
  EXPECT_NE(error_of("series,label,bits,ppl\nx,y,-1,2\n").find("positive"), std::string::npos);
  EXPECT_NE(error_of("series,label,bits,ppl\n").find("no points"), std::string::npos);
}

// ---------------------------------------------------------------- page

TEST(Report, PageEscapesEverythingAndIsWellFormed) {
  const std::string evil = "<script>alert(\"x&y\")</script>'";
  Page p(evil);
  p.subtitle(evil).section(evil).subsection(evil).paragraph(evil).note(evil).pre(evil);
  p.key_values({{evil, evil}});
  Table t;
  t.caption = evil;
  t.header = {evil, "n"};
  t.rows = {{Cell(evil), Cell(3.14159)}, {Cell("b"), Cell(12582912)}};
  p.table(t);
  HeatmapOptions ho;
  ho.title = evil;
  ho.value_label = evil;
  p.figure({heatmap({{1, 2}}, {evil}, {evil, "c"}, ho), evil});
  std::string html = p.html();
  EXPECT_EQ(html.find("<script"), std::string::npos);
  EXPECT_EQ(html.find("alert(\"x"), std::string::npos);
  EXPECT_NE(html.find("&lt;script&gt;alert(&quot;x&amp;y&quot;)&lt;/script&gt;&#39;"), std::string::npos);
  EXPECT_NE(html.find("<td class=\"num\">3.142</td>"), std::string::npos);
  EXPECT_NE(html.find("<td class=\"num\">12,582,912</td>"), std::string::npos);
  expect_well_formed(html, "page");
  // Self-contained: nothing is fetched.
  EXPECT_EQ(html.find("src="), std::string::npos);
  EXPECT_EQ(html.find("http://", html.find("<body>")), html.find("http://www.w3.org/2000/svg"));
  EXPECT_EQ(html.find("https://"), std::string::npos);
  EXPECT_EQ(html.find("@import"), std::string::npos);

  Table bad;
  bad.caption = "sizes";
  bad.header = {"a", "b"};
  bad.rows = {{Cell("only one")}};
  try {
    p.table(bad);
    FAIL() << "expected moec::Error";
  } catch (const moec::Error& e) {
    EXPECT_NE(std::string(e.what()).find("sizes"), std::string::npos);
  }
}

TEST(Report, DemoPageIsDeterministicWellFormedAndWritesAtomically) {
  std::string a = demo_page().html(), b = demo_page().html();
  EXPECT_EQ(a, b);
  std::string err;
  auto counts = check_xml(a, &err);
  EXPECT_EQ(err, "");
  // 1 usage + 2 domain diffs + 4 co-activation + 1 missing-cells heatmaps; 4 importance + sizes + bpw + error +
  // time + log bars; tradeoff + constant line charts.
  EXPECT_EQ(counts["svg"], 8 + 9 + 2 + 2);  // + the scale check (big heatmap and 64 bars)
  EXPECT_EQ(counts["h2"], 3);
  EXPECT_GE(counts["table"], 5);

  fs::path dir = fs::path(MOEC_BINARY_DIR) / "report_test_tmp";
  fs::create_directories(dir);
  fs::path out = dir / "demo.html";
  demo_page().write(out);
  EXPECT_EQ(moec::read_file(out), a);
  for (const auto& e : fs::directory_iterator(dir))
    EXPECT_EQ(e.path().filename().string().find(".tmp"), std::string::npos) << "temp file left behind";
}

// ---------------------------------------------------------------- optional render with chromium

namespace {
std::string find_chromium() {
  for (const char* name : {"chromium", "chromium-browser", "google-chrome"}) {
    std::string cmd = std::string("command -v ") + name + " >/dev/null 2>&1";
    if (std::system(cmd.c_str()) == 0) return name;
  }
  return "";
}

bool png_size(const fs::path& p, uint32_t* w, uint32_t* h) {
  std::string s = moec::read_file(p);
  if (s.size() < 24 || s.compare(0, 8, "\x89PNG\r\n\x1a\n") != 0) return false;
  auto be32 = [&](size_t o) {
    return uint32_t(uint8_t(s[o])) << 24 | uint32_t(uint8_t(s[o + 1])) << 16 | uint32_t(uint8_t(s[o + 2])) << 8 |
           uint32_t(uint8_t(s[o + 3]));
  };
  *w = be32(16);
  *h = be32(20);
  return true;
}
}  // namespace

TEST(Report, RendersInHeadlessChromium) {
  std::string chromium = find_chromium();
  if (chromium.empty()) GTEST_SKIP() << "chromium not installed (apt-get install chromium); render check skipped";
  // Left in the build tree so scripts/render_check.sh (and people) can look at it.
  fs::path dir = fs::path(MOEC_BINARY_DIR) / "report_render";
  fs::create_directories(dir);
  fs::path html = dir / "demo.html", png = dir / "demo.png", dom = dir / "demo.dom.html";
  fs::remove(png);
  std::string page = demo_page().html();
  moec::write_file_atomic(html, page);
  fs::path profile = dir / "chromium-profile";
  fs::remove_all(profile);
  const std::string flags = " --headless --no-sandbox --disable-gpu --disable-quic --no-first-run"
                            " --disable-background-networking --disable-component-update --disable-sync"
                            " --user-data-dir=" + profile.string();
  std::string shot = "timeout 90 " + chromium + flags + " --hide-scrollbars --screenshot=" + png.string() +
                     " --window-size=1200,2000 file://" + html.string() + " >" + (dir / "chromium.log").string() +
                     " 2>&1";
  int rc = std::system(shot.c_str());
  ASSERT_EQ(rc, 0) << shot << "\nsee " << (dir / "chromium.log");
  uint32_t w = 0, h = 0;
  ASSERT_TRUE(png_size(png, &w, &h)) << "not a PNG: " << png;
  EXPECT_EQ(w, 1200u);
  EXPECT_EQ(h, 2000u);
  EXPECT_GT(fs::file_size(png), 50'000u) << "suspiciously small screenshot (blank page?)";

  std::string dump = "timeout 90 " + chromium + flags + " --dump-dom file://" + html.string() + " >" + dom.string() +
                     " 2>" + (dir / "chromium-dom.log").string();
  ASSERT_EQ(std::system(dump.c_str()), 0) << dump;
  std::string d = moec::read_file(dom);
  // The browser parsed every chart as SVG (not as text).
  EXPECT_EQ(count_of(d, "<svg "), count_of(page, "<svg "));
  EXPECT_EQ(count_of(d, "<rect "), count_of(page, "<rect "));
  EXPECT_EQ(count_of(d, "<polyline "), count_of(page, "<polyline "));
  EXPECT_NE(d.find("Perplexity vs bits per weight"), std::string::npos);
  fs::remove_all(profile);
}
