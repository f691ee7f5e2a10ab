// The compress pipeline: profile (when a stage needs statistics) -> prune plan or merged checkpoint ->
// quantize (sequential, layer by layer, on the pruned view / merged model) -> evaluate -> report.
// Intermediate results live in OUT/.work: a state file naming the recipe and input hashes, the statistics,
// the prune plan or the merged checkpoint, and one commit per quantized layer (compress/internal.h);
// --resume reuses them when the state matches, so a killed run continues where it stopped.
#include <csignal>
#include <chrono>
#include <cmath>
#include <cstdlib>

#include "compress/compress.h"
#include "compress/internal.h"
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

// Test hooks: die like kill -9 right after a stage (profile, plan, merge, quantize) has committed its
// result, or right after quantized layer N has been committed.
void maybe_die(const std::string& stage) {
  const char* k = std::getenv("MOEC_TEST_KILL_AFTER_STAGE");
  if (k && stage == k) std::raise(SIGKILL);
}
void maybe_die_after_layer(int layer) {
  const char* k = std::getenv("MOEC_TEST_KILL_AFTER_LAYER");
  if (k && std::atoi(k) == layer) std::raise(SIGKILL);
}

// Routed-expert weights of a model (all MoE layers).
double expert_weights(const model::ModelSpec& s) {
  double n = 0;
  for (int l = 0; l < s.num_layers; ++l)
    if (s.moe_layer[size_t(l)]) n += double(s.routing.num_experts) * double(s.expert_params());
  return n;
}

// `budget_scale`: routed-expert weights of the source / of the model being quantized (> 1 after pruning or
// merging), since a recipe's budget is in bits per routed-expert weight of the source model.
quantize::CalibrateOptions quant_options(const Stage& st, int seq_len, double budget_scale) {
  quantize::CalibrateOptions co;
  auto get = [&](const std::string& k, const std::string& d) { return st.params.count(k) ? st.params.at(k) : d; };
  co.method = st.method == "rtn" ? quantize::Method::Rtn : quantize::Method::Gptq;
  const std::string group = get("group", st.params.count("bits") && st.params.at("bits") == "ternary" ? "0" : "128");
  const std::string gs = group == "0" ? ":row" : ":g" + group;
  if (st.method == "mixed") {
    co.budget_bits = std::stod(st.params.at("budget")) * budget_scale;
    co.candidates = quantize::default_candidates(true);  // int3/int2 + ternary codes from dense to sparse
    co.spec = co.candidates.front();
    co.subbit = true;  // ternary candidates in their smallest (entropy-coded) storage
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
    // Sizes from the metadata: verifying checksums here would read (and keep resident) the whole model.
    if (packed && packed->is_packed(t.name)) b = double(packed->stored_bytes(t.name));
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
  j["expert_bits_per_source_weight"] = expert_bits_per_source_weight;
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
  auto* src_ckpt = dynamic_cast<const model::CheckpointSource*>(src.get());
  if (!src_ckpt) fail(opt.model.string(), ": moec compress takes a Hugging Face checkpoint (this one is already compressed)");
  if (opt.calib.empty()) fail("--calib is required (calibration tokens for profiling and GPTQ)");
  const Stage* prune_st = recipe.find("prune");
  const Stage* merge_st = recipe.find("merge");
  const Stage* quant_st = recipe.find("quant");
  // What the recipe asks of this model, checked before any work.
  std::optional<merge::PipelineOptions> mopt;
  if (merge_st) {
    mopt = merge_options(*merge_st, spec.routing.num_experts);
    if (mopt->keep > spec.routing.num_experts || mopt->keep < spec.routing.top_k)
      fail("recipe: merge keeps ", mopt->keep, " experts per layer; this model has ", spec.routing.num_experts,
           " and routes each token to ", spec.routing.top_k, " (allowed: ", spec.routing.top_k, "..", spec.routing.num_experts, ")");
    for (int l = 0; l < spec.num_layers; ++l)
      if (!spec.moe_layer[size_t(l)]) fail("recipe: merge stages need every layer to be an MoE layer (layer ", l, " is a dense MLP)");
    mopt->window = opt.seq_len;
    mopt->progress = opt.progress;
  }
  if (prune_st)
    prune::keep_count(spec.routing.num_experts, prune_st->params.count("keep") ? std::stoi(prune_st->params.at("keep")) : 0,
                      prune_st->params.count("ratio") ? std::stod(prune_st->params.at("ratio")) : 0.0);
  auto calib = profile::load_domain("calib", opt.calib, spec.vocab);
  if (opt.max_calib_tokens > 0 && int64_t(calib.tokens.size()) > opt.max_calib_tokens) calib.tokens.resize(size_t(opt.max_calib_tokens));
  if (!opt.eval.empty()) io::read_tokens_npy(opt.eval);  // fail early on a bad eval file
  if (mopt) mopt->calib_tokens = int64_t(calib.tokens.size());

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

  const int nstages = (prune_st != nullptr || merge_st != nullptr) * 2 + 1 + (!opt.eval.empty()) * 2;
  int stage_no = 0;
  auto announce = [&](const std::string& what) { log_info("[" + std::to_string(++stage_no) + "/" + std::to_string(nstages) + "] " + what); };

  // --- evaluate the source
  if (!opt.eval.empty()) {
    announce("evaluate the source model on " + opt.eval.filename().string());
    auto t = std::chrono::steady_clock::now();
    res.ppl_before = evaluate_file(*src, opt.eval, opt.max_eval_tokens, opt.seq_len, opt.progress, nullptr);
    res.stage_seconds.push_back({"eval before", since(t)});
  }

  // --- profile, then the prune plan or the merged checkpoint
  std::optional<profile::ProfileStats> stats;
  prune::PrunePlan plan;
  nlohmann::ordered_json merge_plan;
  std::unique_ptr<model::WeightSource> reduced;  // the pruned view or the merged checkpoint
  const model::WeightSource* current = src.get();
  const fs::path merged_dir = work / "merged";
  if (prune_st || merge_st) {
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
  }
  if (prune_st) {
    auto t = std::chrono::steady_clock::now();
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
    reduced = prune::pruned_view(*src, plan);
    current = reduced.get();
    res.stage_seconds.push_back({"plan", since(t)});
    maybe_die("plan");
  }
  if (merge_st) {
    auto t = std::chrono::steady_clock::now();
    announce("merge experts (" + merge_st->method + ", " + std::to_string(mopt->keep) + " per layer)");
    // The merged model is a complete dense checkpoint in .work/merged (renamed into place when complete),
    // read back layer by layer by the quantize stage.
    if (opt.resume && fs::exists(merged_dir / "moec.json")) {
      log_info("  reusing " + merged_dir.string());
    } else {
      fs::remove_all(merged_dir);
      profile::check_stats_match(*stats, spec, opt.model);
      auto signals = merge::signals_from_profile(*stats, spec);
      merge::MergedCheckpointWriter writer(*src_ckpt, merged_dir, true);
      auto mp = merge::merge_model(*src, *mopt, &signals, nullptr, calib.tokens,
                                   [&](int l, merge::MergedLayer&& m) { writer.add_layer(l, m); });
      writer.finish(mopt->keep, mp);
    }
    auto meta = nlohmann::ordered_json::parse(read_file(merged_dir / "moec.json"));
    merge_plan = meta.at("plan");
    reduced = std::make_unique<model::CheckpointSource>(merged_dir);
    current = reduced.get();
    res.stage_seconds.push_back({"merge", since(t)});
    maybe_die("merge");
  }

  // --- write the checkpoint into .work/out, then move it into OUT
  const fs::path staged = work / "out";
  fs::remove_all(staged);
  auto t = std::chrono::steady_clock::now();
  if (quant_st) {
    announce("quantize experts (" + quant_st->method + ", sequential, layer by layer)");
    auto co = quant_options(*quant_st, opt.seq_len, expert_weights(spec) / std::max(1.0, expert_weights(current->spec())));
    co.progress = opt.progress;
    nlohmann::ordered_json rj = recipe.to_json();
    rj["calib"] = {{"file", opt.calib.filename().string()}, {"sha256", calib.token_sha256}, {"tokens", int64_t(calib.tokens.size())}};
    if (prune_st) rj["prune_plan"] = prune::plan_to_json(plan);
    if (merge_st) rj["merge_plan"] = merge_plan;
    // Every finished layer is committed to .work/quant; a resumed run restores the committed layers and
    // the activations after the last one, and continues with the next layer.
    const auto& cs = current->spec();
    const bool need_data = co.method == quantize::Method::Gptq || co.budget_bits > 0;
    const int64_t h_rows = need_data && opt.seq_len > 0 ? int64_t(calib.tokens.size()) / opt.seq_len * opt.seq_len : 0;
    LayerStore layers(work / "quant");
    quantize::ResumePoint rp;
    const int restored = layers.restore(cs.num_layers, h_rows, cs.hidden, rp);
    if (restored > 0)
      log_info("  restored quantized layers 0.." + std::to_string(restored - 1) + " from " + layers.dir().string());
    auto rep = quantize::quantize_experts(
        *current, calib.tokens, co,
        [&](const std::string& name, const PackedMatrix& m, const nlohmann::ordered_json& info) { layers.add(name, m, info); },
        &rp, [&](int l, const Matrix* h, const quantize::CalibrateReport& part) {
          layers.commit(l, h, part);
          maybe_die_after_layer(l);
        });
    quantize::PackedCheckpointWriter writer(staged, opt.model, rj);
    if (prune_st) {
      auto cfg = nlohmann::ordered_json::parse(read_file(opt.model / "config.json"));
      prune::update_config(cfg, spec, plan.kept_per_layer());
      writer.replace_config(cfg.dump(2) + "\n");
    }
    if (merge_st) writer.replace_config(read_file(merged_dir / "config.json"));
    layers.assemble(cs.num_layers, writer);
    writer.add_remaining(*current);
    writer.finish();
    res.expert_bits_per_weight = rep.expert_bits_per_weight();
    res.stage_seconds.push_back({"quantize", since(t)});
  } else if (merge_st) {
    announce("write the merged checkpoint");
    reduced.reset();
    current = src.get();
    fs::rename(merged_dir, staged);
    res.expert_bits_per_weight = 16.0;  // experts keep their stored dtype
    res.stage_seconds.push_back({"write", since(t)});
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
  res.expert_bits_per_source_weight =
      res.expert_bits_per_weight * expert_weights(current->spec()) / std::max(1.0, expert_weights(spec));

  // --- evaluate the result, sizes, report
  auto after = model::open_model(opt.out);
  if (merge_st && !quant_st) current = after.get();  // the merged experts are the result: nothing to compare them with
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
        bits += packed && packed->is_packed(name) ? 8.0 * double(packed->stored_bytes(name)) : 16.0 * double(w.size());
        Matrix orig = current->matrix(name);  // the (pruned or merged) source's weights of the same expert
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
  if (merge_st) write_file_atomic(opt.out / "merge_plan.json", merge_plan.dump(2) + "\n");
  reduced.reset();
  fs::remove_all(work);
  return res;
}

}  // namespace moec::compress
