#include "io/gguf_export.h"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <functional>
#include <optional>

#include "core/error.h"
#include "core/progress.h"
#include "io/gguf.h"
#include "model/source.h"
#include "model/spec.h"

namespace moec::io {
namespace fs = std::filesystem;
using model::Family;
using model::ModelSpec;
using model::Proj;
using model::WeightSource;

void permute_rope_rows(const float* src, float* dst, int n_head, int head_dim, int64_t cols) {
  const int half = head_dim / 2;
  for (int h = 0; h < n_head; ++h)
    for (int s = 0; s < 2; ++s)
      for (int i = 0; i < half; ++i) {
        const int64_t from = int64_t(h) * head_dim + s * half + i;
        const int64_t to = int64_t(h) * head_dim + 2 * i + s;
        std::memcpy(dst + to * cols, src + from * cols, size_t(cols) * sizeof(float));
      }
}

std::vector<std::string> gpt2_byte_tokens() {
  // Bytes GPT-2 keeps as themselves: '!'..'~', U+00A1..U+00AC, U+00AE..U+00FF. Others get U+0100 + k.
  auto keeps = [](int b) { return (b >= 0x21 && b <= 0x7e) || (b >= 0xa1 && b <= 0xac) || (b >= 0xae && b <= 0xff); };
  std::vector<std::string> out(256);
  int next = 0;
  for (int b = 0; b < 256; ++b) {
    const unsigned cp = keeps(b) ? unsigned(b) : 0x100u + unsigned(next++);
    std::string s;
    if (cp < 0x80) {
      s += char(cp);
    } else {  // all code points here are < 0x800: two UTF-8 bytes
      s += char(0xc0 | (cp >> 6));
      s += char(0x80 | (cp & 0x3f));
    }
    out[size_t(b)] = s;
  }
  return out;
}

// ---------------------------------------------------------------- ternary codes -> TQ rows

std::vector<uint8_t> encode_ternary_matrix(const QuantizedMatrix& qm, GgmlType type, const std::string& what,
                                           TernaryFitStats* stats) {
  if (qm.kind != CodeKind::Ternary) fail(what, ": encode_ternary_matrix needs ternary codes");
  const size_t row_bytes = ggml_row_bytes(type, qm.cols, what);
  if (type != GgmlType::TQ1_0 && type != GgmlType::TQ2_0)
    fail(what, ": ternary codes can only be written as tq1_0 or tq2_0, not ", ggml_type_name(type));
  std::vector<uint8_t> out(row_bytes * size_t(qm.rows));
  const int64_t nb = qm.cols / kQK_K;
  const int gs = qm.group_size();
  std::vector<float> d(static_cast<size_t>(nb));
  TernaryFitStats st;
  for (int r = 0; r < qm.rows; ++r) {
    const int8_t* codes = qm.q.data() + size_t(r) * size_t(qm.cols);
    for (int64_t b = 0; b < nb; ++b) {
      const int c0 = int(b * kQK_K), c1 = c0 + kQK_K;
      const size_t g0 = size_t(r) * size_t(qm.groups()) + size_t(c0 / gs);
      // One group covering the block and one magnitude for +1 and -1: the scale carries over exactly.
      const bool one_group = (c0 / gs) == ((c1 - 1) / gs);
      const bool symmetric = qm.neg_scale.empty() || qm.neg_scale[g0] == qm.scale[g0];
      ++st.blocks;
      if (one_group && symmetric) {
        d[size_t(b)] = qm.scale[g0];
        continue;
      }
      // Refit: least-squares scale for the fixed codes over the block's dequantized weights.
      double sum = 0;
      int64_t nz = 0;
      for (int c = c0; c < c1; ++c)
        if (codes[c] != 0) {
          sum += std::fabs(double(qm.dequant(r, c)));
          ++nz;
        }
      const float fit = nz ? float(sum / double(nz)) : qm.scale[g0];
      d[size_t(b)] = fit;
      ++st.refit_blocks;
      for (int c = c0; c < c1; ++c) {
        if (codes[c] == 0) continue;
        const float s = std::fabs(qm.dequant(r, c));
        if (s > 0) st.max_rel_change = std::max(st.max_rel_change, double(std::fabs(fit - s) / s));
      }
    }
    encode_ternary_row(type, codes, d.data(), qm.cols, out.data() + size_t(r) * row_bytes,
                       what + ", row " + std::to_string(r));
  }
  if (stats) *stats = st;
  return out;
}

// ---------------------------------------------------------------- export

namespace {

// One GGUF tensor: its declaration and the function that streams its bytes into the writer.
struct Planned {
  std::string name;
  std::vector<int64_t> ne;
  GgmlType type;
  bool expert = false;
  std::function<void(GgufWriter&)> emit;
};

// Quantizes a row-major fp32 matrix [rows, cols] into `type` rows and appends them to the writer.
void emit_rows(GgufWriter& w, const float* data, int64_t rows, int64_t cols, GgmlType type, const std::string& what) {
  const size_t rb = ggml_row_bytes(type, cols, what);
  std::vector<uint8_t> buf(rb * size_t(std::min<int64_t>(rows, 1024)));
  for (int64_t r0 = 0; r0 < rows; r0 += 1024) {
    const int64_t n = std::min<int64_t>(1024, rows - r0);
    for (int64_t r = 0; r < n; ++r)
      quantize_row(type, data + size_t(r0 + r) * size_t(cols), buf.data() + size_t(r) * rb, cols, what);
    w.write(buf.data(), rb * size_t(n));
  }
}

std::string blk(int l, const std::string& what) { return "blk." + std::to_string(l) + "." + what; }

void check_output(const fs::path& out, const fs::path& model_dir, bool force) {
  if (out.empty()) fail("GGUF export: empty output path");
  if (fs::is_directory(out)) fail("GGUF export: output ", out.string(), " is a directory; give a file name");
  const fs::path parent = out.parent_path().empty() ? fs::path(".") : out.parent_path();
  if (!fs::is_directory(parent)) fail("GGUF export: output directory ", parent.string(), " does not exist");
  if (!fs::exists(out)) return;
  std::error_code ec;
  if (fs::is_directory(model_dir))
    for (const auto& e : fs::directory_iterator(model_dir, ec))
      if (e.is_regular_file() && fs::equivalent(e.path(), out, ec))
        fail("GGUF export: output ", out.string(), " is the input file ", e.path().string(), ": refusing to overwrite it");
  if (fs::is_regular_file(model_dir) && fs::equivalent(model_dir, out, ec))
    fail("GGUF export: output ", out.string(), " is the input: refusing to overwrite it");
  if (!force) fail("GGUF export: output ", out.string(), " already exists (use --force to replace it)");
}

}  // namespace

GgufExportReport export_gguf(const WeightSource& src, const fs::path& out_file,
                                           const GgufExportOptions& opt) {
  const ModelSpec& s = src.spec();
  const std::string ctx = src.path().string();
  // ---- what llama.cpp can run
  std::string arch;
  if (s.family == Family::Mixtral) arch = "llama";
  else if (s.family == Family::Qwen2Moe) arch = "qwen2moe";
  else
    fail(ctx, ": GGUF export supports Mixtral (llama) and Qwen2-MoE (qwen2moe) checkpoints; model_type '",
         s.model_type, "' is not supported yet");
  for (int l = 0; l < s.num_layers; ++l)
    if (!s.moe_layer[size_t(l)]) fail(ctx, ": layer ", l, " is a dense MLP layer; llama.cpp's ", arch, " needs every layer to be MoE");
  if (s.family == Family::Qwen2Moe) {
    if (s.routing.norm_topk) fail(ctx, ": norm_topk_prob = true, but llama.cpp's qwen2moe never renormalises top-k weights");
    if (s.shared_intermediate <= 0 || !s.shared_expert_gate)
      fail(ctx, ": llama.cpp's qwen2moe needs a shared expert with its gate (shared_expert_intermediate_size > 0)");
  }
  if (s.sliding_window > 0 && s.sliding_window < 1 << 30)
    log_info("GGUF export: note: sliding_window " + std::to_string(s.sliding_window) +
             " is not written; llama.cpp attends to the full context");
  if (s.qk_norm != ModelSpec::QkNorm::None || s.clip_qkv > 0 || s.o_bias)
    fail(ctx, ": q/k norms, qkv clipping and o_proj bias have no place in llama.cpp's ", arch);
  if (s.vocab != 256 || fs::exists(src.path() / "tokenizer.json") || fs::exists(src.path() / "tokenizer.model"))
    fail(ctx, ": GGUF export writes byte-level tokenizers only (vocab_size 256, token id = byte, no tokenizer file); "
              "this model has vocab_size ", s.vocab, " and/or a tokenizer file, which is not supported yet");
  if (s.routing.scoring != model::Scoring::Softmax || s.routing.method != model::TopkMethod::Greedy)
    fail(ctx, ": only softmax greedy top-k routing maps onto llama.cpp's ", arch);

  if (!ggml_type_writable(opt.expert_type)) fail("GGUF export: cannot write expert type ", ggml_type_name(opt.expert_type));
  const GgmlType dense = opt.dense_type.value_or(opt.expert_type == GgmlType::F32 ? GgmlType::F32 : GgmlType::F16);
  if (dense != GgmlType::F32 && dense != GgmlType::F16 && dense != GgmlType::BF16)
    fail("GGUF export: dense tensors must be f32, f16 or bf16, not ", ggml_type_name(dense));
  const GgmlType F32 = GgmlType::F32;

  // ---- validate sizes up front (several missing/odd values abort llama.cpp instead of failing cleanly)
  const int64_t H = s.hidden, V = s.vocab, hd = s.head_dim, nh = s.n_heads, nkv = s.n_kv_heads;
  const int64_t I = s.moe_intermediate, E = s.routing.num_experts, K = s.routing.top_k;
  if (K > E) fail(ctx, ": num_experts_per_tok ", K, " exceeds the ", E, " experts");
  if (hd % 2) fail(ctx, ": head_dim ", hd, " is odd; RoPE needs it even");
  auto check_rows = [&](GgmlType t, int64_t n, const std::string& tensor) { ggml_row_bytes(t, n, "tensor '" + tensor + "'"); };
  check_rows(opt.expert_type, H, blk(0, "ffn_gate_exps.weight"));
  check_rows(opt.expert_type, I, blk(0, "ffn_down_exps.weight"));

  // ---- plan the tensors (GGUF shapes: ne[0] = columns of the HF [rows, cols] matrix)
  std::vector<Planned> plan;
  auto matrix_tensor = [&](const std::string& gname, const std::string& hf, int64_t rows, int64_t cols, GgmlType t,
                           int permute_heads = 0) {
    plan.push_back({gname, {cols, rows}, t, false, [&src, hf, gname, rows, cols, t, permute_heads, hd](GgufWriter& w) {
                      Matrix m = src.matrix(hf);
                      if (m.rows() != rows || m.cols() != cols)
                        fail(src.path().string(), ": tensor '", hf, "' is ", m.rows(), "x", m.cols(), ", expected ", rows, "x", cols);
                      if (permute_heads) {
                        Matrix p(rows, cols);
                        permute_rope_rows(m.data(), p.data(), permute_heads, int(hd), cols);
                        m = std::move(p);
                      }
                      emit_rows(w, m.data(), rows, cols, t, "tensor '" + gname + "'");
                      src.release(hf);
                    }});
  };
  auto vector_tensor = [&](const std::string& gname, const std::string& hf, int64_t n) {
    plan.push_back({gname, {n}, F32, false, [&src, hf, gname, n](GgufWriter& w) {
                      Matrix m = src.matrix(hf);
                      if (m.size() != n) fail(src.path().string(), ": tensor '", hf, "' has ", m.size(), " values, expected ", n);
                      w.write(m.data(), size_t(n) * sizeof(float));
                      src.release(hf);
                    }});
  };
  // Experts stacked into one 3-D tensor: ne = [cols, rows, E]; expert e is the e-th contiguous slab.
  auto experts_tensor = [&](const std::string& gname, int l, Proj p, int64_t rows, int64_t cols) {
    plan.push_back({gname, {cols, rows, E}, opt.expert_type, true,
                    [&src, &s, gname, l, p, rows, cols, E, t = opt.expert_type](GgufWriter& w) {
                      for (int e = 0; e < E; ++e) {
                        const std::string hf = s.expert(l, e, p);
                        Matrix m = src.matrix(hf);
                        if (m.rows() != rows || m.cols() != cols)
                          fail(src.path().string(), ": tensor '", hf, "' is ", m.rows(), "x", m.cols(), ", expected ", rows, "x", cols);
                        emit_rows(w, m.data(), rows, cols, t, "tensor '" + gname + "' (expert " + std::to_string(e) + ")");
                        src.release(hf);
                      }
                    }});
  };

  // llama.cpp's "llama" rotates adjacent pairs: permute q and k; qwen2moe uses NeoX (half) rotation like HF.
  const bool permute = arch == "llama";
  matrix_tensor("token_embd.weight", s.embed(), V, H, dense);
  for (int l = 0; l < s.num_layers; ++l) {
    vector_tensor(blk(l, "attn_norm.weight"), s.input_norm(l), H);
    matrix_tensor(blk(l, "attn_q.weight"), s.attn(l, 'q'), nh * hd, H, dense, permute ? int(nh) : 0);
    matrix_tensor(blk(l, "attn_k.weight"), s.attn(l, 'k'), nkv * hd, H, dense, permute ? int(nkv) : 0);
    matrix_tensor(blk(l, "attn_v.weight"), s.attn(l, 'v'), nkv * hd, H, dense);
    matrix_tensor(blk(l, "attn_output.weight"), s.attn(l, 'o'), H, nh * hd, dense);
    if (s.qkv_bias) {
      if (permute) fail(ctx, ": q/k biases with the llama architecture are not supported");
      vector_tensor(blk(l, "attn_q.bias"), s.attn_bias(l, 'q'), nh * hd);
      vector_tensor(blk(l, "attn_k.bias"), s.attn_bias(l, 'k'), nkv * hd);
      vector_tensor(blk(l, "attn_v.bias"), s.attn_bias(l, 'v'), nkv * hd);
    }
    vector_tensor(blk(l, "ffn_norm.weight"), s.post_attn_norm(l), H);
    matrix_tensor(blk(l, "ffn_gate_inp.weight"), s.router(l), E, H, F32);  // router stays F32
    experts_tensor(blk(l, "ffn_gate_exps.weight"), l, Proj::Gate, I, H);
    experts_tensor(blk(l, "ffn_up_exps.weight"), l, Proj::Up, I, H);
    experts_tensor(blk(l, "ffn_down_exps.weight"), l, Proj::Down, H, I);
    if (s.family == Family::Qwen2Moe) {
      const int64_t S = s.shared_intermediate;
      vector_tensor(blk(l, "ffn_gate_inp_shexp.weight"), s.shared_gate(l), H);  // HF [1, H] -> 1-D
      matrix_tensor(blk(l, "ffn_gate_shexp.weight"), s.shared_expert(l, Proj::Gate), S, H, dense);
      matrix_tensor(blk(l, "ffn_up_shexp.weight"), s.shared_expert(l, Proj::Up), S, H, dense);
      matrix_tensor(blk(l, "ffn_down_shexp.weight"), s.shared_expert(l, Proj::Down), H, S, dense);
    }
  }
  vector_tensor("output_norm.weight", s.final_norm(), H);
  // Tied embeddings: llama.cpp falls back to token_embd when output.weight is absent.
  if (!s.tie_embeddings) matrix_tensor("output.weight", s.lm_head(), V, H, dense);

  // ---- metadata
  check_output(out_file, src.path(), opt.force);
  GgufWriter w(out_file, opt.alignment);
  const std::string A = arch + ".";
  auto u32 = [](int64_t v) { return GgufValue::u32(uint32_t(v)); };
  std::string name = opt.name;
  if (name.empty()) name = fs::absolute(src.path()).lexically_normal().filename().string();
  if (name.empty()) name = fs::absolute(src.path()).lexically_normal().parent_path().filename().string();
  w.set("general.architecture", GgufValue::string(arch));
  w.set("general.name", GgufValue::string(name));
  const int64_t ctx_len = s.config.value("max_position_embeddings", int64_t(4096));
  w.set(A + "context_length", u32(ctx_len));
  w.set(A + "embedding_length", u32(H));
  w.set(A + "block_count", u32(s.num_layers));
  if (s.family == Family::Mixtral) {
    w.set(A + "feed_forward_length", u32(I));  // llama: the expert width
  } else {
    w.set(A + "feed_forward_length", u32(s.dense_intermediate > 0 ? s.dense_intermediate : I));
    w.set(A + "expert_feed_forward_length", u32(I));
    w.set(A + "expert_shared_feed_forward_length", u32(s.shared_intermediate));
  }
  w.set(A + "attention.head_count", u32(nh));
  w.set(A + "attention.head_count_kv", u32(nkv));
  w.set(A + "attention.layer_norm_rms_epsilon", GgufValue::f32(s.rms_eps));
  w.set(A + "attention.key_length", u32(hd));
  w.set(A + "attention.value_length", u32(hd));
  w.set(A + "rope.dimension_count", u32(hd));
  w.set(A + "rope.freq_base", GgufValue::f32(float(s.rope_theta)));  // absent => llama.cpp silently uses 10000
  w.set(A + "expert_count", u32(E));
  w.set(A + "expert_used_count", u32(K));
  w.set(A + "vocab_size", u32(V));
  // Byte-level vocabulary as a GPT-2 BPE with no merges: token i is byte i.
  w.set("tokenizer.ggml.model", GgufValue::string("gpt2"));
  w.set("tokenizer.ggml.tokens", GgufValue::strings(gpt2_byte_tokens()));
  w.set("tokenizer.ggml.merges", GgufValue::strings({}));  // must be present, even empty
  w.set("tokenizer.ggml.add_bos_token", GgufValue::boolean(false));

  GgufExportReport rep;
  rep.arch = arch;
  for (const auto& p : plan) {
    w.add_tensor(p.name, p.ne, p.type);
    const uint64_t bytes = gguf_tensor_bytes(p.type, p.ne, p.name);
    if (p.expert) {
      rep.expert_bytes += bytes;
      rep.expert_params += p.ne[0] * p.ne[1] * p.ne[2];
    }
  }
  std::optional<Progress> prog;
  if (opt.progress) prog.emplace("export gguf", long(plan.size()), "tensors");
  long done = 0;
  for (const auto& p : plan) {
    if (w.current_tensor() != p.name && gguf_tensor_bytes(p.type, p.ne, p.name) > 0)
      fail("GGUF export: internal error: writing '", p.name, "' but the writer expects '", w.current_tensor(), "'");
    p.emit(w);
    if (prog) prog->update(++done, p.name);
  }
  w.finish();
  if (prog) prog->finish();
  rep.tensors = int64_t(plan.size());
  rep.file_bytes = fs::file_size(out_file);
  return rep;
}

GgufExportReport export_gguf(const fs::path& model_dir, const fs::path& out_file, const GgufExportOptions& opt) {
  model::CheckpointSource src(model_dir);
  return export_gguf(src, out_file, opt);
}

}  // namespace moec::io
