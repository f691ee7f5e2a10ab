// Kernel benchmark shared by `moec bench-kernels` and bench/kernels_bench.cpp (Google Benchmark).
// Each case runs a codec's matvec/matmul over enough packed copies ("experts") that the data set exceeds the
// last-level cache (Mixtral shapes), next to baselines measured in the same process: OpenBLAS cblas_sgemv on fp32
// weights, bf16 weights converted on the fly, and a streaming read of as many bytes as the compressed data set.
#pragma once
#include <cstdint>
#include <functional>
#include <memory>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "kernels/codec.h"
#include "kernels/gemv.h"

namespace moec {

// `experts` packed copies of one random matrix (codes/scales tiled from a smaller random seed matrix).
class PackedExperts {
 public:
  PackedExperts(Codec codec, int rows, int cols, int group, double p0_zero, size_t target_bytes, uint32_t seed = 1);
  int experts() const { return int(mats_.size()); }
  const PackedView& view(int e) const { return views_[size_t(e)]; }
  size_t bytes_per_expert() const;  // stored_bytes of one copy
  // One call: Y[n, rows] = X * W_e^T on the next copy (round robin), with the given activation precision (the
  // int8 path's activation quantization is part of the call).
  void step(const float* X, int n, float* Y, ActQuant act = ActQuant::None);

 private:
  std::vector<PackedMatrix> mats_;
  std::vector<PackedView> views_;
  int next_ = 0;
};

// fp32 / bf16 weight copies for the baselines.
class DenseExperts {
 public:
  DenseExperts(bool bf16, int rows, int cols, size_t target_bytes);
  int experts() const { return int(copies_); }
  void step(const float* x, float* y);  // y = W_e x, fp32: cblas_sgemv, bf16: SIMD convert + dot (OpenMP rows)
  size_t bytes_per_expert() const { return size_t(rows_) * size_t(cols_) * (bf16_ ? 2 : 4); }

 private:
  bool bf16_;
  int rows_, cols_;
  size_t copies_;
  std::vector<float> f32_;
  std::vector<uint16_t> b16_;
  int next_ = 0;
};

// Streaming read of a buffer with OpenMP; returns GB/s.
double measure_read_bandwidth(size_t bytes, double min_seconds);

struct BenchOptions {
  std::vector<Codec> codecs;                 // empty = all
  std::vector<std::pair<int, int>> shapes;   // empty = defaults (Mixtral 14336x4096, 4096x14336, tiny 512x256, 256x512)
  std::vector<int> batches{1, 8};
  std::vector<ActQuant> acts{ActQuant::None, ActQuant::Int8};  // activation precisions measured per codec
  int group = 128;                           // scale group for all codecs (subbit: 0 = per row, see bench.cpp)
  double p0_zero = 0.85;                     // fraction of zero ternary codes
  size_t big_bytes = size_t(256) << 20;      // data-set size for shapes beyond the LLC
  double min_seconds = 0.4;                  // per measurement
  bool quick = false;                        // smaller data sets and times
};

struct BenchRow {
  std::string codec;
  std::string act = "fp32";  // activation precision: "fp32" or "int8" (act_quant_name)
  int rows = 0, cols = 0, batch = 1, experts = 0;
  double bits_per_weight = 0, seconds = 0, gbps = 0, bandwidth_gbps = 0, bandwidth_fraction = 0;
  double sgemv_seconds = 0, bf16_seconds = 0, speedup_vs_sgemv = 0, speedup_vs_bf16 = 0;
  double speedup_per_token_vs_matvec = 0;  // batch > 1: batch * t(matvec) / t(matmul)
};

std::vector<BenchRow> run_kernel_bench(const BenchOptions& opt, const std::function<void(const std::string&)>& log);
nlohmann::json bench_json(const std::vector<BenchRow>& rows);
std::string bench_table(const std::vector<BenchRow>& rows);

}  // namespace moec
