#include "quantize/calibrate.h"

#include <algorithm>
#include <chrono>
#include <memory>

#include "core/error.h"
#include "core/progress.h"
#include "model/forward.h"
#include "quantize/allocate.h"
#include "quantize/checkpoint.h"
#include "quantize/rtn.h"

namespace moec::quantize {

using model::Proj;

Codec codec_for(const QuantSpec& spec, bool subbit) {
  if (spec.kind == CodeKind::Ternary) return subbit ? Codec::Subbit : Codec::Tern2;
  switch (spec.bits) {
    case 8: return Codec::Int8;
    case 4: return Codec::Int4;
    case 3: return Codec::Int3;
    case 2: return Codec::Int2;
  }
  fail("no codec stores ", spec.bits, "-bit integer codes (spec ", to_string(spec), ")");
}

void check_packable(const QuantSpec& spec, const std::string& what) {
  validate(spec);
  if (spec.group != 0 && spec.group % 32 != 0)
    fail(what, ": group size ", spec.group, " cannot be packed (codecs need 0 = per row, or a multiple of 32)");
}

namespace {

constexpr Proj kProjs[3] = {Proj::Gate, Proj::Up, Proj::Down};

// Hessians of the expert inputs of one layer (gate/up: the routed tokens; optionally down: `act`), and the
// routing mass each expert receives.
struct Collector : model::ForwardHooks {
  int layer;
  bool want_x, want_act;
  std::vector<HessianAccumulator> hx, hact;
  std::vector<double> mass;
  std::vector<int64_t> count;
  Collector(int l, int E, int H, int I, bool x, bool act) : layer(l), want_x(x), want_act(act), mass(size_t(E), 0.0), count(size_t(E), 0) {
    for (int e = 0; e < E; ++e) {
      hx.emplace_back(x ? H : 1);
      hact.emplace_back(act ? I : 1);
    }
  }
  bool want_expert_detail(int l) const override { return l == layer; }
  void on_moe(int l, const Matrix&, const Matrix&, const model::Routing& r) override {
    if (l != layer) return;
    for (size_t i = 0; i < size_t(r.n) * size_t(r.k); ++i) mass[size_t(r.expert[i])] += double(r.weight[i]);
  }
  void on_expert(int l, int e, const std::vector<int>& tokens, const Matrix& x, const Matrix& act, const Matrix&) override {
    if (l != layer) return;
    count[size_t(e)] += int64_t(tokens.size());
    if (want_x && x.rows()) hx[size_t(e)].add(x);
    if (want_act && act.rows()) hact[size_t(e)].add(act);
  }
};

// Runs the MoE block of layer l over x in chunks of rows; returns the output when `out` is set.
void run_moe(const model::Forward& fwd, int l, const model::LayerWeights& w, const Matrix& x, int64_t chunk,
             model::ForwardHooks* hooks, Matrix* out) {
  if (out) out->resize(x.rows(), x.cols());
  for (int64_t r = 0; r < x.rows(); r += chunk) {
    const int64_t n = std::min(chunk, x.rows() - r);
    Matrix xc = x.middleRows(r, n);
    Matrix y = fwd.moe(l, w, xc, hooks);
    if (out) out->middleRows(r, n) = y;
  }
}

struct Quantized {
  QuantizedMatrix q;
  std::string path;
  nlohmann::ordered_json info;
};

Quantized quantize_one(const Matrix& W, const HessianAccumulator* acc, const QuantSpec& spec, const CalibrateOptions& opt) {
  Quantized r;
  r.info["method"] = opt.method == Method::Gptq ? "gptq" : "rtn";
  r.info["spec"] = to_string(spec);
  if (opt.method == Method::Rtn || !acc) {
    r.q = quantize_rtn(W, spec);
    r.path = "rtn";
    return r;
  }
  GptqResult g = gptq(W, *acc, spec, opt.gptq);
  r.q = std::move(g.q);
  r.path = to_string(g.path);
  r.info["path"] = r.path;
  r.info["tokens"] = g.tokens;
  r.info["damp"] = g.damp;
  r.info["loss"] = g.loss;
  if (!g.note.empty()) r.info["note"] = g.note;
  return r;
}

}  // namespace

std::vector<QuantSpec> default_candidates(bool subbit) {
  const char* plain[] = {"int4:g128:asym", "int3:g128:asym", "int2:g128:asym", "ternary:minmax:row"};
  const char* sparse[] = {"int3:g128:asym", "int2:g128:asym", "ternary:minmax:row", "ternary:minmax:row:rd0.1",
                          "ternary:minmax:row:rd0.2", "ternary:minmax:row:rd0.4", "ternary:minmax:row:rd0.8",
                          "ternary:minmax:row:dz1"};
  std::vector<QuantSpec> out;
  if (subbit)
    for (const char* t : sparse) out.push_back(parse_quant_spec(t));
  else
    for (const char* t : plain) out.push_back(parse_quant_spec(t));
  return out;
}

void CalibrateReport::append(const CalibrateReport& part) {
  experts.insert(experts.end(), part.experts.begin(), part.experts.end());
  expert_weights += part.expert_weights;
  expert_bytes += part.expert_bytes;
  fallbacks += part.fallbacks;
}

CalibrateReport quantize_experts(const model::WeightSource& src, const std::vector<int32_t>& tokens,
                                 const CalibrateOptions& opt, const PackedSink& sink, ResumePoint* resume,
                                 const LayerDone& on_layer) {
  const auto t0 = std::chrono::steady_clock::now();
  const auto& s = src.spec();
  const int E = s.routing.num_experts, H = s.hidden, I = s.moe_intermediate, T = opt.seq_len;
  const bool mixed = opt.budget_bits > 0;
  const std::vector<QuantSpec> specs = mixed ? opt.candidates : std::vector<QuantSpec>{opt.spec};
  if (specs.empty()) fail("quantize: no candidate specs for the mixed-precision budget");
  for (auto& sp : specs) check_packable(sp, "quantize spec " + to_string(sp));
  const bool need_data = opt.method == Method::Gptq || mixed;
  CalibrateReport rep;
  const int first = resume ? resume->first_layer : 0;
  if (first < 0 || first > s.num_layers) fail("quantize: cannot resume at layer ", first, " of ", s.num_layers);
  if (resume) rep = resume->done;

  // Calibration activations: whole windows only.
  Matrix h;
  int64_t N = 0;
  if (need_data) {
    if (T < 2) fail("quantize: --seq-len must be >= 2");
    N = int64_t(tokens.size()) / T * T;
    if (N == 0) fail("quantize: calibration data has ", tokens.size(), " tokens, fewer than one window of ", T);
    model::check_tokens(tokens, s.vocab, "calibration tokens");
    if (first > 0) {
      if (resume->h.rows() != N || resume->h.cols() != H)
        fail("quantize: resumed activations are ", resume->h.rows(), " x ", resume->h.cols(), ", expected ", N, " x ", H);
      h = std::move(resume->h);
    } else {
      model::Forward fwd(src);
      h = fwd.embed(tokens.data(), N);
    }
  }
  rep.calib_tokens = N;
  const int64_t chunk = std::max<int64_t>(T, opt.chunk_tokens / std::max(1, T) * std::max(1, T));

  for (int l = first; l < s.num_layers; ++l) {
    const auto tl = std::chrono::steady_clock::now();
    CalibrateReport lrep;  // this layer's part
    // A fresh overlay per layer: quantized experts of earlier layers are no longer needed (h is past them).
    model::OverlaySource ov(src);
    model::Forward fwd(ov);
    model::LayerWeights w;
    Matrix x;
    if (need_data) {
      w = fwd.load_layer(l);
      for (int64_t r = 0; r < N; r += chunk) {  // attention is per window: chunks of whole windows
        const int64_t n = std::min(chunk, N - r);
        Matrix hc = h.middleRows(r, n);
        fwd.attention(l, w, hc, T);
        h.middleRows(r, n) = hc;
      }
      x = fwd.moe_input(w, h);
    }
    if (!s.moe_layer[size_t(l)]) {  // dense MLP layers are kept as they are
      if (need_data) {
        Matrix y;
        run_moe(fwd, l, w, x, chunk, nullptr, &y);
        h += y;
      }
      if (on_layer) on_layer(l, need_data ? &h : nullptr, lrep);
      continue;
    }

    // Pass 1: Hessians of the gate/up inputs (+ of down's input with the original gate/up, for scoring).
    std::unique_ptr<Collector> c1;
    if (need_data) {
      c1 = std::make_unique<Collector>(l, E, H, I, opt.method == Method::Gptq || mixed, mixed);
      run_moe(fwd, l, w, x, chunk, c1.get(), nullptr);
    }
    std::vector<double> importance(size_t(E), 0.0);
    for (int e = 0; e < E; ++e) {
      if (l < int(opt.importance.size()) && e < int(opt.importance[size_t(l)].size()))
        importance[size_t(e)] = opt.importance[size_t(l)][size_t(e)];
      else if (c1)
        importance[size_t(e)] = c1->mass[size_t(e)] / double(N);
    }

    // Mixed precision: score every candidate on every expert, then an exact knapsack under the budget.
    std::vector<int> choice(size_t(E), 0);
    if (mixed) {
      std::vector<ExpertCandidates> cands(static_cast<size_t>(E));
      for (int e = 0; e < E; ++e) {
        auto& ce = cands[size_t(e)];
        ce.name = s.expert(l, e, Proj::Gate);
        ce.weights = s.expert_params();
        Matrix Wm[3];
        MatrixD Hm[3];
        for (int p = 0; p < 3; ++p) Wm[p] = src.matrix(s.expert(l, e, kProjs[p]));
        Hm[0] = c1->hx[size_t(e)].hessian();
        Hm[1] = Hm[0];
        Hm[2] = c1->hact[size_t(e)].hessian();
        for (auto& sp : specs) {
          double loss = 0, bytes = 0;
          for (int p = 0; p < 3; ++p) {
            const HessianAccumulator* acc = p < 2 ? &c1->hx[size_t(e)] : &c1->hact[size_t(e)];
            Quantized q = quantize_one(Wm[p], acc, sp, opt);
            loss += proxy_loss(Wm[p], q.q, Hm[p]);
            bytes += double(stored_bytes(pack(q.q, codec_for(sp, opt.subbit)).view()));
          }
          ce.options.push_back({8.0 * bytes / double(ce.weights), importance[size_t(e)] * loss});
        }
      }
      BitAllocation a = allocate_bits(cands, opt.budget_bits);
      choice = a.choice;
    }

    // Quantize one projection of every expert, pack, hand to the sink and to the overlay.
    std::vector<ExpertRecord> recs(static_cast<size_t>(E));
    std::vector<uint64_t> bytes(size_t(E), 0);
    auto do_proj = [&](int p, const Collector* c) {
      for (int e = 0; e < E; ++e) {
        const QuantSpec& sp = specs[size_t(choice[size_t(e)])];
        const std::string name = s.expert(l, e, kProjs[p]);
        Matrix W = src.matrix(name);
        const HessianAccumulator* acc = nullptr;
        if (c && opt.method == Method::Gptq) acc = p < 2 ? &c->hx[size_t(e)] : &c->hact[size_t(e)];
        Quantized q = quantize_one(W, acc, sp, opt);
        src.release(name);
        PackedMatrix m = pack(q.q, codec_for(sp, opt.subbit));
        q.info["codec_name"] = codec_name(m.codec);
        if (need_data) q.info["importance"] = importance[size_t(e)];
        if (opt.method == Method::Gptq && q.path != "gptq") ++lrep.fallbacks;  // few tokens / raised damp / RTN
        bytes[size_t(e)] += stored_bytes(m.view());
        auto& r = recs[size_t(e)];
        r.layer = l;
        r.expert = e;
        if (p == 0) {  // c1 (routing counts) is gone by the time down_proj is quantized
          r.tokens = c1 ? c1->count[size_t(e)] : 0;
          r.gate_mass = c1 ? c1->mass[size_t(e)] / double(N) : 0.0;
        }
        r.spec = to_string(sp);
        r.codec = codec_name(m.codec);
        r.path[p] = q.path;
        sink(name, m, q.info);
        if (need_data) ov.set(name, PackedLinear::owning(std::move(m)));
      }
    };
    do_proj(0, c1.get());
    do_proj(1, c1.get());
    c1.reset();
    // Pass 2: down_proj's input with the quantized gate/up.
    std::unique_ptr<Collector> c2;
    if (opt.method == Method::Gptq) {
      c2 = std::make_unique<Collector>(l, E, H, I, false, true);
      run_moe(fwd, l, w, x, chunk, c2.get(), nullptr);
    }
    do_proj(2, c2.get());
    c2.reset();
    // Pass 3: the layer's output through the quantized experts feeds the next layer.
    if (need_data) {
      Matrix y;
      run_moe(fwd, l, w, x, chunk, nullptr, &y);
      h += y;
    }
    int64_t tmin = INT64_MAX, tmax = 0;
    for (int e = 0; e < E; ++e) {
      recs[size_t(e)].bits_per_weight = 8.0 * double(bytes[size_t(e)]) / double(s.expert_params());
      lrep.expert_bytes += bytes[size_t(e)];
      lrep.expert_weights += s.expert_params();
      tmin = std::min(tmin, recs[size_t(e)].tokens);
      tmax = std::max(tmax, recs[size_t(e)].tokens);
      lrep.experts.push_back(recs[size_t(e)]);
    }
    rep.append(lrep);
    if (on_layer) on_layer(l, need_data ? &h : nullptr, lrep);
    if (opt.progress) {
      double lb = 0;
      for (int e = 0; e < E; ++e) lb += double(bytes[size_t(e)]);
      char msg[256];
      std::snprintf(msg, sizeof msg, "quantize: layer %d/%d: %d experts, %.3f bits/weight, tokens per expert %lld..%lld, %.1f s",
                    l + 1, s.num_layers, E, 8.0 * lb / double(int64_t(E) * s.expert_params()), (long long)(need_data ? tmin : 0),
                    (long long)tmax, std::chrono::duration<double>(std::chrono::steady_clock::now() - tl).count());
      log_info(msg);
    }
  }
  rep.seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  return rep;
}

}  // namespace moec::quantize
