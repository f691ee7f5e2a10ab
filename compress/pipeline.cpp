// The compress pipeline: profile (when a stage needs statistics) -> prune plan -> quantize (sequential,
// on the pruned view) -> evaluate -> report. Intermediate results live in OUT/.work: the statistics, the
// plan and a state file naming the recipe and input hashes; --resume reuses them when they match.
#include <csignal>
#include <chrono>
#include <cmath>
#include <cstdlib>

#include "compress/compress.h"
#include "core/error.h"
#include "core/files.h"
#include "core/progress.h"
#include "io/npy.h"
#include "kernels/codec.h"
#include "model/forward.h"
#include "model/source.h"
#include "profile/profile.h"
#include "prune/prune.h"
#include "quantize/calibrate.h"
#include "quantize/checkpoint.h"
#include "quantize/quantize.h"
#include "report/report.h"
#include "report/sections.h"

namespace moec::compress {

namespace {
double since(std::chrono::steady_clock::time_point t) {
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - t).count();
}

// Test hook: die like kill -9 right after a stage has committed its result.
void maybe_die(const std::string& stage) {
  const char* k = std::getenv("MOEC_TEST_KILL_AFTER_STAGE");
  if (k && stage == k) std::raise(SIGKILL);
}

quantize::CalibrateOptions quant_options(const Stage& st, int seq_len) {
  quantize::CalibrateOptions co;
  auto get = [&](const std::string& k, const std::string& d) { return st.params.count(k) ? st.params.at(k) : d; };
  co.method = st.method == "rtn" ? quantize::Method::Rtn : quantize::Method::Gptq;
  const std::string group = get("group", st.params.count("bits") && st.params.at("bits") == "ternary" ? "0" : "128");
  const std::string gs = group == "0" ? ":row" : ":g" + group;
  if (st.method == "mixed") {
    co.budget_bits = std::stod(st.params.at("budget"));
    co.subbit = st.params.count("subbit") > 0;
    co.candidates = quantize::default_candidates(co.subbit);
    co.spec = co.candidates.front();
  } else {
    const std::string b = st.params.at("bits");
    std::string text = b == "ternary" ? "ternary:" + get("scale", "minmax") : "int" + b + (st.params.count("sym") ? ":sym" : ":asym");
    if (st.params.count("deadzone")) text += ":dz" + get("deadzone", "0.5");
    if (st.params.count("rate")) text += ":rd" + get("rate", "0");
    co.spec = parse_quant_spec(text + gs);
    co.subbit = st.params.count("subbit") > 0;
  }
  if (st.params.count("damp")) co.gptq.damp = std::stod(st.params.at("damp"));
  co.gptq.act_order = st.params.count("act_order") > 0;
  co.seq_len = seq_len;
  return co;
}

// Stored bytes of every tensor of a model by category (packed tensors at their packed size).
std::map<std::string, double> bytes_by_category(const model::WeightSource& src) {
  std::map<std::string, double> out;
  const io::TensorStore* store = nullptr;
  auto* packed = dynamic_cast<const quantize::PackedSource*>(&src);
  if (packed) store = &packed->store();
  if (auto* ck = dynamic_cast<const model::CheckpointSource*>(&src)) store = &ck->store();
  for (auto& t : model::expected_tensors(src.spec())) {
    double b = 0;
    if (packed && packed->is_packed(t.name)) b = double(stored_bytes(packed->packed(t.name)));
    else if (store && store->has(t.name)) b = double(store->get(t.name).nbytes);
    out[model::role_name(t.role)] += b;
  }
  return out;
}

double evaluate_file(const model::WeightSource& src, const fs::path& file, int64_t max_tokens, int seq_len, bool progress,
                     int64_t* scored) {
  auto toks = io::read_tokens_npy(file);
  model::check_tokens(toks.ids, src.spec().vocab, file.string());
  model::EvalOptions eo;
  eo.window = seq_len;
  eo.max_tokens = max_tokens;
  eo.progress = progress;
  auto r = model::evaluate(src, toks.ids, eo);
  if (scored) *scored = r.tokens_scored;
  return r.ppl();
}
}  // namespace

nlohmann::ordered_json Result::to_json() const {
  nlohmann::ordered_json j;
  j["ppl_before"] = ppl_before;
  j["ppl_after"] = ppl_after;
  j["eval_tokens_scored"] = eval_tokens_scored;
  j["expert_bits_per_weight"] = expert_bits_per_weight;
  j["bytes_before"] = bytes_before;
  j["bytes_after"] = bytes_after;
  j["compression_ratio"] = bytes_after ? double(bytes_before) / double(bytes_after) : 0.0;
  j["seconds"] = seconds;
  nlohmann::ordered_json st = nlohmann::ordered_json::object();
  for (auto& [k, v] : stage_seconds) st[k] = v;
  j["stage_seconds"] = st;
  return j;
}

Result run(const Recipe& recipe, const Options& opt) {
  const auto t0 = std::chrono::steady_clock::now();
  quantize::register_packed_format();  // the result is opened again for evaluation and the report
  Result res;
  auto src = model::open_model(opt.model);
  const auto& spec = src->spec();
  if (!dynamic_cast<const model::CheckpointSource*>(src.get()))
    fail(opt.model.string(), ": moec compress takes a Hugging Face checkpoint (this one is already compressed)");
  if (opt.calib.empty()) fail("--calib is required (calibration tokens for profiling and GPTQ)");
  auto calib = profile::load_domain("calib", opt.calib, spec.vocab);
  if (opt.max_calib_tokens > 0 && int64_t(calib.tokens.size()) > opt.max_calib_tokens) calib.tokens.resize(size_t(opt.max_calib_tokens));
  if (!opt.eval.empty()) io::read_tokens_npy(opt.eval);  // fail early on a bad eval file

  // --- output directory and resumable state
  const fs::path work = opt.out / ".work";
  nlohmann::ordered_json state;
  state["recipe"] = recipe.str();
  state["model_config_sha256"] = sha256_file(opt.model / "config.json");
  state["calib_sha256"] = calib.token_sha256;
  state["max_calib_tokens"] = opt.max_calib_tokens;
  state["seq_len"] = opt.seq_len;
  if (fs::exists(opt.out)) {
    if (opt.resume && fs::exists(work / "state.json")) {
      auto old = nlohmann::json::parse(read_file(work / "state.json"));
      if (old.dump() != nlohmann::json(state).dump())
        fail(opt.out.string(), ": --resume refused: the unfinished run used another recipe, model or calibration (",
             (work / "state.json").string(), ")");
      log_info("resuming the run in " + opt.out.string());
    } else if (opt.force) {
      check_output_dir(opt.out, opt.model, true);
      fs::remove_all(opt.out);
    } else if (opt.resume) {
      fail(opt.out.string(), ": nothing to resume (no .work/state.json); use --force to start over");
    } else {
      fail("output ", opt.out.string(), " already exists (use --resume to continue an interrupted run, --force to replace it)");
    }
  }
  check_output_dir(opt.out, opt.model, true);
  fs::create_directories(work);
  write_file_atomic(work / "state.json", nlohmann::json(state).dump());

  const Stage* prune_st = recipe.find("prune");
  const Stage* quant_st = recipe.find("quant");
  const int nstages = (prune_st != nullptr) * 2 + 1 + (!opt.eval.empty()) * 2;
  int stage_no = 0;
  auto announce = [&](const std::string& what) { log_info("[" + std::to_string(++stage_no) + "/" + std::to_string(nstages) + "] " + what); };

  // --- evaluate the source
  if (!opt.eval.empty()) {
    announce("evaluate the source model on " + opt.eval.filename().string());
    auto t = std::chrono::steady_clock::now();
    res.ppl_before = evaluate_file(*src, opt.eval, opt.max_eval_tokens, opt.seq_len, opt.progress, nullptr);
    res.stage_seconds.push_back({"eval before", since(t)});
  }

  // --- profile + prune plan
  std::optional<profile::ProfileStats> stats;
  prune::PrunePlan plan;
  std::unique_ptr<model::WeightSource> pruned;
  const model::WeightSource* current = src.get();
  if (prune_st) {
    auto t = std::chrono::steady_clock::now();
    const fs::path stats_file = work / "stats.h5";
    announce("profile routing on " + opt.calib.filename().string());
    if (opt.resume && fs::exists(stats_file)) {
      stats = profile::read_stats_h5(stats_file);
      log_info("  reusing " + stats_file.string());
    } else {
      profile::ProfileOptions po;
      po.seq_len = opt.seq_len;
      po.progress = opt.progress;
      po.model_path = opt.model.string();
      po.created = "1970-01-01T00:00:00Z";  // fixed: the output must not depend on the clock
      stats = profile::profile_model(*src, {calib}, po);
      profile::write_stats_h5(*stats, stats_file);
    }
    res.stage_seconds.push_back({"profile", since(t)});
    maybe_die("profile");
    t = std::chrono::steady_clock::now();
    const fs::path plan_file = work / "plan.json";
    announce("plan pruning (" + prune_st->method + ")");
    if (opt.resume && fs::exists(plan_file)) {
      plan = prune::read_plan(plan_file);
    } else {
      auto crit = prune::parse_criterion(prune_st->method);
      int keep = prune::keep_count(spec.routing.num_experts, prune_st->params.count("keep") ? std::stoi(prune_st->params.at("keep")) : 0,
                                   prune_st->params.count("ratio") ? std::stod(prune_st->params.at("ratio")) : 0.0);
      auto scores = prune::layer_scores(*stats, crit, {});
      auto keep_sets = prune::select_uniform(scores, keep);
      plan.method = prune_st->method;
      plan.domains = {"total"};
      plan.model_type = spec.model_type;
      plan.config_sha256 = state["model_config_sha256"];
      plan.num_layers = spec.num_layers;
      plan.num_experts = spec.routing.num_experts;
      plan.top_k = spec.routing.top_k;
      plan.calib_file = opt.calib.string();
      plan.calib_tokens = int64_t(calib.tokens.size());
      plan.sequential = false;
      plan.layers = prune::layer_plans(spec, keep_sets, scores);
      prune::validate_plan(plan, spec, plan.config_sha256, "compress plan", true);
      prune::write_plan(plan, plan_file);
    }
    pruned = prune::pruned_view(*src, plan);
    current = pruned.get();
    res.stage_seconds.push_back({"plan", since(t)});
    maybe_die("plan");
  }

  // --- write the checkpoint into .work/out, then move it into OUT
  const fs::path staged = work / "out";
  fs::remove_all(staged);
  auto t = std::chrono::steady_clock::now();
  if (quant_st) {
    announce("quantize experts (" + quant_st->method + ", sequential, layer by layer)");
    auto co = quant_options(*quant_st, opt.seq_len);
    co.progress = opt.progress;
    nlohmann::ordered_json rj = recipe.to_json();
    rj["calib"] = {{"file", opt.calib.filename().string()}, {"sha256", calib.token_sha256}, {"tokens", int64_t(calib.tokens.size())}};
    if (prune_st) rj["prune_plan"] = prune::plan_to_json(plan);
    quantize::PackedCheckpointWriter writer(staged, opt.model, rj);
    if (prune_st) {
      auto cfg = nlohmann::ordered_json::parse(read_file(opt.model / "config.json"));
      prune::update_config(cfg, spec, plan.kept_per_layer());
      writer.replace_config(cfg.dump(2) + "\n");
    }
    auto rep = quantize::quantize_experts(*current, calib.tokens, co,
                                          [&](const std::string& name, const PackedMatrix& m, const nlohmann::ordered_json& info) {
                                            writer.add_packed(name, m, info);
                                          });
    writer.add_remaining(*current);
    writer.finish();
    res.expert_bits_per_weight = rep.expert_bits_per_weight();
    res.stage_seconds.push_back({"quantize", since(t)});
  } else {
    announce("write the pruned checkpoint");
    prune::ApplyOptions ao;
    prune::apply_plan(plan, opt.model, staged, ao);
    res.expert_bits_per_weight = 16.0;  // experts keep their stored dtype
    res.stage_seconds.push_back({"write", since(t)});
  }
  maybe_die("quantize");
  // Copy any non-weight files of the source the writers did not (tokenizer, generation config, README).
  for (auto& e : fs::directory_iterator(opt.model)) {
    const auto name = e.path().filename().string();
    if (!e.is_regular_file() || name.find(".safetensors") != std::string::npos || fs::exists(staged / name)) continue;
    fs::copy_file(e.path(), staged / name);
  }
  for (auto& e : fs::directory_iterator(staged)) fs::rename(e.path(), opt.out / e.path().filename());
  fs::remove_all(staged);

  // --- evaluate the result, sizes, report
  auto after = model::open_model(opt.out);
  if (!opt.eval.empty()) {
    announce("evaluate the compressed model on " + opt.eval.filename().string());
    auto te = std::chrono::steady_clock::now();
    res.ppl_after = evaluate_file(*after, opt.eval, opt.max_eval_tokens, opt.seq_len, opt.progress, &res.eval_tokens_scored);
    res.stage_seconds.push_back({"eval after", since(te)});
  }
  auto before_b = bytes_by_category(*src), after_b = bytes_by_category(*after);
  for (auto& [k, v] : before_b) res.bytes_before += uint64_t(v);
  for (auto& [k, v] : after_b) res.bytes_after += uint64_t(v);

  report::CompressionData d;
  d.model = opt.model.string();
  d.command = opt.command_line;
  d.recipe = recipe.str();
  for (auto& [k, v] : before_b) d.sizes.push_back({k, v, after_b.count(k) ? after_b[k] : 0.0});
  // Per layer: routed-expert bits per weight and relative weight error of the kept experts.
  auto* packed = dynamic_cast<const quantize::PackedSource*>(after.get());
  const auto& as = after->spec();
  for (int l = 0; l < as.num_layers; ++l) {
    if (!as.moe_layer[size_t(l)]) continue;
    double bits = 0, weights = 0, err2 = 0, ref2 = 0;
    for (int e = 0; e < as.routing.num_experts; ++e)
      for (auto p : {model::Proj::Gate, model::Proj::Up, model::Proj::Down}) {
        const std::string name = as.expert(l, e, p);
        Matrix w = after->matrix(name);
        weights += double(w.size());
        bits += packed && packed->is_packed(name) ? 8.0 * double(stored_bytes(packed->packed(name))) : 16.0 * double(w.size());
        Matrix orig = current->matrix(name);  // the (pruned) source's weights of the same expert
        err2 += double((w - orig).squaredNorm());
        ref2 += double(orig.squaredNorm());
        after->release(name);
      }
    d.layer_names.push_back("layer " + std::to_string(l));
    d.bits_per_weight.push_back(weights > 0 ? bits / weights : 0);
    d.recon_error.push_back(ref2 > 0 ? std::sqrt(err2 / ref2) : 0);
  }
  if (!opt.eval.empty()) {
    d.perplexity.push_back({opt.eval.filename().string(), res.ppl_before, res.ppl_after});
    report::Series s;
    s.name = "this run";
    s.line = false;
    s.show_labels = true;
    s.points.push_back({16.0, res.ppl_before, "source (bf16)"});
    s.points.push_back({res.expert_bits_per_weight, res.ppl_after, recipe.str()});
    d.tradeoff.push_back(s);
  }
  res.seconds = since(t0);
  d.stage_seconds = res.stage_seconds;
  report::Page page("moec compress: " + opt.model.filename().string());
  report::add_compression(page, d);
  if (stats) profile::add_profile_report(page, *stats);
  page.write(opt.out / "report.html");
  nlohmann::ordered_json rj;
  rj["model"] = opt.model.string();
  // The exact command is in report.html; report.json holds only what determines the output, so that a
  // resumed run (whose command line has --resume) writes the same bytes.
  rj["recipe"] = recipe.to_json();
  rj["result"] = res.to_json();
  rj["bits_per_weight_by_layer"] = d.bits_per_weight;
  rj["relative_weight_error_by_layer"] = d.recon_error;
  nlohmann::ordered_json sz = nlohmann::ordered_json::object();
  for (auto& r : d.sizes) sz[r.category] = {{"before", r.before_bytes}, {"after", r.after_bytes}};
  rj["bytes_by_category"] = sz;
  rj["result"].erase("seconds");  // report.json stays byte-identical across runs; timings are in report.html
  rj["result"].erase("stage_seconds");
  write_file_atomic(opt.out / "report.json", rj.dump(2) + "\n");
  if (stats) fs::rename(work / "stats.h5", opt.out / "stats.h5");
  if (prune_st) fs::rename(work / "plan.json", opt.out / "plan.json");
  fs::remove_all(work);
  return res;
}

}  // namespace moec::compress
