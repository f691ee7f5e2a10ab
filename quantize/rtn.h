// Round-to-nearest quantization, dequantization and the layer-output proxy loss.
#pragma once
#include "core/matrix.h"
#include "quantize/qmatrix.h"
#include "quantize/spec.h"

namespace moec {

// Quantizes W [rows = out, cols = in] group by group on the spec's grid (see quantize/grid.h).
QuantizedMatrix quantize_rtn(const Matrix& W, const QuantSpec& spec);

// The fp32 matrix the codes stand for.
Matrix dequantize(const QuantizedMatrix& q);

// tr((W - Q) H (W - Q)^T): the squared layer-output error that GPTQ minimises, for a Hessian
// H = (2/n) X X^T [cols, cols]. Computed in double.
double proxy_loss(const Matrix& W, const Matrix& Q, const MatrixD& H);
double proxy_loss(const Matrix& W, const QuantizedMatrix& q, const MatrixD& H);

}  // namespace moec
