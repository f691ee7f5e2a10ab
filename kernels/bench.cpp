#include "kernels/bench.h"

#include <cblas.h>
#include <omp.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <random>

#include "core/half.h"
#include "kernels/gemv.h"
#include "kernels/gemv_impl.h"

namespace moec {

namespace {

double now() { return std::chrono::duration<double>(std::chrono::steady_clock::now().time_since_epoch()).count(); }

// Seconds per call of f: whole passes over `cycle` calls (every copy once, so the data still comes from DRAM)
// are repeated until min_seconds have passed (at least 3 passes), and the fastest pass counts. On a shared
// machine the fastest pass is the one least disturbed by other processes (2 threads need both cores at once);
// baselines and kernels are timed the same way.
template <class F>
double time_calls(F&& f, int cycle, double min_seconds) {
  for (int i = 0; i < cycle; ++i) f();  // warm-up pass
  const double t0 = now();
  double best = 1e300;
  for (int pass = 0; pass < 3 || now() - t0 < min_seconds; ++pass) {
    const double p0 = now();
    for (int i = 0; i < cycle; ++i) f();
    best = std::min(best, (now() - p0) / double(cycle));
  }
  return best;
}

QuantizedMatrix random_matrix(Codec codec, int rows, int cols, int group, double p0, uint32_t seed) {
  std::mt19937 rng(seed);
  std::uniform_real_distribution<float> u(0.0f, 1.0f);
  QuantizedMatrix q;
  q.rows = rows;
  q.cols = cols;
  q.group = group;
  q.bits = codec_bits(codec);
  const bool tern = codec_is_ternary(codec);
  q.kind = tern ? CodeKind::Ternary : CodeKind::Int;
  q.q.resize(size_t(rows) * size_t(cols));
  for (auto& v : q.q) {
    if (tern) v = u(rng) < p0 ? 0 : (rng() & 1 ? 1 : -1);
    else v = int8_t(uint8_t(rng() % (1u << q.bits)));
  }
  const size_t ng = size_t(rows) * size_t(q.groups());
  for (size_t i = 0; i < ng; ++i) {
    q.scale.push_back(round_f16(0.001f + 0.01f * u(rng)));
    if (!tern) q.zero.push_back(float(rng() % (1u << q.bits)));
  }
  return q;
}

// Repeat the rows of a packed seed matrix until it has `rows` rows.
PackedMatrix tile_rows(const PackedMatrix& s, int rows) {
  PackedMatrix m = s;
  m.rows = rows;
  const PackedView sv = s.view();
  const size_t G = size_t(sv.groups());
  auto tile = [&](const auto& src, auto& dst, size_t per_row) {
    dst.resize(size_t(rows) * per_row);
    for (int r = 0; r < rows; ++r)
      std::copy_n(src.begin() + std::ptrdiff_t(size_t(r % s.rows) * per_row), per_row, dst.begin() + std::ptrdiff_t(size_t(r) * per_row));
  };
  tile(s.scales, m.scales, G);
  if (!s.zeros.empty()) tile(s.zeros, m.zeros, G);
  if (!s.neg_scales.empty()) tile(s.neg_scales, m.neg_scales, G);
  if (s.codec != Codec::Subbit) {
    tile(s.codes, m.codes, sv.row_bytes());
    return m;
  }
  m.codes.clear();
  m.row_offsets.assign(1, 0);
  for (int r = 0; r < rows; ++r) {
    const int sr = r % s.rows;
    m.codes.insert(m.codes.end(), s.codes.begin() + 2 * std::ptrdiff_t(s.row_offsets[size_t(sr)]),
                   s.codes.begin() + 2 * std::ptrdiff_t(s.row_offsets[size_t(sr) + 1]));
    m.row_offsets.push_back(uint32_t(m.codes.size() / 2));
  }
  return m;
}

}  // namespace

PackedExperts::PackedExperts(Codec codec, int rows, int cols, int group, double p0, size_t target_bytes, uint32_t seed) {
  const int seed_rows = std::min(rows, 256);
  PackedMatrix one = tile_rows(pack(random_matrix(codec, seed_rows, cols, group, p0, seed), codec), rows);
  const size_t bytes = stored_bytes(one.view());
  const size_t n = std::max<size_t>(1, (target_bytes + bytes - 1) / bytes);
  mats_.assign(n, one);
  for (auto& m : mats_) views_.push_back(m.view());
}

size_t PackedExperts::bytes_per_expert() const { return stored_bytes(views_[0]); }

void PackedExperts::step(const float* X, int n, float* Y, ActQuant act) {
  matmul(views_[size_t(next_)], X, n, Y, best_isa(), act);
  next_ = (next_ + 1) % experts();
}

DenseExperts::DenseExperts(bool bf16, int rows, int cols, size_t target_bytes) : bf16_(bf16), rows_(rows), cols_(cols) {
  const size_t per = bytes_per_expert();
  copies_ = std::max<size_t>(1, (target_bytes + per - 1) / per);
  const size_t n = copies_ * size_t(rows) * size_t(cols);
  uint32_t s = 12345;
  auto rnd = [&] {
    s ^= s << 13, s ^= s >> 17, s ^= s << 5;
    return float(int(s % 2001) - 1000) * 1e-5f;
  };
  if (bf16) {
    b16_.resize(n);
    for (auto& v : b16_) v = f32_to_bf16(rnd());
  } else {
    f32_.resize(n);
    for (auto& v : f32_) v = rnd();
  }
}

void DenseExperts::step(const float* x, float* y) {
  const size_t off = size_t(next_) * size_t(rows_) * size_t(cols_);
  if (!bf16_) {
    cblas_sgemv(CblasRowMajor, CblasNoTrans, rows_, cols_, 1.0f, f32_.data() + off, cols_, x, 1, 0.0f, y, 1);
  } else {
    const bool a512 = isa_supported(Isa::Avx512);
    const uint16_t* w = b16_.data() + off;
#pragma omp parallel for schedule(static)
    for (int r = 0; r < rows_; ++r) {
      const uint16_t* wr = w + size_t(r) * size_t(cols_);
      y[r] = a512 ? detail::bf16_dot_avx512(wr, x, cols_) : detail::bf16_dot_avx2(wr, x, cols_);
    }
  }
  next_ = (next_ + 1) % int(copies_);
}

double measure_read_bandwidth(size_t bytes, double min_seconds) {
  std::vector<uint8_t> buf(bytes, 1);
  const bool a512 = isa_supported(Isa::Avx512);
  volatile uint64_t sink = 0;
  auto pass = [&] {
    uint64_t total = 0;
#pragma omp parallel reduction(+ : total)
    {
      const int nt = omp_get_num_threads(), t = omp_get_thread_num();
      const size_t chunk = (bytes / size_t(nt)) & ~size_t(255);
      const size_t b = size_t(t) * chunk, e = t == nt - 1 ? bytes : b + chunk;
      total += a512 ? detail::stream_read_avx512(buf.data() + b, e - b) : detail::stream_read_avx2(buf.data() + b, e - b);
    }
    sink = sink + total;
  };
  const double t = time_calls(pass, 1, min_seconds);
  return double(bytes) / t / 1e9;
}

std::vector<BenchRow> run_kernel_bench(const BenchOptions& opt, const std::function<void(const std::string&)>& log) {
  std::vector<Codec> codecs = opt.codecs.empty() ? all_codecs() : opt.codecs;
  auto shapes = opt.shapes;
  if (shapes.empty()) shapes = {{14336, 4096}, {4096, 14336}, {512, 256}, {256, 512}};
  const double min_s = opt.quick ? std::min(opt.min_seconds, 0.1) : opt.min_seconds;
  const size_t big = opt.quick ? std::min(opt.big_bytes, size_t(128) << 20) : opt.big_bytes;
  const int maxb = *std::max_element(opt.batches.begin(), opt.batches.end());
  std::vector<BenchRow> out;
  char line[512];
  for (auto [rows, cols] : shapes) {
    // Tiny shapes model a whole small MoE that lives in the LLC (tiny-mixtral: 32 experts per shape).
    const bool small = size_t(rows) * size_t(cols) * 4 < (size_t(8) << 20);
    const size_t dense_target = small ? size_t(rows) * size_t(cols) * 4 * 32 : std::max(big, size_t(2) * size_t(rows) * size_t(cols) * 4);
    std::vector<float> X(size_t(maxb) * size_t(cols)), Y(size_t(maxb) * size_t(rows));
    std::mt19937 rng(3);
    std::normal_distribution<float> nd;
    for (auto& v : X) v = nd(rng);
    double t_sgemv, t_bf16;
    {
      DenseExperts f32(false, rows, cols, dense_target);
      t_sgemv = time_calls([&] { f32.step(X.data(), Y.data()); }, f32.experts(), min_s);
    }
    {
      DenseExperts b16(true, rows, cols, dense_target / 2);
      t_bf16 = time_calls([&] { b16.step(X.data(), Y.data()); }, b16.experts(), min_s);
    }
    std::snprintf(line, sizeof line, "%dx%d: sgemv fp32 %.3f ms (%.1f GB/s), bf16 %.3f ms (%.1f GB/s)", rows, cols,
                  t_sgemv * 1e3, double(rows) * cols * 4 / t_sgemv / 1e9, t_bf16 * 1e3, double(rows) * cols * 2 / t_bf16 / 1e9);
    log(line);
    for (Codec c : codecs) {
      const int group = c == Codec::Subbit ? 0 : opt.group;
      const size_t target = small ? 0 : big;  // small: 32 copies below
      PackedExperts px(c, rows, cols, group, opt.p0_zero, small ? 1 : target);
      std::unique_ptr<PackedExperts> small_px;
      if (small) {
        small_px = std::make_unique<PackedExperts>(c, rows, cols, group, opt.p0_zero, px.bytes_per_expert() * 32);
      }
      PackedExperts& P = small ? *small_px : px;
      const size_t bytes = P.bytes_per_expert();
      const double bw = measure_read_bandwidth(bytes * size_t(P.experts()), min_s);
      for (ActQuant act : opt.acts) {
        double t1 = 0;
        for (int n : opt.batches) {
          const double t = time_calls([&] { P.step(X.data(), n, Y.data(), act); }, P.experts(), min_s);
          if (n == 1) t1 = t;
          BenchRow r;
          r.codec = codec_name(c);
          r.act = act_quant_name(act);
          r.rows = rows;
          r.cols = cols;
          r.batch = n;
          r.experts = P.experts();
          r.bits_per_weight = bits_per_weight(P.view(0));
          r.seconds = t;
          r.gbps = double(bytes) / t / 1e9;
          r.bandwidth_gbps = bw;
          r.bandwidth_fraction = r.gbps / bw;
          r.sgemv_seconds = t_sgemv;
          r.bf16_seconds = t_bf16;
          r.speedup_vs_sgemv = double(n) * t_sgemv / t;
          r.speedup_vs_bf16 = double(n) * t_bf16 / t;
          if (n > 1 && t1 > 0) r.speedup_per_token_vs_matvec = double(n) * t1 / t;
          out.push_back(r);
          const std::string label = r.codec + (act == ActQuant::Int8 ? "+q8" : "");
          std::snprintf(line, sizeof line,
                        "  %-9s batch %2d: %.3f bpw  %8.3f ms  %6.1f GB/s (%3.0f%% of %.1f GB/s read)  x%.1f vs sgemv  x%.1f vs bf16%s",
                        label.c_str(), n, r.bits_per_weight, t * 1e3, r.gbps, 100 * r.bandwidth_fraction, bw,
                        r.speedup_vs_sgemv, r.speedup_vs_bf16,
                        n > 1 ? ("  x" + std::to_string(r.speedup_per_token_vs_matvec).substr(0, 4) + " per token vs matvec").c_str() : "");
          log(line);
        }
      }
    }
  }
  return out;
}

nlohmann::json bench_json(const std::vector<BenchRow>& rows) {
  nlohmann::json a = nlohmann::json::array();
  for (const auto& r : rows) {
    nlohmann::json j = {{"codec", r.codec},
                        {"act", r.act},
                        {"rows", r.rows},
                        {"cols", r.cols},
                        {"batch", r.batch},
                        {"experts", r.experts},
                        {"bits_per_weight", r.bits_per_weight},
                        {"seconds", r.seconds},
                        {"gbps", r.gbps},
                        {"bandwidth_gbps", r.bandwidth_gbps},
                        {"bandwidth_fraction", r.bandwidth_fraction},
                        {"sgemv_seconds", r.sgemv_seconds},
                        {"bf16_seconds", r.bf16_seconds},
                        {"speedup_vs_sgemv", r.speedup_vs_sgemv},
                        {"speedup_vs_bf16", r.speedup_vs_bf16},
                        {"isa", isa_name(best_isa())},
                        {"threads", omp_get_max_threads()}};
    if (r.batch > 1) j["speedup_per_token_vs_matvec"] = r.speedup_per_token_vs_matvec;
    a.push_back(j);
  }
  return a;
}

std::string bench_table(const std::vector<BenchRow>& rows) {
  std::string s = "codec     shape         batch  bpw    ms/call   GB/s   %bw   x sgemv  x bf16  x/token vs matvec\n";
  char line[256];
  for (const auto& r : rows) {
    const std::string label = r.codec + (r.act == "int8" ? "+q8" : "");
    std::snprintf(line, sizeof line, "%-9s %5dx%-7d %5d  %.3f  %8.3f  %6.1f  %4.0f  %7.1f  %6.1f  %s\n", label.c_str(), r.rows,
                  r.cols, r.batch, r.bits_per_weight, r.seconds * 1e3, r.gbps, 100 * r.bandwidth_fraction, r.speedup_vs_sgemv,
                  r.speedup_vs_bf16, r.batch > 1 ? std::to_string(r.speedup_per_token_vs_matvec).substr(0, 4).c_str() : "-");
    s += line;
  }
  return s;
}

}  // namespace moec
