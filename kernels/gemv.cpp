#include "kernels/gemv.h"

#include <algorithm>
#include <cstdlib>
#include <cstring>
#include <string>
#include <vector>

#include "core/error.h"
#include "kernels/blocks.h"
#include "kernels/gemv_impl.h"
#include "kernels/subbit.h"

namespace moec {

const char* isa_name(Isa isa) {
  switch (isa) {
    case Isa::Scalar: return "scalar";
    case Isa::Avx2: return "avx2";
    case Isa::Avx512: return "avx512";
  }
  return "?";
}

bool isa_supported(Isa isa) {
#if defined(__x86_64__) || defined(__i386__)
  switch (isa) {
    case Isa::Scalar: return true;
    case Isa::Avx2: return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
    case Isa::Avx512:
      return __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
             __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("avx512dq") &&
             __builtin_cpu_supports("avx512vbmi") && __builtin_cpu_supports("fma") && __builtin_cpu_supports("bmi") &&
             __builtin_cpu_supports("bmi2");
  }
  return false;
#else
  return isa == Isa::Scalar;
#endif
}

Isa best_isa() {
  static const Isa best = [] {
    Isa cap = Isa::Avx512;
    if (const char* e = std::getenv("MOEC_ISA")) {
      std::string s = e;
      if (s == "scalar") cap = Isa::Scalar;
      else if (s == "avx2") cap = Isa::Avx2;
    }
    for (Isa i : {Isa::Avx512, Isa::Avx2})
      if (int(i) <= int(cap) && isa_supported(i)) return i;
    return Isa::Scalar;
  }();
  return best;
}

// --- scalar reference ---

namespace {

// Weight (r, c) straight from the block bytes with the shared MOEC_HD decode functions.
template <class Block>
float weight_at(const PackedView& W, const uint8_t* row_codes, int r, int c, int g) {
  const Block& b = reinterpret_cast<const Block*>(row_codes)[c >> 5];
  unsigned code = block_code(b, c & 31);
  if constexpr (std::is_same_v<Block, BlockTern2>) return tern_value(code, W.scale(r, g), W.neg_scale(r, g));
  else return int_value(code, W.scale(r, g), W.zero(r, g));
}

template <class Block>
void ref_rows(const PackedView& W, const uint8_t* row_codes, int r, const float* X, int n, float* Y) {
  const int gs = W.group_size();
  for (int t = 0; t < n; ++t) {
    const float* x = X + size_t(t) * size_t(W.cols);
    float acc = 0.0f;
    for (int c = 0; c < W.cols; ++c) acc += weight_at<Block>(W, row_codes, r, c, c / gs) * x[c];
    Y[size_t(t) * size_t(W.rows) + size_t(r)] = acc;
  }
}

void check_view(const PackedView& W, const char* what) {
  if (W.rows < 1 || W.cols < 1 || !W.codes || !W.scales) fail(what, ": empty or incomplete packed view");
  if (W.codec == Codec::Subbit && (!W.row_offsets || !W.dict)) fail(what, ": subbit view without offsets/dictionary");
}

}  // namespace

void matmul_ref(const PackedView& W, const float* X, int n, float* Y) {
  check_view(W, "matmul_ref");
  std::vector<uint64_t> buf(size_t(W.blocks_per_row()) + 1);
  for (int r = 0; r < W.rows; ++r) {
    const uint8_t* rc = W.codes + size_t(r) * W.row_bytes();
    switch (W.codec) {
      case Codec::Int8: ref_rows<BlockInt8>(W, rc, r, X, n, Y); break;
      case Codec::Int4: ref_rows<BlockInt4>(W, rc, r, X, n, Y); break;
      case Codec::Int3: ref_rows<BlockInt3>(W, rc, r, X, n, Y); break;
      case Codec::Int2: ref_rows<BlockInt2>(W, rc, r, X, n, Y); break;
      case Codec::Tern2: ref_rows<BlockTern2>(W, rc, r, X, n, Y); break;
      case Codec::Subbit:
        subbit_decode_row(W, r, buf.data());
        ref_rows<BlockTern2>(W, reinterpret_cast<const uint8_t*>(buf.data()), r, X, n, Y);
        break;
    }
  }
}

// --- dispatch ---

namespace {
using detail::kRowChunk;

// Per-thread buffers reused across calls (a fresh allocation of a few hundred KiB per call costs page faults
// comparable to a whole matvec). 64-byte aligned; contents are not preserved between calls.
enum Buffer { kScratch = 0, kXp = 1 };
void* thread_buffer(size_t bytes, Buffer which) {
  thread_local std::vector<uint8_t> bufs[2];
  std::vector<uint8_t>& b = bufs[which];
  if (b.size() < bytes + 64) b.resize(bytes + 64);
  const uintptr_t p = reinterpret_cast<uintptr_t>(b.data());
  return reinterpret_cast<void*>((p + 63) & ~uintptr_t(63));
}

template <class F>
void for_row_chunks(const PackedView& W, double work, F&& f) {
  const int chunks = (W.rows + kRowChunk - 1) / kRowChunk;
  const bool par = work > 2e5 && chunks > 1;
#pragma omp parallel if (par)
  {
    uint64_t* scratch = static_cast<uint64_t*>(thread_buffer(8 * detail::scratch_words(W), kScratch));
#pragma omp for schedule(static)
    for (int ch = 0; ch < chunks; ++ch) f(ch * kRowChunk, std::min(W.rows, (ch + 1) * kRowChunk), scratch);
  }
}
}  // namespace

void matmul(const PackedView& W, const float* X, int n, float* Y, Isa isa) {
  check_view(W, "matmul");
  if (n < 1) fail("matmul: batch n = ", n, " must be >= 1");
  if (isa != Isa::Scalar && !isa_supported(isa)) fail("matmul: ISA ", isa_name(isa), " not supported on this CPU");
  if (isa == Isa::Scalar) return matmul_ref(W, X, n, Y);
  // Zero-padded copy of X so that kernels may read whole blocks (padding codes then meet x = 0).
  const size_t ldx = detail::x_stride(W);
  float* Xp = static_cast<float*>(thread_buffer(sizeof(float) * ldx * size_t(n), kXp));
  for (int t = 0; t < n; ++t) {
    float* xp = Xp + size_t(t) * ldx;
    std::memcpy(xp, X + size_t(t) * size_t(W.cols), sizeof(float) * size_t(W.cols));
    std::fill(xp + W.cols, xp + ldx, 0.0f);
  }
  if (isa == Isa::Avx512) detail::prepare_x_avx512(W, Xp, n, ldx);
  auto fn = isa == Isa::Avx512 ? detail::rows_avx512 : detail::rows_avx2;
  for_row_chunks(W, double(W.rows) * double(W.cols) * n,
                 [&](int r0, int r1, uint64_t* scratch) { fn(W, Xp, ldx, n, Y, r0, r1, scratch); });
}

void matmul(const PackedView& W, const float* X, int n, float* Y, Isa isa, ActQuant act) {
  if (act == ActQuant::None) return matmul(W, X, n, Y, isa);
  check_view(W, "matmul");
  if (n < 1) fail("matmul: batch n = ", n, " must be >= 1");
  if (isa != Isa::Scalar && !isa_supported(isa)) fail("matmul: ISA ", isa_name(isa), " not supported on this CPU");
  if (isa != Isa::Avx512 || !q8_vnni_supported()) return matmul_q8_ref(W, X, n, Y);
  // Quantized, permuted activations (quantize_act_q8 per token), then the VNNI kernel over row chunks.
  const int ka = act_block_cols(W), nab = (W.cols + ka - 1) / ka, G = W.groups();
  const size_t pairs = (size_t(W.blocks_per_row()) + 1) / 2;
  const size_t ldq = (64 * pairs + size_t(ka) - 1) / size_t(ka) * size_t(ka);
  const size_t xq_bytes = (ldq * size_t(n) + 63) & ~size_t(63);
  uint8_t* buf = static_cast<uint8_t*>(thread_buffer(xq_bytes + sizeof(float) * size_t(n) * size_t(nab + G), kXp));
  detail::Q8Acts A;
  A.ka = ka;
  A.nab = nab;
  A.ldq = ldq;
  int8_t* xq = reinterpret_cast<int8_t*>(buf);
  float* d = reinterpret_cast<float*>(buf + xq_bytes);
  float* ds = d + size_t(n) * size_t(nab);
  detail::q8_prepare_avx512(W, X, n, ka, ldq, xq, d, ds);
  A.xq = xq;
  A.d = d;
  A.ds = ds;
  for_row_chunks(W, double(W.rows) * double(W.cols) * n,
                 [&](int r0, int r1, uint64_t* scratch) { detail::rows_q8_avx512(W, A, n, Y, r0, r1, scratch); });
}

void matvec(const PackedView& W, const float* x, float* y, Isa isa) { matmul(W, x, 1, y, isa); }

void dequantize_isa(const PackedView& W, float* out, Isa isa) {
  check_view(W, "dequantize");
  if (isa != Isa::Scalar && !isa_supported(isa)) fail("dequantize: ISA ", isa_name(isa), " not supported on this CPU");
  if (isa == Isa::Scalar) return dequantize_ref(W, out);
  auto fn = isa == Isa::Avx512 ? detail::dequant_rows_avx512 : detail::dequant_rows_avx2;
  for_row_chunks(W, double(W.rows) * double(W.cols),
                 [&](int r0, int r1, uint64_t* scratch) { fn(W, out, r0, r1, scratch); });
}

void dequantize(const PackedView& v, float* W) { dequantize_isa(v, W, best_isa()); }

}  // namespace moec
