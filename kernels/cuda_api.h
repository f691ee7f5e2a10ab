// Host API of the CUDA kernels (kernels/cuda/*.cu). Usable without CUDA: when moec is built without nvcc
// (or no device is present) cuda_available() is false and CudaPackedMatrix's constructor throws.
#pragma once
#include <memory>
#include <string>

#include "kernels/codec.h"

namespace moec {

// True when moec was built with CUDA and a device is usable.
bool cuda_available();
// One line describing the device (or why there is none).
std::string cuda_device_info();

// A packed matrix copied to device memory (codes, scales, zeros, offsets and the subbit decode tables).
class CudaPackedMatrix {
 public:
  explicit CudaPackedMatrix(const PackedView& v);
  ~CudaPackedMatrix();
  CudaPackedMatrix(const CudaPackedMatrix&) = delete;
  CudaPackedMatrix& operator=(const CudaPackedMatrix&) = delete;
  int rows() const;
  int cols() const;
  // Y[n, rows] = X[n, cols] * W^T with device pointers, 1 <= n <= 16, on the given cudaStream_t (null = default).
  void matmul_device(const float* dX, int n, float* dY, void* stream = nullptr) const;
  // The same with host arrays (copies in and out, synchronous).
  void matmul_host(const float* X, int n, float* Y) const;

  struct Impl;

 private:
  std::unique_ptr<Impl> impl_;
};

}  // namespace moec
