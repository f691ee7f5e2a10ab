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

}  // namespace moec::model
