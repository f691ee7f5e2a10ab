#include "quantize/rtn.h"

#include "core/error.h"
#include "quantize/grid.h"
#include "quantize/parallel.h"

namespace moec {

QuantizedMatrix quantize_rtn(const Matrix& W, const QuantSpec& spec) {
  validate(spec);
  const int rows = int(W.rows()), cols = int(W.cols());
  if (rows < 1 || cols < 1) fail("quantize_rtn: empty matrix ", rows, "x", cols);
  check_finite(W.data(), rows, cols, "quantize_rtn: weight");
  const int gs = spec.group > 0 ? spec.group : cols;
  const int groups = (cols + gs - 1) / gs;
  std::vector<int8_t> codes(size_t(rows) * cols);
  std::vector<GridParams> params(size_t(rows) * groups);
  detail::parallel_rows(rows, "quantize_rtn", [&](int r) {
    const float* w = W.row(r).data();
    for (int g = 0; g < groups; ++g) {
      int c0 = g * gs, n = std::min(gs, cols - c0);
      GridParams p = fit_grid(spec, w + c0, n);
      params[size_t(r) * groups + g] = p;
      for (int c = c0; c < c0 + n; ++c) codes[size_t(r) * cols + c] = grid_code(spec, p, w[c]);
    }
  });
  return assemble_qmatrix(spec, rows, cols, std::move(codes), params);
}

Matrix dequantize(const QuantizedMatrix& q) {
  if (q.q.size() != size_t(q.rows) * size_t(q.cols)) fail("dequantize: code count does not match shape");
  Matrix out(q.rows, q.cols);
  for (int r = 0; r < q.rows; ++r)
    for (int c = 0; c < q.cols; ++c) out(r, c) = q.dequant(r, c);
  return out;
}

double proxy_loss(const Matrix& W, const Matrix& Q, const MatrixD& H) {
  if (W.rows() != Q.rows() || W.cols() != Q.cols() || H.rows() != W.cols() || H.cols() != W.cols())
    fail("proxy_loss: shapes W ", W.rows(), "x", W.cols(), ", Q ", Q.rows(), "x", Q.cols(), ", H ", H.rows(),
         "x", H.cols(), " do not match");
  MatrixD D = (W - Q).cast<double>();
  return (D * H).cwiseProduct(D).sum();
}

double proxy_loss(const Matrix& W, const QuantizedMatrix& q, const MatrixD& H) {
  return proxy_loss(W, dequantize(q), H);
}

}  // namespace moec
