// Stand-ins for the CUDA host API when moec is built without nvcc (kernels/cuda/*.cu provide the real ones).
#ifndef MOEC_HAVE_CUDA
#include "core/error.h"
#include "kernels/cuda_api.h"

namespace moec {

bool cuda_available() { return false; }
std::string cuda_device_info() { return "moec was built without CUDA (nvcc not found at configure time)"; }

struct CudaPackedMatrix::Impl {};
CudaPackedMatrix::CudaPackedMatrix(const PackedView&) { fail("CUDA: moec was built without CUDA support"); }
CudaPackedMatrix::~CudaPackedMatrix() = default;
int CudaPackedMatrix::rows() const { return 0; }
int CudaPackedMatrix::cols() const { return 0; }
void CudaPackedMatrix::matmul_device(const float*, int, float*, void*) const { fail("CUDA: not available"); }
void CudaPackedMatrix::matmul_host(const float*, int, float*) const { fail("CUDA: not available"); }

}  // namespace moec
#endif
