#include "quantize/spec.h"

#include <charconv>
#include <vector>

#include "core/error.h"

namespace moec {
namespace {

std::vector<std::string> split(const std::string& s, char sep) {
  std::vector<std::string> out;
  size_t start = 0;
  for (;;) {
    size_t p = s.find(sep, start);
    out.push_back(s.substr(start, p == std::string::npos ? std::string::npos : p - start));
    if (p == std::string::npos) return out;
    start = p + 1;
  }
}

}  // namespace

void validate(const QuantSpec& s) {
  if (s.kind == CodeKind::Int) {
    if (s.bits != 2 && s.bits != 3 && s.bits != 4 && s.bits != 8)
      fail("quant spec: int bits must be 2, 3, 4 or 8, got ", s.bits);
  } else if (s.kind == CodeKind::Ternary) {
    if (s.bits != 2) fail("quant spec: ternary codes have nominal width 2 bits, got ", s.bits);
  } else {
    fail("quant spec: unknown code kind ", int(s.kind));
  }
  if (s.group < 0) fail("quant spec: group must be >= 0 (0 = per row), got ", s.group);
  if (!(s.deadzone > 0.0f && s.deadzone <= 2.0f))
    fail("quant spec: ternary deadzone must be in (0, 2] (0.5 = round to nearest), got ", s.deadzone);
  if (s.kind != CodeKind::Ternary && s.deadzone != 0.5f) fail("quant spec: a deadzone applies to ternary codes only");
  if (!(s.rate >= 0.0f && s.rate <= 2.0f)) fail("quant spec: ternary rate weight must be in [0, 2], got ", s.rate);
  if (s.kind != CodeKind::Ternary && s.rate != 0.0f) fail("quant spec: a rate weight applies to ternary codes only");
}

QuantSpec parse_quant_spec(const std::string& text) {
  const char* allowed_kind = "int8, int4, int3, int2, ternary";
  auto parts = split(text, ':');
  QuantSpec s;
  const std::string& k = parts[0];
  if (k == "int8" || k == "int4" || k == "int3" || k == "int2") {
    s.kind = CodeKind::Int;
    s.bits = k[3] - '0';
  } else if (k == "ternary") {
    s.kind = CodeKind::Ternary;
    s.bits = 2;
  } else {
    fail("quant spec '", text, "': unknown kind '", k, "' (allowed: ", allowed_kind, ")");
  }
  bool seen_group = false, seen_sym = false, seen_tscale = false, seen_dz = false, seen_rd = false;
  for (size_t i = 1; i < parts.size(); ++i) {
    const std::string& o = parts[i];
    auto dup = [&](bool& seen, const char* what) {
      if (seen) fail("quant spec '", text, "': ", what, " given twice");
      seen = true;
    };
    if (o == "row") {
      dup(seen_group, "group");
      s.group = 0;
    } else if (o.size() > 1 && o[0] == 'g') {
      dup(seen_group, "group");
      int g = 0;
      auto r = std::from_chars(o.data() + 1, o.data() + o.size(), g);
      if (r.ec != std::errc() || r.ptr != o.data() + o.size() || g < 1)
        fail("quant spec '", text, "': bad group '", o, "' (expected gN with N >= 1, e.g. g128, or 'row')");
      s.group = g;
    } else if (o == "sym" || o == "asym") {
      if (s.kind != CodeKind::Int)
        fail("quant spec '", text, "': '", o, "' applies to int codes only (ternary takes absmean, minmax, opt)");
      dup(seen_sym, "symmetry");
      s.symmetric = (o == "sym");
    } else if (o == "absmean" || o == "minmax" || o == "opt") {
      if (s.kind != CodeKind::Ternary)
        fail("quant spec '", text, "': '", o, "' applies to ternary codes only (int takes sym, asym)");
      dup(seen_tscale, "ternary scale");
      s.ternary_scale = o == "absmean" ? TernaryScale::AbsMean
                        : o == "minmax" ? TernaryScale::MinMax
                                        : TernaryScale::Opt;
    } else if (o.size() > 2 && o.compare(0, 2, "dz") == 0 && s.kind == CodeKind::Ternary) {
      dup(seen_dz, "deadzone");
      float dz = 0.0f;
      auto r = std::from_chars(o.data() + 2, o.data() + o.size(), dz);
      if (r.ec != std::errc() || r.ptr != o.data() + o.size() || !(dz > 0.0f && dz <= 2.0f))
        fail("quant spec '", text, "': bad deadzone '", o, "' (expected dzF with 0 < F <= 2, e.g. dz0.6)");
      s.deadzone = dz;
    } else if (o.size() > 2 && o.compare(0, 2, "rd") == 0 && s.kind == CodeKind::Ternary) {
      dup(seen_rd, "rate weight");
      float rd = -1.0f;
      auto r = std::from_chars(o.data() + 2, o.data() + o.size(), rd);
      if (r.ec != std::errc() || r.ptr != o.data() + o.size() || !(rd >= 0.0f && rd <= 2.0f))
        fail("quant spec '", text, "': bad rate weight '", o, "' (expected rdF with 0 <= F <= 2, e.g. rd0.1)");
      s.rate = rd;
    } else {
      fail("quant spec '", text, "': unknown option '", o, "' (allowed: gN, row",
           s.kind == CodeKind::Int ? ", sym, asym" : ", absmean, minmax, opt, dzF, rdF", ")");
    }
  }
  validate(s);
  return s;
}

std::string to_string(const QuantSpec& s) {
  std::string out;
  if (s.kind == CodeKind::Ternary) {
    out = "ternary:";
    out += s.ternary_scale == TernaryScale::AbsMean ? "absmean"
           : s.ternary_scale == TernaryScale::MinMax ? "minmax"
                                                     : "opt";
  } else {
    out = "int" + std::to_string(s.bits) + (s.symmetric ? ":sym" : ":asym");
  }
  out += s.group > 0 ? ":g" + std::to_string(s.group) : ":row";
  if (s.kind == CodeKind::Ternary && s.deadzone != 0.5f) {
    char buf[32];
    auto r = std::to_chars(buf, buf + sizeof buf, s.deadzone);  // shortest text that reads back exactly
    out += ":dz" + std::string(buf, r.ptr);
  }
  if (s.kind == CodeKind::Ternary && s.rate != 0.0f) {
    char buf[32];
    auto r = std::to_chars(buf, buf + sizeof buf, s.rate);
    out += ":rd" + std::string(buf, r.ptr);
  }
  return out;
}

double bits_per_weight(const QuantSpec& s, int cols) {
  validate(s);
  if (cols < 1) fail("bits_per_weight: cols must be >= 1, got ", cols);
  int g = s.group > 0 ? s.group : cols;
  int groups = (cols + g - 1) / g;
  int per_group = 16;  // fp16 scale
  if (s.kind == CodeKind::Int && !s.symmetric) per_group += 16;
  if (s.kind == CodeKind::Ternary && s.ternary_scale == TernaryScale::MinMax) per_group += 16;
  return s.bits + double(groups) * per_group / cols;
}

}  // namespace moec
