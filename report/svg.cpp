// Inline SVG charts: axes with nice ticks, palettes, heatmap, grouped bars, line/scatter charts.
// Everything is a pure function of its arguments; coordinates are printed with to_chars (no locale).
#include <algorithm>
#include <array>
#include <charconv>
#include <cmath>

#include "core/error.h"
#include "report/report.h"

namespace moec::report {

namespace {

constexpr double kFont = 12;  // px, tick and label text
constexpr const char* kFontFamily = "system-ui, -apple-system, Segoe UI, Roboto, DejaVu Sans, Arial, sans-serif";
constexpr const char* kInk = "#1f2328";
constexpr const char* kMuted = "#57606a";
constexpr const char* kGrid = "#e6e9ed";
constexpr const char* kMissing = "#c8c8c8";

// Coordinate: at most 2 decimals, trailing zeros trimmed, never "-0".
std::string n(double v) {
  char buf[64];
  auto r = std::to_chars(buf, buf + sizeof buf, std::round(v * 100) / 100, std::chars_format::fixed, 2);
  std::string s(buf, r.ptr);
  while (s.back() == '0') s.pop_back();
  if (s.back() == '.') s.pop_back();
  return s == "-0" ? "0" : s;
}

size_t utf8_length(std::string_view s) {
  size_t count = 0;
  for (unsigned char c : s) count += (c & 0xc0) != 0x80;
  return count;
}

// Rough rendered width of sans-serif text: enough to keep labels from colliding.
double text_width(std::string_view s, double font = kFont) { return 0.6 * font * double(utf8_length(s)); }

std::string text(double x, double y, std::string_view s, std::string_view attrs = "") {
  std::string out = "<text x=\"" + n(x) + "\" y=\"" + n(y) + "\"";
  if (!attrs.empty()) out += " " + std::string(attrs);
  return out + ">" + escape(s) + "</text>\n";
}

std::string line(double x1, double y1, double x2, double y2, std::string_view stroke, double width = 1) {
  return "<line x1=\"" + n(x1) + "\" y1=\"" + n(y1) + "\" x2=\"" + n(x2) + "\" y2=\"" + n(y2) + "\" stroke=\"" +
         std::string(stroke) + "\" stroke-width=\"" + n(width) + "\"/>\n";
}

std::string rect(double x, double y, double w, double h, std::string_view fill, std::string_view extra = "") {
  std::string out = "<rect x=\"" + n(x) + "\" y=\"" + n(y) + "\" width=\"" + n(w) + "\" height=\"" + n(h) +
                    "\" fill=\"" + std::string(fill) + "\"";
  if (!extra.empty()) out += " " + std::string(extra);
  return out + "/>\n";
}

// Root element; `title` doubles as the accessible name.
std::string svg_open(double w, double h, std::string_view title) {
  std::string out = "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"" + n(w) + "\" height=\"" + n(h) +
                    "\" viewBox=\"0 0 " + n(w) + " " + n(h) + "\" role=\"img\" font-family=\"" + kFontFamily +
                    "\" font-size=\"" + n(kFont) + "\">\n";
  out += "<title>" + escape(title) + "</title>\n";
  out += rect(0, 0, w, h, "#ffffff");
  return out;
}

std::string chart_title(double x, std::string_view title) {
  if (title.empty()) return "";
  return text(x, 18, title, "font-size=\"14\" font-weight=\"600\" fill=\"" + std::string(kInk) + "\"");
}

// Scientific notation with `sig` significant digits, trailing zeros trimmed: 2.5e8, 1e-4.
std::string sci(double v, int sig) {
  char buf[64];
  auto r = std::to_chars(buf, buf + sizeof buf, v, std::chars_format::scientific, std::clamp(sig, 1, 17) - 1);
  std::string m(buf, r.ptr);
  size_t e = m.find('e');
  std::string mant = m.substr(0, e);
  if (mant.find('.') != std::string::npos) {
    while (mant.back() == '0') mant.pop_back();
    if (mant.back() == '.') mant.pop_back();
  }
  return mant + "e" + std::to_string(std::stoi(m.substr(e + 1)));
}

// Label for a tick value: plain decimals matching the step, scientific for very large/small values.
std::string tick_label(double v, double step, double maxabs) {
  if (v == 0) return "0";
  if (maxabs >= 1e6 || maxabs < 1e-3) {
    int sig = std::clamp(int(std::floor(std::log10(std::fabs(v)))) - int(std::floor(std::log10(step) + 1e-9)) + 1, 1, 17);
    return sci(v, sig);
  }
  int decimals = std::max(0, -int(std::floor(std::log10(step) + 1e-9)));
  char buf[64];
  auto r = std::to_chars(buf, buf + sizeof buf, v, std::chars_format::fixed, std::min(decimals, 17));
  return std::string(buf, r.ptr);
}

double nice_number(double x, bool round) {
  double e = std::floor(std::log10(x));
  double f = x / std::pow(10.0, e);
  double nf;
  if (round)
    nf = f < 1.5 ? 1 : f < 3 ? 2 : f < 7 ? 5 : 10;
  else
    nf = f <= 1 ? 1 : f <= 2 ? 2 : f <= 5 ? 5 : 10;
  return nf * std::pow(10.0, e);
}

// Snaps x > 0 to the nearest 1-2-5 x 10^k value below (up=false) or above (up=true).
double snap125(double x, bool up) {
  double e = std::floor(std::log10(x));
  double p = std::pow(10.0, e);
  double m = x / p;
  static const double steps[] = {1, 2, 5, 10};
  if (up) {
    for (double s : steps)
      if (s >= m * (1 - 1e-9)) return s * p;
    return 10 * p;
  }
  double best = 1;
  for (double s : steps)
    if (s <= m * (1 + 1e-9)) best = s;
  return best * p;
}

// A linear or logarithmic mapping from data to pixels along one axis.
struct Axis {
  Ticks ticks;
  bool log = false;
  double p0 = 0, p1 = 1;  // pixel positions of ticks.lo and ticks.hi
  double map(double v) const {
    double t = log ? (std::log10(v) - std::log10(ticks.lo)) / (std::log10(ticks.hi) - std::log10(ticks.lo))
                   : (v - ticks.lo) / (ticks.hi - ticks.lo);
    return p0 + t * (p1 - p0);
  }
};

Axis make_axis(double lo, double hi, bool log, int target) {
  Axis a;
  a.log = log;
  a.ticks = log ? log_ticks(lo, hi) : nice_ticks(lo, hi, target);
  return a;
}

double max_label_width(const Ticks& t) {
  double w = 0;
  for (const auto& s : t.labels) w = std::max(w, text_width(s));
  return w;
}

std::string plural(size_t k, const char* one, const char* many) {
  return std::to_string(k) + " " + (k == 1 ? one : many);
}

// Luminance decides whether text on a coloured cell is dark or light.
bool is_dark(Rgb c) { return 0.2126 * c.r + 0.7152 * c.g + 0.0722 * c.b < 140; }

Rgb interpolate(const Rgb* table, size_t count, double t) {
  if (!(t >= 0)) t = 0;  // also maps NaN to 0
  if (t > 1) t = 1;
  double pos = t * double(count - 1);
  size_t i = std::min(size_t(pos), count - 2);
  double f = pos - double(i);
  auto mix = [&](uint8_t a, uint8_t b) { return uint8_t(std::lround(a + (b - a) * f)); };
  return {mix(table[i].r, table[i + 1].r), mix(table[i].g, table[i + 1].g), mix(table[i].b, table[i + 1].b)};
}

}  // namespace

// ---------------------------------------------------------------- ticks

Ticks nice_ticks(double lo, double hi, int target_count) {
  if (!std::isfinite(lo) || !std::isfinite(hi)) fail("nice_ticks: axis range [", lo, ", ", hi, "] is not finite");
  if (lo > hi) std::swap(lo, hi);
  double mag = std::max(std::fabs(lo), std::fabs(hi));
  if (hi - lo <= 1e-12 * mag || hi == lo) {  // constant data: widen around the value
    if (mag == 0) {
      lo = 0;
      hi = 1;
    } else {
      lo -= 0.1 * mag;
      hi += 0.1 * mag;
    }
  }
  target_count = std::max(2, target_count);
  double range = nice_number(hi - lo, false);
  double step = nice_number(range / (target_count - 1), true);
  double i0 = std::floor(lo / step + 1e-9), i1 = std::ceil(hi / step - 1e-9);
  if (i1 - i0 > 1000) fail("nice_ticks: too many ticks for [", lo, ", ", hi, "]");
  Ticks t;
  t.step = step;
  for (double i = i0; i <= i1; ++i) {
    double v = i * step;
    if (std::fabs(v) < step * 1e-9) v = 0;
    t.values.push_back(v);
  }
  t.lo = t.values.front();
  t.hi = t.values.back();
  double maxabs = std::max(std::fabs(t.lo), std::fabs(t.hi));
  for (double v : t.values) t.labels.push_back(tick_label(v, step, maxabs));
  return t;
}

Ticks log_ticks(double lo, double hi) {
  if (!std::isfinite(lo) || !std::isfinite(hi) || lo <= 0 || hi <= 0)
    fail("log_ticks: axis range [", lo, ", ", hi, "] must be finite and positive");
  if (lo > hi) std::swap(lo, hi);
  if (hi / lo < 1 + 1e-9) {
    lo /= 2;
    hi *= 2;
  }
  Ticks t;
  t.step = 0;
  bool dense = std::log10(hi / lo) <= 3.01;
  if (dense) {
    t.lo = snap125(lo, false);
    t.hi = snap125(hi, true);
    for (double e = std::floor(std::log10(t.lo)); e <= std::ceil(std::log10(t.hi)); ++e)
      for (double m : {1.0, 2.0, 5.0}) {
        double v = m * std::pow(10.0, e);
        if (v >= t.lo * (1 - 1e-9) && v <= t.hi * (1 + 1e-9)) t.values.push_back(v);
      }
  } else {
    double e0 = std::floor(std::log10(lo) + 1e-9), e1 = std::ceil(std::log10(hi) - 1e-9);
    for (double e = e0; e <= e1; ++e) t.values.push_back(std::pow(10.0, e));
    t.lo = t.values.front();
    t.hi = t.values.back();
  }
  for (double v : t.values) t.labels.push_back(v >= 1e4 || v < 1e-3 ? sci(v, 3) : format_number(v, 3, false));
  return t;
}

// ---------------------------------------------------------------- colours

std::string Rgb::hex() const {
  static const char* d = "0123456789abcdef";
  std::string s = "#";
  for (uint8_t c : {r, g, b}) {
    s += d[c >> 4];
    s += d[c & 15];
  }
  return s;
}

Rgb viridis(double t) {
  // Viridis sampled at 11 evenly spaced points; linear interpolation between them.
  static const Rgb table[] = {{0x44, 0x01, 0x54}, {0x48, 0x24, 0x75}, {0x41, 0x44, 0x87}, {0x35, 0x5f, 0x8d},
                              {0x2a, 0x78, 0x8e}, {0x21, 0x91, 0x8c}, {0x22, 0xa8, 0x84}, {0x44, 0xbf, 0x70},
                              {0x7a, 0xd1, 0x51}, {0xbd, 0xdf, 0x26}, {0xfd, 0xe7, 0x25}};
  return interpolate(table, std::size(table), t);
}

Rgb diverging(double t) {
  // Blue - white - red (ColorBrewer RdBu, 7 classes, reversed so that positive is red).
  static const Rgb table[] = {{0x21, 0x66, 0xac}, {0x67, 0xa9, 0xcf}, {0xd1, 0xe5, 0xf0}, {0xf7, 0xf7, 0xf7},
                              {0xfd, 0xdb, 0xc7}, {0xef, 0x8a, 0x62}, {0xb2, 0x18, 0x2b}};
  return interpolate(table, std::size(table), t);
}

Rgb categorical(size_t i) {
  static const Rgb table[] = {{0x4e, 0x79, 0xa7}, {0xf2, 0x8e, 0x2b}, {0xe1, 0x57, 0x59}, {0x59, 0xa1, 0x4f},
                              {0x76, 0xb7, 0xb2}, {0xb0, 0x7a, 0xa1}, {0xed, 0xc9, 0x48}, {0x9c, 0x75, 0x5f},
                              {0xff, 0x9d, 0xa7}, {0x79, 0x70, 0x6e}};
  return table[i % std::size(table)];
}

// ---------------------------------------------------------------- heatmap

std::string heatmap(const std::vector<std::vector<double>>& m, const std::vector<std::string>& row_labels,
                    const std::vector<std::string>& col_labels, const HeatmapOptions& opt) {
  const size_t rows = m.size(), cols = col_labels.size();
  if (rows != row_labels.size())
    fail("heatmap '", opt.title, "': ", rows, " rows but ", row_labels.size(), " row labels");
  for (size_t r = 0; r < rows; ++r)
    if (m[r].size() != cols)
      fail("heatmap '", opt.title, "': row ", r, " has ", m[r].size(), " values but there are ", cols,
           " column labels");
  if (rows == 0 || cols == 0) fail("heatmap '", opt.title, "': empty matrix");

  // Colour range from finite data unless given.
  double lo = INFINITY, hi = -INFINITY;
  size_t missing = 0;
  for (const auto& row : m)
    for (double v : row) {
      if (!std::isfinite(v)) {
        ++missing;
        continue;
      }
      lo = std::min(lo, v);
      hi = std::max(hi, v);
    }
  if (missing == rows * cols) lo = hi = 0;
  if (std::isfinite(opt.vmin)) lo = opt.vmin;
  if (std::isfinite(opt.vmax)) hi = opt.vmax;
  const bool div = opt.scale == ColorScale::Diverging;
  if (div) {
    double half = std::max(std::fabs(hi - opt.center), std::fabs(lo - opt.center));
    lo = opt.center - half;
    hi = opt.center + half;
  }
  auto position = [&](double v) { return hi > lo ? (v - lo) / (hi - lo) : 0.5; };
  auto colour = [&](double t) { return div ? diverging(t) : viridis(t); };

  // Layout: cells sized to keep the map within ~600 x 420 px, labels thinned when cells are small.
  const double cw = std::clamp(std::floor(600.0 / double(cols)), 8.0, 44.0);
  const double ch = std::clamp(std::floor(420.0 / double(rows)), 8.0, 26.0);
  double row_label_w = 0, col_label_w = 0;
  for (const auto& s : row_labels) row_label_w = std::max(row_label_w, text_width(s));
  for (const auto& s : col_labels) col_label_w = std::max(col_label_w, text_width(s));
  auto thin = [](double cell, double need) {
    for (size_t k : {1, 2, 4, 5, 8, 10, 16, 20, 25, 32, 50, 64, 100, 128, 200, 256, 500, 1000})
      if (cell * double(k) >= need) return k;
    return size_t(1000);
  };
  const size_t col_every = thin(cw, col_label_w + 4), row_every = thin(ch, kFont + 1);

  const double axis_title_w = opt.row_axis.empty() ? 0 : 18;
  const double x0 = 10 + axis_title_w + row_label_w + 6;
  const double y0 = (opt.title.empty() ? 8 : 30);
  const double gw = cw * double(cols), gh = ch * double(rows);
  const double legend_x = x0 + gw + 22, legend_h = std::max(gh, 120.0);
  Ticks lt = nice_ticks(lo, hi, 5);
  double legend_label_w = 0;
  for (size_t i = 0; i < lt.values.size(); ++i)
    if (lt.values[i] >= lo - 1e-12 * std::fabs(lo) && lt.values[i] <= hi + 1e-12 * std::fabs(hi))
      legend_label_w = std::max(legend_label_w, text_width(lt.labels[i]));
  double width = legend_x + 14 + 6 + legend_label_w + 10;
  width = std::max({width, legend_x + text_width(opt.value_label) + 10, 10 + text_width(opt.title, 14) + 10});
  const double col_labels_h = kFont + 6 + (opt.col_axis.empty() ? 0 : 18);
  std::string note;
  if (missing) note = plural(missing, "non-finite cell is", "non-finite cells are") + " shown grey.";
  const double height = y0 + std::max(gh + col_labels_h, legend_h + 16) + (note.empty() ? 8 : 24);

  std::string out = svg_open(width, height, opt.title.empty() ? "heatmap" : opt.title);
  out += chart_title(10, opt.title);

  // Cells, each with a tooltip.
  const bool show_text = [&] {
    if (!opt.cell_text || ch < 14) return false;
    for (const auto& row : m)
      for (double v : row)
        if (text_width(format_number(v, opt.sig), 10) + 4 > cw) return false;
    return true;
  }();
  for (size_t r = 0; r < rows; ++r)
    for (size_t c = 0; c < cols; ++c) {
      double v = m[r][c];
      bool ok = std::isfinite(v);
      Rgb fill = ok ? colour(position(v)) : Rgb{0xc8, 0xc8, 0xc8};
      double x = x0 + cw * double(c), y = y0 + ch * double(r);
      out += "<rect x=\"" + n(x) + "\" y=\"" + n(y) + "\" width=\"" + n(cw) + "\" height=\"" + n(ch) +
             "\" fill=\"" + (ok ? fill.hex() : std::string(kMissing)) + "\"><title>" +
             escape((opt.row_axis.empty() ? "" : opt.row_axis + " ") + row_labels[r] + ", " +
                    (opt.col_axis.empty() ? "" : opt.col_axis + " ") + col_labels[c] + ": " + opt.value_label +
                    " " + format_number(v, opt.sig)) +
             "</title></rect>\n";
      if (show_text && ok)
        out += text(x + cw / 2, y + ch / 2 + 3.5, format_number(v, opt.sig),
                    std::string("text-anchor=\"middle\" font-size=\"10\" fill=\"") +
                        (is_dark(fill) ? "#ffffff" : "#1f2328") + "\"");
    }
  out += rect(x0, y0, gw, gh, "none", "stroke=\"#8c959f\" stroke-width=\"0.5\"");

  // Row and column labels (thinned), axis titles.
  for (size_t r = 0; r < rows; r += row_every)
    out += text(x0 - 6, y0 + ch * (double(r) + 0.5) + 4, row_labels[r], "text-anchor=\"end\"");
  for (size_t c = 0; c < cols; c += col_every)
    out += text(x0 + cw * (double(c) + 0.5), y0 + gh + kFont + 3, col_labels[c], "text-anchor=\"middle\"");
  if (!opt.col_axis.empty())
    out += text(x0 + gw / 2, y0 + gh + kFont + 21, opt.col_axis,
                "text-anchor=\"middle\" fill=\"" + std::string(kMuted) + "\"");
  if (!opt.row_axis.empty()) {
    double cx = 10 + 9, cy = y0 + gh / 2;
    out += text(cx, cy, opt.row_axis,
                "text-anchor=\"middle\" fill=\"" + std::string(kMuted) + "\" transform=\"rotate(-90 " + n(cx) +
                    " " + n(cy) + ")\"");
  }

  // Legend: a vertical ramp of 64 steps (no gradient ids, so several charts can share a page).
  const double ly0 = y0 + 14, lh = legend_h - 14;
  out += text(legend_x, y0 + 6, opt.value_label, "fill=\"" + std::string(kMuted) + "\"");
  const int steps = 64;
  for (int i = 0; i < steps; ++i) {
    double t = (i + 0.5) / steps;
    double y = ly0 + lh * (1 - double(i + 1) / steps);
    out += rect(legend_x, y, 14, lh / steps + 0.5, colour(t).hex());
  }
  out += rect(legend_x, ly0, 14, lh, "none", "stroke=\"#8c959f\" stroke-width=\"0.5\"");
  for (size_t i = 0; i < lt.values.size(); ++i) {
    double v = lt.values[i];
    if (v < lo - 1e-12 * std::fabs(lo) || v > hi + 1e-12 * std::fabs(hi)) continue;
    double y = ly0 + lh * (1 - position(v));
    out += line(legend_x + 14, y, legend_x + 18, y, kInk);
    out += text(legend_x + 20, y + 4, lt.labels[i]);
  }
  if (!note.empty()) out += text(10, height - 8, note, "font-size=\"11\" fill=\"" + std::string(kMuted) + "\"");
  out += "</svg>\n";
  return out;
}

// ---------------------------------------------------------------- shared cartesian frame

namespace {

// Draws grid lines, ticks and tick labels for x (bottom) and y (left) axes.
std::string draw_y_axis(const Axis& y, double x_left, double x_right, const std::string& label, double label_x) {
  std::string out;
  for (size_t i = 0; i < y.ticks.values.size(); ++i) {
    double py = y.map(y.ticks.values[i]);
    out += line(x_left, py, x_right, py, kGrid);
    out += line(x_left - 4, py, x_left, py, kInk);
    out += text(x_left - 7, py + 4, y.ticks.labels[i], "text-anchor=\"end\" fill=\"" + std::string(kInk) + "\"");
  }
  out += line(x_left, y.p0, x_left, y.p1, kInk);
  if (!label.empty()) {
    double cy = (y.p0 + y.p1) / 2;
    out += text(label_x, cy, label,
                "text-anchor=\"middle\" fill=\"" + std::string(kMuted) + "\" transform=\"rotate(-90 " + n(label_x) +
                    " " + n(cy) + ")\"");
  }
  return out;
}

std::string draw_legend(const std::vector<std::string>& names, const std::vector<std::string>& swatches,
                        double x, double y, double max_x) {
  std::string out;
  double cx = x;
  for (size_t i = 0; i < names.size(); ++i) {
    double w = 18 + text_width(names[i]) + 16;
    if (cx > x && cx + w > max_x) {
      cx = x;
      y += 18;
    }
    // swatches are glyphs drawn around (0,0) inside a translate({X} {Y}) group
    std::string g = swatches[i];
    size_t p;
    while ((p = g.find("{X}")) != std::string::npos) g.replace(p, 3, n(cx + 6));
    while ((p = g.find("{Y}")) != std::string::npos) g.replace(p, 3, n(y - 4));
    out += g;
    out += text(cx + 16, y, names[i], "fill=\"" + std::string(kInk) + "\"");
    cx += w;
  }
  return out;
}

// Number of legend rows needed for `names` within `avail` pixels.
int legend_rows(const std::vector<std::string>& names, double avail) {
  if (names.empty()) return 0;
  int rows = 1;
  double cx = 0;
  for (const auto& s : names) {
    double w = 18 + text_width(s) + 16;
    if (cx > 0 && cx + w > avail) {
      ++rows;
      cx = 0;
    }
    cx += w;
  }
  return rows;
}

std::string marker(Series::Marker m, double x, double y, const std::string& fill, const std::string& tip) {
  std::string shape;
  const std::string style = "fill=\"" + fill + "\" stroke=\"#ffffff\" stroke-width=\"1\"";
  switch (m) {
    case Series::Marker::Circle:
      shape = "<circle cx=\"" + n(x) + "\" cy=\"" + n(y) + "\" r=\"4.5\" " + style;
      break;
    case Series::Marker::Square:
      shape = "<rect x=\"" + n(x - 4) + "\" y=\"" + n(y - 4) + "\" width=\"8\" height=\"8\" " + style;
      break;
    case Series::Marker::Diamond:
      shape = "<polygon points=\"" + n(x) + "," + n(y - 5.5) + " " + n(x + 5.5) + "," + n(y) + " " + n(x) + "," +
              n(y + 5.5) + " " + n(x - 5.5) + "," + n(y) + "\" " + style;
      break;
  }
  if (tip.empty()) return shape + "/>\n";
  return shape + "><title>" + escape(tip) + "</title></" +
         (m == Series::Marker::Circle ? "circle" : m == Series::Marker::Square ? "rect" : "polygon") + ">\n";
}

}  // namespace

// ---------------------------------------------------------------- bar chart

std::string bar_chart(const std::vector<std::string>& categories, const std::vector<BarSeries>& series,
                      const BarChartOptions& opt) {
  const size_t nc = categories.size(), ns = series.size();
  if (nc == 0 || ns == 0) fail("bar_chart '", opt.title, "': no categories or no series");
  for (const auto& s : series)
    if (s.values.size() != nc)
      fail("bar_chart '", opt.title, "': series '", s.name, "' has ", s.values.size(), " values for ", nc,
           " categories");

  double lo = INFINITY, hi = -INFINITY;
  size_t nonfinite = 0, nonpositive = 0;
  for (const auto& s : series)
    for (double v : s.values) {
      if (!std::isfinite(v)) {
        ++nonfinite;
        continue;
      }
      if (opt.log_y && v <= 0) {
        ++nonpositive;
        continue;
      }
      lo = std::min(lo, v);
      hi = std::max(hi, v);
    }
  if (!(lo <= hi)) lo = hi = opt.log_y ? 1 : 0;
  Axis y = opt.log_y ? make_axis(lo, hi, true, 6) : make_axis(std::min(0.0, lo), std::max(0.0, hi), false, 6);

  std::vector<std::string> names;
  for (const auto& s : series) names.push_back(s.name);
  const double W = opt.width, H = opt.height;
  const double left = 10 + (opt.y_label.empty() ? 0 : 18) + max_label_width(y.ticks) + 8;
  const double right = W - 14;
  const double plot_w = right - left, group_w = plot_w / double(nc);
  double cat_w = 0;
  for (const auto& c : categories) cat_w = std::max(cat_w, text_width(c));
  const bool rotate = cat_w + 6 > group_w;
  size_t every = 1;
  while (group_w * double(every) < kFont + 4) ++every;  // rotated labels need one line height each
  const double xlabels_h = rotate ? std::min(cat_w, 140.0) * 0.7071 + 14 : kFont + 8;
  const int lrows = ns > 1 ? legend_rows(names, W - left - 10) : 0;
  const double top = (opt.title.empty() ? 10 : 32) + 18.0 * lrows + 6;
  std::string note;
  if (nonfinite) note += plural(nonfinite, "non-finite value", "non-finite values") + " not shown. ";
  if (nonpositive) note += plural(nonpositive, "value", "values") + " <= 0 not shown on the log axis.";
  const double bottom = H - xlabels_h - (opt.x_label.empty() ? 0 : 18) - (note.empty() ? 0 : 16) - 6;
  y.p0 = bottom;
  y.p1 = top;

  std::string out = svg_open(W, H, opt.title.empty() ? "bar chart" : opt.title);
  out += chart_title(10, opt.title);
  if (ns > 1) {
    std::vector<std::string> sw;
    for (size_t i = 0; i < ns; ++i)
      sw.push_back("<g transform=\"translate({X} {Y})\">" + rect(-5, -5, 10, 10, categorical(i).hex()) + "</g>\n");
    out += draw_legend(names, sw, left, (opt.title.empty() ? 10 : 32) + 12, W - 10);
  }
  out += draw_y_axis(y, left, right, opt.y_label, 10 + 9);

  // Bars start at 0 (linear) or at the bottom of the axis (log).
  const double base = opt.log_y ? bottom : y.map(0);
  const double inner = group_w * 0.8, bar_w = inner / double(ns);
  for (size_t c = 0; c < nc; ++c) {
    double gx = left + group_w * double(c) + (group_w - inner) / 2;
    for (size_t s = 0; s < ns; ++s) {
      double v = series[s].values[c];
      if (!std::isfinite(v) || (opt.log_y && v <= 0)) continue;
      double py = y.map(v);
      double x = gx + bar_w * double(s);
      out += "<rect x=\"" + n(x) + "\" y=\"" + n(std::min(py, base)) + "\" width=\"" + n(std::max(bar_w - 1, 1.0)) +
             "\" height=\"" + n(std::fabs(base - py)) + "\" fill=\"" + categorical(s).hex() + "\"><title>" +
             escape(categories[c] + (series[s].name.empty() ? "" : " / " + series[s].name) + ": " +
                    format_number(v, opt.sig)) +
             "</title></rect>\n";
      std::string vl = format_number(v, 3);
      if (nc * ns <= 24 && text_width(vl, 10) <= bar_w + 6)
        out += text(x + bar_w / 2, (v >= 0 || opt.log_y) ? py - 3 : py + 11, vl,
                    "text-anchor=\"middle\" font-size=\"10\" fill=\"" + std::string(kInk) + "\"");
    }
  }
  out += line(left, base, right, base, kInk);
  for (size_t c = 0; c < nc; c += every) {
    double cx = left + group_w * (double(c) + 0.5);
    if (rotate)
      out += text(cx, bottom + 12, categories[c],
                  "text-anchor=\"end\" transform=\"rotate(-45 " + n(cx) + " " + n(bottom + 12) + ")\"");
    else
      out += text(cx, bottom + kFont + 4, categories[c], "text-anchor=\"middle\"");
  }
  if (!opt.x_label.empty())
    out += text(left + plot_w / 2, bottom + xlabels_h + 14, opt.x_label,
                "text-anchor=\"middle\" fill=\"" + std::string(kMuted) + "\"");
  if (!note.empty()) out += text(10, H - 8, note, "font-size=\"11\" fill=\"" + std::string(kMuted) + "\"");
  out += "</svg>\n";
  return out;
}

// ---------------------------------------------------------------- line / scatter chart

std::string line_chart(const std::vector<Series>& series, const LineChartOptions& opt) {
  if (series.empty()) fail("line_chart '", opt.title, "': no series");
  auto drawable = [&](const Point& p) {
    return std::isfinite(p.x) && std::isfinite(p.y) && (!opt.log_x || p.x > 0) && (!opt.log_y || p.y > 0);
  };
  double xlo = INFINITY, xhi = -INFINITY, ylo = INFINITY, yhi = -INFINITY;
  size_t nonfinite = 0, nonpositive = 0;
  for (const auto& s : series)
    for (const auto& p : s.points) {
      if (!std::isfinite(p.x) || !std::isfinite(p.y)) {
        ++nonfinite;
        continue;
      }
      if (!drawable(p)) {
        ++nonpositive;
        continue;
      }
      xlo = std::min(xlo, p.x);
      xhi = std::max(xhi, p.x);
      ylo = std::min(ylo, p.y);
      yhi = std::max(yhi, p.y);
    }
  if (!(xlo <= xhi)) xlo = xhi = opt.log_x ? 1 : 0;
  if (!(ylo <= yhi)) ylo = yhi = opt.log_y ? 1 : 0;
  Axis x = make_axis(xlo, xhi, opt.log_x, 7);
  Axis y = make_axis(ylo, yhi, opt.log_y, 6);

  std::vector<std::string> names;
  for (const auto& s : series) names.push_back(s.name);
  const double W = opt.width, H = opt.height;
  const double left = 10 + (opt.y_label.empty() ? 0 : 18) + max_label_width(y.ticks) + 8;
  const double right = W - 16 - text_width(x.ticks.labels.back()) / 2;
  const int lrows = legend_rows(names, W - left - 10);
  const double top = (opt.title.empty() ? 10 : 32) + 18.0 * lrows + 10;
  std::string note;
  if (nonfinite) note += plural(nonfinite, "non-finite point", "non-finite points") + " not shown. ";
  if (nonpositive) note += plural(nonpositive, "point", "points") + " <= 0 not shown on a log axis.";
  const double bottom = H - (kFont + 10) - (opt.x_label.empty() ? 0 : 18) - (note.empty() ? 0 : 16) - 4;
  x.p0 = left;
  x.p1 = right;
  y.p0 = bottom;
  y.p1 = top;

  std::string out = svg_open(W, H, opt.title.empty() ? "chart" : opt.title);
  out += chart_title(10, opt.title);
  std::vector<std::string> sw;
  for (size_t i = 0; i < series.size(); ++i) {
    std::string col = categorical(i).hex();
    std::string g = "<g transform=\"translate({X} {Y})\">";
    if (series[i].line) g += "<line x1=\"-7\" y1=\"0\" x2=\"7\" y2=\"0\" stroke=\"" + col + "\" stroke-width=\"2\"/>";
    g += marker(series[i].marker, 0, 0, col, "") + "</g>\n";
    sw.push_back(g);
  }
  out += draw_legend(names, sw, left, (opt.title.empty() ? 10 : 32) + 12, W - 10);

  // Grid and axes.
  out += draw_y_axis(y, left, right, opt.y_label, 10 + 9);
  for (size_t i = 0; i < x.ticks.values.size(); ++i) {
    double px = x.map(x.ticks.values[i]);
    out += line(px, top, px, bottom, kGrid);
    out += line(px, bottom, px, bottom + 4, kInk);
    out += text(px, bottom + kFont + 5, x.ticks.labels[i], "text-anchor=\"middle\" fill=\"" + std::string(kInk) + "\"");
  }
  out += line(left, bottom, right, bottom, kInk);
  if (!opt.x_label.empty())
    out += text((left + right) / 2, bottom + kFont + 24, opt.x_label,
                "text-anchor=\"middle\" fill=\"" + std::string(kMuted) + "\"");

  // Lines first (so markers sit on top), broken at undrawable points.
  for (size_t i = 0; i < series.size(); ++i) {
    if (!series[i].line) continue;
    std::string pts;
    auto flush = [&] {
      if (pts.find(' ') != std::string::npos)
        out += "<polyline points=\"" + pts + "\" fill=\"none\" stroke=\"" + categorical(i).hex() +
               "\" stroke-width=\"2\" stroke-linejoin=\"round\"/>\n";
      pts.clear();
    };
    for (const auto& p : series[i].points) {
      if (!drawable(p)) {
        flush();
        continue;
      }
      if (!pts.empty()) pts += ' ';
      pts += n(x.map(p.x)) + "," + n(y.map(p.y));
    }
    flush();
  }
  // Markers with tooltips; point labels placed greedily to avoid overlapping earlier labels.
  struct Box {
    double x0, y0, x1, y1;
  };
  std::vector<Box> placed;
  for (size_t i = 0; i < series.size(); ++i)
    for (const auto& p : series[i].points)
      if (drawable(p)) placed.push_back({x.map(p.x) - 5, y.map(p.y) - 5, x.map(p.x) + 5, y.map(p.y) + 5});
  for (size_t i = 0; i < series.size(); ++i) {
    std::string col = categorical(i).hex();
    for (const auto& p : series[i].points) {
      if (!drawable(p)) continue;
      double px = x.map(p.x), py = y.map(p.y);
      std::string tip = series[i].name + (p.label.empty() ? "" : " " + p.label) + ": " + opt.x_label +
                        (opt.x_label.empty() ? "" : " ") + format_number(p.x, opt.sig) + ", " + opt.y_label +
                        (opt.y_label.empty() ? "" : " ") + format_number(p.y, opt.sig);
      out += marker(series[i].marker, px, py, col, tip);
      if (!series[i].show_labels || p.label.empty()) continue;
      double w = text_width(p.label, 11);
      const std::array<std::pair<double, double>, 6> offsets = {
          {{8, 4}, {8, -8}, {8, 15}, {-8 - w, 4}, {-8 - w, -8}, {-8 - w, 15}}};
      std::pair<double, double> at = offsets[0];
      for (const auto& o : offsets) {
        Box b{px + o.first, py + o.second - 10, px + o.first + w, py + o.second + 2};
        bool inside = b.x0 >= left && b.x1 <= right + 12 && b.y0 >= top - 8 && b.y1 <= bottom;
        bool clash = false;
        for (const auto& q : placed)
          if (b.x0 < q.x1 && q.x0 < b.x1 && b.y0 < q.y1 && q.y0 < b.y1) clash = true;
        if (inside && !clash) {
          at = o;
          break;
        }
      }
      placed.push_back({px + at.first, py + at.second - 10, px + at.first + w, py + at.second + 2});
      out += text(px + at.first, py + at.second, p.label, "font-size=\"11\" fill=\"" + std::string(kInk) + "\"");
    }
  }
  if (!note.empty()) out += text(10, H - 8, note, "font-size=\"11\" fill=\"" + std::string(kMuted) + "\"");
  out += "</svg>\n";
  return out;
}

}  // namespace moec::report
