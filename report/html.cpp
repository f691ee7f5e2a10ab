// Text helpers and the HTML page builder.
#include <algorithm>
#include <charconv>
#include <cmath>

#include "core/error.h"
#include "core/files.h"
#include "report/report.h"

namespace moec::report {

std::string escape(std::string_view s) {
  std::string out;
  out.reserve(s.size() + s.size() / 8);
  size_t i = 0;
  while (i < s.size()) {
    unsigned char c = static_cast<unsigned char>(s[i]);
    if (c < 0x80) {
      switch (c) {
        case '&': out += "&amp;"; break;
        case '<': out += "&lt;"; break;
        case '>': out += "&gt;"; break;
        case '"': out += "&quot;"; break;
        case '\'': out += "&#39;"; break;
        default:
          // XML 1.0 forbids most C0 controls; DEL is legal but invisible, keep it out too.
          if ((c >= 0x20 && c != 0x7f) || c == '\n' || c == '\t' || c == '\r') out += char(c);
      }
      ++i;
      continue;
    }
    // Validate one UTF-8 sequence (no overlongs, no surrogates, <= U+10FFFF); else emit U+FFFD.
    size_t len = c >= 0xf0 ? 4 : c >= 0xe0 ? 3 : c >= 0xc0 ? 2 : 0;
    bool ok = len != 0 && c <= 0xf4 && i + len <= s.size();
    uint32_t cp = ok ? (c & (0x7f >> len)) : 0;
    for (size_t k = 1; ok && k < len; ++k) {
      unsigned char cc = static_cast<unsigned char>(s[i + k]);
      if ((cc & 0xc0) != 0x80) ok = false;
      cp = (cp << 6) | (cc & 0x3f);
    }
    if (ok) {
      static const uint32_t min_cp[5] = {0, 0, 0x80, 0x800, 0x10000};
      ok = cp >= min_cp[len] && cp <= 0x10ffff && !(cp >= 0xd800 && cp <= 0xdfff);
    }
    if (ok) {
      out.append(s.substr(i, len));
      i += len;
    } else {
      out += "\xef\xbf\xbd";  // U+FFFD
      ++i;
    }
  }
  return out;
}

namespace {

// Inserts thousands separators into the integer digits of a plain decimal number string.
std::string group_digits(const std::string& s) {
  size_t start = (s[0] == '-') ? 1 : 0;
  size_t end = s.find('.');
  if (end == std::string::npos) end = s.size();
  std::string out = s.substr(0, start);
  for (size_t i = start; i < end; ++i) {
    out += s[i];
    size_t left = end - i - 1;
    if (left > 0 && left % 3 == 0) out += ',';
  }
  return out + s.substr(end);
}

void trim_zeros(std::string& s) {
  if (s.find('.') == std::string::npos) return;
  while (s.back() == '0') s.pop_back();
  if (s.back() == '.') s.pop_back();
}

std::string to_fixed(double v, int decimals) {
  char buf[400];
  auto r = std::to_chars(buf, buf + sizeof buf, v, std::chars_format::fixed, decimals);
  return std::string(buf, r.ptr);
}

}  // namespace

std::string format_number(double v, int sig, bool group) {
  if (std::isnan(v)) return "n/a";
  if (std::isinf(v)) return v > 0 ? "inf" : "-inf";
  if (v == 0) return "0";
  sig = std::clamp(sig, 1, 17);
  double a = std::fabs(v);
  std::string s;
  if (a < 1e15 && v == std::nearbyint(v)) {
    s = to_fixed(v, 0);  // integers (counts, sizes) are shown exactly
  } else if (a < 1e-3 || a >= 1e6) {
    char buf[64];
    auto r = std::to_chars(buf, buf + sizeof buf, v, std::chars_format::scientific, sig - 1);
    std::string m(buf, r.ptr);
    size_t e = m.find('e');
    std::string mant = m.substr(0, e);
    trim_zeros(mant);
    int ex = std::stoi(m.substr(e + 1));
    return mant + "e" + std::to_string(ex);
  } else {
    int e = int(std::floor(std::log10(a)));
    s = to_fixed(v, std::max(0, sig - 1 - e));
    trim_zeros(s);
  }
  if (s == "-0") s = "0";
  return (group && a >= 1e4) ? group_digits(s) : s;
}

// ---------------------------------------------------------------- Page

namespace {
const char* kCss = R"css(
:root { color-scheme: light; }
body { font-family: system-ui, -apple-system, "Segoe UI", Roboto, "Helvetica Neue", Arial, sans-serif;
  margin: 0 auto; max-width: 1180px; padding: 16px 24px 48px; color: #1f2328; background: #ffffff;
  line-height: 1.45; font-size: 15px; }
h1 { font-size: 26px; margin: 8px 0 2px; }
h2 { font-size: 20px; margin: 32px 0 8px; padding-bottom: 4px; border-bottom: 1px solid #d0d7de; }
h3 { font-size: 16px; margin: 20px 0 6px; }
p.subtitle { color: #57606a; margin: 0 0 12px; }
p.note { color: #57606a; font-size: 13px; }
nav.toc { background: #f6f8fa; border: 1px solid #d0d7de; border-radius: 6px; padding: 8px 16px; margin: 12px 0; }
nav.toc ol { margin: 4px 0; padding-left: 20px; }
nav.toc a { color: #0969da; text-decoration: none; }
table { border-collapse: collapse; margin: 8px 0 16px; font-size: 14px; }
th, td { border: 1px solid #d0d7de; padding: 3px 10px; vertical-align: top; }
th { background: #f6f8fa; text-align: left; font-weight: 600; }
td.num, th.num { text-align: right; font-variant-numeric: tabular-nums; white-space: nowrap; }
table.kv th { width: 1%; white-space: nowrap; }
caption { caption-side: top; text-align: left; color: #57606a; font-size: 13px; padding-bottom: 4px; }
pre { background: #f6f8fa; border: 1px solid #d0d7de; border-radius: 6px; padding: 10px 12px;
  overflow-x: auto; font-size: 13px; white-space: pre-wrap; word-break: break-all; }
pre, code { font-family: ui-monospace, "SFMono-Regular", "DejaVu Sans Mono", Menlo, Consolas, monospace; }
figure { margin: 12px 0 20px; }
figure svg { max-width: 100%; height: auto; display: block; }
figcaption { color: #57606a; font-size: 13px; margin-top: 4px; max-width: 720px; }
div.figrow { display: flex; flex-wrap: wrap; gap: 8px 24px; align-items: flex-start; }
div.figrow figure { margin: 4px 0 12px; }
footer { margin-top: 40px; color: #8c959f; font-size: 12px; }
)css";

void append_figure(std::string& out, const Figure& f) {
  out += "<figure>\n";
  out += f.svg;
  if (!f.caption.empty()) out += "<figcaption>" + escape(f.caption) + "</figcaption>\n";
  out += "</figure>\n";
}
}  // namespace

Page::Page(std::string title) : title_(std::move(title)) {}

Page& Page::subtitle(std::string text) {
  subtitle_ = std::move(text);
  return *this;
}

Page& Page::section(std::string heading) {
  toc_.push_back(heading);
  body_ += "<h2 id=\"sec-" + std::to_string(toc_.size()) + "\">" + escape(heading) + "</h2>\n";
  return *this;
}

Page& Page::subsection(std::string heading) {
  body_ += "<h3>" + escape(heading) + "</h3>\n";
  return *this;
}

Page& Page::paragraph(std::string text) {
  body_ += "<p>" + escape(text) + "</p>\n";
  return *this;
}

Page& Page::note(std::string text) {
  body_ += "<p class=\"note\">" + escape(text) + "</p>\n";
  return *this;
}

Page& Page::key_values(const std::vector<std::pair<std::string, std::string>>& kv) {
  body_ += "<table class=\"kv\">\n";
  for (const auto& [k, v] : kv) body_ += "<tr><th>" + escape(k) + "</th><td>" + escape(v) + "</td></tr>\n";
  body_ += "</table>\n";
  return *this;
}

Page& Page::table(const Table& t) {
  for (size_t r = 0; r < t.rows.size(); ++r)
    if (t.rows[r].size() != t.header.size())
      fail("report table '", t.caption, "': row ", r, " has ", t.rows[r].size(), " cells, header has ",
           t.header.size());
  // A column is right-aligned in the header when all its cells are numeric.
  std::vector<bool> numeric_col(t.header.size(), !t.rows.empty());
  for (const auto& row : t.rows)
    for (size_t c = 0; c < row.size(); ++c) numeric_col[c] = numeric_col[c] && row[c].numeric;
  body_ += "<table>\n";
  if (!t.caption.empty()) body_ += "<caption>" + escape(t.caption) + "</caption>\n";
  body_ += "<thead><tr>";
  for (size_t c = 0; c < t.header.size(); ++c)
    body_ += std::string(numeric_col[c] ? "<th class=\"num\">" : "<th>") + escape(t.header[c]) + "</th>";
  body_ += "</tr></thead>\n<tbody>\n";
  for (const auto& row : t.rows) {
    body_ += "<tr>";
    for (const auto& cell : row)
      body_ += std::string(cell.numeric ? "<td class=\"num\">" : "<td>") + escape(cell.text) + "</td>";
    body_ += "</tr>\n";
  }
  body_ += "</tbody>\n</table>\n";
  return *this;
}

Page& Page::pre(std::string text) {
  body_ += "<pre>" + escape(text) + "</pre>\n";
  return *this;
}

Page& Page::figure(Figure f) {
  append_figure(body_, f);
  return *this;
}

Page& Page::figures(std::vector<Figure> fs) {
  body_ += "<div class=\"figrow\">\n";
  for (const auto& f : fs) append_figure(body_, f);
  body_ += "</div>\n";
  return *this;
}

std::string Page::html() const {
  std::string out;
  out += "<!DOCTYPE html>\n<html lang=\"en\" xmlns=\"http://www.w3.org/1999/xhtml\">\n<head>\n";
  out += "<meta charset=\"utf-8\"/>\n";
  out += "<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\"/>\n";
  out += "<meta name=\"generator\" content=\"moec\"/>\n";
  out += "<title>" + escape(title_) + "</title>\n<style>" + kCss + "</style>\n</head>\n<body>\n";
  out += "<h1>" + escape(title_) + "</h1>\n";
  if (!subtitle_.empty()) out += "<p class=\"subtitle\">" + escape(subtitle_) + "</p>\n";
  if (toc_.size() > 1) {
    out += "<nav class=\"toc\"><strong>Contents</strong>\n<ol>\n";
    for (size_t i = 0; i < toc_.size(); ++i)
      out += "<li><a href=\"#sec-" + std::to_string(i + 1) + "\">" + escape(toc_[i]) + "</a></li>\n";
    out += "</ol>\n</nav>\n";
  }
  out += body_;
  out += "<footer>Generated by moec " MOEC_VERSION ". Self-contained file: no scripts, no external resources.</footer>\n";
  out += "</body>\n</html>\n";
  return out;
}

void Page::write(const std::filesystem::path& path) const { write_file_atomic(path, html()); }

}  // namespace moec::report
