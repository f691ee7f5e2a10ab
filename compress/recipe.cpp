#include <algorithm>
#include <cmath>
#include <functional>
#include <set>
#include <sstream>

#include "compress/compress.h"
#include "compress/internal.h"
#include "core/error.h"
#include "core/files.h"
#include "prune/prune.h"
#include "quantize/quantize.h"

namespace moec::compress {

namespace {
const std::set<std::string> kPruneParams = {"keep", "ratio"};
const std::set<std::string> kQuantParams = {"bits", "group", "sym", "scale", "deadzone", "rate", "subbit", "damp", "act_order", "budget"};

const std::set<std::string> kFlags = {"subbit", "sym", "act_order", "whiten", "align"};  // bare in factory strings

std::string join(const std::set<std::string>& s) {
  std::string r;
  for (auto& x : s) r += (r.empty() ? "" : ", ") + x;
  return r;
}

// Strict parameter values: the whole string must be a number in range (or a flag), else a recipe error.
int to_int(const std::string& k, const std::string& v, int lo) {
  size_t pos = 0;
  int x = 0;
  try {
    x = std::stoi(v, &pos);
  } catch (const std::exception&) {
    pos = 0;
  }
  if (pos == 0 || pos != v.size() || x < lo) fail("recipe: ", k, "=", v, " must be an integer >= ", lo);
  return x;
}
double to_double(const std::string& k, const std::string& v, double lo, double hi, bool lo_open) {
  size_t pos = 0;
  double x = 0;
  try {
    x = std::stod(v, &pos);
  } catch (const std::exception&) {
    pos = 0;
  }
  if (pos == 0 || pos != v.size() || !(lo_open ? x > lo : x >= lo) || !(x <= hi))
    fail("recipe: ", k, "=", v, " must be a number in ", lo_open ? "(" : "[", lo, ", ", hi, "]");
  return x;
}
bool to_flag(const std::string& k, const std::string& v) {
  if (v == "1" || v == "true") return true;
  if (v == "0" || v == "false") return false;
  fail("recipe: merge ", k, " is a flag (give it bare, or ", k, "=1 / ", k, "=0)");
}

// ------------------------------------------------------------------------------------ merge parameters
// One row per recipe parameter of a merge stage: how it sets merge::PipelineOptions.
struct MergeParam {
  const char* key;
  std::function<void(merge::PipelineOptions&, const std::string& value)> set;
};
const std::vector<MergeParam>& merge_params() {
  using PO = merge::PipelineOptions;
  static const std::vector<MergeParam> t = {
      {"keep", [](PO& o, const std::string& v) { o.keep = to_int("keep", v, 1); }},
      {"ratio", [](PO&, const std::string& v) { to_double("ratio", v, 0, 1, true); }},  // resolved in merge_options
      {"cluster", [](PO& o, const std::string& v) { o.cluster = merge::cluster_algo_from_string(v); }},
      {"rank", [](PO& o, const std::string& v) { o.subspace.rank = to_int("rank", v, 0); }},
      {"energy", [](PO& o, const std::string& v) { o.subspace.energy = to_double("energy", v, 0, 1, true); }},
      {"svd",
       [](PO& o, const std::string& v) {
         if (v == "exact") o.subspace.svd = merge::SvdMethod::Exact;
         else if (v == "randomized") o.subspace.svd = merge::SvdMethod::Randomized;
         else fail("recipe: merge svd=", v, " is unknown (allowed: exact, randomized)");
       }},
      {"router", [](PO& o, const std::string& v) { o.router = merge::router_merge_from_string(v == "freq" ? "frequency" : v); }},
      {"whiten", [](PO& o, const std::string& v) { o.whiten = to_flag("whiten", v); }},
      {"align", [](PO& o, const std::string& v) { o.align = to_flag("align", v); }},
      {"seed", [](PO& o, const std::string& v) { o.seed = uint64_t(to_int("seed", v, 0)); }},
      {"align_tokens", [](PO& o, const std::string& v) { o.align_tokens = to_int("align_tokens", v, 1); }},
      {"weight_power", [](PO& o, const std::string& v) { o.weight_power = to_double("weight_power", v, 0, 16, true); }},
      {"refit",  // calibration refit (docs/MERGING.md §8); default: down projections for subspace, none otherwise
       [](PO& o, const std::string& v) {
         if (v != "none" && v != "down" && v != "router" && v != "all")
           fail("recipe: merge refit=", v, " is unknown (allowed: none, down, router, all)");
         o.refit_down = v == "down" || v == "all";
         o.refit_router = v == "router" || v == "all";
       }},
  };
  return t;
}

void validate_stage(const Stage& st) {
  if (st.stage == "prune") {
    if (st.method == "reconstruct")
      fail("recipe: prune:reconstruct is available in `moec prune`; recipes take the statistics criteria (",
           prune::criterion_names(), ")");
    prune::parse_criterion(st.method);  // fails listing the names
    for (auto& [k, v] : st.params)
      if (!kPruneParams.count(k)) fail("recipe: prune parameter '", k, "' is unknown (allowed: ", join(kPruneParams), ")");
    if (st.params.count("keep") == st.params.count("ratio"))
      fail("recipe: prune needs exactly one of keep=K (experts kept per layer) or ratio=R (fraction removed)");
    try {
      if (st.params.count("keep") && std::stoi(st.params.at("keep")) < 1) throw std::invalid_argument("");
      if (st.params.count("ratio")) {
        double r = std::stod(st.params.at("ratio"));
        if (!(r > 0 && r < 1)) throw std::invalid_argument("");
      }
    } catch (const std::exception&) {
      fail("recipe: prune keep must be a positive integer and ratio a fraction in (0, 1)");
    }
  } else if (st.stage == "quant") {
    if (st.method != "gptq" && st.method != "rtn" && st.method != "mixed")
      fail("recipe: quant method '", st.method, "' is unknown (allowed: gptq, rtn, mixed)");
    for (auto& [k, v] : st.params)
      if (!kQuantParams.count(k)) fail("recipe: quant parameter '", k, "' is unknown (allowed: ", join(kQuantParams), ")");
    if (st.method == "mixed") {
      if (!st.params.count("budget")) fail("recipe: quant:mixed needs budget=BITS (bits per expert weight, e.g. budget=2.5)");
      try {
        if (!(std::stod(st.params.at("budget")) > 0)) throw std::invalid_argument("");
      } catch (const std::exception&) {
        fail("recipe: quant:mixed budget must be a positive number of bits per weight");
      }
      for (auto& [k, v] : st.params)
        if (k != "budget" && k != "subbit" && k != "damp" && k != "act_order")
          fail("recipe: quant:mixed takes budget=BITS[:subbit][:damp=D][:act_order], not '", k, "' (it picks specs itself)");
    } else {
      if (st.params.count("budget")) fail("recipe: budget= belongs to quant:mixed");
      if (!st.params.count("bits")) fail("recipe: quant:", st.method, " needs bits=2|3|4|8|ternary");
      const std::string& b = st.params.at("bits");
      if (b != "2" && b != "3" && b != "4" && b != "8" && b != "ternary")
        fail("recipe: bits=", b, " is not allowed (2, 3, 4, 8 or ternary)");
      if (st.params.count("subbit") && b != "ternary") fail("recipe: subbit codes ternary weights: use bits=ternary");
      if (st.params.count("scale") && b != "ternary") fail("recipe: scale= (absmean|minmax|opt) applies to bits=ternary");
      for (const char* k : {"deadzone", "rate"}) {
        if (!st.params.count(k)) continue;
        if (b != "ternary") fail("recipe: ", k, "= applies to bits=ternary");
        // deadzone in (0, 2] (0.5 = round to nearest), rate in [0, 2] (0 = off)
        to_double(k, st.params.at(k), 0, 2, std::string(k) == "deadzone");
      }
    }
  } else if (st.stage == "merge") {
    merge_options(st, 0);  // fails on an unknown method or parameter, a bad value or combination
  } else {
    fail("recipe: unknown stage '", st.stage, "' (allowed: prune, merge, quant)");
  }
}

void validate(const Recipe& r) {
  if (r.stages.empty()) fail("recipe: no stage given (", recipe_help(), ")");
  std::set<std::string> seen;
  for (size_t i = 0; i < r.stages.size(); ++i) {
    const auto& st = r.stages[i];
    validate_stage(st);
    if (seen.count(st.stage)) fail("recipe: stage '", st.stage, "' appears twice");
    if (st.stage == "prune" && seen.count("quant")) fail("recipe: prune must come before quant (experts are selected on the original weights)");
    if (st.stage == "merge" && seen.count("quant")) fail("recipe: merge must come before quant (experts are merged on the original weights)");
    if ((st.stage == "merge" && seen.count("prune")) || (st.stage == "prune" && seen.count("merge")))
      fail("recipe: prune and merge both reduce the experts of every layer and cannot be combined in one recipe; "
           "use one of them (or run `moec prune` first and compress its output with a merge recipe)");
    seen.insert(st.stage);
  }
}
}  // namespace

merge::PipelineOptions merge_options(const Stage& st, int num_experts) {
  merge::PipelineOptions o;
  const std::string method = st.method == "freq-average" ? "frequency" : st.method;
  try {
    o.method = merge::merge_method_from_string(method);
  } catch (const Error&) {
    fail("recipe: merge method '", st.method, "' is unknown (allowed: subspace, msmoe, average, frequency)");
  }
  // As `moec merge --refit auto`: a recipe always has calibration tokens, so subspace merges are refit.
  o.refit_down = o.method == merge::MergeMethod::Subspace;
  for (auto& [k, v] : st.params) {
    const MergeParam* p = nullptr;
    for (auto& row : merge_params())
      if (k == row.key) p = &row;
    if (!p) fail("recipe: merge parameter '", k, "' is unknown (allowed: ", merge_param_names(), ")");
    try {
      p->set(o, v);
    } catch (const Error& e) {
      const std::string m = e.what();
      if (m.rfind("recipe:", 0) == 0) throw;
      fail("recipe: merge ", k, "=", v, ": ", m);
    }
  }
  if (st.params.count("keep") == st.params.count("ratio"))
    fail("recipe: merge needs exactly one of keep=K (experts per layer after merging) or ratio=R (fraction kept)");
  if (st.params.count("ratio") && num_experts > 0)
    o.keep = std::max(1, int(std::lround(std::stod(st.params.at("ratio")) * num_experts)));
  const bool subspace_only = st.params.count("rank") || st.params.count("energy") || st.params.count("svd") || o.whiten || o.align;
  if (o.method != merge::MergeMethod::Subspace && subspace_only)
    fail("recipe: merge rank=/energy=/svd=/whiten/align apply to merge:subspace only");
  if (o.subspace.svd == merge::SvdMethod::Randomized && o.subspace.rank <= 0)
    fail("recipe: merge svd=randomized needs rank=R");
  return o;
}

std::string merge_param_names() {
  std::set<std::string> names;
  for (auto& row : merge_params()) names.insert(row.key);
  return join(names);
}

const Stage* Recipe::find(const std::string& stage) const {
  for (auto& s : stages)
    if (s.stage == stage) return &s;
  return nullptr;
}

std::string Recipe::str() const {
  std::string s;
  for (auto& st : stages) {
    if (!s.empty()) s += ",";
    s += st.stage + ":" + st.method;
    for (auto& [k, v] : st.params) s += ":" + (v == "1" && kFlags.count(k) ? k : k + "=" + v);
  }
  return s;
}

nlohmann::ordered_json Recipe::to_json() const {
  nlohmann::ordered_json j;
  j["recipe"] = str();
  j["stages"] = nlohmann::ordered_json::array();
  for (auto& st : stages) {
    nlohmann::ordered_json o;
    o["stage"] = st.stage;
    o["method"] = st.method;
    for (auto& [k, v] : st.params) o[k] = v;
    j["stages"].push_back(o);
  }
  return j;
}

Recipe recipe_from_json(const nlohmann::json& j) {
  if (!j.is_object() || !j.contains("stages") || !j["stages"].is_array())
    fail("recipe JSON: expected {\"stages\": [{\"stage\": ..., \"method\": ..., ...}]}");
  Recipe r;
  for (auto& o : j["stages"]) {
    if (!o.is_object() || !o.contains("stage") || !o.contains("method")) fail("recipe JSON: every stage needs \"stage\" and \"method\"");
    Stage st;
    st.stage = o["stage"].get<std::string>();
    st.method = o["method"].get<std::string>();
    for (auto it = o.begin(); it != o.end(); ++it) {
      if (it.key() == "stage" || it.key() == "method") continue;
      st.params[it.key()] = it->is_string() ? it->get<std::string>() : it->is_boolean() ? (it->get<bool>() ? "1" : "0") : it->dump();
    }
    r.stages.push_back(st);
  }
  validate(r);
  return r;
}

Recipe parse_recipe(const std::string& text) {
  std::string t = text;
  if (!t.empty() && t.front() != '{' && t.size() > 5 && t.substr(t.size() - 5) == ".json") {
    if (!fs::exists(t)) fail("recipe file ", t, " does not exist");
    t = read_file(t);
  }
  if (!t.empty() && t.front() == '{') {
    try {
      return recipe_from_json(nlohmann::json::parse(t));
    } catch (const nlohmann::json::exception& e) {
      fail("recipe JSON: ", e.what());
    }
  }
  Recipe r;
  std::stringstream ss(t);
  std::string part;
  while (std::getline(ss, part, ',')) {
    std::stringstream ps(part);
    std::string tok;
    std::vector<std::string> toks;
    while (std::getline(ps, tok, ':')) toks.push_back(tok);
    if (toks.size() < 2) fail("recipe: '", part, "' must be STAGE:METHOD[:key=value...] (", recipe_help(), ")");
    Stage st{toks[0], toks[1], {}};
    for (size_t i = 2; i < toks.size(); ++i) {
      auto eq = toks[i].find('=');
      if (eq == std::string::npos) st.params[toks[i]] = std::string("1");
      else st.params[toks[i].substr(0, eq)] = toks[i].substr(eq + 1);
    }
    r.stages.push_back(st);
  }
  validate(r);
  return r;
}

std::string recipe_help() {
  return "stages separated by ',': prune:CRITERION:keep=K|ratio=R (criteria: " + prune::criterion_names() +
         ") or merge:subspace|msmoe|average|frequency:keep=K|ratio=R[:cluster=hc|kmeans|dominant][:rank=R][:energy=E]"
         "[:svd=exact|randomized][:router=dominant|frequency][:whiten][:align][:seed=S][:weight_power=P][:refit=none|down|router|all], then "
         "quant:gptq|rtn:bits=2|3|4|8|ternary[:group=N][:sym][:scale=absmean|minmax|opt][:deadzone=F][:rate=F][:subbit][:damp=D][:act_order] or "
         "quant:mixed:budget=BITS[:subbit] (bits per routed-expert weight of the source model; chooses per expert among int3/int2 "
         "g128 and sub-bit ternary codes of increasing sparsity)";
}

}  // namespace moec::compress
