// Self-contained HTML reports with inline SVG charts (no JS, no external CSS/fonts, no network).
//
// Charts are pure functions: same input -> byte-identical SVG string. Non-finite values are never
// drawn; each chart says in a visible note how many it left out. All text is escaped.
// The output is XHTML-compatible (void elements self-closed) so it can be checked with an XML parser.
#pragma once
#include <cstdint>
#include <filesystem>
#include <limits>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

namespace moec::report {

// ---------------------------------------------------------------- text helpers
// Escapes & < > " ' for HTML text and attribute values. Invalid UTF-8 bytes become U+FFFD and C0
// control characters other than tab/newline/CR are dropped, so the result is always valid UTF-8 XML.
std::string escape(std::string_view text);

// A number for people: `sig` significant digits, trailing zeros trimmed, integers exact (with
// thousands separators from 10,000 when `group`), scientific notation outside [1e-3, 1e6).
// NaN -> "n/a", +-inf -> "inf"/"-inf".
std::string format_number(double v, int sig = 4, bool group = true);

// ---------------------------------------------------------------- axes
// "Nice" linear ticks (Heckbert): step is 1, 2 or 5 x 10^k, first tick <= lo, last tick >= hi.
// lo == hi (or a range below double resolution) is widened around the value; lo > hi is swapped.
// Throws moec::Error for non-finite input (charts filter those out before calling).
struct Ticks {
  double lo = 0, hi = 1;      // axis domain = first and last tick
  double step = 1;            // 0 for log ticks
  std::vector<double> values;
  std::vector<std::string> labels;  // same length as values, formatted consistently
};
Ticks nice_ticks(double lo, double hi, int target_count = 6);
// Log-scale ticks for positive lo <= hi: domain snapped outward to 1-2-5 x 10^k values; ticks at
// 1, 2, 5 x 10^k when the span is at most ~3 decades, else at powers of ten only.
Ticks log_ticks(double lo, double hi);

// ---------------------------------------------------------------- colours
struct Rgb {
  uint8_t r = 0, g = 0, b = 0;
  std::string hex() const;  // "#rrggbb"
  bool operator==(const Rgb&) const = default;
};
enum class ColorScale { Sequential, Diverging };
Rgb viridis(double t);    // perceptual sequential palette, t in [0,1] (clamped): dark purple -> yellow
Rgb diverging(double t);  // blue (0) -> near white (0.5) -> red (1), t clamped
Rgb categorical(size_t i);  // distinct colours for series (cycles after 10)

// ---------------------------------------------------------------- charts
struct HeatmapOptions {
  std::string title;
  ColorScale scale = ColorScale::Sequential;
  std::string value_label = "value";  // shown in tooltips and above the legend
  std::string row_axis;               // e.g. "layer"
  std::string col_axis;               // e.g. "expert"
  // Colour range; NaN = from the data. Diverging scales are centred on `center` and symmetric.
  double vmin = std::numeric_limits<double>::quiet_NaN();
  double vmax = std::numeric_limits<double>::quiet_NaN();
  double center = 0;
  int sig = 3;          // significant digits in tooltips / cell text
  bool cell_text = true;  // print values in cells when the cells are large enough
};
// matrix[r][c]; all rows must have col_labels.size() entries and there must be row_labels.size() rows.
// Each cell carries a <title> tooltip "row, col: value". NaN/inf cells are grey and counted in a note.
std::string heatmap(const std::vector<std::vector<double>>& matrix, const std::vector<std::string>& row_labels,
                    const std::vector<std::string>& col_labels, const HeatmapOptions& opt);

struct BarSeries {
  std::string name;
  std::vector<double> values;  // one per category
};
struct BarChartOptions {
  std::string title, x_label, y_label;
  bool log_y = false;  // values <= 0 cannot be drawn on a log axis and are counted in the note
  int width = 720, height = 360;
  int sig = 4;
};
std::string bar_chart(const std::vector<std::string>& categories, const std::vector<BarSeries>& series,
                      const BarChartOptions& opt);

struct Point {
  double x = 0, y = 0;
  std::string label;  // optional; drawn next to the marker when the series has show_labels
};
struct Series {
  std::string name;
  std::vector<Point> points;  // drawn in the given order
  bool line = true;           // false: scatter (markers only)
  bool show_labels = false;
  enum class Marker { Circle, Square, Diamond } marker = Marker::Circle;
};
struct LineChartOptions {
  std::string title, x_label, y_label;
  bool log_x = false, log_y = false;
  int width = 720, height = 400;
  int sig = 4;
};
std::string line_chart(const std::vector<Series>& series, const LineChartOptions& opt);

// ---------------------------------------------------------------- tables and pages
// A table cell: text (left-aligned) or a number (right-aligned, formatted with `sig` digits).
struct Cell {
  std::string text;
  bool numeric = false;
  Cell(std::string s) : text(std::move(s)) {}
  Cell(const char* s) : text(s) {}
  Cell(double v, int sig = 4) : text(format_number(v, sig)), numeric(true) {}
  Cell(int v) : Cell(double(v)) {}
  Cell(long v) : Cell(double(v)) {}
  Cell(long long v) : Cell(double(v)) {}
  Cell(unsigned long v) : Cell(double(v)) {}
  // Pre-formatted number text that should still be right-aligned ("+4.7%").
  static Cell number_text(std::string s) {
    Cell c(std::move(s));
    c.numeric = true;
    return c;
  }
};
struct Table {
  std::vector<std::string> header;
  std::vector<std::vector<Cell>> rows;  // each row has header.size() cells
  std::string caption;
};

struct Figure {
  std::string svg;      // from heatmap / bar_chart / line_chart (inserted verbatim)
  std::string caption;  // escaped
};

class Page {
 public:
  explicit Page(std::string title);
  Page& subtitle(std::string text);           // line under the title (e.g. model and date)
  Page& section(std::string heading);         // <h2>, listed in the table of contents
  Page& subsection(std::string heading);      // <h3>
  Page& paragraph(std::string text);
  Page& note(std::string text);               // de-emphasised paragraph
  Page& key_values(const std::vector<std::pair<std::string, std::string>>& kv);
  Page& table(const Table& t);
  Page& pre(std::string text);                // preformatted (commands, recipes)
  Page& figure(Figure f);
  Page& figures(std::vector<Figure> fs);      // a wrapping row of figures (small multiples)

  std::string html() const;                   // the complete document
  void write(const std::filesystem::path& path) const;  // atomic write of html()

 private:
  std::string title_, subtitle_;
  std::vector<std::string> toc_;  // section headings
  std::string body_;
};

}  // namespace moec::report
