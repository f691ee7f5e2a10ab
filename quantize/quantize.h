// moec quantization library: the one header to include.
//   QuantSpec + parse_quant_spec      quantize/spec.h
//   quantize_rtn, dequantize, proxy_loss   quantize/rtn.h
//   HessianAccumulator, gptq          quantize/gptq.h
//   allocate_bits (mixed precision)   quantize/allocate.h
// Methods, formulas, defaults and fallbacks: docs/QUANTIZATION.md.
#pragma once
#include "quantize/allocate.h"
#include "quantize/gptq.h"
#include "quantize/qmatrix.h"
#include "quantize/rtn.h"
#include "quantize/spec.h"
