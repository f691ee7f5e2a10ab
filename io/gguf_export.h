// Hugging Face MoE checkpoint -> GGUF file that llama.cpp loads (Mixtral as arch "llama" with experts,
// Qwen2-MoE as arch "qwen2moe"). Tensor mapping, metadata and type rules: docs/GGUF.md.
#pragma once
#include <cstdint>
#include <filesystem>
#include <optional>
#include <string>
#include <vector>

#include "io/ggml_blocks.h"
#include "quantize/qmatrix.h"

namespace moec::model {
class WeightSource;
}

namespace moec::io {

struct GgufExportOptions {
  // Routed-expert matrices (ffn_{gate,up,down}_exps): f32, f16, bf16, q8_0, q4_0, tq1_0 or tq2_0.
  GgmlType expert_type = GgmlType::F16;
  // Embeddings, lm_head, attention and shared-expert matrices: F32, F16 or BF16. Unset: F32 when
  // expert_type is F32, else F16. Norms, biases and routers are always F32.
  std::optional<GgmlType> dense_type;
  uint32_t alignment = 32;
  bool force = false;      // replace an existing output file
  std::string name;        // general.name (default: the model directory's name)
  bool progress = true;
};

struct GgufExportReport {
  std::string arch;               // "llama" or "qwen2moe"
  int64_t tensors = 0;
  uint64_t file_bytes = 0;
  uint64_t expert_bytes = 0;      // bytes of the routed-expert tensors
  int64_t expert_params = 0;
  double expert_bits_per_weight() const { return expert_params ? 8.0 * double(expert_bytes) / double(expert_params) : 0; }
};

// Converts `model_dir` (config.json + safetensors) into `out_file`. Validates everything llama.cpp needs
// before writing; writes atomically (temp file + rename) and refuses to replace any input file.
GgufExportReport export_gguf(const std::filesystem::path& model_dir, const std::filesystem::path& out_file,
                             const GgufExportOptions& opt = {});
// The same from any weight source (e.g. a compressed moec checkpoint or an OverlaySource whose experts were
// replaced): every matrix is read as dense fp32 through src.matrix() and re-encoded in the chosen types.
GgufExportReport export_gguf(const model::WeightSource& src, const std::filesystem::path& out_file,
                             const GgufExportOptions& opt = {});

// llama.cpp's "llama" architecture applies RoPE to adjacent pairs (x[2i], x[2i+1]); Hugging Face checkpoints
// rotate halves (x[i], x[i + d/2]). Reorders the rows of a q or k projection [n_head * head_dim, cols]
// (row-major) so that new row h*d + 2i + s = old row h*d + s*d/2 + i (s in {0,1}, i < d/2).
void permute_rope_rows(const float* src, float* dst, int n_head, int head_dim, int64_t cols);

// The 256 strings GPT-2's byte-level BPE uses for bytes 0..255 (printable bytes map to themselves, the
// rest to U+0100 + k in byte order), UTF-8 encoded: the vocabulary of a byte-token model.
std::vector<std::string> gpt2_byte_tokens();

// moec ternary codes -> llama.cpp TQ1_0/TQ2_0 rows (see docs/GGUF.md, "Ternary codes"). Each 256-element
// block of a row gets one fp16 scale d. When every block lies inside one scale group and uses one
// magnitude (group a multiple of 256 or per-row, no separate neg_scale), d = that scale and the codes are
// copied unchanged: lossless. Otherwise the codes are kept and d is refit by least squares to the block's
// dequantized weights, d = sum |w_j| / count over nonzero codes (the optimum for fixed codes).
struct TernaryFitStats {
  int64_t blocks = 0;
  int64_t refit_blocks = 0;     // blocks whose scale had to be refit
  double max_rel_change = 0;    // max over refit blocks of max_j |d - s_j| / s_j over the scales s_j it merged
};
std::vector<uint8_t> encode_ternary_matrix(const QuantizedMatrix& qm, GgmlType type, const std::string& what,
                                           TernaryFitStats* stats = nullptr);

}  // namespace moec::io
