// GPTQ (Frantar et al., 2022): quantize W column by column, feeding each column's rounding error back into
// the not-yet-quantized columns through the inverse Hessian's Cholesky factor, so that the layer output
// error tr((W - Q) H (W - Q)^T) stays small. Integer and ternary codes share the loop via the grid
// quantizer of quantize/grid.h. Formulas, defaults and fallbacks: docs/QUANTIZATION.md.
#pragma once
#include <cstdint>
#include <string>

#include "core/matrix.h"
#include "quantize/qmatrix.h"
#include "quantize/spec.h"

namespace moec {

// Accumulates H = (2/n) sum_t x_t x_t^T over the calibration tokens that reach one linear layer (for an MoE
// expert: the tokens the router sends to it). Sums in double; the scale 2/n is applied on read.
class HessianAccumulator {
 public:
  explicit HessianAccumulator(int cols);
  void add(const Matrix& X);                   // X [n, cols]: one token per row
  void add(const float* X, int64_t n);         // row-major [n, cols]
  int cols() const { return cols_; }
  int64_t count() const { return n_; }
  MatrixD hessian() const;                     // [cols, cols]; all zeros while count() == 0
  double seconds() const { return seconds_; }  // wall time spent in add()

 private:
  int cols_;
  int64_t n_ = 0;
  Eigen::MatrixXd sum_;  // lower triangle of sum x x^T
  double seconds_ = 0.0;
};

struct GptqOptions {
  double damp = -1.0;       // lambda = damp * mean(diag H) is added to diag H; < 0: 0.1 ternary, 0.01 int
  int block = 128;          // lazy-batch width: error updates beyond the block are applied as one GEMM
  bool act_order = false;   // quantize columns by decreasing diag(H); with group > 0 forces static groups
  bool static_groups = false;  // group grids fitted once from W before any update (instead of at group start)
  // Few-token fallback (n = calibration tokens behind H):
  int64_t tokens = -1;           // n for the gptq(W, H, ...) overload; -1 = unknown (no few-token rule)
  int64_t rtn_below = 1;         // n < rtn_below -> plain RTN (default: only n == 0)
  int64_t low_tokens = -1;       // n < low_tokens -> damp *= low_token_factor; < 0: = cols (H rank-deficient)
  double low_token_factor = 10.0;
  int cholesky_retries = 3;      // H + lambda I not positive definite -> damp *= 10 and retry; then RTN
};

enum class GptqPath : uint8_t {
  Gptq = 0,       // plain GPTQ with the requested dampening
  LowTokens = 1,  // GPTQ with dampening raised because n < low_tokens
  RaisedDamp = 2, // GPTQ after Cholesky failed and dampening was raised (may also be LowTokens)
  Rtn = 3,        // fell back to round-to-nearest (n < rtn_below, or Cholesky failed every retry)
};
const char* to_string(GptqPath p);

struct GptqTiming {
  double hessian_s = 0.0;   // accumulating H (from the accumulator; 0 when H was given)
  double cholesky_s = 0.0;  // dampening + Cholesky + inverse + Cholesky of the inverse
  double updates_s = 0.0;   // the column loop and lazy GEMM updates
  double total_s = 0.0;     // gptq() call (excludes hessian_s)
};

struct GptqResult {
  QuantizedMatrix q;
  GptqPath path = GptqPath::Gptq;
  std::string note;       // why the path is not plain GPTQ (empty otherwise)
  int64_t tokens = -1;    // n behind H (-1 unknown)
  double damp = 0.0;      // relative dampening actually used (0 for RTN)
  int dead_columns = 0;   // columns with diag(H) == 0: weights set to 0 before quantizing (as the reference)
  // sum over rows/columns of err^2 = tr((W' - Q) Hd (W' - Q)^T) where Hd is the dampened Hessian and W' is W
  // with dead columns zeroed (exact identity of the Cholesky formulation). 0 for RTN.
  double loss = 0.0;
  GptqTiming time;
};

GptqResult gptq(const Matrix& W, const MatrixD& H, const QuantSpec& spec, const GptqOptions& opt = {});
// Same, with n and the Hessian time taken from the accumulator.
GptqResult gptq(const Matrix& W, const HessianAccumulator& acc, const QuantSpec& spec, GptqOptions opt = {});

}  // namespace moec
