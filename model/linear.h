// A linear layer y = x W^T as the forward pass sees it. Dense fp32 weights, or a packed
// (quantized) matrix that is decoded inside the matmul; the forward pass does not care which.
#pragma once
#include <memory>

#include "core/matrix.h"

namespace moec::model {

class Linear {
 public:
  virtual ~Linear() = default;
  virtual int out_features() const = 0;  // rows of W
  virtual int in_features() const = 0;   // cols of W
  // Y[n, out] = X[n, in] * W^T. Y is resized.
  virtual void forward(const Matrix& X, Matrix& Y) const = 0;
  // W as a dense fp32 matrix [out, in] (for compression stages and tests).
  virtual Matrix dense() const = 0;
};

class DenseLinear final : public Linear {
 public:
  explicit DenseLinear(Matrix w) : w_(std::move(w)) {}
  int out_features() const override { return int(w_.rows()); }
  int in_features() const override { return int(w_.cols()); }
  void forward(const Matrix& X, Matrix& Y) const override;
  Matrix dense() const override { return w_; }
  const Matrix& weight() const { return w_; }

 private:
  Matrix w_;
};

// W = left [out x r] * right [r x in] (a factored / low-rank weight, e.g. a merged expert in a shared subspace):
// Y = (X right^T) left^T, two GEMMs with an r-wide intermediate; the product is never formed.
class LowRankLinear final : public Linear {
 public:
  LowRankLinear(Matrix left, Matrix right);  // fails unless left.cols() == right.rows()
  int out_features() const override { return int(left_.rows()); }
  int in_features() const override { return int(right_.cols()); }
  int rank() const { return int(right_.rows()); }
  void forward(const Matrix& X, Matrix& Y) const override;
  Matrix dense() const override;

 private:
  Matrix left_, right_;
};

// C[m, n] = A[m, k] * B[n, k]^T (+ beta * C) through OpenBLAS sgemm.
void gemm_nt(const Matrix& A, const Matrix& B, Matrix& C, float beta = 0.0f);

}  // namespace moec::model
