// CUDA decode + multiply for every codec: one warp per output row.
// Block codecs: lane l loads block (b0 + l) of the row (coalesced 32-bit words), then the warp walks the 32
// blocks; block j's words are broadcast with __shfl_sync and lane l decodes weight l of it with the shared
// MOEC_HD block_code() (blocks.h), so x reads are coalesced too. Subbit: lane l takes codeword (i0 + l), looks up
// its sequence in the decode tables, a warp prefix sum of the sequence lengths gives each lane its column, and
// each lane multiplies its own sequence. The subbit tables (512 KiB + 64 KiB) do not fit in shared memory; they
// are read through the read-only cache and stay L2-resident.
#include <cuda_runtime.h>

#include <cstring>
#include <string>

#include "core/error.h"
#include "kernels/blocks.h"
#include "kernels/cuda_api.h"
#include "kernels/subbit.h"

namespace moec {

namespace {

#define MOEC_CUDA_CHECK(expr)                                                               \
  do {                                                                                      \
    cudaError_t err_ = (expr);                                                              \
    if (err_ != cudaSuccess) fail("CUDA: ", #expr, " failed: ", cudaGetErrorString(err_)); \
  } while (0)

constexpr int kMaxBatch = 16;
constexpr int kWarpsPerBlock = 4;

struct DevView {
  int codec, rows, cols, gs, groups, bpr, row_bytes;
  float zsym;
  const uint8_t* codes;
  const uint16_t* scales;
  const uint16_t* zeros;
  const uint16_t* neg;
  const uint32_t* offs;
  const uint64_t* seq;
  const uint8_t* len;
};

__device__ __forceinline__ float dev_scale(const uint16_t* a, const DevView& v, int r, int g) {
  return f16_to_f32(__ldg(a + size_t(r) * v.groups + g));
}

template <int N>
__device__ __forceinline__ void warp_store(float (&acc)[N], int n, float* Y, int rows, int r, int lane) {
#pragma unroll
  for (int t = 0; t < N; ++t) {
    if (t >= n) break;
    float s = acc[t];
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) s += __shfl_xor_sync(0xffffffffu, s, o);
    if (lane == 0) Y[size_t(t) * rows + r] = s;
  }
}

template <class Block, bool kTern>
__global__ void k_blocks(DevView v, const float* __restrict__ X, int n, float* __restrict__ Y) {
  constexpr int kWords = int(sizeof(Block)) / 4;
  const int lane = threadIdx.x & 31;
  const int r = blockIdx.x * kWarpsPerBlock + (threadIdx.x >> 5);
  if (r >= v.rows) return;  // whole warp exits together
  const uint32_t* row = reinterpret_cast<const uint32_t*>(v.codes + size_t(r) * v.row_bytes);
  float acc[kMaxBatch];
#pragma unroll
  for (int t = 0; t < kMaxBatch; ++t) acc[t] = 0.0f;
  for (int b0 = 0; b0 < v.bpr; b0 += 32) {
    uint32_t mine[kWords];
    const int b = b0 + lane;
#pragma unroll
    for (int k = 0; k < kWords; ++k) mine[k] = b < v.bpr ? __ldg(row + size_t(b) * kWords + k) : 0u;
    const int nb = min(32, v.bpr - b0);
    for (int j = 0; j < nb; ++j) {
      uint32_t words[kWords];
#pragma unroll
      for (int k = 0; k < kWords; ++k) words[k] = __shfl_sync(0xffffffffu, mine[k], j);
      Block blk;
      memcpy(&blk, words, sizeof(Block));
      const int col = (b0 + j) * 32 + lane;
      if (col >= v.cols) continue;
      const int g = col / v.gs;
      const unsigned code = block_code(blk, lane);
      float w;
      if constexpr (kTern) {
        const float s = dev_scale(v.scales, v, r, g);
        w = tern_value(code, s, v.neg ? dev_scale(v.neg, v, r, g) : s);
      } else {
        w = int_value(code, dev_scale(v.scales, v, r, g), v.zeros ? dev_scale(v.zeros, v, r, g) : v.zsym);
      }
#pragma unroll
      for (int t = 0; t < kMaxBatch; ++t)
        if (t < n) acc[t] += w * __ldg(X + size_t(t) * v.cols + col);
    }
  }
  warp_store(acc, n, Y, v.rows, r, lane);
}

__global__ void k_subbit(DevView v, const float* __restrict__ X, int n, float* __restrict__ Y) {
  const int lane = threadIdx.x & 31;
  const int r = blockIdx.x * kWarpsPerBlock + (threadIdx.x >> 5);
  if (r >= v.rows) return;
  const uint32_t b = __ldg(v.offs + r), e = __ldg(v.offs + r + 1);
  const uint16_t* cws = reinterpret_cast<const uint16_t*>(v.codes);
  float acc[kMaxBatch];
#pragma unroll
  for (int t = 0; t < kMaxBatch; ++t) acc[t] = 0.0f;
  int base = 0;
  for (uint32_t i0 = b; i0 < e && base < v.cols; i0 += 32) {
    const uint32_t i = i0 + lane;
    const unsigned cw = i < e ? __ldg(cws + i) : 0u;
    const int L = i < e ? int(__ldg(v.len + cw)) : 0;
    int incl = L;  // inclusive warp scan of the sequence lengths
#pragma unroll
    for (int o = 1; o < 32; o <<= 1) {
      int u = __shfl_up_sync(0xffffffffu, incl, o);
      if (lane >= o) incl += u;
    }
    const int pos = base + incl - L;
    const uint64_t seq = L ? __ldg(reinterpret_cast<const unsigned long long*>(v.seq) + cw) : 0ull;
    for (int k = 0; k < L; ++k) {
      const int col = pos + k;
      const unsigned c = unsigned(seq >> (2 * k)) & 3u;
      if (col >= v.cols || c == 0u) continue;
      const int g = col / v.gs;
      const float s = dev_scale(v.scales, v, r, g);
      const float w = tern_value(c, s, v.neg ? dev_scale(v.neg, v, r, g) : s);
#pragma unroll
      for (int t = 0; t < kMaxBatch; ++t)
        if (t < n) acc[t] += w * __ldg(X + size_t(t) * v.cols + col);
    }
    base += __shfl_sync(0xffffffffu, incl, 31);
  }
  warp_store(acc, n, Y, v.rows, r, lane);
}

template <class T>
T* upload(const void* src, size_t bytes) {
  if (!src || bytes == 0) return nullptr;
  void* d = nullptr;
  MOEC_CUDA_CHECK(cudaMalloc(&d, bytes));
  MOEC_CUDA_CHECK(cudaMemcpy(d, src, bytes, cudaMemcpyHostToDevice));
  return static_cast<T*>(d);
}

}  // namespace

bool cuda_available() {
  int n = 0;
  if (cudaGetDeviceCount(&n) != cudaSuccess) {
    cudaGetLastError();  // clear the sticky "no device" error
    return false;
  }
  return n > 0;
}

std::string cuda_device_info() {
  int n = 0;
  cudaError_t e = cudaGetDeviceCount(&n);
  if (e != cudaSuccess) {
    cudaGetLastError();
    return std::string("no CUDA device: ") + cudaGetErrorString(e);
  }
  if (n == 0) return "no CUDA device";
  cudaDeviceProp p{};
  cudaGetDeviceProperties(&p, 0);
  return std::string(p.name) + " (sm_" + std::to_string(p.major) + std::to_string(p.minor) + ")";
}

struct CudaPackedMatrix::Impl {
  DevView v{};
  void* bufs[7] = {};
};

CudaPackedMatrix::CudaPackedMatrix(const PackedView& pv) : impl_(std::make_unique<Impl>()) {
  if (!cuda_available()) fail("CUDA: ", cuda_device_info());
  DevView& v = impl_->v;
  v.codec = int(pv.codec);
  v.rows = pv.rows;
  v.cols = pv.cols;
  v.gs = pv.group_size();
  v.groups = pv.groups();
  v.bpr = pv.blocks_per_row();
  // (Only inline PackedView helpers here: moec_cuda is linked after moec, so it must not need moec's symbols.)
  int bb = 0;
  switch (pv.codec) {
    case Codec::Int8: bb = int(sizeof(BlockInt8)); break;
    case Codec::Int4: bb = int(sizeof(BlockInt4)); break;
    case Codec::Int3: bb = int(sizeof(BlockInt3)); break;
    case Codec::Int2: bb = int(sizeof(BlockInt2)); break;
    case Codec::Tern2: bb = int(sizeof(BlockTern2)); break;
    case Codec::Subbit: bb = 0; break;
  }
  v.row_bytes = v.bpr * bb;
  v.zsym = float(1 << (pv.bits - 1));
  const size_t ng = size_t(pv.rows) * size_t(pv.groups());
  try {
    impl_->bufs[0] = const_cast<uint8_t*>(v.codes = upload<const uint8_t>(pv.codes, pv.codes_bytes));
    impl_->bufs[1] = const_cast<uint16_t*>(v.scales = upload<const uint16_t>(pv.scales, 2 * ng));
    impl_->bufs[2] = const_cast<uint16_t*>(v.zeros = upload<const uint16_t>(pv.zeros, 2 * ng));
    impl_->bufs[3] = const_cast<uint16_t*>(v.neg = upload<const uint16_t>(pv.neg_scales, 2 * ng));
    if (pv.codec == Codec::Subbit) {
      impl_->bufs[4] = const_cast<uint32_t*>(v.offs = upload<const uint32_t>(pv.row_offsets, 4 * (size_t(pv.rows) + 1)));
      impl_->bufs[5] = const_cast<uint64_t*>(v.seq = upload<const uint64_t>(pv.dict->seq.data(), 8 * pv.dict->seq.size()));
      impl_->bufs[6] = const_cast<uint8_t*>(v.len = upload<const uint8_t>(pv.dict->len.data(), pv.dict->len.size()));
    }
  } catch (...) {
    for (void* p : impl_->bufs) cudaFree(p);
    throw;
  }
}

CudaPackedMatrix::~CudaPackedMatrix() {
  if (impl_)
    for (void* p : impl_->bufs) cudaFree(p);
}

int CudaPackedMatrix::rows() const { return impl_->v.rows; }
int CudaPackedMatrix::cols() const { return impl_->v.cols; }

void CudaPackedMatrix::matmul_device(const float* dX, int n, float* dY, void* stream) const {
  if (n < 1 || n > kMaxBatch) fail("CUDA matmul: batch ", n, " must be in 1..", kMaxBatch);
  const DevView& v = impl_->v;
  const dim3 grid((v.rows + kWarpsPerBlock - 1) / kWarpsPerBlock), block(32 * kWarpsPerBlock);
  cudaStream_t s = static_cast<cudaStream_t>(stream);
  switch (Codec(v.codec)) {
    case Codec::Int8: k_blocks<BlockInt8, false><<<grid, block, 0, s>>>(v, dX, n, dY); break;
    case Codec::Int4: k_blocks<BlockInt4, false><<<grid, block, 0, s>>>(v, dX, n, dY); break;
    case Codec::Int3: k_blocks<BlockInt3, false><<<grid, block, 0, s>>>(v, dX, n, dY); break;
    case Codec::Int2: k_blocks<BlockInt2, false><<<grid, block, 0, s>>>(v, dX, n, dY); break;
    case Codec::Tern2: k_blocks<BlockTern2, true><<<grid, block, 0, s>>>(v, dX, n, dY); break;
    case Codec::Subbit: k_subbit<<<grid, block, 0, s>>>(v, dX, n, dY); break;
  }
  MOEC_CUDA_CHECK(cudaGetLastError());
}

void CudaPackedMatrix::matmul_host(const float* X, int n, float* Y) const {
  if (n < 1 || n > kMaxBatch) fail("CUDA matmul: batch ", n, " must be in 1..", kMaxBatch);
  const size_t xb = sizeof(float) * size_t(n) * size_t(cols()), yb = sizeof(float) * size_t(n) * size_t(rows());
  float* dX = upload<float>(X, xb);
  float* dY = nullptr;
  cudaError_t e = cudaMalloc(&dY, yb);
  if (e == cudaSuccess) {
    try {
      matmul_device(dX, n, dY, nullptr);
      e = cudaMemcpy(Y, dY, yb, cudaMemcpyDeviceToHost);
    } catch (...) {
      cudaFree(dX);
      cudaFree(dY);
      throw;
    }
  }
  cudaFree(dX);
  cudaFree(dY);
  if (e != cudaSuccess) fail("CUDA matmul: ", cudaGetErrorString(e));
}

}  // namespace moec
