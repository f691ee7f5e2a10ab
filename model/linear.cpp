#include "model/linear.h"

#include <cblas.h>

#include "core/error.h"

namespace moec::model {

void gemm_nt(const Matrix& A, const Matrix& B, Matrix& C, float beta) {
  if (A.cols() != B.cols()) fail("gemm_nt: inner dimensions differ (", A.cols(), " vs ", B.cols(), ")");
  if (beta == 0.0f) C.resize(A.rows(), B.rows());
  if (A.rows() == 0 || B.rows() == 0) return;
  if (A.cols() == 0) {
    C *= beta;
    return;
  }
  cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, int(A.rows()), int(B.rows()), int(A.cols()), 1.0f, A.data(),
              int(A.cols()), B.data(), int(B.cols()), beta, C.data(), int(C.cols()));
}

void DenseLinear::forward(const Matrix& X, Matrix& Y) const { gemm_nt(X, w_, Y); }

LowRankLinear::LowRankLinear(Matrix left, Matrix right) : left_(std::move(left)), right_(std::move(right)) {
  if (left_.cols() != right_.rows() || left_.cols() < 1)
    fail("LowRankLinear: left factor is ", left_.rows(), "x", left_.cols(), ", right factor ", right_.rows(), "x",
         right_.cols(), " (need left.cols == right.rows >= 1)");
}

void LowRankLinear::forward(const Matrix& X, Matrix& Y) const {
  if (X.cols() != right_.cols()) fail("LowRankLinear: input has ", X.cols(), " columns, weight expects ", right_.cols());
  Matrix t;
  gemm_nt(X, right_, t);
  gemm_nt(t, left_, Y);
}

Matrix LowRankLinear::dense() const {
  Matrix w(left_.rows(), right_.cols());
  cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, int(left_.rows()), int(right_.cols()), int(left_.cols()), 1.0f,
              left_.data(), int(left_.cols()), right_.data(), int(right_.cols()), 0.0f, w.data(), int(w.cols()));
  return w;
}

}  // namespace moec::model
