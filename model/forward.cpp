#include "model/forward.h"

#include <cblas.h>
#include <malloc.h>
#include <omp.h>

#include <algorithm>
#include <chrono>
#include <cmath>

#include "core/error.h"
#include "core/progress.h"

namespace moec::model {

double EvalResult::ppl() const { return std::exp(nll()); }

void rms_norm_rows(const Matrix& x, const Vector& w, float eps, Matrix& out) {
  out.resize(x.rows(), x.cols());
  const int64_t n = x.rows(), d = x.cols();
#pragma omp parallel for schedule(static)
  for (int64_t i = 0; i < n; ++i) {
    const float* xi = x.row(i).data();
    float ss = 0;
    for (int64_t j = 0; j < d; ++j) ss += xi[j] * xi[j];
    const float r = 1.0f / std::sqrt(ss / float(d) + eps);
    float* o = out.row(i).data();
    for (int64_t j = 0; j < d; ++j) o[j] = w[j] * (xi[j] * r);
  }
}

static inline float silu(float v) { return v / (1.0f + std::exp(-v)); }

Forward::Forward(const WeightSource& src) : src_(src), spec_(src.spec()) {}

void Forward::ensure_rope(int T) const {
  if (rope_len_ >= T) return;
  const int half = spec_.head_dim / 2;
  cos_cache_.resize(T, half);
  sin_cache_.resize(T, half);
  for (int i = 0; i < half; ++i) {
    // As the reference: inv_freq = 1 / theta^(2i/d), computed in fp32.
    float expo = float(2 * i) / float(spec_.head_dim);
    float inv = 1.0f / std::pow(float(spec_.rope_theta), expo);
    for (int p = 0; p < T; ++p) {
      float a = float(p) * inv;
      cos_cache_(p, i) = std::cos(a);
      sin_cache_(p, i) = std::sin(a);
    }
  }
  rope_len_ = T;
}

Matrix Forward::embed(const int32_t* tokens, int64_t n) const {
  Matrix table = src_.matrix(spec_.embed());
  Matrix h(n, spec_.hidden);
  for (int64_t i = 0; i < n; ++i) {
    if (tokens[i] < 0 || tokens[i] >= table.rows()) fail("token id ", tokens[i], " at position ", i, " is outside the vocabulary (", table.rows(), ")");
    h.row(i) = table.row(tokens[i]);
  }
  return h;
}

LayerWeights Forward::load_layer(int l) const {
  const auto& s = spec_;
  LayerWeights w;
  w.attn_norm = src_.vector(s.input_norm(l));
  w.ffn_norm = src_.vector(s.post_attn_norm(l));
  w.q = src_.matrix(s.attn(l, 'q'));
  w.k = src_.matrix(s.attn(l, 'k'));
  w.v = src_.matrix(s.attn(l, 'v'));
  w.o = src_.matrix(s.attn(l, 'o'));
  if (s.qkv_bias) {
    w.q_bias = src_.vector(s.attn_bias(l, 'q'));
    w.k_bias = src_.vector(s.attn_bias(l, 'k'));
    w.v_bias = src_.vector(s.attn_bias(l, 'v'));
  }
  if (s.o_bias) w.o_bias = src_.vector(s.attn_bias(l, 'o'));
  if (s.qk_norm != ModelSpec::QkNorm::None) {
    w.q_norm = src_.vector(s.qk_norm_weight(l, 'q'));
    w.k_norm = src_.vector(s.qk_norm_weight(l, 'k'));
  }
  if (s.moe_layer[size_t(l)]) {
    w.router = src_.matrix(s.router(l));
    if (s.routing.correction_bias) w.router_bias = src_.vector(s.router_bias(l));
  }
  // The fp32 copies are made: let the mmap'd pages go (peak memory stays about one layer).
  for (char c : {'q', 'k', 'v', 'o'}) src_.release(s.attn(l, c));
  return w;
}

static void add_bias(Matrix& y, const Vector& b) {
  if (b.size() == 0) return;
  y.rowwise() += b.transpose();
}

void Forward::attention(int l, const LayerWeights& w, Matrix& h, int T) const {
  const auto& s = spec_;
  const int64_t n = h.rows();
  if (n % T != 0) fail("attention: ", n, " rows are not a whole number of sequences of ", T);
  const int nh = s.n_heads, nkv = s.n_kv_heads, hd = s.head_dim, rep = nh / nkv, half = hd / 2;
  ensure_rope(T);
  Matrix x, Q, K, V;
  rms_norm_rows(h, w.attn_norm, s.rms_eps, x);
  gemm_nt(x, w.q, Q);
  gemm_nt(x, w.k, K);
  gemm_nt(x, w.v, V);
  add_bias(Q, w.q_bias);
  add_bias(K, w.k_bias);
  add_bias(V, w.v_bias);
  if (s.qk_norm == ModelSpec::QkNorm::Full) {  // OLMoE: RMSNorm over the whole projection
    Matrix t;
    rms_norm_rows(Q, w.q_norm, s.rms_eps, t);
    Q.swap(t);
    rms_norm_rows(K, w.k_norm, s.rms_eps, t);
    K.swap(t);
  }
  if (s.clip_qkv > 0) {
    const float c = s.clip_qkv;
    Q = Q.cwiseMax(-c).cwiseMin(c);
    K = K.cwiseMax(-c).cwiseMin(c);
    V = V.cwiseMax(-c).cwiseMin(c);
  }
  // Per-head RMSNorm (Qwen3) and RoPE (half-split rotate convention), in place.
  auto rotate = [&](Matrix& M, int heads, const Vector* norm) {
#pragma omp parallel for schedule(static)
    for (int64_t i = 0; i < n; ++i) {
      const int p = int(i % T);
      for (int hh = 0; hh < heads; ++hh) {
        float* v = M.row(i).data() + int64_t(hh) * hd;
        if (norm) {
          float ss = 0;
          for (int j = 0; j < hd; ++j) ss += v[j] * v[j];
          float r = 1.0f / std::sqrt(ss / float(hd) + s.rms_eps);
          for (int j = 0; j < hd; ++j) v[j] = (*norm)[j] * (v[j] * r);
        }
        for (int j = 0; j < half; ++j) {
          float c = cos_cache_(p, j), sn = sin_cache_(p, j);
          float a = v[j], b = v[j + half];
          v[j] = a * c - b * sn;
          v[j + half] = b * c + a * sn;
        }
      }
    }
  };
  const bool per_head = s.qk_norm == ModelSpec::QkNorm::PerHead;
  rotate(Q, nh, per_head ? &w.q_norm : nullptr);
  rotate(K, nkv, per_head ? &w.k_norm : nullptr);

  Matrix O(n, int64_t(nh) * hd);
  const int64_t nseq = n / T;
  const float scale = 1.0f / std::sqrt(float(hd));
  const int window = s.sliding_window;
  // Heads run in parallel, each with single-threaded BLAS (no oversubscription).
  const int blas_threads = openblas_get_num_threads();
  openblas_set_num_threads(1);
#pragma omp parallel for schedule(dynamic) collapse(2)
  for (int64_t sq = 0; sq < nseq; ++sq) {
    for (int hh = 0; hh < nh; ++hh) {
      const int kvh = hh / rep;
      const int64_t r0 = sq * T;
      // S = q k^T on the strided head slices (OpenBLAS; Eigen's own kernel lacks AVX here).
      thread_local Matrix S;
      S.resize(T, T);
      const float* q = Q.data() + r0 * Q.cols() + int64_t(hh) * hd;
      const float* k = K.data() + r0 * K.cols() + int64_t(kvh) * hd;
      const float* v = V.data() + r0 * V.cols() + int64_t(kvh) * hd;
      cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, T, T, hd, scale, q, int(Q.cols()), k, int(K.cols()), 0.0f,
                  S.data(), T);
      for (int i = 0; i < T; ++i) {
        float* row = S.row(i).data();
        const int lo = window > 0 ? std::max(0, i - window + 1) : 0;
        float m = -INFINITY;
        for (int j = lo; j <= i; ++j) m = std::max(m, row[j]);
        float z = 0;
        for (int j = 0; j < lo; ++j) row[j] = 0;
        for (int j = lo; j <= i; ++j) {
          row[j] = std::exp(row[j] - m);
          z += row[j];
        }
        for (int j = i + 1; j < T; ++j) row[j] = 0;
        const float inv = 1.0f / z;
        for (int j = lo; j <= i; ++j) row[j] *= inv;
      }
      cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, T, hd, T, 1.0f, S.data(), T, v, int(V.cols()), 0.0f,
                  O.data() + r0 * O.cols() + int64_t(hh) * hd, int(O.cols()));
    }
  }
  openblas_set_num_threads(blas_threads);
  Matrix out;
  gemm_nt(O, w.o, out);
  add_bias(out, w.o_bias);
  h += out;
}

Matrix Forward::moe_input(const LayerWeights& w, const Matrix& h) const {
  Matrix x;
  rms_norm_rows(h, w.ffn_norm, spec_.rms_eps, x);
  return x;
}

void Forward::swiglu(const Linear& gate, const Linear& up, const Linear& down, const Matrix& X, Matrix& act, Matrix& out) {
  Matrix u;
  gate.forward(X, act);
  up.forward(X, u);
  const int64_t n = act.size();
  float* a = act.data();
  const float* b = u.data();
#pragma omp parallel for schedule(static) if (n > 65536)
  for (int64_t i = 0; i < n; ++i) a[i] = silu(a[i]) * b[i];
  down.forward(act, out);
}

Matrix Forward::moe(int l, const LayerWeights& w, const Matrix& x, ForwardHooks* hooks) const {
  const auto& s = spec_;
  const int64_t n = x.rows();
  Matrix y = Matrix::Zero(n, s.hidden);
  Matrix act, out;
  if (!s.moe_layer[size_t(l)]) {  // dense MLP layer
    auto g = src_.linear(s.dense_mlp(l, Proj::Gate)), u = src_.linear(s.dense_mlp(l, Proj::Up)),
         d = src_.linear(s.dense_mlp(l, Proj::Down));
    swiglu(*g, *u, *d, x, act, y);
    if (hooks) hooks->on_moe_output(l, x, y);
    return y;
  }
  Matrix logits;
  gemm_nt(x, w.router, logits);
  Routing r = route(logits, s.routing, w.router_bias.size() ? w.router_bias.data() : nullptr);
  if (hooks) hooks->on_moe(l, x, logits, r);
  const int E = s.routing.num_experts, k = r.k;
  // Group token slots by expert: one GEMM per expert over all its tokens.
  std::vector<std::vector<int>> tok(static_cast<size_t>(E));
  std::vector<std::vector<float>> gw(static_cast<size_t>(E));
  for (int64_t t = 0; t < n; ++t)
    for (int j = 0; j < k; ++j) {
      int e = r.expert[size_t(t) * k + j];
      tok[size_t(e)].push_back(int(t));
      gw[size_t(e)].push_back(r.weight[size_t(t) * k + j]);
    }
  const bool detail = hooks && hooks->want_expert_detail(l);
  for (int e = 0; e < E; ++e) {
    const auto& rows = tok[size_t(e)];
    if (rows.empty() && !detail) continue;
    std::string ng = s.expert(l, e, Proj::Gate), nu = s.expert(l, e, Proj::Up), nd = s.expert(l, e, Proj::Down);
    auto g = src_.linear(ng), u = src_.linear(nu), d = src_.linear(nd);
    Matrix X(int64_t(rows.size()), s.hidden);
    for (size_t i = 0; i < rows.size(); ++i) X.row(int64_t(i)) = x.row(rows[i]);
    swiglu(*g, *u, *d, X, act, out);
    if (detail) hooks->on_expert(l, e, rows, X, act, out);
    for (size_t i = 0; i < rows.size(); ++i) y.row(rows[i]) += gw[size_t(e)][i] * out.row(int64_t(i));
    src_.release(ng);
    src_.release(nu);
    src_.release(nd);
  }
  if (s.shared_intermediate > 0) {
    auto g = src_.linear(s.shared_expert(l, Proj::Gate)), u = src_.linear(s.shared_expert(l, Proj::Up)),
         d = src_.linear(s.shared_expert(l, Proj::Down));
    swiglu(*g, *u, *d, x, act, out);
    if (s.shared_expert_gate) {
      Matrix sg = src_.matrix(s.shared_gate(l));  // 1 x H
      Eigen::VectorXf gate = (x * sg.transpose()).col(0);
      for (int64_t t = 0; t < n; ++t) y.row(t) += (1.0f / (1.0f + std::exp(-gate[t]))) * out.row(t);
    } else {
      y += out;
    }
  }
  if (hooks) hooks->on_moe_output(l, x, y);
  return y;
}

void Forward::run_layer(int l, const LayerWeights& w, Matrix& h, int seq_len, ForwardHooks* hooks) const {
  attention(l, w, h, seq_len);
  Matrix x = moe_input(w, h);
  h += moe(l, w, x, hooks);
}

Matrix Forward::logits(const Matrix& h, int64_t begin, int64_t end) const {
  Vector nw = src_.vector(spec_.final_norm());
  Matrix x;
  rms_norm_rows(h.middleRows(begin, end - begin), nw, spec_.rms_eps, x);
  Matrix head = src_.matrix(spec_.lm_head());
  Matrix out;
  gemm_nt(x, head, out);
  return out;
}

void check_tokens(const std::vector<int32_t>& tokens, int vocab, const std::string& what) {
  for (size_t i = 0; i < tokens.size(); ++i)
    if (tokens[i] < 0 || tokens[i] >= vocab)
      fail(what, ": token id ", tokens[i], " at position ", i, " is outside the model's vocabulary [0, ", vocab, ")");
}

EvalResult evaluate(const WeightSource& src, const std::vector<int32_t>& tokens_in, const EvalOptions& opt,
                    ForwardHooks* hooks) {
  const auto& s = src.spec();
  if (opt.window < 2) fail("--window must be at least 2");
  int64_t n = int64_t(tokens_in.size());
  if (opt.max_tokens >= 0) n = std::min(n, opt.max_tokens);
  const int T = opt.window;
  const int64_t windows = n / T;
  if (windows == 0) fail("no complete window of ", T, " tokens to score (", n, " tokens given)");
  const int64_t per_chunk = std::max<int64_t>(1, opt.chunk_tokens / T);
  // Activations are large, short-lived buffers: keep them on the heap instead of mmap/munmap per
  // allocation (that cost more system time than the attention itself).
  static const bool heap_tuned = [] {
    mallopt(M_MMAP_THRESHOLD, 1 << 30);
    mallopt(M_TRIM_THRESHOLD, 1 << 30);
    return true;
  }();
  (void)heap_tuned;
  Forward fwd(src);
  EvalResult res;
  res.windows = windows;
  auto t0 = std::chrono::steady_clock::now();
  Progress prog("eval", windows * T, "tokens");
  // The lm_head and norm are read once per chunk (small next to the layers for MoE models).
  for (int64_t w0 = 0; w0 < windows; w0 += per_chunk) {
    const int64_t nw = std::min(per_chunk, windows - w0);
    const int32_t* tok = tokens_in.data() + w0 * T;
    Matrix h = fwd.embed(tok, nw * T);
    for (int l = 0; l < s.num_layers; ++l) {
      LayerWeights lw = fwd.load_layer(l);
      fwd.run_layer(l, lw, h, T, hooks);
    }
    // Score in blocks of rows so that logits stay small even for large vocabularies.
    const int64_t rows = nw * T, block = std::max<int64_t>(T, (int64_t(1) << 22) / std::max(1, s.vocab) / T * T);
    for (int64_t b = 0; b < rows; b += block) {
      const int64_t e = std::min(rows, b + block);
      Matrix lg = fwd.logits(h, b, e);
      double part = 0;
#pragma omp parallel for reduction(+ : part) schedule(static)
      for (int64_t i = b; i < e; ++i) {
        if ((i % T) == T - 1) continue;  // the last position predicts nothing inside the window
        const float* z = lg.row(i - b).data();
        float m = *std::max_element(z, z + s.vocab);
        double sum = 0;
        for (int v = 0; v < s.vocab; ++v) sum += std::exp(double(z[v] - m));
        part += (std::log(sum) + double(m)) - double(z[tok[i + 1]]);
      }
      res.nll_sum += part;
    }
    res.tokens_scored += nw * (T - 1);
    res.tokens_processed += nw * T;
    if (opt.progress) prog.update(res.tokens_processed);
  }
  if (opt.progress) prog.finish();
  res.seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  return res;
}

}  // namespace moec::model
